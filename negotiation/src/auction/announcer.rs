//! The announcer: runs one auction per replica, one replica of a workload at a time (so
//! that each auction knows which nodes and failure domains the earlier replicas took),
//! awards the best acceptable bid, releases the rest, re-awards when the winner does not
//! answer, and retries with backoff when nobody can host the replica. Every placement
//! that fails can say why, node by node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::messages::{
    Accept, AuctionId, Award, Bid, Body, Cfp, Decline, DeclineReason, Instance, Reject, Release,
    Resources, Revoke, Scoring,
};
use crate::workload::WorkloadSpec;

/// A workload as the announcer places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    /// Workload key (`namespace/name`).
    pub workload: String,
    /// Image reference.
    pub image: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Resources per replica.
    pub resources: Resources,
    /// Hard label constraints.
    pub constraints: BTreeMap<String, String>,
    /// Required architecture.
    pub arch: Option<String>,
    /// Failure-domain label whose values replicas must not share.
    pub spread_label: Option<String>,
    /// Scoring mode.
    pub scoring: Scoring,
    /// The whole workload, sent to each winner with its award so that it can start the
    /// replica. `None` in simulations, which start nothing.
    pub spec: Option<WorkloadSpec>,
    /// The node the workload was submitted to, when this announcer placed it as that
    /// node's successor; carried in awards so that holders know whom ownership returns to.
    pub submitter: Option<String>,
}

impl PlacementRequest {
    /// What the announcer needs to place `spec`, stored under `key`: spread scoring, no
    /// architecture or failure-domain requirement, and the spec itself for the winners.
    pub fn for_spec(key: &str, spec: &WorkloadSpec) -> Self {
        Self {
            workload: key.to_owned(),
            image: spec.image.clone(),
            replicas: spec.replicas,
            resources: spec.resources,
            constraints: spec.constraints.clone(),
            arch: None,
            spread_label: None,
            scoring: Scoring::Spread,
            spec: Some(spec.clone()),
            submitter: None,
        }
    }
}

/// A member the announcer may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Node id.
    pub node: String,
    /// Whether its protocol range overlaps ours.
    pub compatible: bool,
    /// What the member last announced about itself, if anything: used to ask members
    /// that look able to host first, never to decide (only a bid commits a node).
    pub announced: Option<Announced>,
}

impl Candidate {
    /// A compatible member about which nothing else is known.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            compatible: true,
            announced: None,
        }
    }
}

/// A member's self-description, as spread by membership (possibly stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// CPU architecture.
    pub arch: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Free capacity when it last said, if it did.
    pub free: Option<Resources>,
}

impl Announced {
    /// What a node's gossiped metadata says of it.
    pub fn from_meta(meta: &crate::messages::NodeMeta) -> Self {
        Self {
            arch: meta.arch.clone(),
            labels: meta.labels.clone(),
            free: Some(meta.free),
        }
    }

    /// Whether a node described so could host a replica of `request` outside the
    /// failure domains in `taken`.
    fn looks_able(&self, request: &PlacementRequest, taken: &BTreeSet<&str>) -> bool {
        request.arch.as_ref().is_none_or(|arch| *arch == self.arch)
            && request
                .constraints
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
            && self
                .free
                .is_none_or(|free| request.resources.fits_in(&free))
            && request.spread_label.as_ref().is_none_or(|label| {
                self.labels
                    .get(label)
                    .is_some_and(|value| !taken.contains(value.as_str()))
            })
    }
}

/// Announcer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnouncerConfig {
    /// How long bids are collected.
    pub bid_window_ms: u64,
    /// How long a winner has to acknowledge before the award is sent again.
    pub ack_timeout_ms: u64,
    /// First wait before re-running an auction nobody could win.
    pub retry_initial_ms: u64,
    /// Longest wait between retries.
    pub retry_max_ms: u64,
    /// Power of d choices: each replica's first auction asks `d` members sampled from
    /// those that look able to host it (so a workload asks `d × replicas` in all); the
    /// second asks `4 × d`; later ones ask every compatible member.
    pub sample_factor: usize,
    /// A placed replica not reported by its node for this long is presumed gone (its
    /// container was removed, or another owner revoked it) and placed again.
    pub instance_timeout_ms: u64,
    /// Longest a bid's reservation is believed to last, whatever the bid says: twice a
    /// bidder's default hold, for clock skew. A winner silent past it is skipped.
    pub max_bid_hold_ms: u64,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        Self {
            bid_window_ms: 300,
            ack_timeout_ms: 500,
            retry_initial_ms: 1_000,
            retry_max_ms: 30_000,
            sample_factor: 2,
            instance_timeout_ms: 10_000,
            max_bid_hold_ms: 10_000,
        }
    }
}

/// What a node answered in an auction, for "why not placed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It bid.
    Bid {
        /// Its score.
        score: u32,
    },
    /// It declined.
    Declined(DeclineReason),
    /// It bid, but its failure domain or node already has a replica.
    Excluded(&'static str),
    /// It did not answer in time.
    NoAnswer,
}

/// The last auction of a replica, node by node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// Answers by node.
    pub answers: BTreeMap<String, Answer>,
}

impl Explanation {
    /// Declines and exclusions counted by reason code.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for answer in self.answers.values() {
            let code = match answer {
                Answer::Bid { .. } => continue,
                Answer::Declined(reason) => reason.code().to_owned(),
                Answer::Excluded(why) => (*why).to_owned(),
                Answer::NoAnswer => "no-answer".to_owned(),
            };
            *counts.entry(code).or_insert(0) += 1;
        }
        counts
    }
}

/// Outcomes the driver acts on (logs, store, CLI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnouncerEvent {
    /// A replica was placed and its winner acknowledged.
    Placed {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Node running it.
        node: String,
        /// Fencing epoch.
        epoch: u64,
    },
    /// An auction ended without a winner; it runs again at `retry_at_ms`.
    NotPlaced {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Why, node by node.
        explanation: Explanation,
        /// When the next attempt starts.
        retry_at_ms: u64,
    },
    /// Every replica of a workload runs its newest spec: the rolling update is done.
    RolledOut {
        /// Workload key.
        workload: String,
    },
    /// A rolling update waits: no node can run a replacement beside the replica it
    /// replaces. It goes on once one can.
    RolloutStalled {
        /// Workload key.
        workload: String,
        /// Why.
        reason: String,
    },
    /// A replacement replica of a rolling update failed or did not run in time: the
    /// update stops (and the owner rolls the workload back).
    RolloutFailed {
        /// Workload key.
        workload: String,
        /// Replica index.
        replica: u32,
        /// Node that ran the replacement.
        node: String,
        /// Why.
        reason: String,
    },
    /// A node's award did not turn into a running replica (no acknowledgement in time,
    /// or its replica stopped being reported); its bids rank lower for a while.
    Struck {
        /// The node.
        node: String,
        /// Its strikes now.
        strikes: u32,
    },
}

#[derive(Debug)]
enum Phase {
    Collecting {
        deadline_ms: u64,
    },
    Awarding {
        bid: usize,
        resend_at_ms: u64,
        expires_at_ms: u64,
    },
    Waiting {
        retry_at_ms: u64,
    },
}

#[derive(Debug)]
struct Auction {
    id: AuctionId,
    replica: u32,
    epoch: u64,
    asked: Vec<String>,
    bids: Vec<(String, Bid)>,
    explanation: Explanation,
    phase: Phase,
    backoff_ms: u64,
    /// 0 for the first auction of this replica, then counting retries.
    attempt: u32,
    /// Consecutive auctions of this replica that ended without a winner although a
    /// member bid (its award fell through); 0 after one nobody could win.
    fell_through: u32,
}

/// A rolling update of one workload to the spec its request carries now.
#[derive(Debug)]
struct Rollout {
    /// Digest of the spec rolled out.
    target: String,
    /// Replacements running beside the replicas they replace, at most.
    max_surge: u32,
    /// Replicas that may be missing while the update proceeds, at most.
    max_unavailable: u32,
    /// Replacements accepted but not yet reported running: replica → (node, epoch,
    /// failure domain, accepted at ms). The replica they replace runs until they do.
    surges: BTreeMap<u32, (String, u64, Option<String>, u64)>,
    /// With no surge: replicas stopped and placed again with the new spec, not yet
    /// reported running (they count as unavailable), with when they were placed.
    awaiting: BTreeMap<u32, u64>,
    /// Set when a replacement failed: nothing more is replaced.
    failed: bool,
    /// Replicas replaced so far (an update that found nothing to replace says nothing).
    replaced: u32,
    /// Why the update cannot go on for now (it keeps trying).
    stalled: Option<String>,
}

type Placed = (String, u64, Option<String>, u64);

impl Workload {
    /// Every placement that holds a node: the replicas placed and the replacements of a
    /// rolling update running beside them (a replica index may appear twice).
    fn occupied(&self) -> impl Iterator<Item = (u32, &Placed)> {
        let surges = self.rollout.iter().flat_map(|r| r.surges.iter());
        self.placed.iter().chain(surges).map(|(r, p)| (*r, p))
    }
}

/// Auctions for one replacement of a rolling update that nobody wins before the update
/// is failed.
pub const SURGE_ATTEMPTS: u32 = 3;

/// How long a replacement has to report itself running before the update is failed.
pub const SURGE_DEADLINE_MS: u64 = 60_000;

#[derive(Debug)]
struct Workload {
    /// The spec digest each placed replica runs (from its award or its reports).
    digests: BTreeMap<u32, String>,
    /// A rolling update in progress.
    rollout: Option<Rollout>,
    /// Placed replicas whose node last reported them failed (they run nothing).
    failing: BTreeSet<u32>,
    request: PlacementRequest,
    /// Replica → (node, epoch, failure domain, last heard of in ms) once placed.
    placed: BTreeMap<u32, (String, u64, Option<String>, u64)>,
    auction: Option<Auction>,
    last_explanation: BTreeMap<u32, Explanation>,
    /// Every auction of the workload gets a higher epoch than the one before, so a newer
    /// award always fences an older one.
    next_epoch: u64,
    /// Set while a new owner collects instance reports before placing anything, so it
    /// adopts what already runs instead of placing duplicates.
    gathering_until_ms: Option<u64>,
    /// Replicas whose node was declared dead, with that node and epoch, until placed
    /// again: a node that was only away reports its replica back, and keeps it if no
    /// award for a replacement has gone out yet.
    lost: BTreeMap<u32, (String, u64)>,
}

/// Why a replica its node reports failed did not start.
fn failure_reason(instance: &Instance) -> String {
    instance
        .state
        .as_ref()
        .and_then(|s| s.reason.clone())
        .unwrap_or_else(|| "it failed to start".to_owned())
}

/// xorshift64*: deterministic from the seed, good enough for sampling.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Ends an auction's bid window early once every member asked has bid or declined:
/// waiting longer cannot change the outcome. The next timeout awards.
fn close_when_all_answered(auction: &mut Auction) {
    if matches!(auction.phase, Phase::Collecting { .. })
        && auction
            .explanation
            .answers
            .values()
            .all(|answer| !matches!(answer, Answer::NoAnswer))
    {
        auction.phase = Phase::Collecting { deadline_ms: 0 };
    }
}

/// The announcer's state machine.
#[derive(Debug)]
pub struct Announcer {
    id: String,
    config: AnnouncerConfig,
    rng: u64,
    next_auction: AuctionId,
    members: Vec<Candidate>,
    workloads: BTreeMap<String, Workload>,
    /// Workloads removed here lately, oldest first: their replicas are revoked whenever
    /// they report (a node may have missed the first revocation).
    removed: VecDeque<String>,
    /// Nodes whose awards lately did not turn into running replicas: how many times and
    /// when last. Their bids rank lower until they have been reliable for a while.
    strikes: BTreeMap<String, (u32, u64)>,
    transmits: VecDeque<(String, Body)>,
    events: VecDeque<AnnouncerEvent>,
}

/// The best score a bid may claim; a higher one is taken as this (a bidder does not get
/// to outrank every honest node by saying so).
pub const MAX_SCORE: u32 = 10_000;

/// What each strike takes off a node's score.
pub const STRIKE_PENALTY: u32 = 2_500;

/// How long a strike counts after the node's last one.
pub const STRIKE_MEMORY_MS: u64 = 300_000;

/// Nodes with strikes remembered (a table peers can grow only by failing awards this
/// node made them, and only up to this).
const MAX_STRUCK: usize = 1024;

/// How many removed workloads an announcer remembers (a table peers cannot grow: only
/// removals of workloads this node owned add to it).
const MAX_REMOVED: usize = 1024;

impl Announcer {
    /// An announcer for node `id`, with a seed for its sampling.
    pub fn new(id: impl Into<String>, config: AnnouncerConfig, seed: u64) -> Self {
        Self {
            id: id.into(),
            config,
            rng: seed | 1,
            next_auction: 0,
            members: Vec::new(),
            workloads: BTreeMap::new(),
            removed: VecDeque::new(),
            strikes: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Replaces the view of members auctions may ask.
    pub fn set_members(&mut self, mut members: Vec<Candidate>) {
        // Kept in id order: single members are then found by binary search, and the
        // samples an auction draws do not depend on the order the caller listed them in.
        members.sort_by(|a, b| a.node.cmp(&b.node));
        members.dedup_by(|a, b| a.node == b.node);
        self.members = members;
    }

    /// Adds one member to the view, or replaces what is known of it: the cheap way to
    /// follow a metadata change when the view holds thousands of members.
    pub fn update_member(&mut self, member: Candidate) {
        match self
            .members
            .binary_search_by(|m| m.node.as_str().cmp(&member.node))
        {
            Ok(at) => self.members[at] = member,
            Err(at) => self.members.insert(at, member),
        }
    }

    /// Starts placing a workload.
    pub fn place(&mut self, now_ms: u64, request: PlacementRequest) {
        let key = request.workload.clone();
        self.removed.retain(|w| *w != key);
        self.workloads.insert(
            key.clone(),
            Workload {
                digests: BTreeMap::new(),
                rollout: None,
                failing: BTreeSet::new(),
                request,
                placed: BTreeMap::new(),
                auction: None,
                last_explanation: BTreeMap::new(),
                next_epoch: 1,
                lost: BTreeMap::new(),
                gathering_until_ms: None,
            },
        );
        self.advance(now_ms, &key);
    }

    /// Takes over a workload whose owner died (or moved): first collects the running
    /// replicas from instance reports until `gather_until_ms`, then places what is
    /// missing at epochs above any it has seen.
    ///
    /// Its epochs start at `gather_until_ms`, not 1. A replica whose node sent no report
    /// in time (the old owner's own, when the owner is the one lost) is placed again;
    /// counting from 1 would give the new placement the very epoch of the old one, and
    /// when the old owner came back and gathered in turn, the tie would go to the lower
    /// node id, not to the newer placement. An owner counts its epochs from 1, one per
    /// auction, so a start at the negotiation clock's milliseconds is above every epoch
    /// it used, and a later taker's start is above this one's as far as their clocks agree
    /// (below, the epochs gathered are counted too).
    pub fn adopt(&mut self, gather_until_ms: u64, request: PlacementRequest) {
        let key = request.workload.clone();
        self.removed.retain(|w| *w != key);
        self.workloads.entry(key).or_insert(Workload {
            digests: BTreeMap::new(),
            rollout: None,
            failing: BTreeSet::new(),
            request,
            placed: BTreeMap::new(),
            auction: None,
            last_explanation: BTreeMap::new(),
            next_epoch: gather_until_ms.max(1),
            lost: BTreeMap::new(),
            gathering_until_ms: Some(gather_until_ms),
        });
    }

    /// Hands a workload over to another owner: stops its auction (releasing held bids)
    /// and forgets it. Running replicas are not touched.
    pub fn relinquish(&mut self, workload: &str) {
        let Some(w) = self.workloads.remove(workload) else {
            return;
        };
        if let Some(auction) = w.auction {
            self.release_bids(auction);
        }
    }

    /// Frees the reservations every bid of a dropped auction holds.
    fn release_bids(&mut self, auction: Auction) {
        for (node, bid) in auction.bids {
            self.transmits.push_back((
                node,
                Body::Release(Release {
                    auction: auction.id,
                    reservation: bid.reservation,
                }),
            ));
        }
    }

    /// Forgets a workload the user removed: releases any bids of its running auction and
    /// revokes every placed replica, so that the nodes running them stop them.
    pub fn remove(&mut self, workload: &str) {
        let placed: Vec<(u32, String, u64)> = self
            .workloads
            .get(workload)
            .map(|w| {
                w.placed
                    .iter()
                    .map(|(replica, (node, epoch, _, _))| (*replica, node.clone(), *epoch))
                    .collect()
            })
            .unwrap_or_default();
        self.relinquish(workload);
        if !self.removed.iter().any(|w| w == workload) {
            if self.removed.len() == MAX_REMOVED {
                self.removed.pop_front();
            }
            self.removed.push_back(workload.to_owned());
        }
        for (replica, node, epoch) in placed {
            self.revoke_at(node, workload, replica, epoch);
        }
    }

    /// Changes how many replicas an owned workload has: replicas at or above the new
    /// count are revoked (an auction for one is dropped, its bids released), missing
    /// ones are placed.
    pub fn rescale(&mut self, now_ms: u64, workload: &str, replicas: u32) {
        let Some(w) = self.workloads.get_mut(workload) else {
            return;
        };
        w.request.replicas = replicas;
        if let Some(spec) = &mut w.request.spec {
            spec.replicas = replicas;
        }
        let extra: Vec<(u32, String, u64)> = w
            .placed
            .range(replicas..)
            .map(|(replica, (node, epoch, _, _))| (*replica, node.clone(), *epoch))
            .collect();
        for (replica, _, _) in &extra {
            w.placed.remove(replica);
        }
        w.lost.retain(|replica, _| *replica < replicas);
        w.last_explanation.retain(|replica, _| *replica < replicas);
        w.digests.retain(|replica, _| *replica < replicas);
        w.failing.retain(|replica| *replica < replicas);
        let extra_surges: Vec<(u32, String, u64)> = w
            .rollout
            .as_mut()
            .map(|r| {
                let above = r.surges.split_off(&replicas);
                above
                    .into_iter()
                    .map(|(replica, (node, epoch, _, _))| (replica, node, epoch))
                    .collect()
            })
            .unwrap_or_default();
        let extra: Vec<(u32, String, u64)> = extra.into_iter().chain(extra_surges).collect();
        let dropped = w.auction.take_if(|auction| auction.replica >= replicas);
        if let Some(auction) = dropped {
            self.release_bids(auction);
        }
        for (replica, node, epoch) in extra {
            self.revoke_at(node, workload, replica, epoch);
        }
        self.advance(now_ms, workload);
    }

    /// The request an owned workload is placed by.
    pub fn request(&self, workload: &str) -> Option<&PlacementRequest> {
        self.workloads.get(workload).map(|w| &w.request)
    }

    /// How many workloads this announcer owns.
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    /// Whether this announcer currently owns `workload`.
    pub fn owns(&self, workload: &str) -> bool {
        self.workloads.contains_key(workload)
    }

    /// Forgets a workload's placement of `replica` (its node died) so it is placed again
    /// at a higher epoch.
    pub fn replica_lost(&mut self, now_ms: u64, workload: &str, replica: u32) {
        if let Some(w) = self.workloads.get_mut(workload)
            && let Some((node, epoch, _, _)) = w.placed.remove(&replica)
        {
            w.lost.insert(replica, (node, epoch));
        }
        self.advance(now_ms, workload);
    }

    /// Where each replica of `workload` runs.
    pub fn placements(&self, workload: &str) -> BTreeMap<u32, (String, u64)> {
        self.workloads
            .get(workload)
            .map(|w| {
                w.placed
                    .iter()
                    .map(|(r, (n, e, _, _))| (*r, (n.clone(), *e)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The workload (`namespace/name`) an auction in progress is for: bids name only their
    /// auction, and the host checks its policy by namespace.
    pub fn auction_workload(&self, auction: AuctionId) -> Option<&str> {
        self.workloads
            .iter()
            .find(|(_, w)| w.auction.as_ref().is_some_and(|a| a.id == auction))
            .map(|(key, _)| key.as_str())
    }

    /// A one-line description of the auction in progress for `workload`, for diagnostics.
    pub fn auction_state(&self, workload: &str) -> String {
        match self
            .workloads
            .get(workload)
            .and_then(|w| w.auction.as_ref())
        {
            None => "no auction".to_owned(),
            Some(a) => format!(
                "auction {} replica {} epoch {}: {:?}, {} bids, asked {}",
                a.id,
                a.replica,
                a.epoch,
                a.phase,
                a.bids.len(),
                a.asked.len()
            ),
        }
    }

    /// Why the last auction of each replica went as it did.
    pub fn explain(&self, workload: &str) -> BTreeMap<u32, Explanation> {
        self.workloads
            .get(workload)
            .map(|w| w.last_explanation.clone())
            .unwrap_or_default()
    }

    /// Starts the next auction of `key` if none runs and a replica is unplaced.
    fn advance(&mut self, now_ms: u64, key: &str) {
        let Some(workload) = self.workloads.get(key) else {
            return;
        };
        // While a new owner gathers reports, nothing is placed: what still runs must be
        // heard from first, or it would be placed twice.
        if workload.auction.is_some() || workload.gathering_until_ms.is_some() {
            return;
        }
        let Some(replica) =
            (0..workload.request.replicas).find(|r| !workload.placed.contains_key(r))
        else {
            self.advance_rollout(now_ms, key);
            return;
        };
        self.start_auction(now_ms, key, replica, self.config.retry_initial_ms, 0, 0);
    }

    /// The next step of a rolling update, once every replica is placed: a replacement
    /// for the lowest replica still on an older spec while fewer than `max_surge` run
    /// beside theirs; with no surge allowed, an old replica stopped while fewer than
    /// `max_unavailable` are missing (it is then placed again with the new spec).
    fn advance_rollout(&mut self, now_ms: u64, key: &str) {
        let Some(workload) = self.workloads.get_mut(key) else {
            return;
        };
        let Some(rollout) = &workload.rollout else {
            return;
        };
        if rollout.failed {
            return;
        }
        let outdated: Vec<u32> = workload
            .placed
            .keys()
            .copied()
            .filter(|r| workload.digests.get(r) != Some(&rollout.target))
            .filter(|r| !rollout.surges.contains_key(r))
            .collect();
        if outdated.is_empty() && rollout.surges.is_empty() && rollout.awaiting.is_empty() {
            let replaced = rollout.replaced;
            workload.rollout = None;
            if replaced > 0 {
                self.events.push_back(AnnouncerEvent::RolledOut {
                    workload: key.to_owned(),
                });
            }
            return;
        }
        let Some(&replica) = outdated.first() else {
            return;
        };
        // A replica that runs nothing (its node reports it failed) costs no availability:
        // it is stopped and placed again at once, whatever the surge allows.
        let in_place = outdated
            .iter()
            .copied()
            .find(|r| workload.failing.contains(r));
        if let Some(replica) = in_place {
            if let Some((node, epoch, _, _)) = workload.placed.remove(&replica) {
                workload.digests.remove(&replica);
                workload.failing.remove(&replica);
                self.revoke_at(node, key, replica, epoch);
            }
            self.start_auction(now_ms, key, replica, self.config.retry_initial_ms, 0, 0);
            return;
        }
        if (rollout.surges.len() as u32) < rollout.max_surge {
            if let Some(rollout) = workload.rollout.as_mut() {
                rollout.replaced += 1;
            }
            self.start_auction(now_ms, key, replica, self.config.retry_initial_ms, 0, 0);
        } else if rollout.max_surge == 0
            && (rollout.awaiting.len() as u32) < rollout.max_unavailable
        {
            if let Some(rollout) = workload.rollout.as_mut() {
                rollout.replaced += 1;
            }
            if let Some((node, epoch, _, _)) = workload.placed.remove(&replica) {
                workload.digests.remove(&replica);
                self.revoke_at(node, key, replica, epoch);
            }
            self.start_auction(now_ms, key, replica, self.config.retry_initial_ms, 0, 0);
        }
    }

    /// Rolls an owned workload out to `spec`: each replica still on an older spec is
    /// replaced, `max_surge` at a time beside the one it replaces (which stops once its
    /// replacement reports running), or, with no surge, `max_unavailable` at a time. A
    /// rollout already under way is redirected: its replacements not yet running stop.
    pub fn roll_out(
        &mut self,
        now_ms: u64,
        workload: &str,
        spec: &WorkloadSpec,
        max_surge: u32,
        max_unavailable: u32,
    ) {
        let Some(w) = self.workloads.get_mut(workload) else {
            return;
        };
        w.request.image.clone_from(&spec.image);
        w.request.resources = spec.resources;
        w.request.constraints.clone_from(&spec.constraints);
        w.request.replicas = spec.replicas;
        w.request.spec = Some(spec.clone());
        let stale_surges = w.rollout.take().map(|r| r.surges).unwrap_or_default();
        // A running auction for a replacement is for the spec rolled out before.
        let replacing = w.auction.take_if(|a| w.placed.contains_key(&a.replica));
        w.rollout = Some(Rollout {
            target: crate::records::spec_digest(spec),
            max_surge,
            // Neither 0/0 (nothing could move) nor more than there are.
            max_unavailable: if max_surge == 0 {
                max_unavailable.max(1)
            } else {
                max_unavailable
            },
            surges: BTreeMap::new(),
            awaiting: BTreeMap::new(),
            failed: false,
            replaced: 0,
            stalled: None,
        });
        if let Some(auction) = replacing {
            self.release_bids(auction);
        }
        for (replica, (node, epoch, _, _)) in stale_surges {
            self.revoke_at(node, workload, replica, epoch);
        }
        self.advance(now_ms, workload);
    }

    /// The spec digest the replicas of `workload` should run, and each replica's (for
    /// `parley ps` and the simulator's invariants).
    pub fn digests(&self, workload: &str) -> Option<(String, BTreeMap<u32, String>)> {
        let w = self.workloads.get(workload)?;
        let target = w
            .rollout
            .as_ref()
            .map(|r| r.target.clone())
            .or_else(|| w.request.spec.as_ref().map(crate::records::spec_digest))?;
        Some((target, w.digests.clone()))
    }

    /// Why a rolling update of `workload` cannot go on for now, if it cannot.
    pub fn rollout_stalled(&self, workload: &str) -> Option<&str> {
        self.workloads
            .get(workload)?
            .rollout
            .as_ref()?
            .stalled
            .as_deref()
    }

    /// Whether a rolling update of `workload` is under way (and not failed).
    pub fn rolling_out(&self, workload: &str) -> bool {
        self.workloads
            .get(workload)
            .and_then(|w| w.rollout.as_ref())
            .is_some_and(|r| !r.failed)
    }

    /// Starts an auction for `replica`. The first attempt asks a sample of `d` members
    /// among those whose announced metadata says they could host it (power of d choices),
    /// the second `4 × d`, and later attempts every compatible member, so a replica that
    /// fits anywhere is found even when announcements were stale. When no member looks
    /// able, everyone is asked at once: their declines explain why. Nodes already running
    /// a replica of the workload are never asked.
    fn start_auction(
        &mut self,
        now_ms: u64,
        key: &str,
        replica: u32,
        backoff_ms: u64,
        attempt: u32,
        fell_through: u32,
    ) {
        let Some(workload) = self.workloads.get(key) else {
            return;
        };
        let hosting: BTreeSet<&String> = workload.occupied().map(|(_, (n, _, _, _))| n).collect();
        // A replacement may share the domain of the replica it replaces.
        let taken: BTreeSet<&str> = workload
            .occupied()
            .filter(|(r, _)| *r != replica)
            .filter_map(|(_, (_, _, domain, _))| domain.as_deref())
            .collect();
        let askable = |m: &Candidate| m.compatible && !hosting.contains(&m.node);
        let able = |m: &Candidate| {
            askable(m)
                && m.announced
                    .as_ref()
                    .is_none_or(|a| a.looks_able(&workload.request, &taken))
        };
        let d = self.config.sample_factor.max(1);
        let limit = if attempt == 0 { d } else { 4 * d };
        // The sample is drawn by picking members at random until `limit` able ones are
        // found: constant work when most members could host, where listing the able ones
        // first costs a pass over thousands. Only when draws keep missing (few members
        // able) are they listed.
        let mut candidates: Vec<String> = Vec::new();
        let mut everyone = attempt >= 2;
        if !everyone && self.members.len() > 4 * limit {
            let mut rng = self.rng;
            for _ in 0..8 * limit {
                if candidates.len() == limit {
                    break;
                }
                let member =
                    &self.members[(xorshift(&mut rng) % self.members.len() as u64) as usize];
                if able(member) && !candidates.contains(&member.node) {
                    candidates.push(member.node.clone());
                }
            }
            self.rng = rng;
        }
        if candidates.len() < limit {
            let mut all_able: Vec<String> = if everyone {
                Vec::new()
            } else {
                self.members
                    .iter()
                    .filter(|m| able(m))
                    .map(|m| m.node.clone())
                    .collect()
            };
            if all_able.is_empty() {
                // Nobody looks able (or it is time to ask everyone): their declines say why.
                everyone = true;
                all_able = self
                    .members
                    .iter()
                    .filter(|m| askable(m))
                    .map(|m| m.node.clone())
                    .collect();
            }
            candidates = all_able;
            if !everyone && candidates.len() > limit {
                // Sample without replacement.
                for i in 0..limit {
                    let j = i + (xorshift(&mut self.rng) as usize) % (candidates.len() - i);
                    candidates.swap(i, j);
                }
                candidates.truncate(limit);
            }
        }
        candidates.sort();
        self.next_auction += 1;
        let id = self.next_auction;
        let Some(workload) = self.workloads.get_mut(key) else {
            return;
        };
        let epoch = workload.next_epoch;
        workload.next_epoch = workload.next_epoch.saturating_add(1);
        let request = &workload.request;
        let cfp = Cfp {
            auction: id,
            workload: request.workload.clone(),
            replica,
            epoch,
            image: request.image.clone(),
            resources: request.resources,
            constraints: request.constraints.clone(),
            arch: request.arch.clone(),
            spread_label: request.spread_label.clone(),
            scoring: request.scoring,
            bid_deadline_ms: now_ms + self.config.bid_window_ms,
        };
        let mut explanation = Explanation::default();
        for node in &candidates {
            explanation.answers.insert(node.clone(), Answer::NoAnswer);
            self.transmits
                .push_back((node.clone(), Body::Cfp(cfp.clone())));
        }
        workload.auction = Some(Auction {
            id,
            replica,
            epoch,
            asked: candidates,
            bids: Vec::new(),
            explanation,
            phase: Phase::Collecting {
                deadline_ms: now_ms + self.config.bid_window_ms,
            },
            backoff_ms,
            attempt,
            fell_through,
        });
    }

    fn auction_mut(&mut self, id: AuctionId) -> Option<(&mut Workload, String)> {
        self.workloads
            .iter_mut()
            .find(|(_, w)| w.auction.as_ref().is_some_and(|a| a.id == id))
            .map(|(k, w)| {
                let key = k.clone();
                (w, key)
            })
    }

    /// Records a bid (only while bids are collected, only from a node that was asked).
    pub fn handle_bid(&mut self, now_ms: u64, from: &str, bid: &Bid) {
        let release = |announcer: &mut Self| {
            announcer.transmits.push_back((
                from.to_owned(),
                Body::Release(Release {
                    auction: bid.auction,
                    reservation: bid.reservation.clone(),
                }),
            ));
        };
        let max_hold_ms = self.config.max_bid_hold_ms;
        let Some((workload, _)) = self.auction_mut(bid.auction) else {
            // A late bid for a finished auction: free its reservation now.
            release(self);
            return;
        };
        let Some(auction) = workload.auction.as_mut() else {
            return;
        };
        let collecting =
            matches!(auction.phase, Phase::Collecting { deadline_ms } if now_ms <= deadline_ms);
        if !collecting || !auction.asked.iter().any(|n| n == from) || auction.replica != bid.replica
        {
            release(self);
            return;
        }
        // Bounded before use: a score beyond the scale, or a reservation claimed to last
        // longer than any bidder holds one, would let one bidder win every auction and
        // stall it while never accepting.
        let bid = Bid {
            score: bid.score.min(MAX_SCORE),
            expires_at_ms: bid.expires_at_ms.min(now_ms.saturating_add(max_hold_ms)),
            ..bid.clone()
        };
        auction
            .explanation
            .answers
            .insert(from.to_owned(), Answer::Bid { score: bid.score });
        auction.bids.push((from.to_owned(), bid));
        close_when_all_answered(auction);
    }

    /// Counts a failed award against `node`: it did not acknowledge in time, or a
    /// replica it accepted stopped being reported.
    fn strike(&mut self, node: &str, now_ms: u64) {
        if !self.strikes.contains_key(node) && self.strikes.len() >= MAX_STRUCK {
            // Forget the one struck longest ago.
            if let Some(oldest) = self
                .strikes
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(n, _)| n.clone())
            {
                self.strikes.remove(&oldest);
            }
        }
        let entry = self.strikes.entry(node.to_owned()).or_insert((0, now_ms));
        if now_ms.saturating_sub(entry.1) >= STRIKE_MEMORY_MS {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now_ms;
        self.events.push_back(AnnouncerEvent::Struck {
            node: node.to_owned(),
            strikes: entry.0,
        });
    }

    /// What `node`'s strikes take off its bids' scores now.
    pub fn penalty(&self, node: &str, now_ms: u64) -> u32 {
        match self.strikes.get(node) {
            Some((count, at)) if now_ms.saturating_sub(*at) < STRIKE_MEMORY_MS => {
                count.saturating_mul(STRIKE_PENALTY)
            }
            _ => 0,
        }
    }

    /// Records a decline and its reason.
    pub fn handle_decline(&mut self, from: &str, decline: &Decline) {
        if let Some((workload, _)) = self.auction_mut(decline.auction)
            && let Some(auction) = workload.auction.as_mut()
            && auction.asked.iter().any(|n| n == from)
        {
            auction
                .explanation
                .answers
                .insert(from.to_owned(), Answer::Declined(decline.reason.clone()));
            close_when_all_answered(auction);
        }
    }

    /// The workload key and bid index if auction `id` is awarding `reservation` to `from`.
    fn awarding(&self, id: AuctionId, from: &str, reservation: &str) -> Option<(String, usize)> {
        self.workloads.iter().find_map(|(key, w)| {
            let auction = w.auction.as_ref().filter(|a| a.id == id)?;
            let Phase::Awarding { bid, .. } = auction.phase else {
                return None;
            };
            let (winner, winning) = &auction.bids[bid];
            (winner == from && winning.reservation == reservation).then(|| (key.clone(), bid))
        })
    }

    /// The winner took the award: the replica is placed, the other bids are released.
    pub fn handle_accept(&mut self, now_ms: u64, from: &str, accept: &Accept) {
        let Some((key, bid)) = self.awarding(accept.auction, from, &accept.reservation) else {
            return;
        };
        let Some(workload) = self.workloads.get_mut(&key) else {
            return;
        };
        let Some(auction) = workload.auction.take() else {
            return;
        };
        let (winner, winning_bid) = &auction.bids[bid];
        // Replaced: a lost node reporting it back is now stale.
        workload.lost.remove(&auction.replica);
        let placement = (
            winner.clone(),
            auction.epoch,
            winning_bid.failure_domain.clone(),
            now_ms,
        );
        let surging = workload.placed.contains_key(&auction.replica);
        match workload.rollout.as_mut() {
            // A replacement runs beside the replica it replaces until it reports running.
            Some(rollout) if surging => {
                rollout.stalled = None;
                rollout.surges.insert(auction.replica, placement);
            }
            _ => {
                if let Some(digest) = workload
                    .request
                    .spec
                    .as_ref()
                    .map(crate::records::spec_digest)
                {
                    workload.failing.remove(&auction.replica);
                    // Placed again by a rollout without surge: unavailable until it runs.
                    if let Some(rollout) = workload.rollout.as_mut()
                        && rollout.target == digest
                        && rollout.max_surge == 0
                    {
                        rollout.awaiting.insert(auction.replica, now_ms);
                    }
                    workload.digests.insert(auction.replica, digest);
                }
                if let Some((node, epoch, _, _)) =
                    workload.placed.insert(auction.replica, placement)
                    && (node != *winner || epoch != auction.epoch)
                {
                    // `workload` is borrowed: the revocation is queued directly.
                    self.transmits.push_back((
                        node,
                        Body::Revoke(Revoke {
                            workload: key.clone(),
                            replica: auction.replica,
                            epoch,
                        }),
                    ));
                }
            }
        }
        workload
            .last_explanation
            .insert(auction.replica, auction.explanation.clone());
        for (node, other) in auction.bids.iter().skip(bid + 1) {
            self.transmits.push_back((
                node.clone(),
                Body::Release(Release {
                    auction: auction.id,
                    reservation: other.reservation.clone(),
                }),
            ));
        }
        self.events.push_back(AnnouncerEvent::Placed {
            workload: key.clone(),
            replica: auction.replica,
            node: winner.clone(),
            epoch: auction.epoch,
        });
        self.advance(now_ms, &key);
    }

    /// A node reports a replica it runs. The placement on record stands: any other
    /// instance is revoked. An instance of an unplaced replica whose auction is awarding
    /// that very reservation counts as its acknowledgement (the Accept was lost).
    pub fn handle_instance(&mut self, now_ms: u64, from: &str, instance: &Instance) {
        let Some(workload) = self.workloads.get(&instance.workload) else {
            // Removed here: stop it. Otherwise this node does not own it (yet): a
            // successor whose hand-over is still on its way, or one that gave it back.
            // Revoking would kill the very replicas it is about to take over; the node
            // reports to the right owner as soon as it knows it.
            if self.removed.iter().any(|w| *w == instance.workload) {
                self.revoke(from, instance);
            }
            return;
        };
        if instance.replica >= workload.request.replicas {
            self.revoke(from, instance);
            return;
        }
        if workload.gathering_until_ms.is_some() {
            self.gather(now_ms, from, instance);
            return;
        }
        let surge = workload
            .rollout
            .as_ref()
            .and_then(|r| r.surges.get(&instance.replica))
            .is_some_and(|(node, epoch, _, _)| node == from && *epoch == instance.epoch);
        if surge {
            self.surge_reported(now_ms, instance);
            return;
        }
        // A replacement's first report can overtake its acknowledgement (the award is
        // being stored): it counts as one, as for a replica not placed yet.
        let replacing = workload.placed.contains_key(&instance.replica);
        let acknowledged = workload
            .auction
            .as_ref()
            .filter(|a| replacing && a.replica == instance.replica)
            .and_then(|a| {
                self.awarding(a.id, from, &instance.reservation)
                    .map(|_| a.id)
            });
        if let Some(auction) = acknowledged {
            self.handle_accept(
                now_ms,
                from,
                &Accept {
                    auction,
                    replica: instance.replica,
                    reservation: instance.reservation.clone(),
                },
            );
            self.surge_reported(now_ms, instance);
            return;
        }
        let on_record = workload
            .placed
            .get(&instance.replica)
            .is_some_and(|(node, epoch, _, _)| node == from && *epoch == instance.epoch);
        if on_record && let Some(w) = self.workloads.get_mut(&instance.workload) {
            if let Some(digest) = &instance.spec_digest {
                w.digests.insert(instance.replica, digest.clone());
            }
            match instance.state.as_ref().map(|s| s.phase) {
                Some(crate::messages::Phase::Failed) => {
                    w.failing.insert(instance.replica);
                }
                Some(_) => {
                    w.failing.remove(&instance.replica);
                }
                None => {}
            }
        }
        let Some(workload) = self.workloads.get(&instance.workload) else {
            return;
        };
        let awaited = workload
            .rollout
            .as_ref()
            .is_some_and(|r| r.awaiting.contains_key(&instance.replica))
            && workload
                .placed
                .get(&instance.replica)
                .is_some_and(|(node, epoch, _, _)| node == from && *epoch == instance.epoch);
        if awaited {
            let phase = instance.state.as_ref().map(|s| s.phase);
            match phase {
                Some(crate::messages::Phase::Running) => {
                    if let Some(rollout) = self
                        .workloads
                        .get_mut(&instance.workload)
                        .and_then(|w| w.rollout.as_mut())
                    {
                        rollout.awaiting.remove(&instance.replica);
                    }
                    self.advance(now_ms, &instance.workload);
                }
                Some(crate::messages::Phase::Failed) => {
                    let reason = failure_reason(instance);
                    self.fail_rollout(&instance.workload, instance.replica, from, reason);
                }
                _ => {}
            }
        }
        let Some(workload) = self.workloads.get(&instance.workload) else {
            return;
        };
        match workload.placed.get(&instance.replica) {
            Some((node, epoch, _, _)) if node == from && *epoch == instance.epoch => {
                if let Some(placed) = self
                    .workloads
                    .get_mut(&instance.workload)
                    .and_then(|w| w.placed.get_mut(&instance.replica))
                {
                    placed.3 = now_ms;
                }
            }
            Some(_) => self.revoke(from, instance),
            None if workload.lost.get(&instance.replica)
                == Some(&(from.to_owned(), instance.epoch))
                && !workload.auction.as_ref().is_some_and(|a| {
                    a.replica == instance.replica && matches!(a.phase, Phase::Awarding { .. })
                }) =>
            {
                self.welcome_back(now_ms, from, instance);
            }
            None => {
                let awarding_this = workload
                    .auction
                    .as_ref()
                    .filter(|a| a.replica == instance.replica)
                    .and_then(|a| {
                        self.awarding(a.id, from, &instance.reservation)
                            .map(|_| a.id)
                    });
                if let Some(auction) = awarding_this {
                    self.handle_accept(
                        now_ms,
                        from,
                        &Accept {
                            auction,
                            replica: instance.replica,
                            reservation: instance.reservation.clone(),
                        },
                    );
                } else {
                    // Placed by an award whose acknowledgement never arrived, and since
                    // superseded by a newer auction: the newer one wins.
                    self.revoke(from, instance);
                }
            }
        }
    }

    /// A replacement of a rolling update reports: once running, it takes its replica's
    /// place and the replica it replaces stops; if it failed, the update stops.
    fn surge_reported(&mut self, now_ms: u64, instance: &Instance) {
        let Some(workload) = self.workloads.get_mut(&instance.workload) else {
            return;
        };
        let Some(rollout) = workload.rollout.as_mut() else {
            return;
        };
        match instance.state.as_ref().map(|s| s.phase) {
            Some(crate::messages::Phase::Running) => {
                let Some(mut placement) = rollout.surges.remove(&instance.replica) else {
                    return;
                };
                placement.3 = now_ms;
                workload
                    .digests
                    .insert(instance.replica, rollout.target.clone());
                workload.failing.remove(&instance.replica);
                if let Some((node, epoch, _, _)) =
                    workload.placed.insert(instance.replica, placement)
                {
                    self.revoke_at(node, &instance.workload, instance.replica, epoch);
                }
                self.advance(now_ms, &instance.workload);
            }
            Some(crate::messages::Phase::Failed) => {
                let reason = failure_reason(instance);
                self.fail_surge(&instance.workload, instance.replica, reason);
            }
            // Still starting: its deadline runs from its acceptance.
            _ => {}
        }
    }

    /// Stops a rolling update whose replica placed again (no surge) failed on `node`.
    fn fail_rollout(&mut self, workload: &str, replica: u32, node: &str, reason: String) {
        let Some(rollout) = self
            .workloads
            .get_mut(workload)
            .and_then(|w| w.rollout.as_mut())
        else {
            return;
        };
        if rollout.failed {
            return;
        }
        rollout.failed = true;
        rollout.awaiting.clear();
        // A replacement still being auctioned is not wanted any more.
        let surge_auction = self.workloads.get_mut(workload).and_then(|w| {
            let placed = &w.placed;
            w.auction.take_if(|a| placed.contains_key(&a.replica))
        });
        if let Some(auction) = surge_auction {
            self.release_bids(auction);
        }
        self.events.push_back(AnnouncerEvent::RolloutFailed {
            workload: workload.to_owned(),
            replica,
            node: node.to_owned(),
            reason,
        });
    }

    /// Stops a failed replacement and the update it belongs to.
    fn fail_surge(&mut self, workload: &str, replica: u32, reason: String) {
        let Some(w) = self.workloads.get_mut(workload) else {
            return;
        };
        let Some(rollout) = w.rollout.as_mut() else {
            return;
        };
        rollout.failed = true;
        let Some((node, epoch, _, _)) = rollout.surges.remove(&replica) else {
            return;
        };
        self.revoke_at(node.clone(), workload, replica, epoch);
        self.events.push_back(AnnouncerEvent::RolloutFailed {
            workload: workload.to_owned(),
            replica,
            node,
            reason,
        });
    }

    /// A replica whose node was declared dead is reported back by that node, at the epoch
    /// it was placed with, before any replacement was awarded: it is placed there again
    /// and the auction for a replacement is dropped (its bids released). Rebooting a host
    /// or upgrading its agent then leaves its containers as they are.
    fn welcome_back(&mut self, now_ms: u64, from: &str, instance: &Instance) {
        let Some(workload) = self.workloads.get_mut(&instance.workload) else {
            return;
        };
        workload.lost.remove(&instance.replica);
        workload.placed.insert(
            instance.replica,
            (
                from.to_owned(),
                instance.epoch,
                instance.failure_domain.clone(),
                now_ms,
            ),
        );
        let replacing = workload.auction.take_if(|a| a.replica == instance.replica);
        if let Some(auction) = replacing {
            self.release_bids(auction);
        }
        self.events.push_back(AnnouncerEvent::Placed {
            workload: instance.workload.clone(),
            replica: instance.replica,
            node: from.to_owned(),
            epoch: instance.epoch,
        });
        self.advance(now_ms, &instance.workload);
    }

    /// While taking over: the instance with the highest epoch of each replica is adopted;
    /// any other is revoked.
    fn gather(&mut self, now_ms: u64, from: &str, instance: &Instance) {
        let Some(workload) = self.workloads.get_mut(&instance.workload) else {
            return;
        };
        workload.next_epoch = workload.next_epoch.max(instance.epoch.saturating_add(1));
        let superseded = match workload.placed.get(&instance.replica) {
            Some((node, epoch, _, _)) if node == from && *epoch == instance.epoch => return,
            Some((node, epoch, _, _)) if *epoch >= instance.epoch => {
                // The one on record is newer (or equal: keep the first, deterministically
                // the lower node id wins below).
                if *epoch > instance.epoch || node.as_str() < from {
                    self.revoke(from, instance);
                    return;
                }
                Some((node.clone(), *epoch))
            }
            Some((node, epoch, _, _)) => Some((node.clone(), *epoch)),
            None => None,
        };
        workload.placed.insert(
            instance.replica,
            (
                from.to_owned(),
                instance.epoch,
                instance.failure_domain.clone(),
                now_ms,
            ),
        );
        // What it runs, as for any report on record: without it, a new owner would take
        // every gathered replica for outdated and replace it (found by the simulator with
        // strong workloads, seed 106, where the replacement waits for ever behind the
        // lease of the replica it replaces). Not a failing one's: that one is replaced,
        // and a failing update found half done rolls back (seeds 1297 and 13 more).
        let failing = instance
            .state
            .as_ref()
            .is_some_and(|s| s.phase == crate::messages::Phase::Failed);
        if let Some(digest) = instance.spec_digest.as_ref().filter(|_| !failing) {
            workload.digests.insert(instance.replica, digest.clone());
        }
        if let Some((node, epoch)) = superseded {
            let stale = Instance {
                workload: instance.workload.clone(),
                replica: instance.replica,
                epoch,
                reservation: String::new(),
                failure_domain: None,
                grant: None,
                state: None,
                spec_digest: None,
            };
            self.revoke(&node, &stale);
        }
    }

    /// Tells `node` to stop `replica` of `workload` if it still runs it at `epoch`.
    fn revoke_at(&mut self, node: String, workload: &str, replica: u32, epoch: u64) {
        self.transmits.push_back((
            node,
            Body::Revoke(Revoke {
                workload: workload.to_owned(),
                replica,
                epoch,
            }),
        ));
    }

    fn revoke(&mut self, node: &str, instance: &Instance) {
        self.transmits.push_back((
            node.to_owned(),
            Body::Revoke(Revoke {
                workload: instance.workload.clone(),
                replica: instance.replica,
                epoch: instance.epoch,
            }),
        ));
    }

    /// The winner refused: award the next acceptable bid.
    pub fn handle_reject(&mut self, now_ms: u64, from: &str, reject: &Reject) {
        let Some((key, bid)) = self.awarding(reject.auction, from, &reject.reservation) else {
            return;
        };
        self.award_next(now_ms, &key, bid + 1);
    }

    /// Orders bids (score, then node id, for determinism) and awards the first acceptable
    /// one at or after `from_index`; ends the auction if none is left.
    fn award_next(&mut self, now_ms: u64, key: &str, from_index: usize) {
        let ack_timeout = self.config.ack_timeout_ms;
        let Some(workload) = self.workloads.get_mut(key) else {
            return;
        };
        let replica = workload.auction.as_ref().map(|a| a.replica);
        let taken_nodes: BTreeSet<String> = workload
            .occupied()
            .map(|(_, (n, _, _, _))| n.clone())
            .collect();
        // A replacement may share the domain of the replica it replaces.
        let taken_domains: BTreeSet<String> = workload
            .occupied()
            .filter(|(r, _)| Some(*r) != replica)
            .filter_map(|(_, (_, _, d, _))| d.clone())
            .collect();
        let spread = workload.request.spread_label.is_some();
        let spec = workload.request.spec.clone();
        let submitter = workload.request.submitter.clone();
        let Some(auction) = workload.auction.as_mut() else {
            return;
        };
        let mut chosen = None;
        for (index, (node, bid)) in auction.bids.iter().enumerate().skip(from_index) {
            let excluded = if taken_nodes.contains(node) {
                Some("node-has-replica")
            } else if spread && bid.failure_domain.is_none() {
                Some("no-failure-domain-label")
            } else if spread
                && bid
                    .failure_domain
                    .as_ref()
                    .is_some_and(|d| taken_domains.contains(d))
            {
                Some("failure-domain-has-replica")
            } else if bid.expires_at_ms <= now_ms {
                Some("reservation-expired")
            } else {
                None
            };
            match excluded {
                Some(why) => {
                    auction
                        .explanation
                        .answers
                        .insert(node.clone(), Answer::Excluded(why));
                }
                None => {
                    chosen = Some(index);
                    break;
                }
            }
        }
        match chosen {
            Some(index) => {
                let (node, bid) = auction.bids[index].clone();
                auction.phase = Phase::Awarding {
                    bid: index,
                    resend_at_ms: now_ms + ack_timeout,
                    expires_at_ms: bid.expires_at_ms,
                };
                let award = Award {
                    auction: auction.id,
                    workload: key.to_owned(),
                    replica: auction.replica,
                    epoch: auction.epoch,
                    reservation: bid.reservation.clone(),
                    spec,
                    submitter,
                    // The negotiator signs the grant as the award leaves.
                    grant: None,
                };
                self.transmits.push_back((node, Body::Award(award)));
            }
            None => self.fail_auction(now_ms, key),
        }
    }

    /// Ends an auction without a winner: releases every bid and schedules a retry.
    fn fail_auction(&mut self, now_ms: u64, key: &str) {
        let max = self.config.retry_max_ms;
        let Some(workload) = self.workloads.get_mut(key) else {
            return;
        };
        let Some(auction) = workload.auction.as_mut() else {
            return;
        };
        for (node, bid) in &auction.bids {
            self.transmits.push_back((
                node.clone(),
                Body::Release(Release {
                    auction: auction.id,
                    reservation: bid.reservation.clone(),
                }),
            ));
        }
        // Backing off is for replicas nobody can host. A member that bid but whose award
        // fell through (it could not store it, or its acknowledgement was lost) is likely
        // to succeed at once: waiting out a backoff grown while the network was bad would
        // leave the replica unplaced for no reason.
        // The first such failure after auctions nobody could win starts the backoff
        // afresh (the situation changed); then two retries in three come soon, and the
        // backoff grows on, so a bidder that keeps failing does not get the whole mesh
        // asked every second.
        let someone_bid = auction
            .explanation
            .answers
            .values()
            .any(|answer| matches!(answer, Answer::Bid { .. }));
        if someone_bid {
            auction.fell_through += 1;
            if auction.fell_through == 1 {
                auction.backoff_ms = self.config.retry_initial_ms;
            }
        } else {
            auction.fell_through = 0;
        }
        let wait_ms = if someone_bid && auction.fell_through % 3 != 0 {
            self.config.retry_initial_ms.min(auction.backoff_ms)
        } else {
            auction.backoff_ms
        };
        let retry_at_ms = now_ms + wait_ms;
        workload
            .last_explanation
            .insert(auction.replica, auction.explanation.clone());
        self.events.push_back(AnnouncerEvent::NotPlaced {
            workload: key.to_owned(),
            replica: auction.replica,
            explanation: auction.explanation.clone(),
            retry_at_ms,
        });
        auction.bids.clear();
        auction.phase = Phase::Waiting { retry_at_ms };
        auction.backoff_ms = (auction.backoff_ms * 2).min(max);
        // A replacement nobody can run beside the replica it replaces: the update cannot
        // go on without dropping below what the user asked to keep.
        let replica = auction.replica;
        let attempts = auction.attempt;
        // It is not the new spec's fault: the update waits (and keeps asking) rather than
        // roll back, and says why once.
        if workload.placed.contains_key(&replica)
            && attempts + 1 >= SURGE_ATTEMPTS
            && let Some(rollout) = workload.rollout.as_mut()
            && rollout.stalled.is_none()
        {
            let reason = "no node can run a replacement beside the replica it replaces (each \
                          replica needs a node of its own: add one, or update with \
                          --max-surge 0 --max-unavailable 1)"
                .to_owned();
            rollout.stalled = Some(reason.clone());
            self.events.push_back(AnnouncerEvent::RolloutStalled {
                workload: key.to_owned(),
                reason,
            });
        }
    }

    /// Drives deadlines: closes bid windows, resends or moves past silent winners, and
    /// re-runs auctions whose backoff has passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let keys: Vec<String> = self.workloads.keys().cloned().collect();
        let instance_timeout = self.config.instance_timeout_ms;
        for key in &keys {
            let Some(w) = self.workloads.get_mut(key) else {
                continue;
            };
            let gathered = w.gathering_until_ms.is_some_and(|until| now_ms >= until);
            if gathered {
                w.gathering_until_ms = None;
            }
            if w.gathering_until_ms.is_none() {
                let mut silent = Vec::new();
                w.placed.retain(|_, (node, _, _, seen_ms)| {
                    let reported = seen_ms.saturating_add(instance_timeout) > now_ms;
                    if !reported {
                        silent.push(node.clone());
                    }
                    reported
                });
                for node in silent {
                    self.strike(&node, now_ms);
                }
            }
            if gathered {
                self.evict_shared_domains(key);
            }
            let late: Vec<u32> = self
                .workloads
                .get(key)
                .and_then(|w| w.rollout.as_ref())
                .map(|r| {
                    r.surges
                        .iter()
                        .filter(|(_, (_, _, _, at))| at.saturating_add(SURGE_DEADLINE_MS) <= now_ms)
                        .map(|(replica, _)| *replica)
                        .collect()
                })
                .unwrap_or_default();
            let reason = format!("it did not run within {} s", SURGE_DEADLINE_MS / 1000);
            for replica in late {
                self.fail_surge(key, replica, reason.clone());
            }
            let late_awaited = self.workloads.get(key).and_then(|w| {
                let rollout = w.rollout.as_ref()?;
                let (replica, _) = rollout
                    .awaiting
                    .iter()
                    .find(|(_, at)| at.saturating_add(SURGE_DEADLINE_MS) <= now_ms)?;
                Some((*replica, w.placed.get(replica)?.0.clone()))
            });
            if let Some((replica, node)) = late_awaited {
                self.fail_rollout(key, replica, &node, reason);
            }
            self.advance(now_ms, key);
        }
        for key in keys {
            let Some(auction) = self.workloads.get(&key).and_then(|w| w.auction.as_ref()) else {
                continue;
            };
            match auction.phase {
                Phase::Collecting { deadline_ms } if now_ms >= deadline_ms => {
                    let Some(auction) = self
                        .workloads
                        .get_mut(&key)
                        .and_then(|w| w.auction.as_mut())
                    else {
                        continue;
                    };
                    let strikes = &self.strikes;
                    let effective = |node: &str, bid: &Bid| match strikes.get(node) {
                        Some((count, at)) if now_ms.saturating_sub(*at) < STRIKE_MEMORY_MS => bid
                            .score
                            .saturating_sub(count.saturating_mul(STRIKE_PENALTY)),
                        _ => bid.score,
                    };
                    auction.bids.sort_by(|(na, a), (nb, b)| {
                        effective(nb, b)
                            .cmp(&effective(na, a))
                            .then_with(|| na.cmp(nb))
                    });
                    self.award_next(now_ms, &key, 0);
                }
                Phase::Awarding {
                    bid, expires_at_ms, ..
                } if now_ms >= expires_at_ms => {
                    // The winner's reservation lapsed without an acknowledgement.
                    if let Some(auction) = self
                        .workloads
                        .get_mut(&key)
                        .and_then(|w| w.auction.as_mut())
                    {
                        let node = auction.bids[bid].0.clone();
                        auction
                            .explanation
                            .answers
                            .insert(node.clone(), Answer::Excluded("no-acknowledgement"));
                        self.strike(&node, now_ms);
                    }
                    self.award_next(now_ms, &key, bid + 1);
                }
                Phase::Awarding {
                    bid,
                    resend_at_ms,
                    expires_at_ms,
                } if now_ms >= resend_at_ms => {
                    // Resend: the award or its acknowledgement may have been lost.
                    let ack_timeout = self.config.ack_timeout_ms;
                    let (spec, submitter) = self
                        .workloads
                        .get(&key)
                        .map(|w| (w.request.spec.clone(), w.request.submitter.clone()))
                        .unwrap_or_default();
                    let Some(auction) = self
                        .workloads
                        .get_mut(&key)
                        .and_then(|w| w.auction.as_mut())
                    else {
                        continue;
                    };
                    let (node, winning) = auction.bids[bid].clone();
                    auction.phase = Phase::Awarding {
                        bid,
                        resend_at_ms: now_ms + ack_timeout,
                        expires_at_ms,
                    };
                    let award = Award {
                        auction: auction.id,
                        workload: key.clone(),
                        replica: auction.replica,
                        epoch: auction.epoch,
                        reservation: winning.reservation,
                        spec,
                        submitter,
                        // The negotiator signs the grant as the award leaves.
                        grant: None,
                    };
                    self.transmits.push_back((node, Body::Award(award)));
                }
                Phase::Waiting { retry_at_ms } if now_ms >= retry_at_ms => {
                    let (replica, backoff, attempt, fell_through) = (
                        auction.replica,
                        auction.backoff_ms,
                        auction.attempt + 1,
                        auction.fell_through,
                    );
                    if let Some(w) = self.workloads.get_mut(&key) {
                        w.auction = None;
                    }
                    self.start_auction(now_ms, &key, replica, backoff, attempt, fell_through);
                }
                _ => {}
            }
        }
    }

    /// After gathering the replicas of a workload taken over, keeps one per failure
    /// domain of a spread workload (the newest) and revokes the others and those of
    /// unknown domain, which `advance` then places again in domains still free. Gathering picks each replica's instance
    /// on its own, by epoch; the instances it merges can come from two owners' histories
    /// (a successor placed replicas while the submitter was down, the submitter came back
    /// with its own), and together they can break the spread neither broke alone.
    fn evict_shared_domains(&mut self, key: &str) {
        let Some(w) = self.workloads.get_mut(key) else {
            return;
        };
        if w.request.spread_label.is_none() {
            return;
        }
        let mut newest_first: Vec<(u32, u64, Option<String>)> = w
            .placed
            .iter()
            .map(|(replica, (_, epoch, domain, _))| (*replica, *epoch, domain.clone()))
            .collect();
        newest_first.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut taken = BTreeSet::new();
        let mut evicted = Vec::new();
        for (replica, epoch, domain) in newest_first {
            // A replica of unknown domain (placed by an owner that did not know the
            // workload is spread: a successor knows only its spec) cannot be shown to
            // keep the spread, as no bid without a domain would be awarded.
            let shares = domain.is_none_or(|domain| !taken.insert(domain));
            if shares && let Some((node, ..)) = w.placed.remove(&replica) {
                evicted.push((node, replica, epoch));
            }
        }
        for (node, replica, epoch) in evicted {
            self.revoke_at(node, key, replica, epoch);
        }
    }

    /// When [`Announcer::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let gathering = self
            .workloads
            .values()
            .filter_map(|w| {
                w.gathering_until_ms.or_else(|| {
                    w.placed
                        .values()
                        .map(|(_, _, _, seen_ms)| seen_ms + self.config.instance_timeout_ms)
                        .min()
                })
            })
            .min();
        let surges = self
            .workloads
            .values()
            .filter_map(|w| w.rollout.as_ref())
            .flat_map(|r| {
                r.surges
                    .values()
                    .map(|(_, _, _, at)| *at)
                    .chain(r.awaiting.values().copied())
                    .map(|at| at + SURGE_DEADLINE_MS)
            })
            .min();
        self.workloads
            .values()
            .filter_map(|w| w.auction.as_ref())
            .map(|a| match a.phase {
                Phase::Collecting { deadline_ms } => deadline_ms,
                Phase::Awarding {
                    resend_at_ms,
                    expires_at_ms,
                    ..
                } => resend_at_ms.min(expires_at_ms),
                Phase::Waiting { retry_at_ms } => retry_at_ms,
            })
            .chain(gathering)
            .chain(surges)
            .min()
    }

    /// The next message to send: `(to, body)`.
    pub fn poll_transmit(&mut self) -> Option<(String, Body)> {
        self.transmits.pop_front()
    }

    /// The next outcome.
    pub fn poll_event(&mut self) -> Option<AnnouncerEvent> {
        self.events.pop_front()
    }

    /// This announcer's node id.
    pub fn id(&self) -> &str {
        &self.id
    }
}
