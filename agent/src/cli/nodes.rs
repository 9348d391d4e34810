//! `parley nodes`: this node and the mesh members its agent knows of.

use super::{CliError, Output, print_json, table};
use crate::api::client::ApiClient;
use crate::api::types::NodeList;

/// Arguments of `parley nodes`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Columns: CPU and MEMORY are free / allocatable (allocatable = the host's \
capacity, lowered by cgroup limits, minus the agent's reserve). DISK is the space left on the container storage beyond the disk reserve (0: the node declines new replicas). STATE is membership's view: \
alive, suspect (missed probes; gets no new work) or dead. This node is marked with *.

Examples:
  parley nodes
  parley nodes -o json | jq '.nodes[] | select(.state == \"alive\") | .id'"
)]
pub struct NodesArgs {}

/// Runs `parley nodes`.
pub async fn execute(_args: NodesArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let list: NodeList = client.get("/v1/nodes").await?;
    match output {
        Output::Json => print_json(&list)?,
        Output::Table => {
            print!("{}", render(&list));
            if !list.mesh {
                eprintln!("(not in a mesh: start the agent with --listen to take part in one)");
            }
        }
    }
    Ok(())
}

fn render(list: &NodeList) -> String {
    let rows: Vec<Vec<String>> = list
        .nodes
        .iter()
        .map(|node| {
            let name = if node.this_node {
                format!("{} *", node.id)
            } else {
                node.id.clone()
            };
            let state = node.state_name().to_owned();
            match &node.meta {
                Some(meta) => vec![
                    name,
                    state,
                    meta.agent_version.clone(),
                    meta.arch.clone(),
                    format!(
                        "{}/{}",
                        cpus(meta.free.cpu_millis),
                        cpus(meta.allocatable.cpu_millis)
                    ),
                    format!(
                        "{}/{}",
                        gib(meta.free.memory_bytes),
                        gib(meta.allocatable.memory_bytes)
                    ),
                    meta.disk_free_bytes.map_or_else(|| "?".to_owned(), gib),
                    meta.address.clone().unwrap_or_else(|| "-".to_owned()),
                    labels(&meta.labels),
                ],
                None => {
                    let mut row = vec![name, state];
                    row.extend(std::iter::repeat_n("?".to_owned(), 7));
                    row
                }
            }
        })
        .collect();
    table::render(
        &[
            "NODE", "STATE", "VERSION", "ARCH", "CPU", "MEMORY", "DISK", "ADDRESS", "LABELS",
        ],
        &rows,
    )
}

fn cpus(millis: u64) -> String {
    format!("{:.1}", millis as f64 / 1000.0)
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / f64::from(1 << 30))
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use parley_negotiation::messages::{MemberState, NodeMeta, Resources};

    use super::*;
    use crate::api::types::NodeEntry;

    #[test]
    fn a_row_per_node_with_free_over_allocatable() {
        let meta = NodeMeta {
            agent_version: "0.1.0".to_owned(),
            arch: "amd64".to_owned(),
            allocatable: Resources {
                cpu_millis: 1900,
                memory_bytes: 7 << 30,
            },
            free: Resources {
                cpu_millis: 900,
                memory_bytes: 3 << 30,
            },
            labels: [("zone".to_owned(), "eu-1".to_owned())].into(),
            address: Some("127.0.0.1:7946".to_owned()),
            disk_free_bytes: Some(40 << 30),
            ..NodeMeta::default()
        };
        let list = NodeList {
            mesh: true,
            nodes: vec![
                NodeEntry {
                    id: "spiffe://lab/node/a".to_owned(),
                    this_node: true,
                    state: MemberState::Alive,
                    incarnation: None,
                    meta: Some(meta),
                },
                NodeEntry {
                    id: "spiffe://lab/node/b".to_owned(),
                    this_node: false,
                    state: MemberState::Suspect,
                    incarnation: Some(2),
                    meta: None,
                },
            ],
        };
        let text = render(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains("spiffe://lab/node/a *"), "{text}");
        assert!(
            lines[1].contains("0.9/1.9")
                && lines[1].contains("3.0G/7.0G")
                && lines[1].contains("40.0G"),
            "{text}"
        );
        assert!(lines[1].contains("zone=eu-1"), "{text}");
        assert!(
            lines[2].contains("suspect") && lines[2].contains('?'),
            "{text}"
        );
    }
}
