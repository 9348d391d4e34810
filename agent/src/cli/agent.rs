//! `parley agent`: its arguments, resolved with the config file and the environment into
//! one validated [`Config`] (exit 64 otherwise) before [`crate::daemon::run`] opens
//! anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use super::GlobalOptions;
use crate::config::{self, Config, ConfigError, Environment, FileConfig};

/// Arguments of `parley agent`. Each option can also be set in the config file under the
/// name shown in brackets; flags win over the file.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Configuration file keys (TOML): node_name, data_dir, api_socket, \
podman_socket, podman_autostart, podman_binary, reconcile_interval_secs, labels, \
reserve_cpu_millis, reserve_memory_mib, reserve_disk_mib, listen, advertise, join, identity_dir, policy, workload_identity_ttl_secs.
The agent listens on --api-socket (a global option, also PARLEY_API_SOCKET)."
)]
pub struct AgentArgs {
    /// TOML configuration file [default: $XDG_CONFIG_HOME/parley/agent.toml if present,
    /// else /etc/parley/agent.toml if present]
    #[arg(long, short = 'c', env = "PARLEY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the agent's state [data_dir; default: $XDG_DATA_HOME/parley]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Podman REST service socket [podman_socket; default: $XDG_RUNTIME_DIR/podman/podman.sock]
    #[arg(long, value_name = "PATH")]
    pub podman_socket: Option<PathBuf>,
    /// Start `podman system service` if none answers [podman_autostart; default: true]
    #[arg(long, value_name = "BOOL")]
    pub podman_autostart: Option<bool>,
    /// This node's name [node_name; default: the host name]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Seconds between reconcile passes [reconcile_interval_secs; default: 10]
    #[arg(long, value_name = "SECS")]
    pub reconcile_interval: Option<u64>,
    /// A label of this node, KEY=VALUE (repeatable) [labels; default: none]
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// CPU kept back for the host, in thousandths of a CPU [reserve_cpu_millis; default: 100]
    #[arg(long, value_name = "MILLICPUS")]
    pub reserve_cpu_millis: Option<u64>,
    /// Memory kept back for the host, in MiB [reserve_memory_mib; default: 256]
    #[arg(long, value_name = "MIB")]
    pub reserve_memory_mib: Option<u64>,
    /// Space kept free on the container storage's filesystem, in MiB; below it the node
    /// takes no new replicas [reserve_disk_mib; default: 1024]
    #[arg(long, value_name = "MIB")]
    pub reserve_disk_mib: Option<u64>,
    /// Take part in a mesh: the UDP address the QUIC endpoint serves on, e.g.
    /// 0.0.0.0:7946 [listen; default: none, this host only]
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
    /// The address peers reach this node at, when it differs from --listen
    /// [advertise; default: the listen address]
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Option<SocketAddr>,
    /// Join the mesh through this member (repeatable) [join; default: none]
    #[arg(long = "join", value_name = "HOST:PORT")]
    pub join: Vec<String>,
    /// This node's identity directory [identity_dir; default: DATA_DIR/identity]
    #[arg(long, value_name = "DIR")]
    pub identity_dir: Option<PathBuf>,
    /// Authorization policy file, reloaded on SIGHUP [policy; default: none, every node of
    /// this node's trust domain may do everything]
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Lifetime of the identities given to the replicas this node runs, renewed at half
    /// of it [workload_identity_ttl_secs; default: 3600]
    #[arg(long = "workload-identity-ttl", value_name = "SECS")]
    pub workload_identity_ttl_secs: Option<u64>,
    /// Move an unusable state store aside (to DATA_DIR/store.broken-TIMESTAMP) and start
    /// with a fresh one, rebuilt from the labels of the containers this node runs
    #[arg(long)]
    pub reset_state: bool,
}

impl AgentArgs {
    /// Merges flags over the config file and validates.
    pub fn resolve(
        &self,
        global: &GlobalOptions,
        env: &Environment,
    ) -> Result<Config, ConfigError> {
        // An explicit file must exist; the default ones are read only when present.
        let file_path = self.config.clone().or_else(|| env.default_config_file());
        let file = match &file_path {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let flags = FileConfig {
            node_name: self.node_name.clone(),
            data_dir: self.data_dir.clone(),
            api_socket: global.api_socket.clone(),
            podman_socket: self.podman_socket.clone(),
            podman_autostart: self.podman_autostart,
            podman_binary: None,
            reconcile_interval_secs: self.reconcile_interval,
            labels: (!self.labels.is_empty()).then(|| self.labels.iter().cloned().collect()),
            reserve_cpu_millis: self.reserve_cpu_millis,
            reserve_memory_mib: self.reserve_memory_mib,
            reserve_disk_mib: self.reserve_disk_mib,
            listen: self.listen,
            advertise: self.advertise,
            join: (!self.join.is_empty()).then(|| self.join.clone()),
            identity_dir: self.identity_dir.clone(),
            policy: self.policy.clone(),
            workload_identity_ttl_secs: self.workload_identity_ttl_secs,
        };
        let mut config = Config::resolve(flags.or(file), env)?;
        config.config_file = file_path;
        Ok(config)
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    config::validate_label(key, value).map_err(|e| e.to_string())?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn execute(args: AgentArgs, global: &GlobalOptions) -> ExitCode {
    let config = match args.resolve(global, &Environment::current()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(config::EXIT_CONFIG as u8);
        }
    };
    crate::daemon::run(config, args.reset_state)
}
