//! Revocations held by a node and spread by gossip: the issuer sends a new one to every
//! member at once, and every node passes what it holds to a few random members every
//! [`GOSSIP_INTERVAL_MS`], so that members that missed it, and newcomers, learn it.
//! What a node holds was verified by its host (the root's signature) first.

use std::collections::{BTreeSet, VecDeque};

use crate::messages::{MAX_REVOCATIONS_PER_MESSAGE, RevocationNotice};

/// Time between gossip rounds of the revocations held.
pub const GOSSIP_INTERVAL_MS: u64 = 30_000;

/// Members each round goes to.
pub const GOSSIP_FANOUT: usize = 3;

/// Revocations held at most (a table a peer grows only with root-signed statements): as
/// many as the transport keeps, so that every one refused is also passed on.
pub const MAX_HELD: usize = 4096;

/// Revocations awaiting the host's check at once: notices from peers beyond this are
/// dropped until the host has answered (each costs a signature verification).
pub const MAX_CHECKING: usize = 256;

#[derive(Debug, Default)]
pub(super) struct Revocations {
    held: VecDeque<RevocationNotice>,
    checking: BTreeSet<RevocationNotice>,
    next_gossip_ms: u64,
    rng: u64,
}

impl Revocations {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            rng: seed | 1,
            ..Self::default()
        }
    }

    pub(super) fn holds(&self, notice: &RevocationNotice) -> bool {
        self.held
            .iter()
            .any(|h| h.subject == notice.subject && h.public_key == notice.public_key)
    }

    /// Keeps a verified notice; `false` if it was held.
    pub(super) fn keep(&mut self, notice: RevocationNotice) -> bool {
        self.checking.remove(&notice);
        if self.holds(&notice) {
            return false;
        }
        if self.held.len() == MAX_HELD {
            self.held.pop_front();
        }
        self.held.push_back(notice);
        true
    }

    /// Whether a notice from a peer should go to the host's check.
    pub(super) fn start_check(&mut self, notice: &RevocationNotice) -> bool {
        if self.holds(notice) || self.checking.contains(notice) {
            return false;
        }
        if self.checking.len() >= MAX_CHECKING {
            return false;
        }
        self.checking.insert(notice.clone());
        true
    }

    /// The host found a notice false: forget it was being checked.
    pub(super) fn refused(&mut self, notice: &RevocationNotice) {
        self.checking.remove(notice);
    }

    /// When the next round is due (none while nothing is held).
    pub(super) fn poll_timeout(&self) -> Option<u64> {
        (!self.held.is_empty()).then_some(self.next_gossip_ms)
    }

    /// At `now_ms`, if a round is due: the members (of `members`) to send to, and what.
    pub(super) fn round(
        &mut self,
        now_ms: u64,
        members: &[String],
    ) -> Option<(Vec<String>, Vec<Vec<RevocationNotice>>)> {
        if self.held.is_empty() || now_ms < self.next_gossip_ms {
            return None;
        }
        self.next_gossip_ms = now_ms + GOSSIP_INTERVAL_MS;
        let mut chosen = Vec::new();
        let mut left: Vec<&String> = members.iter().collect();
        while chosen.len() < GOSSIP_FANOUT && !left.is_empty() {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let at = (self.rng % left.len() as u64) as usize;
            chosen.push(left.swap_remove(at).clone());
        }
        Some((chosen, self.chunks()))
    }

    /// Everything held, in messages of at most [`MAX_REVOCATIONS_PER_MESSAGE`].
    pub(super) fn chunks(&self) -> Vec<Vec<RevocationNotice>> {
        let all: Vec<RevocationNotice> = self.held.iter().cloned().collect();
        all.chunks(MAX_REVOCATIONS_PER_MESSAGE)
            .map(<[RevocationNotice]>::to_vec)
            .collect()
    }
}
