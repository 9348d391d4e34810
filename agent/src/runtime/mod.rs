//! The one narrow interface between the agent and a container engine.
//!
//! The agent speaks in these types only; Podman's JSON stays inside [`podman`]. A
//! hand-written [`fake`] implementation serves fast unit tests of the agent's logic, while
//! the end-to-end tests exercise [`podman::PodmanRuntime`] against real rootless Podman.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

pub use parley_negotiation::messages::{LogChunk, LogLine, LogStream, LogWindow};
use parley_negotiation::messages::{LogTail, MAX_LOG_LINE_BYTES};
use serde::{Deserialize, Serialize};

pub mod fake;
pub mod podman;

/// Label keys Parley puts on every container it creates. They let a restarted agent find
/// (adopt) what it already runs instead of starting duplicates.
pub mod labels {
    /// Marks a container as Parley's.
    pub const MANAGED: &str = "io.parley.managed";
    /// Name of the node (agent) that runs the container.
    pub const NODE: &str = "io.parley.node";
    /// Workload name.
    pub const WORKLOAD: &str = "io.parley.workload";
    /// Replica index within the workload.
    pub const REPLICA: &str = "io.parley.replica";
    /// Placement epoch (fencing token) under which the container was started.
    pub const EPOCH: &str = "io.parley.epoch";
    /// The workload spec as JSON, so that a node can rebuild its store from Podman.
    pub const SPEC: &str = "io.parley.spec";
}

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name, unique on the host (`parley-<workload>-<replica>`).
    pub name: String,
    /// Image reference; must already be present (see [`ContainerRuntime::ensure_image`]).
    pub image: String,
    /// Command and arguments; empty for the image default.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Labels, including the [`labels`] Parley relies on.
    pub labels: BTreeMap<String, String>,
    /// Seconds the engine waits after SIGTERM before SIGKILL when stopping or removing.
    pub stop_timeout_secs: u64,
    /// Host directories bind-mounted into the container.
    pub mounts: Vec<BindMount>,
    /// Podman named volumes mounted into the container, made first if missing.
    pub volumes: Vec<VolumeSpec>,
    /// CPU and memory limits the engine enforces, where the host allows it (`None`: not
    /// enforced, see [`crate::hostcheck`]).
    pub limits: Option<parley_negotiation::messages::Resources>,
}

/// A named volume mounted into a container. The volume outlives the container: a
/// replica started again on the same node finds its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The volume's name on the engine (`parley-WORKLOAD-REPLICA-NAME`).
    pub name: String,
    /// Where it appears in the container.
    pub target: String,
    /// Labels the volume is made with (the workload and replica it belongs to).
    pub labels: BTreeMap<String, String>,
}

/// A host directory mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// The host directory.
    pub source: std::path::PathBuf,
    /// Where it appears in the container.
    pub target: String,
    /// Whether the container may only read it.
    pub read_only: bool,
}

/// Lifecycle state of a container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Created but never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Stopped; the exit code when known.
    Exited,
    /// Being stopped or removed.
    Stopping,
    /// A state this agent does not know, passed through as reported.
    Other(String),
}

impl ContainerState {
    /// Maps the engine's state word (`running`, `exited`, …) to a state.
    pub fn from_engine(state: &str) -> Self {
        match state {
            "created" | "configured" | "initialized" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "exited" | "stopped" => Self::Exited,
            "stopping" | "removing" => Self::Stopping,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Running => f.write_str("running"),
            Self::Paused => f.write_str("paused"),
            Self::Exited => f.write_str("exited"),
            Self::Stopping => f.write_str("stopping"),
            Self::Other(state) => f.write_str(state),
        }
    }
}

/// A container Parley manages, as found in the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedContainer {
    /// Engine container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Workload it belongs to (from its label).
    pub workload: String,
    /// Replica index (from its label).
    pub replica: u32,
    /// Image it runs.
    pub image: String,
    /// Current state.
    pub state: ContainerState,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// The [`labels::SPEC`] label, if the container has one.
    pub spec_label: Option<String>,
    /// The [`labels::EPOCH`] label: the epoch it was started at.
    pub epoch: Option<u64>,
}

/// What the agent knows about the engine it drives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Engine version, e.g. `4.3.1`.
    pub version: String,
    /// REST API version.
    pub api_version: String,
    /// Whether the engine runs rootless.
    pub rootless: bool,
    /// cgroup version (`v1` or `v2`).
    pub cgroup_version: String,
    /// OCI runtime in use (runc, crun, …).
    pub oci_runtime: String,
    /// Where the engine keeps images and containers, when it says.
    #[serde(default)]
    pub graph_root: Option<String>,
}

/// Errors from a container engine, by what the caller can do about them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The engine did not answer at all.
    #[error(
        "the Podman service at {endpoint} is not reachable ({reason}); start it with `systemctl --user start podman.socket` or let the agent start it (podman_autostart = true)"
    )]
    Unavailable {
        /// Where the agent tried to reach it.
        endpoint: String,
        /// The connection error.
        reason: String,
    },
    /// The image is neither present nor pullable.
    #[error("image {image} is not available: {reason}")]
    ImageNotFound {
        /// The reference asked for.
        image: String,
        /// Why it is not available (the pull error, as reported).
        reason: String,
    },
    /// A container of that name already exists on the engine.
    #[error(
        "a container named {name} already exists in Podman (not created by this agent); remove or rename it"
    )]
    NameInUse {
        /// The conflicting name.
        name: String,
    },
    /// Any other engine failure.
    #[error("podman failed to {operation}: {message}")]
    Failed {
        /// What the agent was doing.
        operation: &'static str,
        /// The engine's message.
        message: String,
    },
}

/// A container engine the agent can drive. Implemented by [`podman::PodmanRuntime`] and,
/// for tests, [`fake::FakeRuntime`].
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Version and mode of the engine; also serves as a health check.
    fn info(&self) -> impl Future<Output = Result<RuntimeInfo, RuntimeError>> + Send;

    /// Makes sure `image` is present locally, pulling it if it is not.
    fn ensure_image(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts a container. If the start fails, the created container is removed
    /// again so that a failure leaves nothing behind.
    fn create_and_start(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Starts an existing, stopped container.
    fn start(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Containers labelled as managed by the node `node`, in any state.
    fn list_managed(
        &self,
        node: &str,
    ) -> impl Future<Output = Result<Vec<ManagedContainer>, RuntimeError>> + Send;

    /// Stops (within the container's stop timeout) and removes a container. Removing one
    /// that no longer exists succeeds.
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// A container's output within `window`: the newest lines that fit one reply
    /// ([`LogChunk`] says how many older ones were left out), read in bounded memory.
    fn logs(
        &self,
        id: &str,
        window: &LogWindow,
    ) -> impl Future<Output = Result<LogChunk, RuntimeError>> + Send;
}

/// Splits a container's output, delivered in chunks of any size, into lines per stream,
/// holding at most one partial line of [`MAX_LOG_LINE_BYTES`] per stream.
#[derive(Debug, Default)]
pub struct LineSplitter {
    tail: LogTail,
    partial: [Vec<u8>; 2],
}

impl LineSplitter {
    /// Adds a chunk written to `stream`.
    pub fn push(&mut self, stream: LogStream, bytes: &[u8]) {
        let index = stream as usize;
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.append(index, &rest[..end]);
            self.emit(stream);
            rest = &rest[end + 1..];
        }
        self.append(index, rest);
    }

    fn append(&mut self, index: usize, bytes: &[u8]) {
        let room = MAX_LOG_LINE_BYTES.saturating_sub(self.partial[index].len());
        self.partial[index].extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self, stream: LogStream) {
        let bytes = std::mem::take(&mut self.partial[stream as usize]);
        self.tail.push(LogLine {
            stream,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }

    /// The lines, including an unterminated last one.
    pub fn finish(mut self) -> LogChunk {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            if !self.partial[stream as usize].is_empty() {
                self.emit(stream);
            }
        }
        self.tail.finish()
    }
}
