//! `parley run`: submit a workload to the local agent.

use parley_negotiation::workload::DEFAULT_STOP_TIMEOUT_SECS;
use parley_negotiation::{EnvVar, RestartPolicy, WorkloadName, WorkloadSpec};

use super::progress::{Target, WaitArgs, until_converged};
use super::{CliError, Output, print_json};
use crate::api::client::ApiClient;
use crate::api::types::WorkloadStatus;

/// Arguments of `parley run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parley run hello --image localhost/parley-test:latest -- sleep 3600
  parley run web --image docker.io/library/nginx:1.27 --env MODE=prod
  parley run cache --image docker.io/library/redis:7 --cpu 0.5 --memory 256M --constraint zone=eu-1

--cpu and --memory are accounted against the node's capacity (see `parley nodes`): a
workload that does not fit is refused with the reason, and each replica's container gets
them as limits (a CPU quota, a memory limit) where the engine enforces them: everywhere
but rootless Podman on cgroup v1, where the agent warns at start.")]
pub struct RunArgs {
    /// Workload name: lowercase letters, digits and '-', starting with a letter
    pub name: String,
    /// Container image; pulled if not present locally
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Environment variable for the container (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Replicas to run, each on a different node (more than 1 needs a mesh)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub replicas: u32,
    /// CPUs each replica needs: 0.5, 2, 250m
    #[arg(long, value_name = "CPUS", value_parser = parse_cpu)]
    pub cpu: Option<u64>,
    /// Memory each replica needs: 256M, 1.5G, 1073741824
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// A label the node must carry, KEY=VALUE (repeatable)
    #[arg(long = "constraint", value_name = "KEY=VALUE")]
    pub constraints: Vec<String>,
    /// A named volume mounted at an absolute path, NAME:/path (repeatable). Each replica
    /// gets its own Podman volume, parley-WORKLOAD-REPLICA-NAME, on the node that runs it;
    /// it is kept when the replica stops or the workload is removed
    #[arg(long = "volume", short = 'v', value_name = "NAME:/PATH")]
    pub volumes: Vec<String>,
    /// Whether and how long to wait for the replicas to run.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Seconds to wait after SIGTERM before SIGKILL when the workload is stopped
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STOP_TIMEOUT_SECS)]
    pub stop_timeout: u32,
    /// When an exited container is started again (on the next reconcile pass)
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Restart::Always)]
    pub restart: Restart,
    /// eventual: placed again at once when its node seems gone (may briefly run twice
    /// in a partition); strong: runs only under a lease from a quorum of nodes, never
    /// twice, and fails over once a lost node's lease ran out (lease: stop timeout + 4 s;
    /// at most 60 s of stop timeout)
    #[arg(long, value_enum, value_name = "CLASS", default_value_t = ConsistencyArg::Eventual)]
    pub consistency: ConsistencyArg,
    /// Command and arguments, after `--`; the image's default command if omitted
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--consistency` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    /// Stateless (the default)
    Eventual,
    /// Stateful: at most one instance of each replica
    Strong,
}

/// `--restart` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// Whatever the exit code (a service)
    Always,
    /// Only after a non-zero exit code
    OnFailure,
    /// Never: `parley ps` shows the exit code (a job)
    Never,
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
        spec.restart = match self.restart {
            Restart::Always => RestartPolicy::Always,
            Restart::OnFailure => RestartPolicy::OnFailure,
            Restart::Never => RestartPolicy::Never,
        };
        spec.replicas = self.replicas;
        spec.consistency = match self.consistency {
            ConsistencyArg::Eventual => parley_negotiation::Consistency::Eventual,
            ConsistencyArg::Strong => parley_negotiation::Consistency::Strong,
        };
        spec.volumes = self
            .volumes
            .iter()
            .map(|entry| parley_negotiation::VolumeMount::parse(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        spec.resources.cpu_millis = self.cpu.unwrap_or(0);
        spec.resources.memory_bytes = self.memory.unwrap_or(0);
        for entry in &self.constraints {
            let (key, value) = entry.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("invalid constraint {entry:?}: expected KEY=VALUE"))
            })?;
            spec.constraints.insert(key.to_owned(), value.to_owned());
        }
        spec.validate().map_err(invalid)?;
        Ok(spec)
    }
}

/// Parses a CPU amount into thousandths of a CPU: `0.5`, `2`, `250m`.
fn parse_cpu(text: &str) -> Result<u64, String> {
    let invalid = || format!("{text:?} is not a CPU amount (0.5, 2, 250m)");
    let millis = match text.strip_suffix('m') {
        Some(millis) => millis.parse::<u64>().map_err(|_| invalid())?,
        None => {
            let cpus: f64 = text.parse().map_err(|_| invalid())?;
            if !cpus.is_finite() || !(0.0..=1_000_000.0).contains(&cpus) {
                return Err(invalid());
            }
            (cpus * 1000.0).round() as u64
        }
    };
    if millis == 0 {
        return Err(format!(
            "{text:?} is no CPU at all; leave --cpu out instead"
        ));
    }
    Ok(millis)
}

/// Parses a memory size into bytes: `256M`, `1.5G`, `512Mi`, `1073741824`. Units are
/// binary (`M` = MiB), as Podman's `--memory`.
fn parse_memory(text: &str) -> Result<u64, String> {
    let invalid = || format!("{text:?} is not a memory size (256M, 1.5G, 1073741824)");
    let trimmed = text.trim_end_matches(['i', 'B', 'b']);
    let (number, shift) = match trimmed.char_indices().last() {
        Some((at, 'k' | 'K')) => (&trimmed[..at], 10),
        Some((at, 'm' | 'M')) => (&trimmed[..at], 20),
        Some((at, 'g' | 'G')) => (&trimmed[..at], 30),
        Some((at, 't' | 'T')) => (&trimmed[..at], 40),
        _ => (trimmed, 0),
    };
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let bytes = value * f64::from(1u32 << (shift / 2)) * f64::from(1u32 << (shift - shift / 2));
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(bytes as u64)
}

/// Runs `parley run`.
pub async fn execute(args: RunArgs, client: ApiClient, output: Output) -> Result<(), CliError> {
    let spec = args.to_spec()?;
    let mut status: WorkloadStatus = client.post("/v1/workloads", &spec).await?;
    if !args.wait.detach {
        let quiet = output == Output::Json;
        let target = Target {
            name: &status.name,
            want: spec.replicas,
            restart: Some(spec.restart),
            rollout: None,
        };
        status = until_converged(&client, target, &args.wait, quiet).await?;
    }
    match output {
        Output::Json => print_json(&status)?,
        Output::Table => {
            if status.replicas.is_empty() {
                println!(
                    "{}: accepted; placing {} replica(s) across the mesh (`parley ps` shows where they run)",
                    status.name, spec.replicas
                );
            }
            for replica in &status.replicas {
                let container = replica.container.as_deref().unwrap_or("-");
                let state = replica
                    .state
                    .as_ref()
                    .map(ToString::to_string)
                    .or_else(|| replica.phase.clone())
                    .unwrap_or_else(|| "-".to_owned());
                println!(
                    "{}: replica {} on {} as {container} ({state})",
                    status.name, replica.replica, replica.node
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("250m"), Ok(250));
        for bad in ["", "-1", "x", "0", "NaN", "1e9"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256M"), Ok(256 << 20));
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("1.5G"), Ok(3 << 29));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert_eq!(parse_memory("1k"), Ok(1024));
        for bad in ["", "M", "-1G", "0", "lots", "99999999999T"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }
}
