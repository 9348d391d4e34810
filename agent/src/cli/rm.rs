//! `parley rm`: remove workloads.

use parley_negotiation::WorkloadName;

use super::{CliError, Output, print_json};
use crate::api::client::ApiClient;

/// Arguments of `parley rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Names of the workloads to remove
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Runs `parley rm`. Every name is tried; the command fails if any removal failed.
pub async fn execute(args: RmArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let names = args
        .names
        .iter()
        .map(|name| WorkloadName::new(name.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let mut removed = Vec::new();
    let mut first_error = None;
    for name in names {
        match client.delete(&format!("/v1/workloads/{name}")).await {
            Ok(()) => {
                if output == Output::Table {
                    println!("removed {name}");
                }
                removed.push(name.to_string());
            }
            Err(e) if first_error.is_none() => first_error = Some(e),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if output == Output::Json {
        print_json(&serde_json::json!({ "removed": removed }))?;
    }
    match first_error {
        Some(error) => Err(error.into()),
        None => Ok(()),
    }
}
