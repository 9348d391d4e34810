//! `parley run`: submit a workload to the local agent.

use parley_negotiation::workload::DEFAULT_STOP_TIMEOUT_SECS;
use parley_negotiation::{EnvVar, WorkloadName, WorkloadSpec};

use super::{CliError, Output, print_json};
use crate::api::client::ApiClient;
use crate::api::types::WorkloadStatus;

/// Arguments of `parley run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parley run hello --image localhost/parley-test:latest -- sleep 3600
  parley run web --image docker.io/library/nginx:1.27 --env MODE=prod")]
pub struct RunArgs {
    /// Workload name: lowercase letters, digits and '-', starting with a letter
    pub name: String,
    /// Container image; pulled if not present locally
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Environment variable for the container (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Seconds to wait after SIGTERM before SIGKILL when the workload is stopped
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STOP_TIMEOUT_SECS)]
    pub stop_timeout: u32,
    /// Command and arguments, after `--`; the image's default command if omitted
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl RunArgs {
    /// Validates the arguments into a spec, so that typos are reported before the agent is
    /// even asked.
    pub fn to_spec(&self) -> Result<WorkloadSpec, CliError> {
        let invalid = |e: parley_negotiation::SpecError| CliError::Usage(e.to_string());
        let name = WorkloadName::new(self.name.clone()).map_err(invalid)?;
        let env = self
            .env
            .iter()
            .map(|entry| EnvVar::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let mut spec = WorkloadSpec::new(name, self.image.clone(), self.command.clone(), env)
            .map_err(invalid)?;
        spec.stop_timeout_secs = self.stop_timeout;
        spec.validate().map_err(invalid)?;
        Ok(spec)
    }
}

/// Runs `parley run`.
pub async fn execute(args: RunArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let spec = args.to_spec()?;
    let status: WorkloadStatus = client.post("/v1/workloads", &spec).await?;
    match output {
        Output::Json => print_json(&status)?,
        Output::Table => {
            for replica in &status.replicas {
                let container = replica.container.as_deref().unwrap_or("-");
                let state = replica
                    .state
                    .as_ref()
                    .map_or("-".to_owned(), ToString::to_string);
                println!(
                    "{}: replica {} on {} as {container} ({state})",
                    status.name, replica.replica, replica.node
                );
            }
        }
    }
    Ok(())
}
