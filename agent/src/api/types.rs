//! JSON bodies of the local API, shared by the agent (server) and the CLI (client).

use parley_negotiation::WorkloadSpec;
use parley_negotiation::messages::{MemberState, NodeMeta};
use serde::{Deserialize, Serialize};

use crate::runtime::podman::service::ServiceOrigin;
use crate::runtime::{ContainerState, RuntimeInfo};

/// Version prefix of every API path; bumped on an incompatible change.
pub const API_PREFIX: &str = "/v1";

/// Error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable kind (`invalid-spec`, `already-exists`, `not-found`,
    /// `image-not-found`, `podman-unavailable`, `podman-failed`, `store-unavailable`,
    /// `store-failed`, `bad-request`).
    pub kind: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// A stored workload: the desired spec plus when it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// What the user asked for.
    pub spec: WorkloadSpec,
    /// When the agent accepted it (seconds since the Unix epoch).
    pub created_at: u64,
    /// The node it was submitted to, when this node owns it as that node's successor
    /// (the submitter died); ownership returns to the submitter when it is back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
}

/// A replica this node was awarded by the workload's owner (the negotiator's type,
/// stored as it is).
pub use parley_negotiation::negotiator::Assignment;

/// One replica of a workload and the container that runs it, if any.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// Replica index.
    pub replica: u32,
    /// Fencing epoch of its placement (0 on a node alone).
    #[serde(default)]
    pub epoch: u64,
    /// Placed on another node, whose container this agent cannot see.
    #[serde(default)]
    pub remote: bool,
    /// Node the replica runs on.
    pub node: String,
    /// Container name, when a container exists.
    pub container: Option<String>,
    /// Container id, when a container exists.
    pub container_id: Option<String>,
    /// Container state; `None` when no container exists or Podman could not be asked.
    pub state: Option<ContainerState>,
    /// Exit code of an exited container.
    pub exit_code: Option<i32>,
    /// Where the replica is in its life (`running`, `exited`, `failed`, …), as the node
    /// running it reported; `None` when no report reached this node.
    #[serde(default)]
    pub phase: Option<String>,
    /// Times its container was started again after it exited or failed.
    #[serde(default)]
    pub restarts: u32,
    /// When it entered its phase (seconds since the Unix epoch, by its node's clock).
    #[serde(default)]
    pub since: Option<u64>,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// The content digest of the spec it runs, as its owner knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
}

/// A workload as `parley ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Workload name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; empty for the image default.
    pub command: Vec<String>,
    /// When it was accepted (seconds since the Unix epoch).
    pub created_at: u64,
    /// Its replicas.
    pub replicas: Vec<ReplicaStatus>,
    /// In a mesh, the node that owns (places) it, when known: the node it was submitted
    /// to, or that node's successor while it is dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// In a mesh, the newest generation of its replicated record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Desired>,
}

/// A workload's newest generation, as the node asked holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The generation.
    pub generation: u64,
    /// The content digest of what each replica should run; a replica reporting another
    /// runs an older (or newer) spec.
    pub spec_digest: String,
    /// Set when this generation rolled back an update: why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    /// The image the generation before ran, when this one came from an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<String>,
}

/// The body of `POST /v1/workloads/{name}/update`: what changes (the rest stays).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// A new image.
    #[serde(default)]
    pub image: Option<String>,
    /// A new environment (replaces the old one whole).
    #[serde(default)]
    pub env: Option<Vec<parley_negotiation::EnvVar>>,
    /// A new command.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replacements beside the replicas they replace.
    pub max_surge: u32,
    /// Replicas that may be missing meanwhile.
    pub max_unavailable: u32,
}

/// The answer to an update or an undo: the generation written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Updated {
    /// Workload name.
    pub name: String,
    /// The generation written.
    pub generation: u64,
    /// What each replica runs once it is rolled out.
    pub spec_digest: String,
    /// The image rolled out.
    pub image: String,
    /// Its replicas.
    pub replicas: u32,
}

/// Body of `POST /v1/join-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenRequest {
    /// How long the token may be used, in seconds.
    pub ttl_secs: u64,
    /// The node name it enrolls (`spiffe://TD/node/NAME`), and no other.
    pub node: String,
    /// Whether it may re-enroll a name enrolled already (a rebuilt host).
    #[serde(default)]
    pub replace: bool,
}

/// Body of `POST /v1/revocations`: revoke a node's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationRequest {
    /// The node (`spiffe://TD/node/NAME`'s NAME).
    pub node: String,
}

/// Answer to `POST /v1/revocations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevocationIssued {
    /// The node's SPIFFE ID.
    pub subject: String,
    /// The revoked key (hex).
    pub public_key: String,
    /// When (unix seconds).
    pub revoked_at: u64,
}

/// Answer to `POST /v1/join-tokens`: a one-time token for `parley join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenIssued {
    /// The token, to pass to `parley join ADDR --token`.
    pub token: String,
    /// The trust domain it enrolls into.
    pub trust_domain: String,
    /// The node it enrolls.
    pub node: String,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// Where joining nodes reach this agent (its announced mesh address).
    pub address: String,
}

/// Answer to `GET /v1/workloads/{name}/logs`: a replica's output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadLogs {
    /// Workload name.
    pub name: String,
    /// Replica index.
    pub replica: u32,
    /// The node running it (its SPIFFE ID in a mesh, its name alone).
    pub node: String,
    /// The lines, oldest first, with older ones left out when over the size bound.
    #[serde(flatten)]
    pub chunk: parley_negotiation::messages::LogChunk,
}

/// Query of `GET /v1/workloads/{name}/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    /// Which replica (default: the lowest-numbered one placed).
    pub replica: Option<u32>,
    /// Only the last this many lines.
    pub tail: Option<u32>,
    /// Only lines at or after this time (unix microseconds, the running node's clock).
    pub since_micros: Option<u64>,
    /// End the window a second before now and say where (see `LogWindow::follow`).
    #[serde(default)]
    pub follow: bool,
}

/// Answer to `GET /v1/workloads/{name}/explain`: why each replica is or is not placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadExplanation {
    /// Workload name.
    pub name: String,
    /// Replicas asked for.
    pub replicas: u32,
    /// `eventual` or `strong`.
    #[serde(default)]
    pub consistency: String,
    /// What the consistency class promises, in a sentence.
    #[serde(default)]
    pub guarantee: String,
    /// The node that owns the workload's placements, as the replicated record says, when
    /// it is another node than the one answering: only the owner knows every replica's
    /// auctions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Each replica, in order.
    pub placements: Vec<ReplicaExplanation>,
}

/// One replica's placement and the answers of its last auction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaExplanation {
    /// Replica index.
    pub replica: u32,
    /// Where it runs, if placed.
    pub node: Option<String>,
    /// Its placement epoch, if placed.
    pub epoch: Option<u64>,
    /// What each node asked answered, in node order.
    pub answers: Vec<NodeAnswer>,
    /// A strong replica's lease, as the answering node knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseExplanation>,
}

/// What the node answering `explain` knows of a strong replica's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseExplanation {
    /// `held` (this node holds it and may run the replica), `seeking` (this node was
    /// awarded the replica and runs nothing until it holds the lease), `accepted` (this
    /// node is an acceptor of the register and accepted `holder`), or `unknown`.
    pub state: String,
    /// Who holds the lease, as far as this node knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The lease's epoch: the fencing token (`PARLEY_EPOCH`) of its container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// How long the lease lasts without a renewal, by this node's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_ms: Option<u64>,
    /// Why the replica does not run here, when this node seeks the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The nodes that keep the lease register, as this node last learned them: a gone
    /// acceptor is replaced by the lease's holder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptors: Vec<String>,
}

/// What one node answered a call for proposals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeAnswer {
    /// The node.
    pub node: String,
    /// `bid`, `declined`, `excluded` (bid, but its node or failure domain already has a
    /// replica, or its reservation lapsed) or `no-answer`.
    pub outcome: String,
    /// A stable reason code, for declines and exclusions (`insufficient-memory`, …).
    pub reason: Option<String>,
    /// The same, for people, with the numbers.
    pub detail: Option<String>,
}

/// Answer to `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeList {
    /// Whether this agent takes part in a mesh (`listen` set); without one, only this
    /// node is listed.
    pub mesh: bool,
    /// This node first, then the members it knows of, by id.
    pub nodes: Vec<NodeEntry>,
}

/// One node as this agent knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The node's SPIFFE ID in a mesh; its node name otherwise.
    pub id: String,
    /// Whether this is the agent answering.
    pub this_node: bool,
    /// Liveness as membership sees it.
    pub state: MemberState,
    /// The latest incarnation heard (members only).
    pub incarnation: Option<u64>,
    /// What the node announced: version, arch, labels, capacity, address. Absent until
    /// its first announcement arrives.
    pub meta: Option<NodeMeta>,
}

impl NodeEntry {
    /// The state as `parley nodes` prints it.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
        }
    }
}

/// Answer to `GET /v1/workloads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadList {
    /// All stored workloads, by name.
    pub workloads: Vec<WorkloadStatus>,
    /// Set when Podman could not be asked for container states; the list still shows the
    /// stored workloads, with unknown states.
    pub runtime_error: Option<String>,
}

/// Answer to `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent version.
    pub version: String,
    /// This node's name.
    pub node: String,
    /// The agent's data directory.
    pub data_dir: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Number of stored workloads.
    pub workloads: usize,
    /// Podman socket in use.
    pub podman_socket: String,
    /// Whether the Podman service was found or started by the agent.
    pub podman_origin: ServiceOrigin,
    /// Podman's version and mode, when it answers.
    pub podman: Option<RuntimeInfo>,
    /// Why Podman did not answer, when it did not.
    pub podman_error: Option<String>,
    /// Set when the state store cannot take writes; the agent then takes no new work.
    pub store_error: Option<String>,
    /// Host problems found at start: what is wrong and how to fix it.
    #[serde(default)]
    pub host_warnings: Vec<crate::hostcheck::HostWarning>,
}

/// The body of `POST /v1/workloads/{name}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// Replicas wanted.
    pub replicas: u32,
}

/// The answer to a scale request: the generation written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scaled {
    /// Workload name.
    pub name: String,
    /// Replicas wanted now.
    pub replicas: u32,
    /// The workload's generation that asks for them (0 on a node alone, which keeps no
    /// generations).
    pub generation: u64,
}
