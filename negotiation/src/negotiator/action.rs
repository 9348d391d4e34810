//! What goes in and out of a [`super::Negotiator`] besides messages: requests from the
//! node's own users, work the host must carry out, and notices for logs and metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auction::{AnnouncerEvent, Explanation, PlacementRequest};
use crate::membership::MembershipEvent;
use crate::messages::{
    LogChunk, LogWindow, LogsFailure, OwnedWorkload, RevocationNotice, RunState, SignedStatement,
};
use crate::register::SlotState;
use crate::workload::WorkloadSpec;

use super::gate::Action;

/// A replica this node was awarded by the workload's owner: what it must run. Stored
/// (flushed) before the award is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The workload, as the owner sent it with the award.
    pub spec: WorkloadSpec,
    /// Replica index.
    pub replica: u32,
    /// Fencing epoch of the award.
    pub epoch: u64,
    /// The owner (the announcer that awarded it), by SPIFFE ID.
    pub owner: String,
    /// The node the workload was submitted to, when the owner awarded it as that node's
    /// successor (`None`: the owner is the submitter).
    #[serde(default)]
    pub submitter: Option<String>,
    /// The reservation the award named.
    pub reservation: String,
    /// This node's value of the workload's spread label, if any.
    pub failure_domain: Option<String>,
    /// When it was awarded (milliseconds since the Unix epoch).
    pub assigned_at_ms: u64,
    /// The owner's signed grant of the replica to this node (checked when the award
    /// came), which the workload identities of the replica carry. None from an owner
    /// of an older version: the replica then runs without a workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<crate::messages::SignedStatement>,
}

/// Where a workload's replicas run: replica → (node, epoch).
pub type Placements = BTreeMap<u32, (String, u64)>;

/// Why the host could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The store could not persist it (full disk, I/O error, store closing).
    #[error("the store could not persist it: {0}")]
    Store(String),
    /// The container engine failed or did not answer.
    #[error("{0}")]
    Runtime(String),
    /// The replica has no container on this node.
    #[error("{0}")]
    NotRunning(String),
}

/// A request from this node's own users (the local API), answered through
/// [`HostAction::Answer`] with the token it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Place a workload this node now owns (already stored).
    Place(PlacementRequest),
    /// Take up a workload this node owned before a restart: its running replicas report
    /// themselves first, then what is missing is placed.
    Adopt(PlacementRequest),
    /// Forget a workload this node owns and revoke its replicas everywhere.
    Remove(String),
    /// Why each replica of an owned workload is or is not placed.
    Explain(String),
    /// Where an owned workload's replicas run.
    Placements(String),
    /// Every workload any alive member owns, this node included; members that do not
    /// answer within [`super::QUERY_TIMEOUT_MS`] are left out.
    ListMesh,
    /// Ask every alive member to remove a workload; its owner does.
    RemoveRemote(String),
    /// Read a replica's output from the node that runs it.
    Logs {
        /// The node running the replica.
        node: String,
        /// Workload key (`namespace/name`).
        workload: String,
        /// Replica index.
        replica: u32,
        /// Which lines.
        window: LogWindow,
    },
    /// A revocation this node's issuer made (the host applies it already): kept and sent
    /// to every member, as [`super::Negotiator::handle_revocation`] does with a verified one.
    Revoke(RevocationNotice),
    /// What the host saw of replicas this node runs: (workload key, replica, state), sent
    /// with their next reports (see [`super::Negotiator::set_replica_state`]).
    ReplicaStates(Vec<(String, u32, RunState)>),
    /// Change how many replicas a workload has, wherever it is owned: writes its next
    /// generation, which its owner follows.
    Scale {
        /// Workload key.
        workload: String,
        /// Replicas wanted.
        replicas: u32,
    },
    /// Change what a workload's replicas run (image, command, environment…; its replica
    /// count stays), wherever it is owned: writes its next generation, which its owner
    /// rolls out as `policy` says.
    Update {
        /// The new spec.
        spec: Box<WorkloadSpec>,
        /// How to roll it out.
        policy: crate::messages::RolloutPolicy,
    },
    /// Go back to the spec a workload's newest generation replaced.
    Undo(String),
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// For [`Request::Explain`]: placements, each replica's last auction, and what this
    /// node knows of the leases of a strong workload's replicas.
    Explain(
        Placements,
        BTreeMap<u32, Explanation>,
        BTreeMap<u32, super::strong::LeaseView>,
    ),
    /// For [`Request::Placements`].
    Placements(Placements),
    /// For [`Request::ListMesh`]: (owner, workload) pairs.
    ListMesh(Vec<(String, OwnedWorkload)>),
    /// For [`Request::Logs`].
    Logs(Result<LogChunk, LogsFailure>),
}

/// Work the host (store, container engine) must carry out. Those with a token report
/// back through the matching `handle_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// Persist (flushed) an award, then call [`super::Negotiator::handle_committed`]:
    /// the Accept that acknowledges it leaves only after `Ok`.
    Commit {
        /// Matches the result to the award.
        token: u64,
        /// What to store.
        assignment: Assignment,
    },
    /// Store (flushed) a workload this node takes over as the successor of its dead
    /// submitter, then call [`super::Negotiator::handle_adopted`].
    Adopt {
        /// Matches the result to the workload.
        token: u64,
        /// The workload.
        spec: WorkloadSpec,
        /// The node it was submitted to.
        submitter: String,
    },
    /// Start the container of a committed replica.
    Start {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
    },
    /// Stop and forget a replica its owner revoked (only if still at `epoch`).
    Revoke {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// The epoch revoked.
        epoch: u64,
    },
    /// Forget a workload this node owned (removed at another node's request, or given
    /// back to its submitter); `why` goes into the audit log.
    Forget {
        /// Workload key.
        workload: String,
        /// For the audit log.
        why: &'static str,
    },
    /// Read a replica's output for a peer, then call
    /// [`super::Negotiator::handle_logs_read`].
    ReadLogs {
        /// The peer's request id.
        request: u64,
        /// The peer asking.
        from: String,
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Which lines.
        window: LogWindow,
    },
    /// Answer a [`Request`].
    Answer {
        /// The token the request came with.
        token: u64,
        /// The answer.
        reply: Reply,
    },
    /// Store (replace) this node's copy of a workload's record, so that a restart does
    /// not lose desired state; give them back with
    /// [`super::Negotiator::restore_records`].
    StoreRecord {
        /// Workload key.
        workload: String,
        /// The record as its author signed it.
        record: SignedStatement,
    },
    /// Delete the stored record of a workload whose tombstone was kept long enough.
    DropRecord {
        /// Workload key.
        workload: String,
    },
    /// Store (flushed) this node's acceptor state of a strong replica's lease register,
    /// then call [`super::Negotiator::handle_register_stored`]: the answer that promises
    /// or accepts leaves only after `Ok`.
    StoreRegister {
        /// Matches the result to the answer held.
        token: u64,
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// What to store.
        slot: SlotState,
    },
    /// Delete the stored register of a removed workload's replica (its lease is over).
    DropRegister {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
    },
    /// This node holds (acquired or renewed) the lease of a strong replica it was
    /// awarded: run its container, with `epoch` as its fencing token (a container of an
    /// older epoch is replaced), and make sure it is stopped by `fence_at_ms` (this
    /// node's clock) unless a later `RunLeased` moves the deadline on.
    RunLeased {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The lease's epoch.
        epoch: u64,
        /// When to begin stopping it, by this node's clock.
        fence_at_ms: u64,
    },
    /// Stop a strong replica's container now, keeping its assignment: the lease could not
    /// be renewed and ends once the stop timeout has passed.
    Fence {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The epoch it ran at.
        epoch: u64,
        /// Why, for logs.
        why: String,
    },
    /// Check a revocation a peer passed on (the root's signature) and, if it holds, stop
    /// trusting that key; then call [`super::Negotiator::handle_revocation`].
    CheckRevocation {
        /// The revocation.
        notice: RevocationNotice,
    },
}

/// Something that happened, for logs and metrics; nothing needs to be done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A strong replica awarded here waits for another node's lease to run out.
    LeaseWaiting {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The node holding the lease.
        holder: String,
        /// Its epoch.
        epoch: u64,
        /// Most of its lease left.
        lease_left_ms: u64,
    },
    /// The acceptors of a strong replica held here changed (an acceptor was found gone
    /// and replaced): first to both sets at once, then to the new one alone.
    AcceptorsChanged {
        /// Workload key.
        workload: String,
        /// The replica.
        replica: u32,
        /// The acceptors now, and those being left while the change is half done.
        set: crate::register::AcceptorSet,
    },
    /// A register message was malformed or out of bounds, and dropped.
    RegisterRefused {
        /// Its sender.
        from: String,
        /// Why.
        reason: String,
    },
    /// Membership changed (the view of members should be republished).
    Membership(MembershipEvent),
    /// A node key's revocation was verified and is kept and spread from now on.
    KeyRevoked {
        /// The node whose key it is.
        subject: String,
    },
    /// An auction of a workload this node owns ended: placed, or not (and why).
    Auction(AnnouncerEvent),
    /// A replica's node died; it is placed again.
    ReplicaLost {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// The dead node.
        node: String,
    },
    /// A message was refused by the authorization gate.
    Denied {
        /// Its sender.
        from: String,
        /// Its kind.
        kind: &'static str,
        /// The workload it named.
        workload: String,
        /// What was refused, and why.
        action: Action,
        /// The refusal, for people.
        reason: String,
    },
    /// A newer generation of an owned workload changes what its replicas run: they are
    /// replaced one by one.
    RollingOut {
        /// Workload key.
        workload: String,
        /// The image rolled out.
        image: String,
    },
    /// An owned workload's replica count changed (a newer generation): replicas are
    /// being placed or revoked.
    Rescaled {
        /// Workload key.
        workload: String,
        /// Replicas it has now.
        replicas: u32,
    },
    /// A workload record newer than the one held was taken (written here or received).
    RecordTaken {
        /// Workload key.
        workload: String,
        /// Its generation.
        generation: u64,
        /// Whether it is a tombstone.
        removed: bool,
        /// The node that wrote it.
        author: String,
    },
    /// A workload record was refused: malformed, not signed by its author, or written by
    /// a node not allowed to; `from` sent it (this node's id: its store).
    RecordRefused {
        /// The peer.
        from: String,
        /// Why.
        reason: String,
    },
    /// A peer's award or hand-over was refused: its spec is invalid, names another
    /// workload, or asks other resources than the bid reserved.
    AwardRefused {
        /// The peer.
        from: String,
        /// The workload it named.
        workload: String,
        /// Why.
        reason: String,
    },
    /// A peer's report of a replica was refused: it carried no grant of that replica to
    /// it from an owner.
    InstanceRefused {
        /// The peer.
        from: String,
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Why.
        reason: String,
    },
    /// An award came without the spec needed to run it; it is refused.
    AwardWithoutSpec {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
    },
    /// The host could not persist an award: it is not acknowledged.
    CommitFailed {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Why.
        error: HostError,
    },
    /// An award was persisted and acknowledged; the replica starts.
    Committed {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Fencing epoch.
        epoch: u64,
        /// The owner that awarded it.
        owner: String,
    },
    /// The owner revoked a replica this node ran.
    Revoked {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// The epoch revoked.
        epoch: u64,
    },
    /// This node takes over a workload whose submitter died.
    TakingOver {
        /// Workload key.
        workload: String,
        /// The dead submitter.
        submitter: String,
    },
    /// The host could not store a workload to take over; it is left for now.
    AdoptFailed {
        /// Workload key.
        workload: String,
        /// Why.
        error: HostError,
    },
    /// The submitter of a workload this node took over is back and owns it again.
    GivenBack {
        /// Workload key.
        workload: String,
    },
    /// This node hands a workload whose owner died to its successor.
    HandedOver {
        /// Workload key.
        workload: String,
        /// The successor.
        to: String,
    },
    /// A peer handed this node a workload whose owner died.
    HandedTo {
        /// Workload key.
        workload: String,
        /// The dead submitter.
        submitter: String,
        /// The peer.
        by: String,
    },
    /// A peer asked this node to remove a workload it owns.
    RemovedByPeer {
        /// Workload key.
        workload: String,
        /// The peer.
        by: String,
    },
    /// The container storage fell below its reserve: new replicas are declined.
    DiskLow {
        /// Space left (bytes).
        available: u64,
        /// The reserve (bytes).
        reserve: u64,
    },
    /// A message left this node (to a peer or to itself), for counters.
    Sent {
        /// Its kind.
        kind: &'static str,
        /// For a decline, its reason code.
        decline: Option<&'static str>,
    },
}
