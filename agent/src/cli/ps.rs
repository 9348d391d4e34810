//! `parley ps`: list workloads and their containers.

use super::{CliError, Output, print_json, table};
use crate::api::client::ApiClient;
use crate::api::types::WorkloadList;

/// Arguments of `parley ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {}

/// Runs `parley ps`.
pub async fn execute(_args: PsArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let list: WorkloadList = client.get("/v1/workloads").await?;
    match output {
        Output::Json => print_json(&list)?,
        Output::Table => print!("{}", render(&list)),
    }
    if let Some(error) = &list.runtime_error {
        eprintln!("warning: container states are unknown: {error}");
    }
    Ok(())
}

fn render(list: &WorkloadList) -> String {
    render_at(list, crate::clock::unix_secs())
}

/// How long ago `since` (seconds since the Unix epoch) was, in the largest whole unit.
fn age(now: u64, since: Option<u64>) -> String {
    let Some(since) = since else {
        return "-".to_owned();
    };
    let secs = now.saturating_sub(since);
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn render_at(list: &WorkloadList, now: u64) -> String {
    let rows: Vec<Vec<String>> = list
        .workloads
        .iter()
        .flat_map(|w| {
            w.replicas.iter().map(move |r| {
                let state = match (&r.state, r.exit_code) {
                    (Some(state), Some(code)) => format!("{state} ({code})"),
                    (Some(state), None) => state.to_string(),
                    (None, _) if list.runtime_error.is_some() => "unknown".to_owned(),
                    (None, _) => "missing".to_owned(),
                };
                // A replica on another node shows what that node reported through its
                // owner; "placed" until a report arrives.
                let reported = r
                    .phase
                    .as_ref()
                    .map(|phase| match (r.exit_code, &r.reason) {
                        (Some(code), _) if phase == "exited" => format!("{phase} ({code})"),
                        (_, Some(reason)) if phase == "failed" => format!("{phase}: {reason}"),
                        _ => phase.clone(),
                    });
                let state = if r.node == "-" {
                    "pending".to_owned()
                } else if r.remote {
                    reported.unwrap_or_else(|| "placed".to_owned())
                } else if r.state.is_none() && list.runtime_error.is_none() {
                    reported.unwrap_or(state)
                } else {
                    state
                };
                vec![
                    w.name.clone(),
                    r.replica.to_string(),
                    r.node.clone(),
                    r.epoch.to_string(),
                    state,
                    r.restarts.to_string(),
                    age(now, r.since),
                    r.container.clone().unwrap_or_else(|| "-".to_owned()),
                    w.image.clone(),
                ]
            })
        })
        .collect();
    table::render(
        &[
            "NAME",
            "REPLICA",
            "NODE",
            "EPOCH",
            "STATE",
            "RESTARTS",
            "AGE",
            "CONTAINER",
            "IMAGE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{ReplicaStatus, WorkloadStatus};

    #[test]
    fn remote_replicas_show_what_their_node_reported_with_restarts_and_age() {
        let replica = |node: &str, phase: Option<&str>, exit_code, since| ReplicaStatus {
            replica: 0,
            epoch: 3,
            remote: true,
            node: node.to_owned(),
            phase: phase.map(str::to_owned),
            exit_code,
            restarts: 2,
            since,
            ..ReplicaStatus::default()
        };
        let list = WorkloadList {
            workloads: vec![WorkloadStatus {
                name: "web".into(),
                image: "img".into(),
                command: Vec::new(),
                created_at: 0,
                replicas: vec![
                    replica("n/b", Some("running"), None, Some(10_000 - 90)),
                    replica("n/c", Some("exited"), Some(3), Some(10_000 - 7_200)),
                    replica("n/d", None, None, None),
                ],
                owner: None,
                desired: None,
            }],
            runtime_error: None,
        };
        let table = render_at(&list, 10_000);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("RESTARTS") && lines[0].contains("AGE"),
            "{table}"
        );
        assert!(
            lines[1].contains("running") && lines[1].contains(" 1m"),
            "{table}"
        );
        assert!(
            lines[2].contains("exited (3)") && lines[2].contains(" 2h"),
            "{table}"
        );
        assert!(lines[3].contains("placed"), "{table}");
    }
}
