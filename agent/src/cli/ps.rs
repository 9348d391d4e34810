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
                let state = if r.remote {
                    // Placed on another node: its container is not visible from here.
                    "placed".to_owned()
                } else if r.node == "-" {
                    "pending".to_owned()
                } else {
                    state
                };
                vec![
                    w.name.clone(),
                    r.replica.to_string(),
                    r.node.clone(),
                    r.epoch.to_string(),
                    state,
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
            "CONTAINER",
            "IMAGE",
        ],
        &rows,
    )
}
