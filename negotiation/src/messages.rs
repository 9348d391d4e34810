//! Protocol message bodies. Field additions are compatible: decoders ignore fields they do
//! not know. A new message kind is not: an older node answers it with
//! [`crate::codec::DecodeError::UnknownKind`], which is why peers exchange their supported
//! protocol range before using new kinds.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::workload::WorkloadSpec;
use serde::{Deserialize, Serialize};

/// Identifies one call for proposals, unique per announcer.
pub type AuctionId = u64;

/// Resources a replica needs, or a node offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU core.
    pub cpu_millis: u64,
    /// Bytes of memory.
    pub memory_bytes: u64,
}

impl Resources {
    /// Whether `self` fits in `available`.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpu_millis <= available.cpu_millis && self.memory_bytes <= available.memory_bytes
    }

    /// `self + other`, saturating.
    pub fn plus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }

    /// `self - other`, saturating at zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }
}

/// Call for proposals: "who can host replica R of workload W?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cfp {
    /// The auction.
    pub auction: AuctionId,
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Placement epoch (fencing token) the award will carry.
    pub epoch: u64,
    /// Image, for locality scoring.
    pub image: String,
    /// What the replica needs.
    pub resources: Resources,
    /// Hard label constraints: the node must carry each label with this value.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Required CPU architecture, if any.
    #[serde(default)]
    pub arch: Option<String>,
    /// Label whose values replicas must not share (a failure domain: rack, site, …).
    #[serde(default)]
    pub spread_label: Option<String>,
    /// How bidders score themselves.
    #[serde(default)]
    pub scoring: Scoring,
    /// Until when bids are collected (announcer's clock, ms).
    pub bid_deadline_ms: u64,
}

/// Placement preference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// Prefer the emptiest node (the default): spreads load, leaves headroom everywhere.
    #[default]
    Spread,
    /// Prefer the fullest node that fits: keeps whole nodes free for large workloads.
    BinPack,
}

/// Why a node will not host a replica. Counted by kind in "why not placed" reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DeclineReason {
    /// Not enough free CPU.
    InsufficientCpu {
        /// Free now.
        free_millis: u64,
        /// Asked for.
        needed_millis: u64,
    },
    /// Not enough free memory.
    InsufficientMemory {
        /// Free now.
        free_bytes: u64,
        /// Asked for.
        needed_bytes: u64,
    },
    /// A hard label constraint does not match.
    ConstraintMismatch {
        /// The label.
        key: String,
        /// Wanted value.
        wanted: String,
        /// The node's value, if it has the label.
        found: Option<String>,
    },
    /// Wrong CPU architecture.
    WrongArch {
        /// Wanted.
        wanted: String,
        /// The node's.
        found: String,
    },
    /// The node already runs (or holds a reservation for) a replica of this workload.
    AlreadyHostsReplica,
    /// The node is draining and takes no new work.
    Draining,
    /// Policy forbids the announcer to place this workload here.
    PolicyDenied,
    /// The node holds as many reservations as it gives one announcer (or everyone).
    TooManyReservations {
        /// Reservations the asking announcer holds here.
        held: usize,
    },
    /// The node's container storage has less space left than its reserve.
    DiskFull {
        /// Space left on the filesystem.
        available_bytes: u64,
        /// Space the node keeps back.
        reserve_bytes: u64,
    },
}

impl DeclineReason {
    /// A short stable name, for counting reasons.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InsufficientCpu { .. } => "insufficient-cpu",
            Self::InsufficientMemory { .. } => "insufficient-memory",
            Self::ConstraintMismatch { .. } => "constraint-mismatch",
            Self::WrongArch { .. } => "wrong-arch",
            Self::AlreadyHostsReplica => "already-hosts-replica",
            Self::Draining => "draining",
            Self::PolicyDenied => "policy-denied",
            Self::DiskFull { .. } => "disk-full",
            Self::TooManyReservations { .. } => "too-many-reservations",
        }
    }
}

/// An offer to host a replica, backed by a reservation until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// The auction.
    pub auction: AuctionId,
    /// Replica index.
    pub replica: u32,
    /// The reservation held for this bid.
    pub reservation: String,
    /// Higher is better (0 to 10,000).
    pub score: u32,
    /// When the reservation lapses (bidder's clock, ms).
    pub expires_at_ms: u64,
    /// Whether the node already holds the image.
    #[serde(default)]
    pub has_image: bool,
    /// The node's value of the workload's spread label, if any.
    #[serde(default)]
    pub failure_domain: Option<String>,
}

/// A refusal to bid, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decline {
    /// The auction.
    pub auction: AuctionId,
    /// Replica index.
    pub replica: u32,
    /// Why.
    pub reason: DeclineReason,
}

/// The announcer picks a bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Award {
    /// The auction.
    pub auction: AuctionId,
    /// Workload key.
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Fencing epoch.
    pub epoch: u64,
    /// The bid's reservation.
    pub reservation: String,
    /// The workload, so that the winner can start the replica (an award without one is
    /// refused).
    #[serde(default)]
    pub spec: Option<WorkloadSpec>,
    /// The node the workload was submitted to, when the sender owns it as its successor.
    #[serde(default)]
    pub submitter: Option<String>,
    /// The owner's signed [`Grant`] of this replica to the winner: what the winner shows,
    /// in the workload identity it issues, to prove it was awarded the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<SignedStatement>,
}

/// An owner's statement that `node` runs replica `replica` of `workload` at `epoch`.
/// The winner of an award keeps it, and puts it beside the workload identities it issues
/// for that replica, so that a verifier can tell a node that was awarded a workload from
/// one that merely holds a node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The owner that awarded it (who signs).
    pub owner: String,
    /// The node awarded.
    pub node: String,
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Fencing epoch of the award.
    pub epoch: u64,
    /// When it was granted (ms since the Unix epoch in the agent).
    pub granted_at_ms: u64,
}

impl Grant {
    /// The bytes an owner signs.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(160);
        ciborium::into_writer(self, &mut bytes).expect("a grant is plain data");
        bytes
    }

    /// Reads the bytes of a signed grant.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        ciborium::from_reader(bytes).ok()
    }
}

/// The winner persisted the award and will run the replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// The auction.
    pub auction: AuctionId,
    /// Replica index.
    pub replica: u32,
    /// The reservation now turned into an instance.
    pub reservation: String,
}

/// The winner cannot take the award (its reservation lapsed, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// The auction.
    pub auction: AuctionId,
    /// Replica index.
    pub replica: u32,
    /// The reservation.
    pub reservation: String,
    /// Why, for people.
    pub reason: String,
}

/// A losing bid's reservation may be freed now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The auction.
    pub auction: AuctionId,
    /// The reservation to free.
    pub reservation: String,
}

/// A node reports a replica it runs to the workload's announcer, periodically and after
/// a partition heals; this is how duplicates left by lost acknowledgements converge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Workload key.
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Epoch it was awarded at.
    pub epoch: u64,
    /// The reservation the award named.
    pub reservation: String,
    /// The node's value of the workload's spread label, if any.
    #[serde(default)]
    pub failure_domain: Option<String>,
    /// The owner's grant of this replica to the reporting node: an owner takes a report
    /// only with one (a member must not claim replicas it was never awarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<SignedStatement>,
    /// What the replica's container is doing, as the reporting node last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// The content digest of the spec it runs (see [`crate::records::spec_digest`]): what
    /// tells a rolling update's new replicas from its old ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
}

/// Where a replica is in its life, as the node running it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Awarded; nothing started yet.
    Pending,
    /// Its image is being fetched.
    Pulling,
    /// Its container is being created and started.
    Starting,
    /// Its container runs.
    Running,
    /// Its container exited and its restart policy leaves it so.
    Exited,
    /// Its container exited and is being started again.
    Restarting,
    /// It could not be started (`reason` says why); retried.
    Failed,
    /// A phase a newer version reported.
    #[serde(other)]
    Unknown,
}

impl Phase {
    /// The word `parley ps` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Pulling => "pulling",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Restarting => "restarting",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

/// Longest failure reason a replica state carries.
pub const MAX_STATE_REASON_LEN: usize = 256;

/// The actual state of one replica: reported by the node running it to the owner, and by
/// the owner to whoever lists the mesh, so that `parley ps` anywhere shows what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Where it is.
    pub phase: Phase,
    /// The exit code of an exited container.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Times its container was started again after it exited or failed.
    #[serde(default)]
    pub restarts: u32,
    /// When it entered this phase (ms since the Unix epoch, by the running node's clock).
    #[serde(default)]
    pub since_ms: u64,
    /// Why it failed (at most [`MAX_STATE_REASON_LEN`] bytes).
    #[serde(default)]
    pub reason: Option<String>,
    /// Its container's id.
    #[serde(default)]
    pub container_id: Option<String>,
}

impl RunState {
    /// The state with what a peer could make oversized cut to size: a long reason is
    /// truncated, a container id that is not a short hex string dropped.
    pub fn bounded(mut self) -> Self {
        if let Some(reason) = &mut self.reason
            && reason.len() > MAX_STATE_REASON_LEN
        {
            let mut end = MAX_STATE_REASON_LEN;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        if self
            .container_id
            .as_ref()
            .is_some_and(|id| id.len() > 128 || !id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            self.container_id = None;
        }
        self
    }
}

/// The announcer tells a node to stop a replica another node holds at a newer epoch (or
/// one the workload no longer has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    /// Workload key.
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Epoch of the instance to stop.
    pub epoch: u64,
}

/// What a node tells the cluster about itself, spread by gossip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Agent version.
    pub agent_version: String,
    /// Oldest protocol version it speaks.
    pub protocol_min: u16,
    /// Newest protocol version it speaks.
    pub protocol_max: u16,
    /// CPU architecture.
    pub arch: String,
    /// Labels (failure domains, hardware, …).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Capacity available to workloads.
    pub allocatable: Resources,
    /// allocatable − committed − reserved, when last announced.
    pub free: Resources,
    /// Images held locally (for locality scoring).
    #[serde(default)]
    pub images: Vec<String>,
    /// Where its QUIC endpoint listens (`IP:PORT`), so that members can reach it.
    #[serde(default)]
    pub address: Option<String>,
    /// Whether it holds the trust domain's root key: members renew their identities there.
    #[serde(default)]
    pub issuer: bool,
    /// Space left for container storage beyond the node's disk reserve, when measured.
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// Whether it keeps lease registers, so that it can be an acceptor of a strong
    /// workload's replicas. Older agents do not say so, and are never chosen.
    #[serde(default)]
    pub lease_registers: bool,
}

/// A member's liveness as gossip reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; dead unless it refutes in time.
    Suspect,
    /// Declared dead.
    Dead,
}

/// One piece of membership gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// The member.
    pub node: String,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation: only the member itself raises it, to refute or to announce
    /// new metadata.
    pub incarnation: u64,
    /// Its metadata, when the update carries it. Shared rather than copied: the same
    /// record sits in every member table and in every piece of gossip that carries it.
    #[serde(default)]
    pub meta: Option<Arc<NodeMeta>>,
    /// The member's own signed statement of this incarnation and its metadata: what lets
    /// a third party relay them (see [`SignedStatement`]). When present it is the source
    /// of the metadata, and relays leave `meta` out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Arc<SignedStatement>>,
}

/// What a member states about itself: that it is alive at `incarnation`, with `meta`.
/// Only the member signs one; anyone relays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// The member.
    pub node: String,
    /// The incarnation it speaks at.
    pub incarnation: u64,
    /// Its metadata at that incarnation.
    pub meta: NodeMeta,
}

/// A [`Statement`] as its member signed it. The statement travels as the exact bytes
/// signed (CBOR), so that a relay by a node of another version, which may not know every
/// metadata field, still passes it on intact; `credential` proves who the signer is to a
/// receiver that has never met it (the agent puts the member's certificate there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedStatement {
    /// The CBOR encoding of a [`Statement`].
    #[serde(with = "serde_bytes")]
    pub statement: Vec<u8>,
    /// What binds the signing key to the member (opaque here).
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// The signature over `statement`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Statement {
    /// The bytes a member signs.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(256);
        // Writing CBOR into a Vec fails only if serialization of a field fails, and every
        // field here is plain data.
        ciborium::into_writer(self, &mut bytes).expect("a statement is plain data");
        bytes
    }

    /// Reads the bytes of a signed statement.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        ciborium::from_reader(bytes).ok()
    }
}

/// A probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Probe sequence number, echoed in the ack.
    pub seq: u64,
    /// Piggybacked gossip.
    #[serde(default)]
    pub updates: Vec<MemberUpdate>,
}

/// "Probe `target` for me": the indirect probe of SWIM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReq {
    /// The requester's sequence number, echoed in the forwarded ack.
    pub seq: u64,
    /// Whom to probe.
    pub target: String,
    /// Piggybacked gossip.
    #[serde(default)]
    pub updates: Vec<MemberUpdate>,
}

/// Answer to a probe (direct, or forwarded for an indirect one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The probe's sequence number.
    pub seq: u64,
    /// Piggybacked gossip.
    #[serde(default)]
    pub updates: Vec<MemberUpdate>,
}

/// Full-state exchange (push-pull): on join and periodically, so that a node that missed
/// gossip (a newcomer, a healed partition) catches up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The sender's view, in chunks small enough for one frame.
    pub updates: Vec<MemberUpdate>,
    /// Whether the receiver should answer with its own view.
    pub reply: bool,
}

/// A workload's desired state as one node wrote it: the spec at a generation, or a
/// tombstone. Records are signed by their author and replicated to every node, so no
/// single node holds a workload's desired state; two records of one workload are ordered
/// by [`RecordVersion`], the same way on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Starts at 1 and grows by one with each write (submission, change, removal).
    pub generation: u64,
    /// The node that wrote this generation (who signs).
    pub author: String,
    /// The node the workload was submitted to: its owner while it is alive.
    pub submitter: String,
    /// When it was written (ms since the Unix epoch in the agent); a tombstone is kept
    /// for [`crate::records::TOMBSTONE_KEEP_MS`] after it.
    pub written_at_ms: u64,
    /// The spec; `None` for a removed workload (a tombstone).
    pub spec: Option<WorkloadSpec>,
    /// How this generation is rolled out when it changes what replicas run (`parley
    /// update`); `None`: one replacement at a time, none missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutPolicy>,
    /// For a strong workload: the nodes that keep its replicas' lease registers, chosen
    /// when it was first submitted and kept by every later generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptors: Vec<String>,
}

/// How a rolling update proceeds, and what it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// Replacements that may run beside the replicas they replace (default 1).
    pub max_surge: u32,
    /// Replicas that may be missing meanwhile (default 0).
    pub max_unavailable: u32,
    /// The spec this generation replaced: what `parley rollout undo` and an automatic
    /// rollback go back to.
    #[serde(default)]
    pub previous: Option<WorkloadSpec>,
    /// Set on a rollback's generation: why the update it undoes failed.
    #[serde(default)]
    pub rolled_back: Option<String>,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            max_surge: 1,
            max_unavailable: 0,
            previous: None,
            rolled_back: None,
        }
    }
}

impl WorkloadRecord {
    /// The bytes an author signs.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(512);
        ciborium::into_writer(self, &mut bytes).expect("a record is plain data");
        bytes
    }

    /// Reads the bytes of a signed record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        ciborium::from_reader(bytes).ok()
    }

    /// Whether this record removes the workload.
    pub fn is_tombstone(&self) -> bool {
        self.spec.is_none()
    }
}

/// Which of two records of a workload wins: the higher generation; at one generation a
/// tombstone; then the higher `tiebreak` (a hash of the signed bytes), so that two nodes
/// that wrote one generation at once settle on the same record everywhere.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordVersion {
    /// Generation.
    pub generation: u64,
    /// Whether it is a tombstone.
    pub removed: bool,
    /// Hash of the signed record's bytes.
    pub tiebreak: u64,
}

/// One entry of a [`RecordVersions`] list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionOf {
    /// Workload key.
    pub workload: String,
    /// The version the sender holds.
    pub version: RecordVersion,
}

/// Anti-entropy, first step: a summary of every record the sender holds. A receiver whose
/// own summary differs answers with its [`RecordVersions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDigest {
    /// Order-independent hash of every (workload, version) held.
    pub fingerprint: u64,
    /// Records held.
    pub count: u32,
}

/// Anti-entropy, second step: the versions of every record the sender holds whose key is
/// after `after` and up to `through` (inclusive; `None`: to the end), in key order. A key
/// in that range and missing from the list is one the sender does not hold, so the
/// receiver can send what is newer or missing, and, when `reply` is set, ask for what it
/// lacks with its own list of the same range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordVersions {
    /// The range starts after this key (`None`: at the first).
    pub after: Option<String>,
    /// The range ends with this key (`None`: at the last).
    pub through: Option<String>,
    /// The sender's versions in the range.
    pub versions: Vec<VersionOf>,
    /// Whether the receiver should answer with its own versions where it lacks some.
    pub reply: bool,
}

/// Signed [`WorkloadRecord`]s, pushed when written and sent to fill gaps found by
/// anti-entropy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// Each a [`SignedStatement`] of a [`WorkloadRecord`] by its author.
    pub records: Vec<SignedStatement>,
}

/// Every message body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Body {
    /// Call for proposals.
    Cfp(Cfp),
    /// Offer.
    Bid(Bid),
    /// Refusal with a reason.
    Decline(Decline),
    /// Award to a bidder.
    Award(Award),
    /// Award taken.
    Accept(Accept),
    /// Award refused.
    Reject(Reject),
    /// Reservation freed.
    Release(Release),
    /// A replica a node runs.
    Instance(Instance),
    /// Stop a stale replica.
    Revoke(Revoke),
    /// Membership probe.
    Ping(Ping),
    /// Indirect probe request.
    PingReq(PingReq),
    /// Probe answer.
    Ack(Ack),
    /// Membership state exchange.
    Sync(Sync),
    /// "Which workloads do you own?" (for `parley ps` on any node).
    WorkloadQuery(WorkloadQuery),
    /// The workloads a node owns and where their replicas run.
    WorkloadReport(WorkloadReport),
    /// Asks a workload's owner to remove it (`parley rm` on another node).
    RemoveWorkload(RemoveWorkload),
    /// Asks the node running a replica for its output (`parley logs`).
    LogsRequest(LogsRequest),
    /// The output asked for, or why there is none.
    LogsReply(LogsReply),
    /// "The owner of this workload died and you are its successor": sent by the nodes
    /// running its replicas, with the workload, so that the successor can take it over.
    Handover(Handover),
    /// Node keys the trust domain's root revoked, each signed by the root: passed on by
    /// anyone, checked by every receiver's host before it is believed.
    Revocations(Revocations),
    /// Anti-entropy summary of the workload records held.
    RecordDigest(RecordDigest),
    /// The versions of the workload records held in a key range.
    RecordVersions(RecordVersions),
    /// Workload records, signed by their authors.
    Records(Records),
    /// A step of a strong replica's lease register round ([`crate::register`]).
    Register(crate::register::RegisterMessage),
}

/// A root-signed revocation of one node key, as it travels (the identity crate signs and
/// verifies it; here it is opaque).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RevocationNotice {
    /// The node, `spiffe://TD/node/NAME`.
    pub subject: String,
    /// Its revoked public key (hex).
    pub public_key: String,
    /// When it was revoked (unix seconds).
    pub revoked_at: u64,
    /// The root's signature (hex).
    pub signature: String,
}

/// Most revocations one message carries, so that it fits in a frame.
pub const MAX_REVOCATIONS_PER_MESSAGE: usize = 128;

/// Revocations passed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    /// At most [`MAX_REVOCATIONS_PER_MESSAGE`].
    pub notices: Vec<RevocationNotice>,
}

/// A workload handed to its owner's successor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// The node it was submitted to.
    pub submitter: String,
    /// The workload.
    pub spec: WorkloadSpec,
}

/// Most workloads one [`WorkloadReport`] carries, so that it fits in a frame.
pub const MAX_REPORTED_WORKLOADS: usize = 200;

/// Asks a node for the workloads it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadQuery {
    /// Matches the report to the query.
    pub request: u64,
}

/// A node's answer to a [`WorkloadQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// The query answered.
    pub request: u64,
    /// The workloads it owns (at most [`MAX_REPORTED_WORKLOADS`]).
    pub workloads: Vec<OwnedWorkload>,
}

/// A workload as its owner knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedWorkload {
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Image reference.
    pub image: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Where the placed ones run.
    pub placements: Vec<Placement>,
}

/// Where one replica runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Replica index.
    pub replica: u32,
    /// The node running it.
    pub node: String,
    /// Its placement epoch.
    pub epoch: u64,
    /// What it is doing, as the node running it last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// The content digest of the spec it runs, as its owner knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
}

/// Asks the owner of a workload to remove it and stop its replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveWorkload {
    /// Workload key (`namespace/name`).
    pub workload: String,
}

/// Most bytes of log text one [`LogsReply`] carries, so that it fits in a frame with room
/// to spare for the envelope and per-line overhead.
pub const MAX_LOG_REPLY_BYTES: usize = 32 * 1024;

/// Longest log line kept whole; longer ones are cut (a line is not a file).
pub const MAX_LOG_LINE_BYTES: usize = 4 * 1024;

/// Which part of a container's output to read. Times are unix microseconds, as read by
/// the clock of the node running the replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogWindow {
    /// Only lines logged at or after this time.
    #[serde(default)]
    pub since_micros: Option<u64>,
    /// Only lines logged at or before this time.
    #[serde(default)]
    pub until_micros: Option<u64>,
    /// Only the last this many lines.
    #[serde(default)]
    pub tail: Option<u32>,
    /// For following a log: without `until_micros`, the node running the replica ends the
    /// window one second before its own now, so that no line can still arrive inside it,
    /// and says where it ended; the next window starts just after.
    #[serde(default)]
    pub follow: bool,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a container's output, without its newline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Where it was written.
    pub stream: LogStream,
    /// The text (invalid UTF-8 replaced, cut at [`MAX_LOG_LINE_BYTES`]).
    pub text: String,
}

/// The newest lines of a window, at most [`MAX_LOG_REPLY_BYTES`] of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Older lines of the window left out to respect the size bound.
    pub skipped: u64,
    /// Where the window ended, when the node running the replica chose it (`follow`).
    #[serde(default)]
    pub until_micros: Option<u64>,
}

/// What a line counts against [`MAX_LOG_REPLY_BYTES`] beyond its text: the encoding's
/// per-line overhead (a two-key map), so that many short lines cannot outgrow a frame.
const LOG_LINE_OVERHEAD: usize = 32;

impl LogChunk {
    /// Keeps the newest of `lines` (oldest first) that fit [`MAX_LOG_REPLY_BYTES`],
    /// cutting each to [`MAX_LOG_LINE_BYTES`], and counts the rest as skipped.
    pub fn newest(lines: Vec<LogLine>) -> Self {
        let mut tail = LogTail::default();
        for line in lines {
            tail.push(line);
        }
        tail.finish()
    }
}

/// Collects a stream of log lines of any length in bounded memory: it keeps the newest
/// that fit [`MAX_LOG_REPLY_BYTES`] and counts the ones it drops.
#[derive(Debug, Default)]
pub struct LogTail {
    lines: std::collections::VecDeque<LogLine>,
    bytes: usize,
    skipped: u64,
}

impl LogTail {
    /// Adds the next line, cut to [`MAX_LOG_LINE_BYTES`]; drops the oldest kept lines
    /// while the total is over the bound.
    pub fn push(&mut self, mut line: LogLine) {
        if line.text.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !line.text.is_char_boundary(cut) {
                cut -= 1;
            }
            line.text.truncate(cut);
        }
        self.bytes += line.text.len() + LOG_LINE_OVERHEAD;
        self.lines.push_back(line);
        while self.bytes > MAX_LOG_REPLY_BYTES
            && let Some(oldest) = self.lines.pop_front()
        {
            self.bytes -= oldest.text.len() + LOG_LINE_OVERHEAD;
            self.skipped += 1;
        }
    }

    /// The lines kept, oldest first.
    pub fn finish(self) -> LogChunk {
        LogChunk {
            lines: self.lines.into(),
            skipped: self.skipped,
            until_micros: None,
        }
    }
}

/// Asks the node running a replica for its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// Matches the reply to the request.
    pub request: u64,
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Which lines.
    pub window: LogWindow,
}

/// The answer to a [`LogsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    /// The request answered.
    pub request: u64,
    /// The lines, or why there are none.
    pub result: Result<LogChunk, LogsFailure>,
}

/// Why a node returned no logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsFailure {
    /// The policy refused the asker (as opposed to: no such replica here, Podman down).
    pub denied: bool,
    /// What happened, for people.
    pub message: String,
}

impl Body {
    /// The kind, also the signature context.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Cfp(_) => "cfp",
            Self::Bid(_) => "bid",
            Self::Decline(_) => "decline",
            Self::Award(_) => "award",
            Self::Accept(_) => "accept",
            Self::Reject(_) => "reject",
            Self::Release(_) => "release",
            Self::Instance(_) => "instance",
            Self::Revoke(_) => "revoke",
            Self::Ping(_) => "ping",
            Self::PingReq(_) => "ping-req",
            Self::Ack(_) => "ack",
            Self::Sync(_) => "sync",
            Self::WorkloadQuery(_) => "workload-query",
            Self::WorkloadReport(_) => "workload-report",
            Self::RemoveWorkload(_) => "remove-workload",
            Self::LogsRequest(_) => "logs-request",
            Self::LogsReply(_) => "logs-reply",
            Self::Handover(_) => "handover",
            Self::Revocations(_) => "revocations",
            Self::RecordDigest(_) => "record-digest",
            Self::RecordVersions(_) => "record-versions",
            Self::Records(_) => "records",
            Self::Register(_) => "register",
        }
    }
}
