//! `parley scale`: change how many replicas a workload runs.

use parley_negotiation::WorkloadName;

use super::progress::{Target, WaitArgs, until_converged};
use super::{CliError, Output, print_json};
use crate::api::client::ApiClient;
use crate::api::types::{ScaleRequest, Scaled};

/// Arguments of `parley scale`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parley scale web 3            three replicas, each on a different node; waits until they run
  parley scale web 1 --detach   back to one, returning at once

Any node holding the workload's record may scale it, whichever node owns it: the new
replica count is written as the workload's next generation and reaches its owner (and
every other node) within seconds. Extra replicas are stopped, missing ones placed.")]
pub struct ScaleArgs {
    /// Workload name
    pub name: String,
    /// Replicas wanted (1 to 100; more than 1 needs a mesh)
    pub replicas: u32,
    /// Whether and how long to wait for the replicas to run.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Runs `parley scale`.
pub async fn execute(args: ScaleArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let name = WorkloadName::new(args.name.clone()).map_err(|e| CliError::Usage(e.to_string()))?;
    let request = ScaleRequest {
        replicas: args.replicas,
    };
    let scaled: Scaled = client
        .post(&format!("/v1/workloads/{name}/scale"), &request)
        .await?;
    if output == Output::Table {
        println!(
            "{}: scaling to {} replica(s) (generation {})",
            scaled.name, scaled.replicas, scaled.generation
        );
    }
    if !args.wait.detach {
        let quiet = output == Output::Json;
        let target = Target {
            name: &scaled.name,
            want: scaled.replicas,
            restart: None,
            rollout: None,
        };
        until_converged(&client, target, &args.wait, quiet).await?;
    }
    if output == Output::Json {
        print_json(&scaled)?;
    }
    Ok(())
}
