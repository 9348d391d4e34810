//! `parley update` (a new spec rolled out replica by replica) and `parley rollout
//! status|undo`.

use parley_negotiation::{EnvVar, WorkloadName};

use super::progress::{Target, WaitArgs, until_converged};
use super::{CliError, Output, print_json};
use crate::api::client::ApiClient;
use crate::api::types::{UpdateRequest, Updated, WorkloadList, WorkloadStatus};

/// Arguments of `parley update`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parley update web --image docker.io/library/nginx:1.28
  parley update web --env MODE=canary --max-surge 0 --max-unavailable 1
  parley update job -- sh -c 'echo v2; sleep 3600'

Any node holding the workload's record may update it, whichever node owns it. The owner
replaces one replica at a time: with --max-surge 1 (the default) the replacement starts
on another node beside the replica it replaces, which stops only once the replacement
runs, so no fewer replicas than asked ever run; with --max-surge 0, up to
--max-unavailable replicas are stopped first and placed again. A replacement that fails
(or does not run within 60 s) stops the update, and the workload is rolled back to the
spec it replaced; `parley rollout undo` does the same by hand.")]
pub struct UpdateArgs {
    /// Workload name
    pub name: String,
    /// A new image
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The environment, KEY=VALUE (repeatable; replaces the whole environment)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Replacements that may run beside the replicas they replace
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_surge: u32,
    /// Replicas that may be missing while the update proceeds
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_unavailable: u32,
    /// Whether and how long to wait for the update to roll out.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// A new command and its arguments (after `--`)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Arguments of `parley rollout`.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// `parley rollout` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Show the workload's generation, how many replicas run it, and any rollback
    Status {
        /// Workload name
        name: String,
    },
    /// Go back to the spec the newest generation replaced, rolled out like an update
    Undo {
        /// Workload name
        name: String,
        /// Whether and how long to wait for the rollback to roll out.
        #[command(flatten)]
        wait: WaitArgs,
    },
}

fn workload_name(name: &str) -> Result<WorkloadName, CliError> {
    WorkloadName::new(name.to_owned()).map_err(|e| CliError::Usage(e.to_string()))
}

/// Runs `parley update`.
pub async fn update(args: UpdateArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let name = workload_name(&args.name)?;
    let env = args
        .env
        .iter()
        .map(|entry| EnvVar::parse(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if args.image.is_none() && env.is_empty() && args.command.is_empty() {
        return Err(CliError::Usage(
            "nothing to update: give --image, --env or a command after --".to_owned(),
        ));
    }
    let request = UpdateRequest {
        image: args.image,
        env: (!env.is_empty()).then_some(env),
        command: (!args.command.is_empty()).then_some(args.command),
        max_surge: args.max_surge,
        max_unavailable: args.max_unavailable,
    };
    let updated: Updated = client
        .post(&format!("/v1/workloads/{name}/update"), &request)
        .await?;
    finish(&client, updated, &args.wait, output, "updating").await
}

/// Waits for an update (or undo) to roll out, then prints what runs.
async fn finish(
    client: &ApiClient,
    updated: Updated,
    wait: &WaitArgs,
    output: Output,
    doing: &str,
) -> Result<(), CliError> {
    if output == Output::Table {
        println!(
            "{}: {doing} to generation {} ({})",
            updated.name, updated.generation, updated.image
        );
    }
    if !wait.detach {
        let target = Target {
            name: &updated.name,
            want: updated.replicas,
            restart: None,
            rollout: Some((&updated.spec_digest, updated.generation)),
        };
        until_converged(client, target, wait, output == Output::Json).await?;
    }
    if output == Output::Json {
        print_json(&updated)?;
    }
    Ok(())
}

/// Runs `parley rollout`.
pub async fn execute(args: RolloutArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    match args.command {
        RolloutCommand::Status { name } => {
            let name = workload_name(&name)?;
            let list: WorkloadList = client.get("/v1/workloads").await?;
            let Some(workload) = list.workloads.into_iter().find(|w| w.name == name.as_str())
            else {
                return Err(CliError::Usage(format!("no workload named {name}")));
            };
            match output {
                Output::Json => print_json(&status_of(&workload))?,
                Output::Table => println!("{}", describe(&workload)),
            }
            Ok(())
        }
        RolloutCommand::Undo { name, wait } => {
            let name = workload_name(&name)?;
            let updated: Updated = client
                .post(
                    &format!("/v1/workloads/{name}/undo"),
                    &serde_json::json!({}),
                )
                .await?;
            finish(&client, updated, &wait, output, "rolling back").await
        }
    }
}

/// The facts `rollout status -o json` prints.
fn status_of(workload: &WorkloadStatus) -> serde_json::Value {
    let desired = workload.desired.as_ref();
    let updated = workload
        .replicas
        .iter()
        .filter(|r| desired.is_some_and(|d| r.spec_digest.as_deref() == Some(&d.spec_digest)))
        .count();
    serde_json::json!({
        "name": workload.name,
        "generation": desired.map(|d| d.generation),
        "image": workload.image,
        "replicas": workload.replicas.len(),
        "updated": updated,
        "running": workload.replicas.iter().filter(|r| r.phase.as_deref() == Some("running")).count(),
        "rolled_back": desired.and_then(|d| d.rolled_back.clone()),
        "previous_image": desired.and_then(|d| d.previous_image.clone()),
    })
}

/// `web: generation 3 (img:2): 2/3 replicas updated, 3 running`, and any rollback.
fn describe(workload: &WorkloadStatus) -> String {
    let status = status_of(workload);
    let mut text = format!(
        "{}: generation {} ({}): {}/{} replicas updated, {} running",
        workload.name,
        status["generation"],
        workload.image,
        status["updated"],
        status["replicas"],
        status["running"]
    );
    if let Some(reason) = status["rolled_back"].as_str() {
        text.push_str(&format!(
            "\nrolled back from {}: {reason}",
            status["previous_image"].as_str().unwrap_or("the update")
        ));
    }
    text
}
