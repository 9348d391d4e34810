//! The bidder: answers calls for proposals from its free capacity, holds reservations
//! that expire, and commits awards it can honour.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::messages::{
    Accept, Award, Bid, Body, Cfp, Decline, DeclineReason, Instance, Reject, Release, Resources,
    Revoke, Scoring,
};

/// What the bidder knows about its own node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProfile {
    /// Node id (SPIFFE ID).
    pub id: String,
    /// CPU architecture.
    pub arch: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Capacity available to workloads.
    pub allocatable: Resources,
}

/// Reservations one announcer may hold on this node at once: far more than auctions run
/// at once, few enough that one submitter cannot hold the node's capacity hostage.
pub const MAX_RESERVATIONS_PER_ANNOUNCER: usize = 256;

/// Reservations this node holds at once, for everyone.
pub const MAX_RESERVATIONS: usize = 1024;

/// A held reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Reservation id.
    pub id: String,
    /// Who called for proposals.
    pub announcer: String,
    /// The auction.
    pub auction: u64,
    /// Workload key.
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Epoch offered.
    pub epoch: u64,
    /// Resources held.
    pub resources: Resources,
    /// When the hold lapses (ms).
    pub expires_at_ms: u64,
    /// The node's value of the workload's spread label, if any.
    pub failure_domain: Option<String>,
}

/// A replica this node committed to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The announcer that awarded it (reports go there).
    pub announcer: String,
    /// Workload key.
    pub workload: String,
    /// Replica index.
    pub replica: u32,
    /// Fencing epoch.
    pub epoch: u64,
    /// Resources committed.
    pub resources: Resources,
    /// The reservation it came from (to answer a repeated award).
    pub reservation: String,
    /// The node's value of the workload's spread label, if any.
    pub failure_domain: Option<String>,
}

/// Something the driver must act on before sending this bidder's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BidderEvent {
    /// Persist (flushed) before the queued `Accept` goes out, then start the replica.
    Committed(Committed),
    /// A reservation lapsed without an award.
    Expired(Reservation),
    /// The announcer revoked a replica: stop it and forget it.
    Revoked(Committed),
}

/// Bidder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BidderConfig {
    /// How long a reservation is held for a bid.
    pub reservation_ttl_ms: u64,
}

impl Default for BidderConfig {
    fn default() -> Self {
        Self {
            reservation_ttl_ms: 5_000,
        }
    }
}

/// The bidder's state machine.
#[derive(Debug)]
pub struct Bidder {
    profile: NodeProfile,
    config: BidderConfig,
    images: BTreeSet<String>,
    draining: bool,
    /// Space left on the container storage and the reserve kept back, when measured.
    disk: Option<(u64, u64)>,
    reservations: BTreeMap<String, Reservation>,
    committed: BTreeMap<(String, u32), Committed>,
    /// Distinguishes this run's reservation ids from those of an earlier run of the node,
    /// which an announcer may still hold.
    boot: u64,
    next_reservation: u64,
    transmits: VecDeque<(String, Body)>,
    events: VecDeque<BidderEvent>,
}

impl Bidder {
    /// A bidder for `profile`.
    pub fn new(profile: NodeProfile, config: BidderConfig) -> Self {
        Self {
            profile,
            config,
            images: BTreeSet::new(),
            draining: false,
            disk: None,
            reservations: BTreeMap::new(),
            committed: BTreeMap::new(),
            boot: 0,
            next_reservation: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A bidder for a node that ran before: `boot` is a number that differs from every
    /// earlier run's (the agent counts its starts in its store), and `committed` are the
    /// replicas the node persisted. They are reported as before, and an owner that
    /// re-placed them meanwhile revokes them by epoch.
    pub fn restarted(
        profile: NodeProfile,
        config: BidderConfig,
        boot: u64,
        committed: impl IntoIterator<Item = Committed>,
    ) -> Self {
        let mut bidder = Self::new(profile, config);
        bidder.boot = boot;
        bidder.committed = committed
            .into_iter()
            .map(|c| ((c.workload.clone(), c.replica), c))
            .collect();
        bidder
    }

    /// The node's profile.
    pub fn profile(&self) -> &NodeProfile {
        &self.profile
    }

    /// Records that the node holds `image` (for locality scoring).
    pub fn add_image(&mut self, image: &str) {
        self.images.insert(image.to_owned());
    }

    /// Records the space left on the container storage and the reserve kept back: below
    /// the reserve, the node declines new work (`DiskFull`).
    pub fn set_disk(&mut self, available_bytes: u64, reserve_bytes: u64) {
        self.disk = Some((available_bytes, reserve_bytes));
    }

    /// Stops or resumes taking new work.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Resources committed to replicas.
    pub fn committed_resources(&self) -> Resources {
        self.committed
            .values()
            .fold(Resources::default(), |sum, c| sum.plus(&c.resources))
    }

    /// Resources held by reservations.
    pub fn reserved_resources(&self) -> Resources {
        self.reservations
            .values()
            .fold(Resources::default(), |sum, r| sum.plus(&r.resources))
    }

    /// allocatable − committed − reserved.
    pub fn free(&self) -> Resources {
        self.profile
            .allocatable
            .minus(&self.committed_resources())
            .minus(&self.reserved_resources())
    }

    /// Reservations held now.
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    /// Replicas committed.
    pub fn committed(&self) -> impl Iterator<Item = &Committed> {
        self.committed.values()
    }

    /// Forgets a committed replica (its workload was removed or moved).
    pub fn remove_instance(&mut self, workload: &str, replica: u32) -> Option<Committed> {
        self.committed.remove(&(workload.to_owned(), replica))
    }

    fn hosts_workload(&self, workload: &str) -> bool {
        self.committed.keys().any(|(w, _)| w == workload)
            || self.reservations.values().any(|r| r.workload == workload)
    }

    fn decline_reason(&self, cfp: &Cfp) -> Option<DeclineReason> {
        if self.draining {
            return Some(DeclineReason::Draining);
        }
        if let Some((available_bytes, reserve_bytes)) = self.disk
            && available_bytes < reserve_bytes
        {
            return Some(DeclineReason::DiskFull {
                available_bytes,
                reserve_bytes,
            });
        }
        if let Some(wanted) = &cfp.arch
            && wanted != &self.profile.arch
        {
            return Some(DeclineReason::WrongArch {
                wanted: wanted.clone(),
                found: self.profile.arch.clone(),
            });
        }
        for (key, wanted) in &cfp.constraints {
            let found = self.profile.labels.get(key);
            if found != Some(wanted) {
                return Some(DeclineReason::ConstraintMismatch {
                    key: key.clone(),
                    wanted: wanted.clone(),
                    found: found.cloned(),
                });
            }
        }
        if self.hosts_workload(&cfp.workload) {
            return Some(DeclineReason::AlreadyHostsReplica);
        }
        let free = self.free();
        if cfp.resources.cpu_millis > free.cpu_millis {
            return Some(DeclineReason::InsufficientCpu {
                free_millis: free.cpu_millis,
                needed_millis: cfp.resources.cpu_millis,
            });
        }
        if cfp.resources.memory_bytes > free.memory_bytes {
            return Some(DeclineReason::InsufficientMemory {
                free_bytes: free.memory_bytes,
                needed_bytes: cfp.resources.memory_bytes,
            });
        }
        None
    }

    /// Score in 0..=10,000: how full the node would be after placement (bin-pack) or how
    /// empty (spread), averaged over CPU and memory, plus a bonus for a cached image.
    fn score(&self, cfp: &Cfp) -> u32 {
        let used = self
            .profile
            .allocatable
            .minus(&self.free())
            .plus(&cfp.resources);
        // A resource the node has none of counts as full.
        let share = |used: u64, total: u64| {
            used.min(total)
                .saturating_mul(10_000)
                .checked_div(total)
                .map_or(10_000, |share| share as u32)
        };
        let fullness = (share(used.cpu_millis, self.profile.allocatable.cpu_millis)
            + share(used.memory_bytes, self.profile.allocatable.memory_bytes))
            / 2;
        let base = match cfp.scoring {
            Scoring::BinPack => fullness,
            Scoring::Spread => 10_000 - fullness,
        };
        let bonus = if self.images.contains(&cfp.image) {
            1_000
        } else {
            0
        };
        (base * 9 / 10 + bonus).min(10_000)
    }

    /// Answers a call for proposals with a bid (holding a reservation) or a decline.
    pub fn handle_cfp(&mut self, now_ms: u64, from: &str, cfp: &Cfp) {
        self.expire(now_ms);
        // An announcer runs one auction per workload at a time, so a newer call for the
        // same workload means its earlier auctions are over and any bid still held for them
        // lost: their releases are on the way, possibly overtaken by this call on another
        // stream. Holding them would make this node decline as if it hosted a replica.
        self.reservations.retain(|_, r| {
            !(r.announcer == from && r.workload == cfp.workload && r.auction < cfp.auction)
        });
        let held = self
            .reservations
            .values()
            .filter(|r| r.announcer == from)
            .count();
        let full =
            held >= MAX_RESERVATIONS_PER_ANNOUNCER || self.reservations.len() >= MAX_RESERVATIONS;
        let refusal = if full {
            Some(DeclineReason::TooManyReservations { held })
        } else {
            self.decline_reason(cfp)
        };
        if let Some(reason) = refusal {
            self.transmits.push_back((
                from.to_owned(),
                Body::Decline(Decline {
                    auction: cfp.auction,
                    replica: cfp.replica,
                    reason,
                }),
            ));
            return;
        }
        self.next_reservation += 1;
        let reservation = Reservation {
            id: format!(
                "{}#{}.{}",
                self.profile.id, self.boot, self.next_reservation
            ),
            announcer: from.to_owned(),
            auction: cfp.auction,
            workload: cfp.workload.clone(),
            replica: cfp.replica,
            epoch: cfp.epoch,
            resources: cfp.resources,
            expires_at_ms: now_ms + self.config.reservation_ttl_ms,
            failure_domain: cfp
                .spread_label
                .as_ref()
                .and_then(|label| self.profile.labels.get(label).cloned()),
        };
        let bid = Bid {
            auction: cfp.auction,
            replica: cfp.replica,
            reservation: reservation.id.clone(),
            score: self.score(cfp),
            expires_at_ms: reservation.expires_at_ms,
            has_image: self.images.contains(&cfp.image),
            failure_domain: cfp
                .spread_label
                .as_ref()
                .and_then(|label| self.profile.labels.get(label).cloned()),
        };
        self.reservations
            .insert(reservation.id.clone(), reservation);
        self.transmits.push_back((from.to_owned(), Body::Bid(bid)));
    }

    /// Commits an award if its reservation is still held, else rejects it. A repeated
    /// award for a reservation already committed is acknowledged again.
    pub fn handle_award(&mut self, now_ms: u64, from: &str, award: &Award) {
        self.expire(now_ms);
        let key = (award.workload.clone(), award.replica);
        if let Some(done) = self.committed.get(&key)
            && done.reservation == award.reservation
        {
            self.transmits
                .push_back((from.to_owned(), Body::Accept(accept(award))));
            return;
        }
        let refusal = match self.reservations.get(&award.reservation) {
            None => Some("no such reservation (expired or released)"),
            Some(r) if r.announcer != from => Some("the reservation belongs to another announcer"),
            Some(r) if r.workload != award.workload || r.replica != award.replica => {
                Some("the reservation is for another replica")
            }
            Some(_)
                if self
                    .committed
                    .get(&key)
                    .is_some_and(|c| c.epoch >= award.epoch) =>
            {
                Some("the replica is already committed at this or a newer epoch")
            }
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            self.transmits.push_back((
                from.to_owned(),
                Body::Reject(Reject {
                    auction: award.auction,
                    replica: award.replica,
                    reservation: award.reservation.clone(),
                    reason: reason.to_owned(),
                }),
            ));
            return;
        }
        let Some(reservation) = self.reservations.remove(&award.reservation) else {
            return;
        };
        let committed = Committed {
            announcer: reservation.announcer,
            workload: reservation.workload,
            replica: reservation.replica,
            epoch: award.epoch,
            resources: reservation.resources,
            reservation: reservation.id,
            failure_domain: reservation.failure_domain,
        };
        self.committed.insert(key, committed.clone());
        // The event comes first: the driver persists it before sending the Accept.
        self.events.push_back(BidderEvent::Committed(committed));
        self.transmits
            .push_back((from.to_owned(), Body::Accept(accept(award))));
    }

    /// Frees a losing bid's reservation.
    pub fn handle_release(&mut self, from: &str, release: &Release) {
        if self
            .reservations
            .get(&release.reservation)
            .is_some_and(|r| r.announcer == from)
        {
            self.reservations.remove(&release.reservation);
        }
    }

    /// Stops a replica if the revocation names its epoch (a newer award stands).
    pub fn handle_revoke(&mut self, from: &str, revoke: &Revoke) {
        let key = (revoke.workload.clone(), revoke.replica);
        if self
            .committed
            .get(&key)
            .is_some_and(|c| c.announcer == from && c.epoch == revoke.epoch)
            && let Some(committed) = self.committed.remove(&key)
        {
            self.events.push_back(BidderEvent::Revoked(committed));
        }
    }

    /// Points a workload's replicas at a new owner: reports go there, and only it may
    /// revoke them.
    pub fn set_owner(&mut self, workload: &str, owner: &str) {
        for c in self
            .committed
            .values_mut()
            .filter(|c| c.workload == workload)
        {
            c.announcer = owner.to_owned();
        }
    }

    /// Queues a report of every committed replica to its announcer.
    pub fn report_instances(&mut self) {
        for c in self.committed.values() {
            self.transmits.push_back((
                c.announcer.clone(),
                Body::Instance(Instance {
                    workload: c.workload.clone(),
                    replica: c.replica,
                    epoch: c.epoch,
                    reservation: c.reservation.clone(),
                    failure_domain: c.failure_domain.clone(),
                    // The negotiator adds the grant and the state as the report leaves.
                    grant: None,
                    state: None,
                    spec_digest: None,
                }),
            ));
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let expired: Vec<String> = self
            .reservations
            .values()
            .filter(|r| r.expires_at_ms <= now_ms)
            .map(|r| r.id.clone())
            .collect();
        for id in expired {
            if let Some(r) = self.reservations.remove(&id) {
                self.events.push_back(BidderEvent::Expired(r));
            }
        }
    }

    /// Lets time pass: drops lapsed reservations.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.expire(now_ms);
    }

    /// When [`Bidder::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.reservations.values().map(|r| r.expires_at_ms).min()
    }

    /// The next message to send: `(to, body)`.
    pub fn poll_transmit(&mut self) -> Option<(String, Body)> {
        self.transmits.pop_front()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<BidderEvent> {
        self.events.pop_front()
    }
}

fn accept(award: &Award) -> Accept {
    Accept {
        auction: award.auction,
        replica: award.replica,
        reservation: award.reservation.clone(),
    }
}
