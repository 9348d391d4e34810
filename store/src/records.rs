//! Records the store itself understands, because its transactions must: reservations held
//! for bids, instances committed by accepted awards, the audit log, and references to
//! identity material. Workloads and members are stored as whatever type the caller uses
//! (see [`crate::Store::workloads`]).

use serde::{Deserialize, Serialize};

/// A short hold on local capacity, made when this node bids for a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Unique id, chosen by the bidder and quoted back in the award.
    pub id: String,
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Replica index the bid is for.
    pub replica: u32,
    /// Placement epoch of the call for proposals.
    pub epoch: u64,
    /// Node that called for proposals.
    pub announcer: String,
    /// CPU held, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory held, in bytes.
    pub memory_bytes: u64,
    /// When the hold lapses (milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
}

/// A replica this node has committed to run, created by accepting an award.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Fencing epoch of the award; an award with a lower epoch is refused.
    pub epoch: u64,
    /// Node that runs it.
    pub node: String,
    /// CPU committed, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory committed, in bytes.
    pub memory_bytes: u64,
    /// When the award was accepted (milliseconds since the Unix epoch).
    pub accepted_at_ms: u64,
}

impl Instance {
    /// The key of the instance tree: one instance per workload replica.
    pub fn key(&self) -> String {
        instance_key(&self.workload, self.replica)
    }
}

/// `workload#replica`, zero-padded so that keys sort by replica within a workload.
pub fn instance_key(workload: &str, replica: u32) -> String {
    format!("{workload}#{replica:010}")
}

/// Where a piece of identity material lives. Key material itself never enters the store:
/// it stays in files with mode 0600.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRef {
    /// What it is (`node-credential`, `trust-bundle`, `issuer-key`, …).
    pub kind: String,
    /// File holding it.
    pub path: String,
    /// When it stops being valid, if it expires (milliseconds since the Unix epoch).
    pub not_after_ms: Option<u64>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, increasing.
    pub seq: u64,
    /// When it happened (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// Short machine-readable kind (`workload-accepted`, `reservation-expired`, …).
    pub kind: String,
    /// Workload concerned, if any.
    pub workload: Option<String>,
    /// What happened, for people.
    pub message: String,
}
