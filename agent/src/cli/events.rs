//! `parley events`: the agent's audit log.

use parley_store::records::Event;

use super::{CliError, Output, print_json, table};
use crate::api::client::ApiClient;

/// Arguments of `parley events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// How many of the newest events to show
    #[arg(long, short = 'n', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
}

/// Runs `parley events`.
pub async fn execute(args: EventsArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let events: Vec<Event> = client
        .get(&format!("/v1/events?limit={}", args.limit))
        .await?;
    match output {
        Output::Json => print_json(&events)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        format_millis(e.at_ms),
                        e.kind.clone(),
                        e.workload.clone().unwrap_or_else(|| "-".to_owned()),
                        e.message.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["TIME (UTC)", "KIND", "WORKLOAD", "MESSAGE"], &rows)
            );
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, from milliseconds since the Unix epoch.
pub fn format_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::format_millis(0), "1970-01-01 00:00:00");
        assert_eq!(
            super::format_millis(1_795_303_038_684),
            "2026-11-21 23:17:18"
        );
        assert_eq!(super::format_millis(951_782_400_000), "2000-02-29 00:00:00");
    }
}
