//! The authorization gate: every message a peer sends is checked against what its sender
//! may do, in the namespace the message acts on, before any state machine sees it.
//!
//! Who the sender is comes from the transport (the TLS handshake and the frame's
//! signature); what it may do comes from an [`Authorizer`]. The agent's policy file is
//! one; the simulator has its own, with seeded refusals.

use std::fmt;

use serde::Deserialize;

/// What a peer (or the local user, acting as this node) asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Own workloads in a namespace: call for proposals, award and revoke replicas.
    Submit,
    /// Bid for and run replicas of a namespace's workloads.
    Bid,
    /// Read the logs of a namespace's replicas.
    Logs,
    /// Remove a namespace's workloads.
    Remove,
    /// List a namespace's workloads and where they run.
    List,
    /// Take part in membership: probe, answer probes, gossip. Mesh-wide: a grant of it
    /// names no namespace, and [`MESH_WIDE`] is what the gate passes.
    Member,
}

/// The namespace argument of a mesh-wide action ([`Action::Member`]).
pub const MESH_WIDE: &str = "";

impl Action {
    /// Every action, for a policy that grants everything.
    pub const ALL: [Self; 6] = [
        Self::Submit,
        Self::Bid,
        Self::Logs,
        Self::Remove,
        Self::List,
        Self::Member,
    ];

    /// Whether the action is about the mesh rather than a namespace's workloads.
    pub fn is_mesh_wide(self) -> bool {
        self == Self::Member
    }

    /// The name used in policy files and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Bid => "bid",
            Self::Logs => "logs",
            Self::Remove => "remove",
            Self::List => "list",
            Self::Member => "member",
        }
    }
}

impl fmt::Display for Action {
    /// What the action does, for refusals ("may not read logs").
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Submit => "submit workloads",
            Self::Bid => "bid for workloads",
            Self::Logs => "read logs",
            Self::Remove => "remove workloads",
            Self::List => "list workloads",
            Self::Member => "take part in membership",
        })
    }
}

/// A refusal, worded for the one who asked (it travels back in rejections and log
/// replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What was refused.
    pub action: Action,
    /// Why, for people.
    pub reason: String,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Decides whether `peer` may do `action` in `namespace`. Asked once per message, so a
/// policy that changes applies to the very next one.
pub trait Authorizer: Send {
    /// `Ok` when granted.
    fn check(&self, peer: &str, action: Action, namespace: &str) -> Result<(), Denial>;
}

/// Grants everything: for tests and simulations that are not about authorization.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn check(&self, _: &str, _: Action, _: &str) -> Result<(), Denial> {
        Ok(())
    }
}
