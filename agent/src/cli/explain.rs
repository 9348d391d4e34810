//! `parley explain`: why each replica of a workload is or is not placed.

use std::collections::BTreeMap;

use super::{CliError, Output, print_json, table};
use crate::api::client::ApiClient;
use crate::api::types::WorkloadExplanation;

/// Arguments of `parley explain`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "In a mesh, run it on the workload's owner (the agent that accepted it). \
For each replica it shows where it runs and what every node asked in its last auction \
answered: a bid (with its score), a decline with the reason (insufficient-cpu, \
insufficient-memory, constraint-mismatch, wrong-arch, already-hosts-replica, draining, disk-full, \
policy-denied), \
an exclusion (its node or failure domain already has a replica), or no answer.

Examples:
  parley explain web
  parley explain web -o json | jq '.placements[] | select(.node == null)'"
)]
pub struct ExplainArgs {
    /// The workload
    pub name: String,
}

/// Runs `parley explain`.
pub async fn execute(args: ExplainArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let explanation: WorkloadExplanation = client
        .get(&format!("/v1/workloads/{}/explain", args.name))
        .await?;
    match output {
        Output::Json => print_json(&explanation)?,
        Output::Table => print!("{}", render(&explanation)),
    }
    Ok(())
}

fn render(explanation: &WorkloadExplanation) -> String {
    let mut text = String::new();
    for replica in &explanation.placements {
        match (&replica.node, replica.epoch) {
            (Some(node), Some(epoch)) => text.push_str(&format!(
                "replica {}: placed on {node} (epoch {epoch})\n",
                replica.replica
            )),
            _ => {
                let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
                for answer in &replica.answers {
                    if answer.outcome != "bid" {
                        let why = answer.reason.as_deref().unwrap_or(answer.outcome.as_str());
                        *counts.entry(why).or_insert(0) += 1;
                    }
                }
                let counts: Vec<String> = counts
                    .iter()
                    .map(|(why, n)| format!("{why}: {n}"))
                    .collect();
                text.push_str(&format!(
                    "replica {}: NOT PLACED{}\n",
                    replica.replica,
                    if counts.is_empty() {
                        " (no auction has finished yet)".to_owned()
                    } else {
                        format!(" ({})", counts.join(", "))
                    }
                ));
            }
        }
        if !replica.answers.is_empty() {
            let rows: Vec<Vec<String>> = replica
                .answers
                .iter()
                .map(|a| {
                    vec![
                        format!("  {}", a.node),
                        a.outcome.clone(),
                        a.reason.clone().unwrap_or_else(|| "-".to_owned()),
                        a.detail.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            text.push_str(&table::render(
                &["  NODE", "ANSWER", "REASON", "DETAIL"],
                &rows,
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{NodeAnswer, ReplicaExplanation};

    #[test]
    fn unplaced_replicas_count_their_reasons() {
        let explanation = WorkloadExplanation {
            name: "big".to_owned(),
            replicas: 1,
            placements: vec![ReplicaExplanation {
                replica: 0,
                node: None,
                epoch: None,
                answers: ["a", "b"]
                    .iter()
                    .map(|node| NodeAnswer {
                        node: (*node).to_owned(),
                        outcome: "declined".to_owned(),
                        reason: Some("insufficient-memory".to_owned()),
                        detail: Some("needs 9000 MiB, 100 MiB free".to_owned()),
                    })
                    .collect(),
            }],
        };
        let text = render(&explanation);
        assert!(
            text.contains("replica 0: NOT PLACED (insufficient-memory: 2)"),
            "{text}"
        );
        assert!(text.contains("needs 9000 MiB, 100 MiB free"), "{text}");
    }
}
