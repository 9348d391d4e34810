//! `parley logs`: a replica's output, from whichever node runs it.

use std::io::Write as _;
use std::time::Duration;

use super::{CliError, Output, print_json};
use crate::api::client::{ApiClient, ClientError};
use crate::api::types::WorkloadLogs;
use crate::runtime::{LogLine, LogStream};

/// How often `--follow` asks for new lines.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `parley logs`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The local agent fetches the lines from the node that runs the replica \
(asking the mesh where that is); that node's policy must allow this node `logs`. One \
answer carries at most 32 KiB of text: older lines beyond it are left out, and a note on \
stderr says how many (narrow with --tail). Lines the container wrote on stderr go to \
stderr.

With --follow, new lines are fetched every second until interrupted; they appear about \
a second after the container writes them. With -o json, one JSON object per line: \
{\"stream\": \"stdout\"|\"stderr\", \"text\": …} (without --follow: the whole answer, with \
the node and replica).

Examples:
  parley logs web
  parley logs web --replica 2 --tail 20
  parley logs web -f"
)]
pub struct LogsArgs {
    /// The workload
    pub name: String,
    /// Which replica [default: the lowest-numbered one placed]
    #[arg(long, value_name = "I")]
    pub replica: Option<u32>,
    /// Only the last N lines
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Keep printing new lines as the replica writes them
    #[arg(long, short = 'f')]
    pub follow: bool,
}

fn path(
    name: &str,
    replica: Option<u32>,
    tail: Option<u32>,
    since: Option<u64>,
    follow: bool,
) -> String {
    let mut query = Vec::new();
    if let Some(replica) = replica {
        query.push(format!("replica={replica}"));
    }
    if let Some(tail) = tail {
        query.push(format!("tail={tail}"));
    }
    if let Some(since) = since {
        query.push(format!("since_micros={since}"));
    }
    if follow {
        query.push("follow=true".to_owned());
    }
    format!("/v1/workloads/{name}/logs?{}", query.join("&"))
}

fn print_lines(lines: &[LogLine], output: Output) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    for line in lines {
        // A closed pipe (`| head`) ends the output; nothing to report.
        let _ = match (output, line.stream) {
            (Output::Json, _) => {
                let json = serde_json::to_string(line)
                    .map_err(|e| CliError::Usage(format!("cannot encode the output: {e}")))?;
                writeln!(stdout, "{json}")
            }
            (Output::Table, LogStream::Stdout) => writeln!(stdout, "{}", line.text),
            (Output::Table, LogStream::Stderr) => writeln!(stderr, "{}", line.text),
        };
    }
    let _ = stdout.flush();
    Ok(())
}

fn note_skipped(logs: &WorkloadLogs) {
    if logs.chunk.skipped > 0 {
        eprintln!(
            "({} earlier lines of replica {} on {} not shown: more than one answer holds; use --tail)",
            logs.chunk.skipped, logs.replica, logs.node
        );
    }
}

/// Runs `parley logs`.
pub async fn execute(args: LogsArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let first: WorkloadLogs = client
        .get(&path(
            &args.name,
            args.replica,
            args.tail,
            None,
            args.follow,
        ))
        .await?;
    note_skipped(&first);
    if !args.follow {
        return match output {
            Output::Json => print_json(&first),
            Output::Table => print_lines(&first.chunk.lines, output),
        };
    }
    print_lines(&first.chunk.lines, output)?;
    // Follow the replica the first answer came from, window after window: each starts
    // just after the previous one ended (on the clock of the node running the replica).
    let replica = Some(first.replica);
    let mut since = first.chunk.until_micros.map(|until| until + 1);
    let mut warned = false;
    loop {
        tokio::time::sleep(FOLLOW_INTERVAL).await;
        let next: WorkloadLogs = match client
            .get(&path(&args.name, replica, None, since, true))
            .await
        {
            Ok(next) => next,
            // The workload is gone: nothing more will come.
            Err(ClientError::Api { status, error })
                if status == hyper::StatusCode::NOT_FOUND && error.kind == "not-found" =>
            {
                eprintln!("{}", error.message);
                return Ok(());
            }
            // A node restarting or a replica moving: say so once, keep trying.
            Err(error) => {
                if !warned {
                    eprintln!("(waiting: {error})");
                    warned = true;
                }
                continue;
            }
        };
        warned = false;
        note_skipped(&next);
        print_lines(&next.chunk.lines, output)?;
        if let Some(until) = next.chunk.until_micros {
            since = Some(since.map_or(until + 1, |s| s.max(until + 1)));
        }
    }
}
