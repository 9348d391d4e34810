//! Waiting for a workload to converge after `parley run` or `parley scale`: polls the
//! agent's list (which carries what every node reported of its replicas) and shows
//! progress — one live line on a terminal, a plain line per change otherwise — until
//! every replica runs, or says why not when `--timeout` passes.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use parley_negotiation::RestartPolicy;

use super::CliError;
use crate::api::client::ApiClient;
use crate::api::types::{ReplicaStatus, WorkloadList, WorkloadStatus};

/// How often the agent is asked.
const POLL: Duration = Duration::from_millis(250);

/// The waiting flags `run` and `scale` share.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return as soon as the agent accepted the change, without waiting for it to run
    #[arg(long)]
    pub detach: bool,
    /// How long to wait for every replica to run before failing (exit 124): 90s, 5m
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    super::identity::parse_ttl(text).map(Duration::from_secs)
}

/// Whether a replica counts as done: running, or exited for good — as its restart
/// policy says when it is known, else only with code 0.
fn settled(replica: &ReplicaStatus, restart: Option<RestartPolicy>) -> bool {
    let phase = replica.phase.as_deref();
    let local = replica.state.as_ref().map(ToString::to_string);
    let state = if replica.remote {
        phase
    } else {
        local.as_deref().or(phase)
    };
    match state {
        Some("running") => true,
        Some("exited") => match restart {
            Some(policy) => !policy.restarts(replica.exit_code),
            None => replica.exit_code == Some(0),
        },
        _ => false,
    }
}

/// One replica as the progress line shows it: `node: state`.
fn describe(replica: &ReplicaStatus) -> String {
    let node = replica.node.rsplit('/').next().unwrap_or(&replica.node);
    let state = if replica.node == "-" {
        "pending".to_owned()
    } else if let Some(phase) = &replica.phase
        && (replica.remote || replica.state.is_none())
    {
        match (&replica.reason, replica.exit_code) {
            (Some(reason), _) if phase == "failed" => format!("failed ({reason})"),
            (_, Some(code)) if phase == "exited" => format!("exited ({code})"),
            _ => phase.clone(),
        }
    } else if let Some(state) = &replica.state {
        state.to_string()
    } else if replica.remote {
        "placed".to_owned()
    } else {
        "starting".to_owned()
    };
    format!("{node}: {state}")
}

/// `web: 2/3 running (b: running, c: running, -: pending)`, and whether it converged.
pub fn summary(
    workload: &WorkloadStatus,
    want: u32,
    restart: Option<RestartPolicy>,
    digest: Option<&str>,
) -> (String, bool) {
    let done = workload
        .replicas
        .iter()
        .filter(|r| settled(r, restart))
        .filter(|r| digest.is_none_or(|d| r.spec_digest.as_deref() == Some(d)))
        .count();
    let replicas: Vec<String> = workload.replicas.iter().map(describe).collect();
    let converged = done == want as usize && workload.replicas.len() == want as usize;
    (
        format!(
            "{}: {done}/{want} running ({})",
            workload.name,
            replicas.join(", ")
        ),
        converged,
    )
}

/// What to wait for: `want` replicas of workload `name`, whose restart policy is
/// `restart` when the caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Workload name.
    pub name: &'a str,
    /// Replicas wanted.
    pub want: u32,
    /// Its restart policy, if known: a replica that exited for good is done.
    pub restart: Option<RestartPolicy>,
    /// For an update: the spec digest every replica must run, and the generation that
    /// asks for it (a later generation that rolled it back ends the wait).
    pub rollout: Option<(&'a str, u64)>,
}

/// Waits until the target converges; returns its last status. Progress goes to stderr
/// (so that `-o json` output stays clean), unless `quiet`.
pub async fn until_converged(
    client: &ApiClient,
    target: Target<'_>,
    wait: &WaitArgs,
    quiet: bool,
) -> Result<WorkloadStatus, CliError> {
    let Target {
        name,
        want,
        restart,
        rollout,
    } = target;
    let digest = rollout.map(|(digest, _)| digest);
    let started = Instant::now();
    let live = !quiet && std::io::stderr().is_terminal();
    let mut last_line = String::new();
    loop {
        let list: WorkloadList = client.get("/v1/workloads").await?;
        let found = list.workloads.into_iter().find(|w| w.name == name);
        let (line, converged) = match &found {
            Some(workload) => summary(workload, want, restart, digest),
            None => (format!("{name}: not listed yet"), false),
        };
        if !quiet && line != last_line {
            let mut err = std::io::stderr().lock();
            let _ = if live {
                write!(err, "\r\x1b[2K{line}")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
            last_line.clone_from(&line);
        }
        let rolled_back = found.as_ref().and_then(|w| {
            let desired = w.desired.as_ref()?;
            let (_, generation) = rollout?;
            (desired.generation > generation)
                .then(|| desired.rolled_back.clone())
                .flatten()
        });
        if let Some(reason) = rolled_back {
            if live {
                eprintln!();
            }
            return Err(CliError::RolledBack(format!(
                "{name}: the update was rolled back: {reason} (`parley rollout status {name}`)"
            )));
        }
        if let Some(workload) = found.filter(|_| converged) {
            if live {
                eprintln!();
            }
            return Ok(workload);
        }
        if started.elapsed() >= wait.timeout {
            if live {
                eprintln!();
            }
            return Err(CliError::NotConverged(format!(
                "{line} after {}s; `parley explain {name}` says why a replica is not placed, \
                 `parley logs {name}` what a failing one printed (the mesh keeps trying: \
                 `parley ps` shows where it stands)",
                wait.timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(node: &str, remote: bool, phase: Option<&str>) -> ReplicaStatus {
        ReplicaStatus {
            node: node.to_owned(),
            remote,
            phase: phase.map(str::to_owned),
            ..ReplicaStatus::default()
        }
    }

    #[test]
    fn a_workload_converges_when_every_replica_runs_and_says_where_each_stands() {
        let mut workload = WorkloadStatus {
            name: "web".into(),
            image: "img".into(),
            command: Vec::new(),
            created_at: 0,
            replicas: vec![
                replica("spiffe://td/node/b", true, Some("running")),
                replica("spiffe://td/node/c", true, Some("starting")),
                replica("-", false, None),
            ],
            owner: None,
            desired: None,
        };
        let (line, converged) = summary(&workload, 3, None, None);
        assert_eq!(
            line,
            "web: 1/3 running (b: running, c: starting, -: pending)"
        );
        assert!(!converged);
        workload.replicas[1].phase = Some("running".into());
        workload.replicas[2] = replica("spiffe://td/node/d", true, Some("running"));
        assert!(summary(&workload, 3, None, None).1);
        // Scaled down to 2: three listed replicas are not converged yet.
        assert!(!summary(&workload, 2, None, None).1);
        let mut failed = replica("spiffe://td/node/d", true, Some("failed"));
        failed.reason = Some("image not found".into());
        workload.replicas[2] = failed;
        let (line, converged) = summary(&workload, 3, None, None);
        assert!(line.contains("d: failed (image not found)"), "{line}");
        assert!(!converged);
        // A job that exited for good is done; one its policy restarts is not.
        let mut exited = replica("spiffe://td/node/d", true, Some("exited"));
        exited.exit_code = Some(3);
        workload.replicas[2] = exited;
        assert!(summary(&workload, 3, Some(RestartPolicy::Never), None).1);
        assert!(!summary(&workload, 3, Some(RestartPolicy::OnFailure), None).1);
        assert!(!summary(&workload, 3, None, None).1);
    }
}
