//! The agent's configuration: TOML file, then environment, then flags, merged once and
//! validated before any socket opens. A bad value stops the agent with exit code 64 and a
//! message naming the field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parley_negotiation::messages::Resources;
use serde::{Deserialize, Serialize};

/// Exit code for a configuration error (`EX_CONFIG`-like `EX_USAGE`, as sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A field has a value the agent cannot use.
    #[error("invalid value for `{field}`: {message}")]
    Invalid {
        /// The field, as spelled in the config file.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// The config file's contents; every key is optional. Unknown keys are refused so that a
/// typo does not silently fall back to a default.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::node_name`].
    pub node_name: Option<String>,
    /// See [`Config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Config::api_socket`].
    pub api_socket: Option<PathBuf>,
    /// See [`Config::podman_socket`].
    pub podman_socket: Option<PathBuf>,
    /// See [`Config::podman_autostart`].
    pub podman_autostart: Option<bool>,
    /// See [`Config::podman_binary`].
    pub podman_binary: Option<PathBuf>,
    /// See [`Config::reconcile_interval`], in seconds.
    pub reconcile_interval_secs: Option<u64>,
    /// See [`Config::labels`].
    pub labels: Option<BTreeMap<String, String>>,
    /// See [`Config::reserve`], thousandths of a CPU.
    pub reserve_cpu_millis: Option<u64>,
    /// See [`Config::reserve`], MiB.
    pub reserve_memory_mib: Option<u64>,
    /// See [`Config::reserve_disk_bytes`], MiB.
    pub reserve_disk_mib: Option<u64>,
    /// See [`MeshSettings::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`MeshSettings::advertise`].
    pub advertise: Option<SocketAddr>,
    /// See [`MeshSettings::join`].
    pub join: Option<Vec<String>>,
    /// See [`MeshSettings::identity_dir`].
    pub identity_dir: Option<PathBuf>,
    /// See [`MeshSettings::policy`].
    pub policy: Option<PathBuf>,
    /// See [`MeshSettings::workload_identity_ttl_secs`].
    pub workload_identity_ttl_secs: Option<u64>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::load_str(&text, path)
    }

    /// Parses a config file's text; `path` names it in errors.
    pub fn load_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Fills unset fields of `self` from `lower` (lower precedence).
    pub fn or(self, lower: FileConfig) -> FileConfig {
        FileConfig {
            node_name: self.node_name.or(lower.node_name),
            data_dir: self.data_dir.or(lower.data_dir),
            api_socket: self.api_socket.or(lower.api_socket),
            podman_socket: self.podman_socket.or(lower.podman_socket),
            podman_autostart: self.podman_autostart.or(lower.podman_autostart),
            podman_binary: self.podman_binary.or(lower.podman_binary),
            reconcile_interval_secs: self
                .reconcile_interval_secs
                .or(lower.reconcile_interval_secs),
            labels: self.labels.or(lower.labels),
            reserve_cpu_millis: self.reserve_cpu_millis.or(lower.reserve_cpu_millis),
            reserve_memory_mib: self.reserve_memory_mib.or(lower.reserve_memory_mib),
            reserve_disk_mib: self.reserve_disk_mib.or(lower.reserve_disk_mib),
            listen: self.listen.or(lower.listen),
            advertise: self.advertise.or(lower.advertise),
            join: self.join.or(lower.join),
            identity_dir: self.identity_dir.or(lower.identity_dir),
            policy: self.policy.or(lower.policy),
            workload_identity_ttl_secs: self
                .workload_identity_ttl_secs
                .or(lower.workload_identity_ttl_secs),
        }
    }
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's name, written into container labels. Default: the host name.
    pub node_name: String,
    /// Where the state store lives. Default: `$XDG_DATA_HOME/parley` or
    /// `~/.local/share/parley`.
    pub data_dir: PathBuf,
    /// The local API socket. Default: `$XDG_RUNTIME_DIR/parley/parley.sock`.
    pub api_socket: PathBuf,
    /// Podman's REST service socket. Default: `$XDG_RUNTIME_DIR/podman/podman.sock`.
    pub podman_socket: PathBuf,
    /// Start `podman system service` when none answers. Default: true.
    pub podman_autostart: bool,
    /// The podman executable. Default: `podman` (searched in `PATH`).
    pub podman_binary: PathBuf,
    /// Time between reconcile passes. Default: 10 s.
    pub reconcile_interval: Duration,
    /// This node's labels, announced to the mesh and matched by workload constraints.
    /// Default: none.
    pub labels: BTreeMap<String, String>,
    /// Capacity kept back for the host itself. Default: 100 millicpus and 256 MiB.
    pub reserve: Resources,
    /// Space kept free on the container storage's filesystem: below it, the node takes no
    /// new replicas. Default: 1 GiB.
    pub reserve_disk_bytes: u64,
    /// The mesh, when `listen` is set; without it the agent schedules onto this host only.
    pub mesh: Option<MeshSettings>,
    /// The config file these values were read from, if any (for logs).
    pub config_file: Option<PathBuf>,
}

/// How the agent takes part in the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    /// The UDP address the QUIC endpoint binds (`IP:PORT`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The address announced to peers. Default: the bound address, which must then not be
    /// unspecified (`0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// Members to join through (`HOST:PORT`), resolved at start. Default: none (this node
    /// starts a mesh of its own, which others join).
    pub join: Vec<String>,
    /// Where the node's identity (key, certificate, trust bundle) lives. Default:
    /// `DATA_DIR/identity`, where `parley identity` puts it.
    pub identity_dir: PathBuf,
    /// The authorization policy file (reloaded on SIGHUP). Default: none, and every node
    /// of this node's trust domain may do everything.
    pub policy: Option<PathBuf>,
    /// Lifetime of the identities issued to the replicas this node runs, in seconds
    /// (renewed at half of it). Default: 3600.
    pub workload_identity_ttl_secs: u64,
}

/// The system-wide config file, installed (all commented out) by the .deb and .rpm.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/parley/agent.toml";

/// Default CPU kept back for the host, in thousandths of a CPU.
pub const DEFAULT_RESERVE_CPU_MILLIS: u64 = 100;
/// Default space kept free on the container storage's filesystem, in MiB.
pub const DEFAULT_RESERVE_DISK_MIB: u64 = 1024;
/// Default memory kept back for the host, in MiB.
pub const DEFAULT_RESERVE_MEMORY_MIB: u64 = 256;
/// Longest label key or value accepted.
const MAX_LABEL_LEN: usize = 63;

/// Longest name accepted for a node (it travels in labels and later in SPIFFE IDs).
const MAX_NODE_NAME_LEN: usize = 63;

/// The environment the defaults are derived from, passed in so tests need not mutate the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// `$XDG_DATA_HOME`.
    pub xdg_data_home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// The host name.
    pub hostname: Option<String>,
}

impl Environment {
    /// Reads the current process environment.
    pub fn current() -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Self {
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            xdg_data_home: var("XDG_DATA_HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
            home: var("HOME"),
            hostname: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok()),
        }
    }

    fn runtime_dir(&self, field: &'static str) -> Result<PathBuf, ConfigError> {
        self.xdg_runtime_dir
            .clone()
            .ok_or_else(|| ConfigError::Invalid {
                field,
                message: "no default without XDG_RUNTIME_DIR; set XDG_RUNTIME_DIR (normally \
                      /run/user/$UID) or give the path explicitly"
                    .to_owned(),
            })
    }

    /// The config files read when `--config` is not given, in order of preference: the
    /// user's own (`$XDG_CONFIG_HOME/parley/agent.toml`, else
    /// `~/.config/parley/agent.toml`), then the system-wide one the packages install.
    pub fn config_file_candidates(&self) -> Vec<PathBuf> {
        let user = match (&self.xdg_config_home, &self.home) {
            (Some(config), _) => Some(config.join("parley/agent.toml")),
            (None, Some(home)) => Some(home.join(".config/parley/agent.toml")),
            (None, None) => None,
        };
        user.into_iter()
            .chain(std::iter::once(PathBuf::from(SYSTEM_CONFIG_FILE)))
            .collect()
    }

    /// The first of [`Self::config_file_candidates`] that exists, if any.
    pub fn default_config_file(&self) -> Option<PathBuf> {
        self.config_file_candidates()
            .into_iter()
            .find(|path| path.exists())
    }

    /// Default local API socket: `$XDG_RUNTIME_DIR/parley/parley.sock`.
    pub fn default_api_socket(&self) -> Result<PathBuf, ConfigError> {
        Ok(self.runtime_dir("api_socket")?.join("parley/parley.sock"))
    }
}

impl Config {
    /// Merges `layered` (flags over environment over file) with defaults and validates.
    pub fn resolve(mut layered: FileConfig, env: &Environment) -> Result<Self, ConfigError> {
        let mesh_layer = FileConfig {
            listen: layered.listen,
            advertise: layered.advertise,
            join: layered.join.take(),
            identity_dir: layered.identity_dir.take(),
            policy: layered.policy.take(),
            workload_identity_ttl_secs: layered.workload_identity_ttl_secs,
            ..FileConfig::default()
        };
        let node_name = match layered.node_name.or_else(|| env.hostname.clone()) {
            Some(name) => name,
            None => {
                return Err(ConfigError::Invalid {
                    field: "node_name",
                    message: "the host name cannot be read; set node_name".to_owned(),
                });
            }
        };
        validate_node_name(&node_name)?;

        let data_dir = match layered.data_dir {
            Some(dir) => dir,
            None => match (&env.xdg_data_home, &env.home) {
                (Some(data), _) => data.join("parley"),
                (None, Some(home)) => home.join(".local/share/parley"),
                (None, None) => {
                    return Err(ConfigError::Invalid {
                        field: "data_dir",
                        message: "neither XDG_DATA_HOME nor HOME is set; set data_dir".to_owned(),
                    });
                }
            },
        };
        let api_socket = match layered.api_socket {
            Some(path) => path,
            None => env.default_api_socket()?,
        };
        let podman_socket = match layered.podman_socket {
            Some(path) => path,
            None => env.runtime_dir("podman_socket")?.join("podman/podman.sock"),
        };
        for (field, path) in [
            ("data_dir", &data_dir),
            ("api_socket", &api_socket),
            ("podman_socket", &podman_socket),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!("{} is not an absolute path", path.display()),
                });
            }
        }
        // sun_path holds 108 bytes including the terminating NUL.
        for (field, path) in [
            ("api_socket", &api_socket),
            ("podman_socket", &podman_socket),
        ] {
            if path.as_os_str().len() > 107 {
                return Err(ConfigError::Invalid {
                    field,
                    message: format!(
                        "{} is longer than the 107 bytes a unix socket path may have",
                        path.display()
                    ),
                });
            }
        }

        let reconcile_interval_secs = layered.reconcile_interval_secs.unwrap_or(10);
        if !(1..=3600).contains(&reconcile_interval_secs) {
            return Err(ConfigError::Invalid {
                field: "reconcile_interval_secs",
                message: format!("{reconcile_interval_secs} is outside 1..=3600"),
            });
        }

        let labels = layered.labels.take().unwrap_or_default();
        for (key, value) in &labels {
            validate_label(key, value)?;
        }
        let reserve = Resources {
            cpu_millis: layered
                .reserve_cpu_millis
                .unwrap_or(DEFAULT_RESERVE_CPU_MILLIS),
            memory_bytes: layered
                .reserve_memory_mib
                .unwrap_or(DEFAULT_RESERVE_MEMORY_MIB)
                .saturating_mul(1 << 20),
        };
        let mesh = resolve_mesh(&mesh_layer, &data_dir)?;

        Ok(Self {
            node_name,
            data_dir,
            api_socket,
            podman_socket,
            podman_autostart: layered.podman_autostart.unwrap_or(true),
            podman_binary: layered
                .podman_binary
                .unwrap_or_else(|| PathBuf::from("podman")),
            reconcile_interval: Duration::from_secs(reconcile_interval_secs),
            labels,
            reserve,
            reserve_disk_bytes: layered
                .reserve_disk_mib
                .unwrap_or(DEFAULT_RESERVE_DISK_MIB)
                .saturating_mul(1 << 20),
            mesh,
            config_file: None,
        })
    }
}

fn resolve_mesh(
    layered: &FileConfig,
    data_dir: &Path,
) -> Result<Option<MeshSettings>, ConfigError> {
    let join = layered.join.clone().unwrap_or_default();
    let Some(listen) = layered.listen else {
        let field = if !join.is_empty() {
            "join"
        } else if layered.advertise.is_some() {
            "advertise"
        } else {
            return Ok(None);
        };
        return Err(ConfigError::Invalid {
            field,
            message: "taking part in a mesh needs `listen`, the UDP address this agent's QUIC \
                      endpoint serves on (e.g. --listen 0.0.0.0:7946)"
                .to_owned(),
        });
    };
    if listen.ip().is_unspecified() && layered.advertise.is_none() {
        return Err(ConfigError::Invalid {
            field: "advertise",
            message: format!(
                "listen is {listen}, an address peers cannot dial; set advertise to this \
                 node's address on the network the peers use (e.g. --advertise 192.0.2.10:{})",
                listen.port()
            ),
        });
    }
    if let Some(advertise) = layered.advertise
        && (advertise.ip().is_unspecified() || advertise.port() == 0)
    {
        return Err(ConfigError::Invalid {
            field: "advertise",
            message: format!("{advertise} cannot be dialled: give a concrete IP and port"),
        });
    }
    for seed in &join {
        let valid = seed.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if !valid {
            return Err(ConfigError::Invalid {
                field: "join",
                message: format!(
                    "{seed:?} is not HOST:PORT (e.g. 192.0.2.10:7946 or edge-1.lan:7946)"
                ),
            });
        }
    }
    let identity_dir = layered
        .identity_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("identity"));
    if !identity_dir.is_absolute() {
        return Err(ConfigError::Invalid {
            field: "identity_dir",
            message: format!("{} is not an absolute path", identity_dir.display()),
        });
    }
    if let Some(policy) = &layered.policy
        && !policy.is_absolute()
    {
        return Err(ConfigError::Invalid {
            field: "policy",
            message: format!("{} is not an absolute path", policy.display()),
        });
    }
    let workload_identity_ttl_secs = layered
        .workload_identity_ttl_secs
        .unwrap_or(crate::enroll::workload::DEFAULT_TTL_SECS);
    if !(10..=86_400).contains(&workload_identity_ttl_secs) {
        return Err(ConfigError::Invalid {
            field: "workload_identity_ttl_secs",
            message: format!("{workload_identity_ttl_secs} is outside 10..=86400"),
        });
    }
    Ok(Some(MeshSettings {
        listen,
        advertise: layered.advertise,
        join,
        identity_dir,
        policy: layered.policy.clone(),
        workload_identity_ttl_secs,
    }))
}

/// Label keys: lowercase letters, digits, `.`, `-`, `_` and `/` (`zone`,
/// `topology.example.org/rack`); values: letters, digits, `.`, `-`, `_`; both 1 to 63 bytes.
pub fn validate_label(key: &str, value: &str) -> Result<(), ConfigError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_LEN
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_' | b'/')
        });
    let value_ok = !value.is_empty()
        && value.len() <= MAX_LABEL_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if key_ok && value_ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: "labels",
            message: format!(
                "{key:?}={value:?}: keys are 1 to {MAX_LABEL_LEN} lowercase letters, digits, \
                 '.', '-', '_' or '/'; values 1 to {MAX_LABEL_LEN} letters, digits, '.', '-' or '_'"
            ),
        })
    }
}

fn validate_node_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NODE_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field: "node_name",
            message: format!(
                "{name:?} must be 1 to {MAX_NODE_NAME_LEN} characters of letters, digits, '-', '.' and '_'"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            xdg_runtime_dir: Some("/run/user/1000".into()),
            xdg_data_home: None,
            xdg_config_home: None,
            home: Some("/home/ada".into()),
            hostname: Some("edge-1".into()),
        }
    }

    #[test]
    fn defaults_follow_the_xdg_directories() {
        let config = Config::resolve(FileConfig::default(), &env()).unwrap();
        assert_eq!(config.node_name, "edge-1");
        assert_eq!(
            config.data_dir,
            PathBuf::from("/home/ada/.local/share/parley")
        );
        assert_eq!(
            config.api_socket,
            PathBuf::from("/run/user/1000/parley/parley.sock")
        );
        assert_eq!(
            config.podman_socket,
            PathBuf::from("/run/user/1000/podman/podman.sock")
        );
        assert!(config.podman_autostart);
        assert_eq!(config.reconcile_interval, Duration::from_secs(10));
    }

    #[test]
    fn the_users_config_file_is_preferred_to_the_system_one() {
        assert_eq!(
            env().config_file_candidates(),
            [
                PathBuf::from("/home/ada/.config/parley/agent.toml"),
                PathBuf::from(SYSTEM_CONFIG_FILE),
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let with_xdg = Environment {
            xdg_config_home: Some(dir.path().to_path_buf()),
            ..env()
        };
        std::fs::create_dir(dir.path().join("parley")).unwrap();
        std::fs::write(dir.path().join("parley/agent.toml"), "").unwrap();
        assert_eq!(
            with_xdg.default_config_file(),
            Some(dir.path().join("parley/agent.toml"))
        );
    }

    #[test]
    fn the_packaged_config_file_parses_and_changes_nothing() {
        // Every key in it is commented out: installing the package must not change the
        // agent's behaviour, only document it.
        let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/agent.toml");
        let file = FileConfig::load(Path::new(packaged)).unwrap();
        assert_eq!(
            Config::resolve(file, &env()).unwrap(),
            Config::resolve(FileConfig::default(), &env()).unwrap()
        );

        // Uncommenting its examples gives a valid file that sets every key the agent knows
        // (the struct literal below stops compiling when a field is added).
        let text = std::fs::read_to_string(packaged).unwrap();
        let examples: String = text
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| {
                line.split_once(" = ")
                    .is_some_and(|(key, _)| !key.contains(' '))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        FileConfig::load_str(&examples, Path::new(packaged)).unwrap();
        let documented: toml::Table = toml::from_str(&examples).unwrap();
        let every_key = FileConfig {
            node_name: Some(String::new()),
            data_dir: Some(PathBuf::new()),
            api_socket: Some(PathBuf::new()),
            podman_socket: Some(PathBuf::new()),
            podman_autostart: Some(true),
            podman_binary: Some(PathBuf::new()),
            reconcile_interval_secs: Some(0),
            labels: Some(BTreeMap::new()),
            reserve_cpu_millis: Some(0),
            reserve_memory_mib: Some(0),
            reserve_disk_mib: Some(0),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            advertise: Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            join: Some(Vec::new()),
            identity_dir: Some(PathBuf::new()),
            policy: Some(PathBuf::new()),
            workload_identity_ttl_secs: Some(0),
        };
        let known = toml::Table::try_from(every_key).unwrap();
        let documented: Vec<_> = documented.keys().collect();
        let known: Vec<_> = known.keys().collect();
        assert_eq!(
            documented, known,
            "packaging/agent.toml documents other keys"
        );
    }

    #[test]
    fn mesh_settings_are_validated_and_defaulted() {
        let resolve = |toml_text: &str| {
            let file: FileConfig = toml::from_str(toml_text).unwrap();
            Config::resolve(file, &env())
        };
        assert_eq!(resolve("").unwrap().mesh, None);
        let mesh =
            resolve("listen = \"127.0.0.1:0\"\njoin = [\"edge-1.lan:7946\", \"10.0.0.2:7946\"]\n")
                .unwrap()
                .mesh
                .unwrap();
        assert_eq!(mesh.join, ["edge-1.lan:7946", "10.0.0.2:7946"]);
        assert_eq!(
            mesh.identity_dir,
            PathBuf::from("/home/ada/.local/share/parley/identity")
        );
        let refused = [
            ("join = [\"10.0.0.2:7946\"]", "join", "needs `listen`"),
            ("listen = \"0.0.0.0:7946\"", "advertise", "set advertise"),
            (
                "listen = \"127.0.0.1:7946\"\njoin = [\"edge-1.lan\"]",
                "join",
                "not HOST:PORT",
            ),
            (
                "listen = \"0.0.0.0:7946\"\nadvertise = \"0.0.0.0:7946\"",
                "advertise",
                "cannot be dialled",
            ),
            ("[labels]\nZone = \"a\"", "labels", "lowercase"),
        ];
        for (text, field, needle) in refused {
            let err = resolve(text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("`{field}`")) && err.contains(needle),
                "{text}: {err}"
            );
        }
        let unspecified_but_advertised =
            resolve("listen = \"0.0.0.0:7946\"\nadvertise = \"192.0.2.10:7946\"\n").unwrap();
        assert!(unspecified_but_advertised.mesh.is_some());
    }

    #[test]
    fn the_reserve_defaults_and_labels_parse() {
        let config = Config::resolve(FileConfig::default(), &env()).unwrap();
        assert_eq!(config.reserve.cpu_millis, DEFAULT_RESERVE_CPU_MILLIS);
        assert_eq!(
            config.reserve.memory_bytes,
            DEFAULT_RESERVE_MEMORY_MIB << 20
        );
        let file: FileConfig =
            toml::from_str("reserve_memory_mib = 1024\n[labels]\nzone = \"eu-1\"\n").unwrap();
        let config = Config::resolve(file, &env()).unwrap();
        assert_eq!(config.reserve.memory_bytes, 1 << 30);
        assert_eq!(config.labels["zone"], "eu-1");
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            "data_dir = \"/var/lib/a\"\nnode_name = \"from-file\"\npodman_autostart = false\n",
        )
        .unwrap();
        let flags = FileConfig {
            data_dir: Some("/var/lib/b".into()),
            ..FileConfig::default()
        };
        let config = Config::resolve(flags.or(file), &env()).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/b"));
        assert_eq!(config.node_name, "from-file");
        assert!(!config.podman_autostart);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "data_dri = \"/x\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("data_dri"), "{err}");
        assert!(err.contains("agent.toml"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (
                FileConfig {
                    node_name: Some("bad name".into()),
                    ..Default::default()
                },
                "node_name",
            ),
            (
                FileConfig {
                    data_dir: Some("relative/dir".into()),
                    ..Default::default()
                },
                "data_dir",
            ),
            (
                FileConfig {
                    reconcile_interval_secs: Some(0),
                    ..Default::default()
                },
                "reconcile_interval_secs",
            ),
            (
                FileConfig {
                    api_socket: Some(PathBuf::from(format!("/{}", "s".repeat(120)))),
                    ..Default::default()
                },
                "api_socket",
            ),
        ];
        for (layered, field) in cases {
            let err = Config::resolve(layered, &env()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn missing_runtime_dir_is_explained() {
        let env = Environment {
            xdg_runtime_dir: None,
            ..env()
        };
        let err = Config::resolve(FileConfig::default(), &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("XDG_RUNTIME_DIR"), "{err}");
    }
}
