//! `parley status`: is the agent up, and what Podman does it drive.

use super::{CliError, Output, print_json};
use crate::api::client::ApiClient;
use crate::api::types::AgentStatus;

/// Arguments of `parley status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

/// Runs `parley status`.
pub async fn execute(_args: StatusArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let status: AgentStatus = client.get("/v1/status").await?;
    match output {
        Output::Json => print_json(&status)?,
        Output::Table => {
            println!(
                "agent:     up (parley {}, node {}, up {}s)",
                status.version, status.node, status.uptime_secs
            );
            println!("data dir:  {}", status.data_dir);
            println!("workloads: {}", status.workloads);
            if let Some(error) = &status.store_error {
                println!("store:     NOT WRITABLE, taking no new work: {error}");
            }
            let origin = match status.podman_origin {
                crate::runtime::podman::service::ServiceOrigin::Existing => "existing service",
                crate::runtime::podman::service::ServiceOrigin::StartedByAgent => {
                    "started by the agent"
                }
                crate::runtime::podman::service::ServiceOrigin::Unavailable => {
                    "not started (podman_autostart off)"
                }
            };
            match (&status.podman, &status.podman_error) {
                (Some(podman), _) => println!(
                    "podman:    {} (API {}), {}, cgroups {}, runtime {}, {} at {}",
                    podman.version,
                    podman.api_version,
                    if podman.rootless {
                        "rootless"
                    } else {
                        "rootful"
                    },
                    podman.cgroup_version,
                    podman.oci_runtime,
                    origin,
                    status.podman_socket
                ),
                (None, Some(error)) => println!("podman:    unreachable: {error}"),
                (None, None) => println!("podman:    unknown"),
            }
            for warning in &status.host_warnings {
                println!("warning:   {} [{}]", warning.problem, warning.check);
                println!("  fix:     {}", warning.fix);
            }
        }
    }
    Ok(())
}
