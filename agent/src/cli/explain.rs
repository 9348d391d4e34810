//! `parley explain`: why each replica of a workload is or is not placed.

use std::collections::BTreeMap;

use super::{CliError, Output, print_json, table};
use crate::api::client::ApiClient;
use crate::api::types::{LeaseExplanation, WorkloadExplanation};

/// Arguments of `parley explain`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "In a mesh, run it on the workload's owner (the agent that accepted it); \
another node shows the guarantee and what it knows of the leases, and names the owner. \
For each replica it shows where it runs and what every node asked in its last auction \
answered: a bid (with its score), a decline with the reason (insufficient-cpu, \
insufficient-memory, constraint-mismatch, wrong-arch, already-hosts-replica, draining, disk-full, \
policy-denied), \
an exclusion (its node or failure domain already has a replica), or no answer.

It also states the workload's guarantee (eventual or strong). For a strong workload each \
replica shows its lease as the answering node knows it: held here (its epoch, the fencing \
token in PARLEY_EPOCH, and how long it lasts without a renewal), sought here and why not \
held (another node's lease, no quorum of acceptors answered), accepted by this node as one \
of the register's acceptors (holder and epoch), or unknown here.

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
    if !explanation.consistency.is_empty() {
        text.push_str(&format!(
            "{}: {}\n",
            explanation.consistency, explanation.guarantee
        ));
    }
    for replica in &explanation.placements {
        match (&replica.node, replica.epoch) {
            (Some(node), Some(epoch)) => text.push_str(&format!(
                "replica {}: placed on {node} (epoch {epoch})\n",
                replica.replica
            )),
            _ if replica.answers.is_empty() && explanation.owner.is_some() => {
                // This node ran no auction of it: most likely not the owner.
                text.push_str(&format!(
                    "replica {}: not placed by this node; its owner {} knows (run `parley explain` there)\n",
                    replica.replica,
                    explanation.owner.as_deref().unwrap_or("-"),
                ));
            }
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
        if let Some(lease) = &replica.lease {
            text.push_str(&format!("  lease: {}\n", lease_line(lease)));
            if !lease.acceptors.is_empty() {
                text.push_str(&format!("  acceptors: {}\n", lease.acceptors.join(", ")));
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

/// One line for a strong replica's lease.
fn lease_line(lease: &LeaseExplanation) -> String {
    let epoch = lease
        .epoch
        .map(|e| format!(" at epoch {e}"))
        .unwrap_or_default();
    let left = lease
        .left_ms
        .map(|ms| format!(", {:.1} s left", ms as f64 / 1000.0))
        .unwrap_or_default();
    match lease.state.as_str() {
        "held" => format!("held by this node{epoch}{left}"),
        "accepted" => match &lease.holder {
            Some(holder) => format!("{holder} holds it{epoch}{left} (as this acceptor accepted)"),
            None => format!("released{epoch} (as this acceptor accepted)"),
        },
        state => format!(
            "{state}{}",
            lease
                .why
                .as_ref()
                .map(|why| format!(": {why}"))
                .unwrap_or_default()
        ),
    }
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
            consistency: "eventual".to_owned(),
            guarantee: "placed again at once".to_owned(),
            owner: None,
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
                lease: None,
            }],
        };
        let text = render(&explanation);
        assert!(
            text.contains("replica 0: NOT PLACED (insufficient-memory: 2)"),
            "{text}"
        );
        assert!(text.contains("needs 9000 MiB, 100 MiB free"), "{text}");
        assert!(
            text.starts_with("eventual: placed again at once\n"),
            "{text}"
        );
        assert!(
            !text.contains("lease"),
            "an eventual replica has no lease: {text}"
        );
    }

    #[test]
    fn a_strong_replica_says_what_this_node_knows_of_its_lease() {
        let lease = |state: &str, holder: Option<&str>, why: Option<&str>| LeaseExplanation {
            state: state.to_owned(),
            holder: holder.map(str::to_owned),
            epoch: holder.map(|_| 7),
            left_ms: holder.map(|_| 4_200),
            why: why.map(str::to_owned),
            acceptors: Vec::new(),
        };
        assert_eq!(
            lease_line(&lease("accepted", Some("spiffe://td/node/b"), None)),
            "spiffe://td/node/b holds it at epoch 7, 4.2 s left (as this acceptor accepted)"
        );
        assert_eq!(
            lease_line(&lease(
                "seeking",
                None,
                Some("no quorum of acceptors answered")
            )),
            "seeking: no quorum of acceptors answered"
        );
        let held = LeaseExplanation {
            holder: None,
            acceptors: vec![
                "spiffe://td/node/a".to_owned(),
                "spiffe://td/node/d".to_owned(),
            ],
            ..lease("held", Some("x"), None)
        };
        assert_eq!(
            lease_line(&held),
            "held by this node at epoch 7, 4.2 s left"
        );
        let explanation = WorkloadExplanation {
            name: "db".to_owned(),
            replicas: 1,
            consistency: "strong".to_owned(),
            guarantee: "one node at most".to_owned(),
            owner: Some("spiffe://td/node/a".to_owned()),
            placements: vec![ReplicaExplanation {
                replica: 0,
                node: Some("spiffe://td/node/b".to_owned()),
                epoch: Some(3),
                answers: Vec::new(),
                lease: Some(held),
            }],
        };
        let text = render(&explanation);
        assert!(
            text.contains("replica 0: placed on spiffe://td/node/b (epoch 3)\n  lease: held by this node at epoch 7, 4.2 s left\n  acceptors: spiffe://td/node/a, spiffe://td/node/d\n"),
            "{text}"
        );
    }
}
