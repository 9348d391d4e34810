//! The `parley` command line: one module per subcommand, global options in one struct.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::client::{ApiClient, ClientError};
use crate::config::Environment;
use hyper::StatusCode;

pub mod agent;
pub mod events;
pub mod explain;
pub mod generate;
pub mod identity;
pub mod join;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod progress;
pub mod ps;
pub mod rm;
pub mod rollout;
pub mod run;
pub mod scale;
pub mod status;
mod table;

/// Exit code when the request reached the agent and failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the agent cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit code when the authorization policy refuses the request (`EX_NOPERM`).
pub const EXIT_DENIED: u8 = 77;
/// Exit code when a workload did not converge within `--timeout` (as timeout(1)).
pub const EXIT_TIMEOUT: u8 = 124;

const AFTER_HELP: &str = "\
Examples:
  parley agent                                   run the agent in the foreground
  parley run web --image localhost/parley-test -- httpd -f -p 8080
  parley ps -o json                              workloads as JSON, for scripts
  parley rm web

Exit codes: 0 success; 1 the agent refused or failed the request; 2 bad usage;
64 invalid agent configuration; 69 the agent is not reachable.";

/// Parley: a decentralized, rootless scheduler for Podman.
#[derive(Debug, Parser)]
#[command(name = "parley", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by all subcommands.
#[derive(Debug, clap::Args)]
pub struct GlobalOptions {
    /// The agent's local API socket, also set by PARLEY_API_SOCKET [default:
    /// $XDG_RUNTIME_DIR/parley/parley.sock]
    #[arg(long, global = true, env = "PARLEY_API_SOCKET", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Output format: a table for people, JSON for scripts
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the daemon) in the foreground
    Agent(agent::AgentArgs),
    /// Run a workload
    Run(run::RunArgs),
    /// List workloads and the state of their containers
    Ps(ps::PsArgs),
    /// Change how many replicas a workload runs, and wait until they do
    Scale(scale::ScaleArgs),
    /// Change a workload's image, environment or command, rolled out replica by replica
    Update(rollout::UpdateArgs),
    /// Where a workload's rolling update stands, or undo it
    Rollout(rollout::RolloutArgs),
    /// Remove a workload and its containers
    Rm(rm::RmArgs),
    /// Show the agent's and Podman's status
    Status(status::StatusArgs),
    /// List this node and the mesh members it knows of: state, version, capacity, labels
    Nodes(nodes::NodesArgs),
    /// Print a replica's output, from whichever node runs it
    Logs(logs::LogsArgs),
    /// Explain why each replica of a workload is or is not placed, node by node
    Explain(explain::ExplainArgs),
    /// Print the agent's Prometheus metrics
    Metrics(metrics::MetricsArgs),
    /// Show the agent's audit log (what it started, removed, restored, and why)
    Events(events::EventsArgs),
    /// Manage identities: create a trust domain, enroll this node, show what it holds
    Identity(identity::IdentityArgs),
    /// Enroll this host with a join token over QUIC, then run the agent in the mesh
    Join(join::JoinArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write one per command with --dir
    Man(generate::ManArgs),
    /// The agent's lease watchdog (started by the agent itself; see `fence_watch`)
    #[command(hide = true)]
    FenceWatch(FenceWatchArgs),
}

/// `parley fence-watch`: what the agent passes its watchdog.
#[derive(Debug, clap::Args)]
pub struct FenceWatchArgs {
    /// The Podman socket of the containers it guards
    #[arg(long, value_name = "PATH")]
    pub podman_socket: std::path::PathBuf,
}

impl Cli {
    /// Runs the chosen subcommand.
    pub fn execute(self) -> ExitCode {
        match self.command {
            Command::Agent(args) => agent::execute(args, &self.global),
            Command::Identity(identity::IdentityArgs {
                command: identity::IdentityCommand::Token { node, ttl, replace },
                ..
            }) => with_client(&self.global, |client| {
                let request = crate::api::types::JoinTokenRequest {
                    ttl_secs: ttl,
                    node,
                    replace,
                };
                identity::token(request, client, self.global.output)
            }),
            Command::Identity(identity::IdentityArgs {
                command: identity::IdentityCommand::Revoke { node },
                ..
            }) => with_client(&self.global, |client| {
                identity::revoke(node, client, self.global.output)
            }),
            Command::Identity(args) => identity::execute(args, self.global.output),
            Command::Join(args) => join::execute(args, &self.global),
            Command::Completions(args) => generate::completions(args),
            Command::Man(args) => generate::man(args),
            Command::FenceWatch(args) => crate::fence_watch::run(args.podman_socket),
            Command::Run(args) => with_client(&self.global, |client| {
                run::execute(args, client, self.global.output)
            }),
            Command::Scale(args) => with_client(&self.global, |client| {
                scale::execute(args, client, self.global.output)
            }),
            Command::Update(args) => with_client(&self.global, |client| {
                rollout::update(args, client, self.global.output)
            }),
            Command::Rollout(args) => with_client(&self.global, |client| {
                rollout::execute(args, client, self.global.output)
            }),
            Command::Metrics(args) => {
                with_client(&self.global, |client| metrics::execute(args, client))
            }
            Command::Logs(args) => with_client(&self.global, |client| {
                logs::execute(args, client, self.global.output)
            }),
            Command::Explain(args) => with_client(&self.global, |client| {
                explain::execute(args, client, self.global.output)
            }),
            Command::Nodes(args) => with_client(&self.global, |client| {
                nodes::execute(args, client, self.global.output)
            }),
            Command::Ps(args) => with_client(&self.global, |client| {
                ps::execute(args, client, self.global.output)
            }),
            Command::Rm(args) => with_client(&self.global, |client| {
                rm::execute(args, client, self.global.output)
            }),
            Command::Events(args) => with_client(&self.global, |client| {
                events::execute(args, client, self.global.output)
            }),
            Command::Status(args) => with_client(&self.global, |client| {
                status::execute(args, client, self.global.output)
            }),
        }
    }
}

/// Builds a client from the global options and runs an async client command on a small
/// runtime, mapping errors to messages and exit codes.
fn with_client<F, Fut>(global: &GlobalOptions, command: F) -> ExitCode
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), CliError>>,
{
    let socket = match &global.api_socket {
        Some(path) => path.clone(),
        None => match Environment::current().default_api_socket() {
            Ok(path) => path,
            Err(e) => {
                return fail(&CliError::Usage(format!(
                    "cannot find the agent socket: {e}"
                )));
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(&CliError::Usage(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    match runtime.block_on(command(ApiClient::new(&socket))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// Errors of client subcommands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The agent could not be reached or answered with an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line was wrong in a way clap cannot see.
    #[error("{0}")]
    Usage(String),
    /// The change was accepted, but the workload did not converge in time.
    #[error("{0}")]
    NotConverged(String),
    /// The update was rolled back (a replacement failed).
    #[error("{0}")]
    RolledBack(String),
}

fn fail(error: &CliError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(match error {
        CliError::Client(ClientError::Unreachable { .. }) => EXIT_UNAVAILABLE,
        CliError::Client(ClientError::Api { status, .. }) if *status == StatusCode::FORBIDDEN => {
            EXIT_DENIED
        }
        CliError::Usage(_) => 2,
        CliError::NotConverged(_) => EXIT_TIMEOUT,
        CliError::RolledBack(_) => EXIT_FAILED,
        CliError::Client(_) => EXIT_FAILED,
    })
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Usage(format!("cannot encode the output: {e}")))?;
    println!("{text}");
    Ok(())
}
