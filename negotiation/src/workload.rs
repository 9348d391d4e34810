//! The workload specification: what a user asks Parley to run.
//!
//! Every spec is validated here, once, before anything is stored or sent, so that the
//! store, the runtime and peers only ever see well-formed values.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::messages::Resources;

/// Longest accepted workload name. Container names are `parley-<name>-<replica>`, and the
/// name also travels in labels and (later) in SPIFFE IDs, so it is kept well inside the
/// 63-byte DNS label limit that many tools assume.
pub const MAX_NAME_LEN: usize = 48;

/// Longest accepted image reference (the OCI distribution spec caps repository names at
/// 255 bytes; a tag or digest adds at most ~80).
pub const MAX_IMAGE_LEN: usize = 512;

/// Most environment variables one workload may carry.
pub const MAX_ENV_VARS: usize = 256;

/// Most command arguments one workload may carry.
pub const MAX_COMMAND_ARGS: usize = 256;

/// Longest accepted stop timeout, in seconds.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 600;

/// Stop timeout used when a spec gives none (Podman's own default).
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 10;

/// Longest accepted single value (an environment value or a command argument).
pub const MAX_VALUE_LEN: usize = 32 * 1024;

/// Most replicas one workload may ask for.
pub const MAX_REPLICAS: u32 = 100;

/// Most CPU a replica may ask for, in thousandths of a core: far beyond any node (a
/// request that large is declined with the reasons), and small enough that the engine's
/// quota arithmetic (microseconds per 100 ms period) cannot overflow.
pub const MAX_CPU_MILLIS: u64 = 1 << 40;

/// Most memory a replica may ask for: what the container engine's signed 64-bit limit holds.
pub const MAX_MEMORY_BYTES: u64 = i64::MAX as u64;

/// Container transports Podman reads images from besides registries (`docker-archive:/path`
/// and the like): a reference naming one would make a node read its own files.
const IMAGE_TRANSPORTS: [&str; 7] = [
    "containers-storage",
    "dir",
    "docker",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
];

/// Most label constraints one workload may carry.
pub const MAX_CONSTRAINTS: usize = 32;

/// Largest encoded spec: it travels whole in an award, which must fit in one frame
/// (`codec::MAX_FRAME_LEN`, 64 KiB) with the envelope around it.
pub const MAX_SPEC_BYTES: usize = 48 * 1024;

/// Why a workload specification was refused. Each variant names the offending field so that
/// the message shown to a user can say what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The workload name does not follow the naming rule.
    #[error(
        "invalid workload name {name:?}: {reason}; use 1 to {MAX_NAME_LEN} lowercase letters, \
         digits and '-', starting with a letter and not ending with '-'"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The image reference is empty, too long or contains characters no registry accepts.
    #[error("invalid image reference {image:?}: {reason}")]
    InvalidImage {
        /// The reference as given.
        image: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An environment variable is malformed.
    #[error("invalid environment variable {entry:?}: {reason}")]
    InvalidEnv {
        /// The entry as given (`KEY=VALUE` or just the key).
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The command is malformed.
    #[error("invalid command: {reason}")]
    InvalidCommand {
        /// What is wrong with it.
        reason: String,
    },
    /// The stop timeout is out of range.
    #[error("invalid stop timeout {secs}s: at most {MAX_STOP_TIMEOUT_SECS}s")]
    InvalidStopTimeout {
        /// The value given.
        secs: u32,
    },
    /// The replica count is out of range.
    #[error("invalid replica count {replicas}: 1 to {MAX_REPLICAS}")]
    InvalidReplicas {
        /// The value given.
        replicas: u32,
    },
    /// A resource request is beyond what any node could hold.
    #[error(
        "invalid resources: {cpu_millis} millicores and {memory_bytes} bytes; at most \
         {MAX_CPU_MILLIS} millicores and {MAX_MEMORY_BYTES} bytes"
    )]
    InvalidResources {
        /// CPU asked for.
        cpu_millis: u64,
        /// Memory asked for.
        memory_bytes: u64,
    },
    /// A label constraint is malformed.
    #[error("invalid constraint {entry:?}: {reason}")]
    InvalidConstraint {
        /// The constraint as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A volume mount is malformed.
    #[error("invalid volume {entry:?}: {reason}")]
    InvalidVolume {
        /// The mount as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A strong workload's stop timeout is longer than its lease may be.
    #[error(
        "a strong workload's stop timeout is at most {MAX_STRONG_STOP_TIMEOUT_SECS}s (its lease, and so a failover, lasts the stop timeout plus 5s), not {secs}s"
    )]
    StrongStopTimeout {
        /// The value given.
        secs: u32,
    },
    /// The whole spec is too large to send to peers.
    #[error(
        "the workload spec is {bytes} bytes encoded, more than the {MAX_SPEC_BYTES} that fit in one message; shorten the environment or command"
    )]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
    },
}

/// The namespace of workloads given no other (the only one the CLI submits to so far).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The key `default/NAME` under which a workload of the default namespace is stored and
/// named on the wire.
pub fn default_key(name: &str) -> String {
    format!("{DEFAULT_NAMESPACE}/{name}")
}

/// The namespace in a `namespace/name` key (a bare name is in the default namespace).
pub fn key_namespace(key: &str) -> &str {
    key.split_once('/')
        .map_or(DEFAULT_NAMESPACE, |(namespace, _)| namespace)
}

/// The name in a `namespace/name` key.
pub fn key_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

/// A validated workload name: 1 to [`MAX_NAME_LEN`] bytes of `[a-z0-9-]`, starting with a
/// letter, not ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkloadName(String);

impl WorkloadName {
    /// Validates `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, SpecError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > MAX_NAME_LEN {
            Some("it is too long")
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("it must start with a lowercase letter")
        } else if name.ends_with('-') {
            Some("it must not end with '-'")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            Some("it contains a character other than a-z, 0-9 and '-'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(SpecError::InvalidName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for WorkloadName {
    type Error = SpecError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<WorkloadName> for String {
    fn from(name: WorkloadName) -> Self {
        name.0
    }
}

/// One environment variable of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// Variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    pub key: String,
    /// Value, passed to the container as is.
    pub value: String,
}

impl EnvVar {
    /// Parses a `KEY=VALUE` entry as typed on a command line.
    pub fn parse(entry: &str) -> Result<Self, SpecError> {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(SpecError::InvalidEnv {
                entry: entry.to_owned(),
                reason: "expected KEY=VALUE",
            });
        };
        let var = Self {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        var.validate()?;
        Ok(var)
    }

    fn validate(&self) -> Result<(), SpecError> {
        let valid_key = self
            .key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && self
                .key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let reason = if !valid_key {
            Some("the key must match [A-Za-z_][A-Za-z0-9_]*")
        } else if self.value.len() > MAX_VALUE_LEN {
            Some("the value is longer than 32 KiB")
        } else if self.value.contains('\0') {
            Some("the value contains a NUL byte")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(SpecError::InvalidEnv {
                entry: format!("{}={}", self.key, truncate(&self.value, 40)),
                reason,
            }),
            None => Ok(()),
        }
    }
}

/// What a user asks Parley to run. Construct it with [`WorkloadSpec::new`] or validate a
/// deserialized one with [`WorkloadSpec::validate`] before trusting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Unique name of the workload.
    pub name: WorkloadName,
    /// Container image reference, e.g. `docker.io/library/nginx:1.27`.
    pub image: String,
    /// Command and arguments; empty means the image's default command.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables, in the order given. A later duplicate key is refused rather
    /// than silently overriding an earlier one.
    #[serde(default)]
    pub env: Vec<EnvVar>,
    /// Seconds between SIGTERM and SIGKILL when the workload's containers are stopped.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u32,
    /// How many replicas to run, each on a different node.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// What each replica needs (accounted against a node's capacity; enforced as container
    /// limits where the host allows).
    #[serde(default)]
    pub resources: Resources,
    /// Labels a node must carry, with these values, to host a replica.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// What the node running a replica does when its container exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Whether a replica may briefly run twice (`eventual`, the default) or never
    /// (`strong`: each replica runs only under a lease its node holds).
    #[serde(default, skip_serializing_if = "Consistency::is_eventual")]
    pub consistency: Consistency,
    /// Podman named volumes mounted into each replica (one volume per replica, kept on the
    /// node that runs it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

/// How a workload's replicas are kept when nodes fail or the network splits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Stateless: a replica is placed again as soon as its node seems gone, so during a
    /// partition it may run on both sides for a while; the newest epoch wins after.
    #[default]
    Eventual,
    /// Stateful: each replica runs only while its node holds the replica's lease, granted
    /// by a quorum of acceptor nodes; it never runs on two nodes at once, and fails over
    /// once the lease of a lost node has run out.
    Strong,
}

impl Consistency {
    /// Whether this is the default, eventual class.
    pub fn is_eventual(&self) -> bool {
        *self == Self::Eventual
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Self::Eventual => "eventual",
            Self::Strong => "strong",
        }
    }
}

/// A named volume and where it is mounted (`NAME:/path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name; each replica gets its own volume, `NAME-REPLICA`.
    pub name: String,
    /// The absolute path inside the container.
    pub path: String,
}

/// Most volumes one workload may mount.
pub const MAX_VOLUMES: usize = 16;

/// Longest stop timeout of a strong workload: the lease is the stop timeout plus a few
/// seconds, and a failover waits for a lost holder's lease to run out.
pub const MAX_STRONG_STOP_TIMEOUT_SECS: u32 = 60;

impl VolumeMount {
    /// Parses `NAME:/path`.
    pub fn parse(entry: &str) -> Result<Self, SpecError> {
        let Some((name, path)) = entry.split_once(':') else {
            return Err(SpecError::InvalidVolume {
                entry: truncate(entry, 80).to_owned(),
                reason: "give it as NAME:/path",
            });
        };
        let volume = Self {
            name: name.to_owned(),
            path: path.to_owned(),
        };
        volume.validate()?;
        Ok(volume)
    }

    /// Checks the name and the path.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 40
            && self.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        let reason = if !name_ok {
            Some(
                "the name is 1 to 40 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit",
            )
        } else if !self.path.starts_with('/') || self.path.len() > 1_024 {
            Some("the path is absolute and at most 1024 bytes")
        } else if self.path.split('/').any(|part| part == "..")
            || self.path.contains(['\0', ':', ','])
        {
            Some("the path may not contain '..', ':', ',' or a NUL byte")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(SpecError::InvalidVolume {
                entry: format!("{}:{}", truncate(&self.name, 40), truncate(&self.path, 80)),
                reason,
            }),
            None => Ok(()),
        }
    }
}

/// What happens when a replica's container exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Start it again, whatever its exit code (a service).
    #[default]
    Always,
    /// Start it again only when it failed (non-zero exit code).
    OnFailure,
    /// Leave it exited; `parley ps` shows its exit code (a job).
    Never,
}

impl RestartPolicy {
    /// Whether a container that exited with `exit_code` (unknown: `None`) is started again.
    pub fn restarts(self, exit_code: Option<i32>) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != Some(0),
            Self::Never => false,
        }
    }
}

fn default_replicas() -> u32 {
    1
}

fn default_stop_timeout() -> u32 {
    DEFAULT_STOP_TIMEOUT_SECS
}

impl WorkloadSpec {
    /// Builds a spec with the default stop timeout and validates it.
    pub fn new(
        name: WorkloadName,
        image: impl Into<String>,
        command: Vec<String>,
        env: Vec<EnvVar>,
    ) -> Result<Self, SpecError> {
        let spec = Self {
            name,
            image: image.into(),
            command,
            env,
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            replicas: 1,
            resources: Resources::default(),
            constraints: BTreeMap::new(),
            restart: RestartPolicy::default(),
            consistency: Consistency::default(),
            volumes: Vec::new(),
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; the name is already valid by construction.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_image(&self.image)?;
        if self.stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
            return Err(SpecError::InvalidStopTimeout {
                secs: self.stop_timeout_secs,
            });
        }
        if self.env.len() > MAX_ENV_VARS {
            return Err(SpecError::InvalidEnv {
                entry: format!("({} variables)", self.env.len()),
                reason: "more than 256 environment variables",
            });
        }
        let mut seen = std::collections::HashSet::new();
        for var in &self.env {
            var.validate()?;
            if !seen.insert(var.key.as_str()) {
                return Err(SpecError::InvalidEnv {
                    entry: var.key.clone(),
                    reason: "the key is given more than once",
                });
            }
        }
        if self.command.len() > MAX_COMMAND_ARGS {
            return Err(SpecError::InvalidCommand {
                reason: format!(
                    "{} arguments, at most {MAX_COMMAND_ARGS}",
                    self.command.len()
                ),
            });
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(SpecError::InvalidReplicas {
                replicas: self.replicas,
            });
        }
        if self.resources.cpu_millis > MAX_CPU_MILLIS
            || self.resources.memory_bytes > MAX_MEMORY_BYTES
        {
            return Err(SpecError::InvalidResources {
                cpu_millis: self.resources.cpu_millis,
                memory_bytes: self.resources.memory_bytes,
            });
        }
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(SpecError::InvalidConstraint {
                entry: format!("({} constraints)", self.constraints.len()),
                reason: "more than 32 constraints",
            });
        }
        for (key, value) in &self.constraints {
            let key_ok = !key.is_empty()
                && key.len() <= 63
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
            let value_ok = !value.is_empty()
                && value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !key_ok || !value_ok {
                return Err(SpecError::InvalidConstraint {
                    entry: format!("{}={}", truncate(key, 40), truncate(value, 40)),
                    reason: "keys are 1 to 63 lowercase letters, digits, '.', '-', '_' or '/'; \
                             values 1 to 63 letters, digits, '.', '-' or '_'",
                });
            }
        }
        if self.command.first().is_some_and(|exe| exe.is_empty()) {
            return Err(SpecError::InvalidCommand {
                reason: "the executable is an empty string".to_owned(),
            });
        }
        if let Some(arg) = self
            .command
            .iter()
            .find(|arg| arg.len() > MAX_VALUE_LEN || arg.contains('\0'))
        {
            return Err(SpecError::InvalidCommand {
                reason: format!(
                    "argument {:?} is longer than 32 KiB or contains a NUL byte",
                    truncate(arg, 40)
                ),
            });
        }
        if self.consistency == Consistency::Strong
            && self.stop_timeout_secs > MAX_STRONG_STOP_TIMEOUT_SECS
        {
            return Err(SpecError::StrongStopTimeout {
                secs: self.stop_timeout_secs,
            });
        }
        if self.volumes.len() > MAX_VOLUMES {
            return Err(SpecError::InvalidVolume {
                entry: format!("({} volumes)", self.volumes.len()),
                reason: "more than 16 volumes",
            });
        }
        let mut paths = std::collections::HashSet::new();
        for volume in &self.volumes {
            volume.validate()?;
            if !paths.insert(volume.path.as_str()) {
                return Err(SpecError::InvalidVolume {
                    entry: format!("{}:{}", volume.name, truncate(&volume.path, 80)),
                    reason: "two volumes are mounted at this path",
                });
            }
        }
        // Checked last, once every part is within its own bound, so the encoding is cheap.
        let mut encoded = Vec::new();
        if ciborium::into_writer(self, &mut encoded).is_ok() && encoded.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge {
                bytes: encoded.len(),
            });
        }
        Ok(())
    }
}

/// Checks the shape of an image reference without resolving it: whether it exists is the
/// runtime's business, but nothing that could never be a reference reaches it.
fn validate_image(image: &str) -> Result<(), SpecError> {
    let reason = if image.is_empty() {
        Some("it is empty")
    } else if image.len() > MAX_IMAGE_LEN {
        Some("it is longer than 512 bytes")
    } else if image.starts_with(['-', '/', ':', '@', '.']) {
        Some("it must start with a letter or digit")
    } else if image
        .split_once(':')
        .is_some_and(|(before, _)| IMAGE_TRANSPORTS.contains(&before))
    {
        Some("it names a container transport (such as docker-archive:); give a registry reference")
    } else if !image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._/:@".contains(&b))
    {
        Some("it contains a character no registry accepts (allowed: letters, digits, - . _ / : @)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(SpecError::InvalidImage {
            image: truncate(image, 80).to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Shortens a user-supplied value for an error message without splitting a character.
fn truncate(value: &str, max: usize) -> &str {
    match value.char_indices().nth(max) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resources_beyond_any_node_and_transport_prefixes_are_refused() {
        let mut spec =
            WorkloadSpec::new(WorkloadName::new("web").unwrap(), "img:1", vec![], vec![]).unwrap();
        spec.resources.memory_bytes = u64::MAX;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::InvalidResources { .. })
        ));
        spec.resources.memory_bytes = 1 << 30;
        spec.resources.cpu_millis = MAX_CPU_MILLIS + 1;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::InvalidResources { .. })
        ));
        for image in [
            "docker-archive:/etc/passwd",
            "oci:/x",
            "containers-storage:img",
        ] {
            let refused =
                WorkloadSpec::new(WorkloadName::new("web").unwrap(), image, vec![], vec![]);
            assert!(
                matches!(refused, Err(SpecError::InvalidImage { .. })),
                "{image}: {refused:?}"
            );
        }
        // A registry with a port still passes.
        WorkloadSpec::new(
            WorkloadName::new("web").unwrap(),
            "localhost:5000/app:1",
            vec![],
            vec![],
        )
        .unwrap();
    }

    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["web", "a", "api-v2", "x1", &"a".repeat(MAX_NAME_LEN)] {
            assert!(WorkloadName::new(name).is_ok(), "{name} should be accepted");
        }
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("Web", "lowercase letter"),
            ("1web", "lowercase letter"),
            ("-web", "lowercase letter"),
            ("web-", "end with '-'"),
            ("web_1", "other than"),
            ("web.1", "other than"),
            ("wéb", "other than"),
            ("../etc", "lowercase letter"),
        ];
        for (name, expected) in cases {
            let err = WorkloadName::new(name).expect_err(name).to_string();
            assert!(err.contains(expected), "{name:?}: {err}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(
            WorkloadName::new(long)
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
    }

    #[test]
    fn names_are_validated_when_deserialized() {
        let err = serde_json::from_str::<WorkloadName>("\"Bad Name\"").unwrap_err();
        assert!(err.to_string().contains("invalid workload name"), "{err}");
    }

    #[test]
    fn env_entries_parse_and_validate() {
        let var = EnvVar::parse("GREETING=hello=world").unwrap();
        assert_eq!(var.key, "GREETING");
        assert_eq!(var.value, "hello=world");
        assert!(EnvVar::parse("EMPTY=").is_ok());
        for bad in ["NOEQUALS", "=value", "1KEY=x", "KEY-X=y", "K EY=z"] {
            assert!(EnvVar::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    fn spec(image: &str, command: &[&str], env: &[&str]) -> Result<WorkloadSpec, SpecError> {
        WorkloadSpec::new(
            WorkloadName::new("web").unwrap(),
            image,
            command.iter().map(|s| s.to_string()).collect(),
            env.iter().map(|e| EnvVar::parse(e).unwrap()).collect(),
        )
    }

    #[test]
    fn replicas_constraints_and_total_size_are_bounded() {
        let mut spec = spec("busybox", &[], &[]).unwrap();
        assert_eq!(spec.replicas, 1);
        for bad in [0, MAX_REPLICAS + 1] {
            spec.replicas = bad;
            assert!(matches!(
                spec.validate(),
                Err(SpecError::InvalidReplicas { .. })
            ));
        }
        spec.replicas = 3;
        spec.constraints
            .insert("zone".to_owned(), "eu-1".to_owned());
        assert!(spec.validate().is_ok());
        spec.constraints.insert("Zone".to_owned(), "x".to_owned());
        assert!(matches!(
            spec.validate(),
            Err(SpecError::InvalidConstraint { .. })
        ));
        spec.constraints.clear();
        // Each value within its bound, the whole too large for one frame.
        let big = "x".repeat(MAX_VALUE_LEN);
        spec.env = (0..2)
            .map(|i| EnvVar::parse(&format!("V{i}={big}")).unwrap())
            .collect();
        assert!(matches!(spec.validate(), Err(SpecError::TooLarge { .. })));
    }

    #[test]
    fn a_spec_from_an_older_agent_gets_the_defaults() {
        let old: WorkloadSpec =
            serde_json::from_str(r#"{"name":"web","image":"busybox"}"#).unwrap();
        assert_eq!(old.replicas, 1);
        assert_eq!(old.resources, Resources::default());
        assert!(old.constraints.is_empty());
    }

    #[test]
    fn validates_images() {
        for good in [
            "busybox",
            "localhost/parley-test:latest",
            "registry.example.org:5000/team/app@sha256:0123abcd",
        ] {
            assert!(spec(good, &[], &[]).is_ok(), "{good}");
        }
        for bad in ["", "-rm", "has space", "img\n", "ünïcode", &"a".repeat(600)] {
            assert!(
                matches!(spec(bad, &[], &[]), Err(SpecError::InvalidImage { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_duplicate_env_keys_and_bad_commands() {
        assert!(matches!(
            spec("busybox", &[], &["A=1", "A=2"]),
            Err(SpecError::InvalidEnv { .. })
        ));
        assert!(matches!(
            spec("busybox", &["", "x"], &[]),
            Err(SpecError::InvalidCommand { .. })
        ));
        assert!(matches!(
            spec("busybox", &["sh", "a\0b"], &[]),
            Err(SpecError::InvalidCommand { .. })
        ));
        assert!(spec("busybox", &["sleep", "3600"], &["A=1", "B=2"]).is_ok());
        let mut too_slow = spec("busybox", &[], &[]).unwrap();
        too_slow.stop_timeout_secs = MAX_STOP_TIMEOUT_SECS + 1;
        assert!(matches!(
            too_slow.validate(),
            Err(SpecError::InvalidStopTimeout { .. })
        ));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
