//! A deterministic simulator: a cluster of [`Negotiator`]s — the very state machine the
//! agent runs — exchanging real, signed, encoded frames over a virtual network with
//! latency, loss, a partition, forged messages and a crash (followed, in some runs, by a
//! restart with the node's store), all drawn from one seed. The simulator plays each
//! node's host too: it stores awards (failing some, as a full disk would), stores the
//! workloads a node takes over, and answers log reads; and it plays users, who submit
//! workloads, remove one, and ask questions. Invariants are checked after every step; a
//! violation reports the seed, which replays the run exactly.
//!
//! The simulator composes nothing of the protocol itself: membership, auctions,
//! succession, hand-overs and the policy gate are the negotiator's.

mod config;
mod rng;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

pub use config::{
    Crash, Partition, Pause, Question, QuestionKind, Removal, Scaling, SimConfig, Strong, Update,
};
pub use rng::Rng;

use crate::auction::{Announced, AnnouncerEvent, Answer, Candidate, PlacementRequest};
use crate::codec::{self, ReplayGuard, Signer, Verifier};
use crate::membership::{Interner, MembershipEvent, Notary, StatementKind};
use crate::messages::{
    Ack, Body, Grant, Instance, LogChunk, MemberState, MemberUpdate, NodeMeta, Ping, PingReq,
    Resources, RevocationNotice, Revocations, Scoring, SignedStatement, Statement, Sync,
};
use crate::negotiator::{
    Action, Assignment, Authorizer, Denial, Event, HostAction, HostError, LOGS_TIMEOUT_MS,
    Negotiator, NegotiatorConfig, QUERY_TIMEOUT_MS, Request,
};
use crate::testing::{ChecksumNotary, ChecksumVerifier, KeyedChecksum};
use crate::workload::{WorkloadName, WorkloadSpec, key_name};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Virtual clock origin (ms); any positive value works, a realistic one reads better.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// The architecture the byzantine member writes into the metadata it forges.
const FORGED_ARCH: &str = "forged";
/// Key shared by the cluster's cheap signatures.
const CLUSTER_SEED: u64 = 0x5EED;
/// How long after the network is stable a dead submitter's workload must have exactly one
/// live owner (failure detection, then a hand-over repeated every 10 s, then adoption).
const OWNERSHIP_SETTLES_MS: u64 = 30_000;
/// Slack on a question's deadline for the virtual network's latency.
const ANSWER_SLACK_MS: u64 = 200;

/// A node's belief that it holds a lease: (epoch, from, until), in real ms.
type Belief = (u64, u64, u64);

/// What a run did, for assertions and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Frames delivered and accepted.
    pub messages: u64,
    /// Forged frames refused.
    pub forged_refused: u64,
    /// Replicas placed at the end.
    pub replicas_placed: u64,
    /// Auctions that ended without a winner (and were retried).
    pub failed_auctions: u64,
    /// Time from a crash until node 0 declared the node dead (ms).
    pub detection_ms: Option<u64>,
    /// Time from a crash until its replicas ran elsewhere (ms).
    pub heal_ms: Option<u64>,
    /// Nodes that came back after a crash.
    pub restarts: u64,
    /// Accepted frames by message kind (`cfp`, `bid`, `ping`, …).
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// For each node that declared the crashed node dead: how long after the crash (ms).
    pub learned_of_crash_ms: Vec<u64>,
    /// For each node that stopped counting the crashed node as alive (suspected it, or
    /// declared it dead without suspecting it first): how long after the crash (ms).
    /// From then on it offers it no new work.
    pub suspected_crash_ms: Vec<u64>,
    /// Alive nodes declared dead by someone (false positives).
    pub false_deaths: u64,
    /// Awards whose storing failed (and were not acknowledged).
    pub commit_failures: u64,
    /// Messages the authorization gate refused.
    pub denied: u64,
    /// Users' questions answered.
    pub answered: u64,
    /// Workloads taken over by a successor of their dead submitter.
    pub takeovers: u64,
    /// Membership statements refused by the nodes running at the end: forged by the
    /// byzantine member, or replayed for another incarnation.
    pub statements_refused: u64,
    /// Workload records taken as newer (written here or received), by every node.
    pub records_taken: u64,
    /// Workload records refused (made up by the byzantine member).
    pub records_refused: u64,
    /// Workloads scaled by a user.
    pub scalings: u64,
    /// Workloads updated by a user (rolled out, or rolled back).
    pub updates: u64,
    /// Of those, updates in runs where no node crashes, where no step may run fewer
    /// replicas than `replicas − max_unavailable`.
    pub updates_kept_available: u64,
    /// Bytes of accepted frames by message kind.
    pub bytes_by_kind: BTreeMap<&'static str, u64>,
    /// For each node that took a record written by another: how long after it was written
    /// (ms).
    pub record_spread_ms: Vec<u64>,
    /// Leases of strong replicas acquired or renewed (each a `RunLeased`).
    pub leases_run: u64,
    /// Strong containers stopped because their lease could not be renewed.
    pub fences: u64,
    /// Lease checks made (one per replica held, after every step of its holder).
    pub lease_checks: u64,
    /// For each strong replica whose holder crashed or paused: how long until another
    /// node ran it (ms).
    pub failover_ms: Vec<u64>,
    /// Registers whose holder replaced a gone acceptor (both steps done).
    pub acceptors_replaced: u64,
}

impl Outcome {
    /// Accepted frames of the auction proper: calls, bids, declines, awards, accepts,
    /// rejects and releases (not instance reports, revocations or membership).
    pub fn auction_messages(&self) -> u64 {
        [
            "cfp", "bid", "decline", "award", "accept", "reject", "release",
        ]
        .iter()
        .map(|kind| self.messages_by_kind.get(kind).copied().unwrap_or(0))
        .sum()
    }
}

/// How the simulated nodes sign and verify their frames.
pub trait SimCrypto {
    /// The signer of node `id`.
    fn signer(&self, id: &str) -> Box<dyn Signer>;
    /// A verifier of every node's signatures.
    fn verifier(&self) -> &dyn Verifier;
    /// The notary of node `id`: signs its membership statements, checks everyone's.
    fn notary(&self, id: &str) -> Box<dyn Notary>;
}

/// Keyed checksums ([`KeyedChecksum`]): fast, not cryptography.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheapCrypto;

impl SimCrypto for CheapCrypto {
    fn signer(&self, id: &str) -> Box<dyn Signer> {
        Box::new(KeyedChecksum::new(id, CLUSTER_SEED))
    }

    fn verifier(&self) -> &dyn Verifier {
        &ChecksumVerifier { seed: CLUSTER_SEED }
    }

    fn notary(&self, id: &str) -> Box<dyn Notary> {
        Box::new(ChecksumNotary::new(id, CLUSTER_SEED))
    }
}

/// An invariant that broke, with what replays it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed}: at {at_ms} ms: {what}")]
pub struct Violation {
    /// Replays the run: `SimConfig::from_seed(seed)`.
    pub seed: u64,
    /// Virtual time of the violation (ms from start).
    pub at_ms: u64,
    /// What broke.
    pub what: String,
}

/// The policy every simulated node applies: everything is granted, except bids from the
/// node the run forbids to bid, and submissions from the node it lets only host.
#[derive(Debug, Clone)]
struct SimPolicy {
    no_bid: Option<String>,
    hosts_only: Option<String>,
}

impl Authorizer for SimPolicy {
    fn check(&self, peer: &str, action: Action, _namespace: &str) -> Result<(), Denial> {
        if action == Action::Bid && self.no_bid.as_deref() == Some(peer) {
            return Err(Denial {
                action,
                reason: format!("{peer} may not bid (simulated policy)"),
            });
        }
        if action == Action::Submit && self.hosts_only.as_deref() == Some(peer) {
            return Err(Denial {
                action,
                reason: format!("{peer} may not submit (simulated policy)"),
            });
        }
        Ok(())
    }
}

/// What a node's store holds, as the agent keeps it: what survives a crash.
#[derive(Debug, Clone, Default)]
struct Store {
    /// Awards stored (flushed) before they were acknowledged, by (workload, replica).
    assignments: BTreeMap<(String, u32), Assignment>,
    /// Workloads this node owns: submitted here, or taken over.
    owned: BTreeMap<String, PlacementRequest>,
    /// Its copy of the replicated workload records.
    records: BTreeMap<String, SignedStatement>,
    /// Its acceptor state of lease registers.
    registers: BTreeMap<(String, u32), crate::register::SlotState>,
}

struct Node {
    id: String,
    meta: NodeMeta,
    /// Counts the node's starts; frames sent to or by an earlier run are dropped, as the
    /// QUIC connections carrying them die with the process.
    boot: u64,
    signer: Box<dyn Signer>,
    negotiator: Negotiator,
    replays: ReplayGuard,
    alive: bool,
    store: Store,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    at_ms: u64,
    seq: u64,
    to: usize,
    to_boot: u64,
    from: usize,
    from_boot: u64,
    forged: bool,
    frame: Vec<u8>,
}

/// A question waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Asked {
    node: usize,
    boot: u64,
    token: u64,
}

struct Sim<'c> {
    config: SimConfig,
    /// `PARLEY_SIM_TRACE` set: every message but probes, and every host action, goes to
    /// stderr (for replaying one failing seed).
    trace: bool,
    /// Shared by every node's membership table (N² records would not fit otherwise).
    interner: Interner,
    crypto: &'c dyn SimCrypto,
    policy: SimPolicy,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    in_flight: BinaryHeap<Reverse<Delivery>>,
    seq: u64,
    message_ids: u64,
    outcome: Outcome,
    requests: Vec<PlacementRequest>,
    /// The most replicas each request can have placed (what a scaling may ask).
    max_replicas: Vec<u32>,
    /// When each record was written, by (workload, generation) (for spread times).
    written_at: BTreeMap<(String, u64), u64>,
    /// The workload a user updated, the image it ran before and the one asked for, and
    /// whether that one fails.
    updated: Option<(String, String, String, bool)>,
    /// During an update in a run where no node crashes: the workload and how many of its
    /// replicas must run at every step.
    must_keep_running: Option<(String, usize)>,
    /// Workload → the node it was submitted to.
    submitters: BTreeMap<String, usize>,
    /// Workloads a user removed.
    removed: BTreeSet<String>,
    /// The revocation the issuer made, once made, and the members it held alive then
    /// (it sends the revocation to each of them at once).
    revoked: Option<(RevocationNotice, Vec<usize>)>,
    /// Workloads some live node other than the crashed one knew when it crashed: only
    /// those can survive a submitter that never comes back (nobody else has the spec).
    known_elsewhere: BTreeSet<String>,
    /// Questions waiting for an answer, and by when.
    asked: BTreeMap<Asked, u64>,
    next_token: u64,
    next_ownership_check: u64,
    /// Each node's next timer as last computed, and a heap of them (entries that no
    /// longer match `timer_of` are stale and skipped).
    timer_of: Vec<Option<u64>>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Which nodes stopped counting the crashed node as alive.
    suspected_crash: Vec<bool>,
    /// Each node's store work in flight, in order, with when it completes.
    store_work: Vec<std::collections::VecDeque<(u64, HostAction)>>,
    /// Each node's clock rate, per mille of real time.
    rates: Vec<u64>,
    /// Until when each node is paused (real ms; 0: never).
    paused_until: Vec<u64>,
    /// Who believes it holds each strong replica's lease, and over which real interval:
    /// node → (epoch, from, until).
    beliefs: BTreeMap<(String, u32), BTreeMap<usize, Belief>>,
    /// Strong replicas whose holder crashed or paused, and when (for failover times).
    lost_holders: BTreeMap<(String, u32), (usize, u64)>,
}

fn node_id(i: usize) -> String {
    format!("spiffe://sim.test/node/n{i}")
}

fn index_of(id: &str) -> Option<usize> {
    id.strip_prefix("spiffe://sim.test/node/n")?.parse().ok()
}

impl<'c> Sim<'c> {
    fn new(config: SimConfig, crypto: &'c dyn SimCrypto) -> Self {
        let mut rng = Rng::new(config.seed ^ 0xA5A5_A5A5);
        let policy = SimPolicy {
            no_bid: config.no_bid_node.map(node_id),
            hosts_only: config.hosts_only_node.map(node_id),
        };
        let metas: Vec<NodeMeta> = (0..config.nodes)
            .map(|i| {
                let arch = if i % 3 == 2 { "arm64" } else { "amd64" };
                let allocatable = Resources {
                    cpu_millis: rng.range(2, 8) * 1000,
                    memory_bytes: rng.range(4, 16) * GIB,
                };
                let has_image = rng.chance(500);
                NodeMeta {
                    agent_version: "sim".to_owned(),
                    protocol_min: codec::MIN_PROTOCOL_VERSION,
                    protocol_max: codec::PROTOCOL_VERSION,
                    arch: arch.to_owned(),
                    labels: BTreeMap::from([("rack".to_owned(), format!("rack-{}", i % 3))]),
                    allocatable,
                    free: allocatable,
                    images: if has_image {
                        vec!["registry.test/app:1".to_owned()]
                    } else {
                        Vec::new()
                    },
                    address: None,
                    issuer: false,
                    disk_free_bytes: None,
                    lease_registers: true,
                }
            })
            .collect();
        let count = metas.len();
        // Their own stream: runs without skew draw nothing, and keep their scenarios.
        let mut clock_rng = Rng::new(config.seed ^ 0xC10C_C10C);
        let skew = config.strong.is_some_and(|s| s.clock_skew);
        let rates = (0..count)
            .map(|_| {
                if skew {
                    clock_rng.range(990, 1_010)
                } else {
                    1_000
                }
            })
            .collect();
        let mut sim = Self {
            trace: std::env::var_os("PARLEY_SIM_TRACE").is_some(),
            interner: Interner::default(),
            crypto,
            policy,
            requests: Vec::new(),
            max_replicas: Vec::new(),
            written_at: BTreeMap::new(),
            updated: None,
            must_keep_running: None,
            rng,
            now: 0,
            nodes: Vec::with_capacity(count),
            in_flight: BinaryHeap::new(),
            seq: 0,
            message_ids: 0,
            outcome: Outcome::default(),
            submitters: BTreeMap::new(),
            removed: BTreeSet::new(),
            revoked: None,
            known_elsewhere: BTreeSet::new(),
            asked: BTreeMap::new(),
            next_token: 0,
            next_ownership_check: config.stable_after_ms.saturating_add(OWNERSHIP_SETTLES_MS),
            timer_of: vec![None; count],
            timers: BinaryHeap::new(),
            suspected_crash: vec![false; count],
            store_work: vec![std::collections::VecDeque::new(); count],
            rates,
            paused_until: vec![0; count],
            beliefs: BTreeMap::new(),
            lost_holders: BTreeMap::new(),
            config,
        };
        for (i, meta) in metas.into_iter().enumerate() {
            let node = sim.start_node(i, meta, 0, Store::default());
            sim.nodes.push(node);
        }
        sim.requests = sim.make_requests();
        if sim.config.static_membership {
            // Only nodes that take submissions announce; only they need the member list.
            let everyone: Vec<Candidate> = (0..count)
                .map(|j| Candidate {
                    announced: Some(Announced {
                        free: None,
                        ..Announced::from_meta(&sim.nodes[j].meta)
                    }),
                    ..Candidate::new(node_id(j))
                })
                .collect();
            let submitters = sim.config.submitters.min(count);
            for (i, node) in sim.nodes.iter_mut().enumerate() {
                let members = if i < submitters {
                    everyone.clone()
                } else {
                    Vec::new()
                };
                node.negotiator.use_static_members(members);
            }
        } else if sim.config.preconverged {
            let everyone: Vec<MemberUpdate> = sim
                .nodes
                .iter()
                .map(|n| n.negotiator.membership().announcement())
                .collect();
            for node in &mut sim.nodes {
                node.negotiator.assume_known(0, &everyone);
            }
        }
        // Timers from the start: a node's first probe comes at its own random point of
        // the first interval, not at the first event of the run (which would put every
        // node's probes in lockstep).
        for i in 0..count {
            sim.schedule_timer(i);
        }
        sim
    }

    /// Starts (or restarts, with `boot` > 0 and what it had stored) node `i`.
    fn start_node(&mut self, i: usize, meta: NodeMeta, boot: u64, store: Store) -> Node {
        let id = node_id(i);
        let config = NegotiatorConfig {
            membership: self.config.membership,
            strong: true,
            ..NegotiatorConfig::default()
        };
        let committed = store.assignments.values().cloned().collect();
        let mut negotiator = Negotiator::new(
            &id,
            config,
            meta.clone(),
            committed,
            self.clock(i),
            self.rng.next_u64(),
            Box::new(self.policy.clone()),
            self.crypto.notary(&id),
        );
        negotiator.share_interner(self.interner.clone());
        Node {
            signer: self.crypto.signer(&id),
            negotiator,
            replays: ReplayGuard::default(),
            alive: true,
            boot,
            store,
            meta,
            id,
        }
    }

    /// Workloads that fit: small replicas (any node holds one of each), spread across
    /// racks only with at most one replica per rack, never more replicas than nodes that
    /// may host them; plus one that fits nowhere.
    fn make_requests(&mut self) -> Vec<PlacementRequest> {
        // "Fits" is judged on the nodes that survive the run and may bid.
        let crashed = self.config.crash.map(|c| c.node);
        let survivors: Vec<usize> = (0..self.config.nodes)
            .filter(|i| Some(*i) != crashed && Some(*i) != self.config.no_bid_node)
            .collect();
        let arm_nodes = survivors.iter().filter(|i| *i % 3 == 2).count() as u64;
        let racks = survivors
            .iter()
            .map(|i| i % 3)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        let (cpu_unit, memory_unit) = if self.config.small_workloads {
            (10, 16 * MIB)
        } else {
            (100, 128 * MIB)
        };
        let mut requests = Vec::new();
        for w in 0..self.config.workloads {
            let spread = self.rng.chance(300);
            let arm = !spread && arm_nodes > 0 && self.rng.chance(200);
            let max_replicas = if spread {
                racks
            } else if arm {
                arm_nodes.min(2)
            } else {
                3.min(survivors.len() as u64)
            };
            // At most 3 CPU and 4 memory units a replica: the smallest node (2 CPUs, 4 GiB)
            // then holds one replica of each of 6 workloads, so every placement that
            // respects the constraints fits, whichever node filled up first.
            let resources = Resources {
                cpu_millis: self.rng.range(1, 3) * cpu_unit,
                memory_bytes: self.rng.range(1, 4) * memory_unit,
            };
            let replicas = self.rng.range(1, max_replicas.max(1)) as u32;
            self.max_replicas.push(max_replicas.max(1) as u32);
            let scoring = if self.rng.chance(500) {
                Scoring::Spread
            } else {
                Scoring::BinPack
            };
            let mut request = PlacementRequest {
                arch: arm.then(|| "arm64".to_owned()),
                spread_label: spread.then(|| "rack".to_owned()),
                scoring,
                ..request_for(&format!("w{w}"), "registry.test/app:1", replicas, resources)
            };
            if let (Some(strong), Some(spec)) = (self.config.strong, request.spec.as_mut()) {
                spec.consistency = crate::workload::Consistency::Strong;
                spec.stop_timeout_secs = strong.stop_timeout_secs;
            }
            requests.push(request);
        }
        if self.config.unplaceable {
            let resources = Resources {
                cpu_millis: 100,
                memory_bytes: 64 * GIB,
            };
            requests.push(request_for(
                TOO_BIG_NAME,
                "registry.test/huge:1",
                1,
                resources,
            ));
        }
        requests
    }

    fn violation(&self, what: impl Into<String>) -> Violation {
        Violation {
            seed: self.config.seed,
            at_ms: self.now,
            what: what.into(),
        }
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.config
            .partition
            .is_some_and(|p| self.now >= p.start_ms && self.now < p.end_ms && (a % 2) != (b % 2))
    }

    /// After any input to node `i`: carries out what it asks of its host (which may give
    /// it more input), sends its messages, reads its notices, checks it, and schedules
    /// its next timer.
    fn settle(&mut self, i: usize) -> Result<(), Violation> {
        while let Some(action) = self.nodes[i].negotiator.poll_action() {
            self.carry_out(i, action)?;
        }
        self.flush_transmits(i)?;
        self.drain_events(i)?;
        self.check_always(i)?;
        self.check_leases(i)?;
        self.schedule_timer(i);
        Ok(())
    }

    /// Node `i`'s clock: its own rate, from 0 at the start of the run.
    fn clock(&self, i: usize) -> u64 {
        self.now * self.rates[i] / 1_000
    }

    /// The real time at which node `i`'s clock reads `local` (rounded up).
    fn real_time(&self, i: usize, local: u64) -> u64 {
        (local.saturating_mul(1_000)).div_ceil(self.rates[i])
    }

    fn paused(&self, i: usize) -> bool {
        self.paused_until[i] > self.now
    }

    /// No two nodes believe they hold one strong replica's lease at overlapping moments
    /// of real time. A node's belief lasts until its lease ends by its clock, whatever
    /// happens to it meanwhile (crashed or paused, a watchdog outside the agent stops the
    /// container by then).
    fn check_leases(&mut self, i: usize) -> Result<(), Violation> {
        if self.config.strong.is_none() || !self.nodes[i].alive {
            return Ok(());
        }
        let held: Vec<(String, u32, u64, u64)> = self.nodes[i]
            .negotiator
            .claims()
            .running()
            .map(|(w, r, epoch, until)| (w.to_owned(), r, epoch, self.real_time(i, until)))
            .filter(|(_, _, _, until)| *until > self.now)
            .collect();
        for (workload, replica, epoch, until) in held {
            self.outcome.lease_checks += 1;
            let key = (workload.clone(), replica);
            let now = self.now;
            let beliefs = self.beliefs.entry(key.clone()).or_default();
            beliefs.retain(|_, (_, _, end)| *end > now);
            let from = match beliefs.get(&i) {
                Some((held, from, _)) if *held == epoch => *from,
                _ => now,
            };
            beliefs.insert(i, (epoch, from, until));
            let clash = beliefs
                .iter()
                .find(|(j, (_, f, u))| **j != i && *f < until && from < *u)
                .map(|(j, belief)| (*j, *belief));
            if let Some((j, (other_epoch, f, u))) = clash {
                return Err(self.violation(format!(
                    "{} holds replica {replica} of {workload} at epoch {epoch} over [{from}, {until}) ms while {} holds it at epoch {other_epoch} over [{f}, {u})",
                    self.nodes[i].id, self.nodes[j].id
                )));
            }
            if let Some((lost, at)) = self.lost_holders.get(&key).copied()
                && lost != i
            {
                self.lost_holders.remove(&key);
                self.outcome.failover_ms.push(now - at);
            }
        }
        Ok(())
    }

    /// Notes the strong replicas node `i` held when it crashed or paused.
    fn note_lost_holder(&mut self, i: usize) {
        let held: Vec<(String, u32)> = self.nodes[i]
            .negotiator
            .claims()
            .running()
            .map(|(w, r, _, _)| (w.to_owned(), r))
            .collect();
        for key in held {
            self.lost_holders.insert(key, (i, self.now));
        }
    }

    /// Plays node `i`'s host.
    fn carry_out(&mut self, i: usize, action: HostAction) -> Result<(), Violation> {
        if self.trace {
            eprintln!("{} ms: n{i} host: {action:?}", self.now);
        }
        if matches!(
            action,
            HostAction::Commit { .. }
                | HostAction::Adopt { .. }
                | HostAction::Forget { .. }
                | HostAction::Revoke { .. }
        ) {
            // The agent's store work runs in order, one at a time, and takes a while
            // (a flush, a lock held by a container start): other input arrives meanwhile.
            // A register slot is a small flushed write of its own, outside that queue:
            // leases are renewed every 1.5 s and cannot wait behind container starts.
            let delay = match self.config.store_latency_ms {
                0 => 0,
                max => self.rng.range(0, max),
            };
            let queue = &mut self.store_work[i];
            let at = queue.back().map_or(self.now, |(at, _)| *at).max(self.now) + delay;
            queue.push_back((at, action));
            if delay == 0 && queue.len() == 1 {
                return self.finish_store_work(i);
            }
            return Ok(());
        }
        self.carry_out_now(i, action)
    }

    /// Every award a node stores carries its owner's grant of that very replica to that
    /// node, which is what the node's workload identities for it prove.
    fn check_grant(&self, i: usize, assignment: &Assignment) -> Result<(), Violation> {
        let node = &self.nodes[i];
        let workload = crate::workload::default_key(assignment.spec.name.as_str());
        let grant = assignment.grant.as_ref().and_then(|signed| {
            let grant = Grant::decode(&signed.statement)?;
            let signed_by_owner = self.crypto.notary(&node.id).verify(
                StatementKind::Grant,
                &assignment.owner,
                signed,
                self.now,
            );
            Some((grant, signed_by_owner))
        });
        match grant {
            Some((grant, true))
                if grant.owner == assignment.owner
                    && grant.node == node.id
                    && grant.workload == workload
                    && grant.replica == assignment.replica
                    && grant.epoch == assignment.epoch =>
            {
                Ok(())
            }
            other => Err(self.violation(format!(
                "{} stores replica {} of {workload} from {} without a grant of it: {other:?}",
                node.id, assignment.replica, assignment.owner
            ))),
        }
    }

    /// Completes the oldest store work of node `i` whose time has come.
    fn finish_store_work(&mut self, i: usize) -> Result<(), Violation> {
        while let Some((at, _)) = self.store_work[i].front() {
            if *at > self.now || self.paused(i) {
                break;
            }
            if let Some((_, action)) = self.store_work[i].pop_front() {
                self.carry_out_now(i, action)?;
            }
        }
        Ok(())
    }

    /// When the next store work of any node completes.
    fn next_store_work(&self) -> Option<u64> {
        self.store_work
            .iter()
            .zip(&self.paused_until)
            .filter_map(|(queue, paused)| queue.front().map(|(at, _)| (*at).max(*paused)))
            .min()
    }

    /// Carries out a host action at once.
    fn carry_out_now(&mut self, i: usize, action: HostAction) -> Result<(), Violation> {
        let now = self.clock(i);
        match action {
            HostAction::Commit { token, assignment } => {
                self.check_grant(i, &assignment)?;
                let result = if self.rng.chance(self.config.commit_failure_per_mille) {
                    self.outcome.commit_failures += 1;
                    Err(HostError::Store(
                        "simulated: no space left on device".to_owned(),
                    ))
                } else {
                    let key = (
                        crate::workload::default_key(assignment.spec.name.as_str()),
                        assignment.replica,
                    );
                    self.nodes[i].store.assignments.insert(key, assignment);
                    Ok(())
                };
                self.nodes[i]
                    .negotiator
                    .handle_committed(now, token, result);
            }
            HostAction::Adopt {
                token,
                spec,
                submitter,
            } => {
                let key = crate::workload::default_key(spec.name.as_str());
                let request = PlacementRequest {
                    submitter: Some(submitter),
                    ..PlacementRequest::for_spec(&key, &spec)
                };
                self.nodes[i].store.owned.insert(key, request);
                self.outcome.takeovers += 1;
                self.nodes[i].negotiator.handle_adopted(now, token, Ok(()));
            }
            HostAction::Forget { workload, .. } => {
                self.nodes[i].store.owned.remove(&workload);
            }
            HostAction::Revoke {
                workload,
                replica,
                epoch,
            } => {
                let store = &mut self.nodes[i].store.assignments;
                if store
                    .get(&(workload.clone(), replica))
                    .is_some_and(|a| a.epoch == epoch)
                {
                    store.remove(&(workload, replica));
                }
            }
            HostAction::ReadLogs {
                request,
                from,
                workload,
                replica,
                ..
            } => {
                let runs = self.nodes[i]
                    .store
                    .assignments
                    .contains_key(&(workload.clone(), replica));
                let result = if runs {
                    Ok(LogChunk::default())
                } else {
                    Err(HostError::NotRunning(format!(
                        "replica {replica} of {} has no container on this node",
                        key_name(&workload)
                    )))
                };
                self.nodes[i]
                    .negotiator
                    .handle_logs_read(now, request, from, result);
            }
            HostAction::Answer { token, .. } => {
                let asked = Asked {
                    node: i,
                    boot: self.nodes[i].boot,
                    token,
                };
                if self.asked.remove(&asked).is_none() {
                    return Err(self.violation(format!(
                        "{} answered a question nobody asked (token {token})",
                        self.nodes[i].id
                    )));
                }
                self.outcome.answered += 1;
            }
            HostAction::CheckRevocation { notice } => {
                let verified = notice.signature == sim_root_signature(&notice);
                self.nodes[i]
                    .negotiator
                    .handle_revocation(now, notice, verified);
            }
            HostAction::StoreRecord { workload, record } => {
                self.nodes[i].store.records.insert(workload, record);
            }
            HostAction::DropRecord { workload } => {
                self.nodes[i].store.records.remove(&workload);
            }
            HostAction::StoreRegister {
                token,
                workload,
                replica,
                slot,
            } => {
                self.nodes[i]
                    .store
                    .registers
                    .insert((workload, replica), slot);
                self.nodes[i]
                    .negotiator
                    .handle_register_stored(now, token, Ok(()));
            }
            HostAction::DropRegister { workload, replica } => {
                self.nodes[i].store.registers.remove(&(workload, replica));
            }
            HostAction::RunLeased {
                workload, replica, ..
            } => {
                self.outcome.leases_run += 1;
                let running = run_state(crate::messages::Phase::Running, now, None);
                self.nodes[i]
                    .negotiator
                    .set_replica_state(&workload, replica, running);
            }
            HostAction::Fence {
                workload, replica, ..
            } => {
                self.outcome.fences += 1;
                let stopped = run_state(
                    crate::messages::Phase::Pending,
                    now,
                    Some("fenced: waiting for the lease".to_owned()),
                );
                self.nodes[i]
                    .negotiator
                    .set_replica_state(&workload, replica, stopped);
            }
            HostAction::Start { workload, replica } => {
                let failing = self.nodes[i]
                    .store
                    .assignments
                    .get(&(workload.clone(), replica))
                    .is_some_and(|a| a.spec.image.contains("/bad:"));
                let running = run_state(started_phase(failing), now, None);
                self.nodes[i]
                    .negotiator
                    .set_replica_state(&workload, replica, running);
            }
        }
        Ok(())
    }

    /// The lies the byzantine member adds to its gossip: about one other member, picked
    /// by the seed, a death and a suspicion it never issued and a rewrite of its metadata
    /// at `u64::MAX`; the rewrite one step above the incarnation held, signed with its own
    /// key, and the member's genuine statement replayed for a higher incarnation; and
    /// members that do not exist, with and without statements.
    fn lies(&mut self, from: usize) -> Vec<MemberUpdate> {
        let count = self.nodes.len() as u64;
        let victim = self.rng.range(0, count - 1) as usize;
        let mut lies = self.invented_members(from);
        if victim == from {
            return lies;
        }
        let node = node_id(victim);
        let forged = NodeMeta {
            arch: FORGED_ARCH.to_owned(),
            address: Some("203.0.113.66:7946".to_owned()),
            ..self.nodes[victim].meta.clone()
        };
        let bare = |state, incarnation| MemberUpdate {
            node: node.clone(),
            state,
            incarnation,
            meta: None,
            statement: None,
        };
        lies.extend([
            bare(MemberState::Dead, u64::MAX),
            bare(MemberState::Suspect, u64::MAX - 1),
            MemberUpdate {
                meta: Some(Arc::new(forged.clone())),
                ..bare(MemberState::Alive, u64::MAX)
            },
        ]);
        let held = self.nodes[from]
            .negotiator
            .membership()
            .member(&node)
            .map(|m| (m.incarnation, m.statement.clone()));
        if let Some((incarnation, genuine)) = held {
            let step = incarnation.saturating_add(1);
            let own_key = self.crypto.notary(&self.nodes[from].id).sign(
                StatementKind::Member,
                Statement {
                    node: node.clone(),
                    incarnation: step,
                    meta: forged.clone(),
                }
                .encode(),
            );
            lies.push(MemberUpdate {
                meta: Some(Arc::new(forged)),
                statement: Some(Arc::new(own_key)),
                ..bare(MemberState::Alive, step)
            });
            if let Some(genuine) = genuine {
                lies.push(MemberUpdate {
                    statement: Some(genuine),
                    ..bare(MemberState::Alive, step)
                });
            }
        }
        lies
    }

    /// Members the byzantine member makes up, at an address of its choosing: one bare,
    /// one with a statement it signed itself.
    fn invented_members(&mut self, from: usize) -> Vec<MemberUpdate> {
        let invented = node_id(self.nodes.len() + self.rng.range(0, 1_000) as usize);
        let meta = NodeMeta {
            address: Some("203.0.113.67:7946".to_owned()),
            ..self.nodes[from].meta.clone()
        };
        let signed = self.crypto.notary(&self.nodes[from].id).sign(
            StatementKind::Member,
            Statement {
                node: invented.clone(),
                incarnation: 1,
                meta: meta.clone(),
            }
            .encode(),
        );
        vec![
            MemberUpdate {
                node: invented.clone(),
                state: MemberState::Alive,
                incarnation: 1,
                meta: Some(Arc::new(meta)),
                statement: None,
            },
            MemberUpdate {
                node: invented,
                state: MemberState::Alive,
                incarnation: 1,
                meta: None,
                statement: Some(Arc::new(signed)),
            },
        ]
    }

    /// What the byzantine member `from` does to a message before it leaves: lies added
    /// to its gossip, its bids inflated, and beside each state exchange a revocation the
    /// root never signed and a report of a replica it was never awarded.
    /// Workload records the byzantine member makes up, one per message so that each is
    /// checked: a tombstone it claims node 0 wrote, one at a generation no write could
    /// beat, and a spec swapped under node 0's signature.
    fn forged_records(&mut self, from: usize) -> Body {
        let workload = crate::workload::default_key(&format!(
            "w{}",
            self.rng.range(0, self.config.workloads as u64 - 1)
        ));
        let liar = self.nodes[from].id.clone();
        let mut record = crate::messages::WorkloadRecord {
            workload: workload.clone(),
            generation: 1_000,
            author: node_id(0),
            submitter: node_id(0),
            written_at_ms: self.now,
            spec: None,
            rollout: None,
            acceptors: Vec::new(),
        };
        let signed = match self.rng.range(0, 2) {
            0 => self
                .crypto
                .notary(&liar)
                .sign(StatementKind::Record, record.encode()),
            1 => {
                record.author = liar.clone();
                record.generation = u64::MAX;
                self.crypto
                    .notary(&liar)
                    .sign(StatementKind::Record, record.encode())
            }
            _ => {
                let genuine = self.crypto.notary(&node_id(0)).sign(
                    StatementKind::Record,
                    crate::messages::WorkloadRecord {
                        spec: Some(
                            request_for(key_name(&workload), "genuine", 1, Resources::default())
                                .spec
                                .expect("simulated requests carry specs"),
                        ),
                        ..record.clone()
                    }
                    .encode(),
                );
                SignedStatement {
                    statement: record.encode(),
                    ..genuine
                }
            }
        };
        Body::Records(crate::messages::Records {
            records: vec![signed],
        })
    }

    fn tamper(&mut self, from: usize, to_id: &str, body: &mut Body) -> Result<(), Violation> {
        if matches!(body, Body::Sync(_)) {
            let victim = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
            let forged = Body::Revocations(Revocations {
                notices: vec![RevocationNotice {
                    subject: node_id(victim),
                    public_key: "key-1".to_owned(),
                    revoked_at: self.now,
                    signature: "forged".to_owned(),
                }],
            });
            let to = self.index(to_id)?;
            self.sign_and_send(from, to, &forged);
            // And a report of a replica it does not run, at an epoch that beats any: with
            // no grant, with one it granted itself, or with one it claims node 0 signed.
            let workload = crate::workload::default_key(&format!(
                "w{}",
                self.rng.range(0, self.config.workloads as u64 - 1)
            ));
            let liar = self.nodes[from].id.clone();
            let grant = match self.rng.range(0, 2) {
                0 => None,
                pick => {
                    let owner = if pick == 1 { liar.clone() } else { node_id(0) };
                    let grant = Grant {
                        owner,
                        node: liar.clone(),
                        workload: workload.clone(),
                        replica: 0,
                        epoch: u64::MAX,
                        granted_at_ms: self.now,
                    };
                    Some(
                        self.crypto
                            .notary(&liar)
                            .sign(StatementKind::Grant, grant.encode()),
                    )
                }
            };
            let phantom = Body::Instance(Instance {
                workload,
                replica: 0,
                epoch: u64::MAX,
                reservation: "phantom".to_owned(),
                failure_domain: None,
                grant,
                state: None,
                spec_digest: None,
            });
            self.sign_and_send(from, to, &phantom);
            let records = self.forged_records(from);
            self.sign_and_send(from, to, &records);
        }
        let lies = self.lies(from);
        match body {
            Body::Ping(Ping { updates, .. })
            | Body::PingReq(PingReq { updates, .. })
            | Body::Ack(Ack { updates, .. })
            | Body::Sync(Sync { updates, .. }) => updates.extend(lies),
            // It also claims the best score there is, and a hold that never lapses.
            Body::Bid(bid) => {
                bid.score = u32::MAX;
                bid.expires_at_ms = u64::MAX;
            }
            _ => {}
        }
        Ok(())
    }

    /// The index of node `id`, or a violation: nothing is sent to a node that does not
    /// exist.
    fn index(&self, id: &str) -> Result<usize, Violation> {
        index_of(id).ok_or_else(|| self.violation(format!("message to unknown node {id}")))
    }

    /// Encodes `body` signed by `from` and sends it to `to`.
    fn sign_and_send(&mut self, from: usize, to: usize, body: &Body) {
        self.message_ids += 1;
        let frame = codec::encode(
            body,
            self.nodes[from].signer.as_ref(),
            self.message_ids,
            EPOCH_MS + self.now,
        );
        self.send(from, to, frame, false);
    }

    /// Encodes and sends everything node `from` queued, through loss and the partition.
    fn flush_transmits(&mut self, from: usize) -> Result<(), Violation> {
        while let Some((to_id, mut body)) = self.nodes[from].negotiator.poll_transmit() {
            if self.config.liar_node == Some(from) {
                self.tamper(from, &to_id, &mut body)?;
            }
            if self.trace && !matches!(body, Body::Ping(_) | Body::PingReq(_) | Body::Ack(_)) {
                eprintln!("{} ms: n{from} -> {to_id}: {body:?}", self.now);
            }
            if to_id == self.nodes[from].id {
                return Err(self.violation("a node sent a message to itself over the network"));
            }
            if let Body::Accept(accept) = &body
                && !self.nodes[from]
                    .store
                    .assignments
                    .values()
                    .any(|a| a.reservation == accept.reservation)
            {
                return Err(self.violation(format!(
                    "{} acknowledged reservation {} before storing its award",
                    self.nodes[from].id, accept.reservation
                )));
            }
            let to = self.index(&to_id)?;
            self.sign_and_send(from, to, &body);
            if self.rng.chance(self.config.forge_per_mille) {
                // An outsider claims to be `from`, with a key it does not have.
                let outsider = KeyedChecksum::new(self.nodes[from].id.clone(), !CLUSTER_SEED);
                self.message_ids += 1;
                let forged = codec::encode(&body, &outsider, self.message_ids, EPOCH_MS + self.now);
                self.send(from, to, forged, true);
            }
        }
        Ok(())
    }

    fn send(&mut self, from: usize, to: usize, frame: Vec<u8>, forged: bool) {
        let unstable = self.now < self.config.stable_after_ms;
        if unstable && (self.rng.chance(self.config.loss_per_mille) || self.partitioned(from, to)) {
            return;
        }
        let (low, high) = self.config.latency_ms;
        self.seq += 1;
        self.in_flight.push(Reverse(Delivery {
            at_ms: self.now + self.rng.range(low, high),
            seq: self.seq,
            to,
            to_boot: self.nodes[to].boot,
            from,
            from_boot: self.nodes[from].boot,
            forged,
            frame,
        }));
    }

    fn deliver(&mut self, delivery: Delivery) -> Result<(), Violation> {
        let (to, from) = (&self.nodes[delivery.to], &self.nodes[delivery.from]);
        if !to.alive
            || !from.alive
            || to.boot != delivery.to_boot
            || from.boot != delivery.from_boot
        {
            return Ok(());
        }
        if self.paused(delivery.to) {
            // A stopped process reads nothing; the frame waits in its socket.
            let at_ms = self.paused_until[delivery.to];
            self.in_flight.push(Reverse(Delivery { at_ms, ..delivery }));
            return Ok(());
        }
        let now = self.now;
        let local = self.clock(delivery.to);
        let node = &mut self.nodes[delivery.to];
        let received = codec::decode_frame(
            &delivery.frame,
            self.crypto.verifier(),
            &mut node.replays,
            EPOCH_MS + now,
            codec::DEFAULT_TIME_WINDOW_MS,
        );
        let received = match (received, delivery.forged) {
            (Ok(_), true) => return Err(self.violation("a node accepted a forged message")),
            (Err(_), true) => {
                self.outcome.forged_refused += 1;
                return Ok(());
            }
            (Err(e), false) => {
                return Err(self.violation(format!("an authentic frame was refused: {e}")));
            }
            (Ok(received), false) => received,
        };
        self.outcome.messages += 1;
        *self
            .outcome
            .messages_by_kind
            .entry(received.body.kind())
            .or_default() += 1;
        *self
            .outcome
            .bytes_by_kind
            .entry(received.body.kind())
            .or_default() += delivery.frame.len() as u64;
        node.negotiator
            .handle_message(local, &received.sender, received.body);
        self.settle(delivery.to)
    }

    fn schedule_timer(&mut self, i: usize) {
        let next = if self.nodes[i].alive {
            let local = self.nodes[i].negotiator.poll_timeout();
            local.map(|at| self.real_time(i, at).max(self.paused_until[i]))
        } else {
            None
        };
        if next != self.timer_of[i] {
            self.timer_of[i] = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, i)));
            }
        }
    }

    fn next_timer(&mut self) -> Option<u64> {
        while let Some(Reverse((at, i))) = self.timers.peek().copied() {
            if self.timer_of[i] == Some(at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Lets every node whose timer is due handle its timeouts.
    fn fire_timers(&mut self) -> Result<(), Violation> {
        let now = self.now;
        while let Some(Reverse((at, i))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.timer_of[i] != Some(at) {
                continue;
            }
            self.timer_of[i] = None;
            if self.paused(i) {
                self.schedule_timer(i);
                continue;
            }
            let local = self.clock(i);
            self.nodes[i].negotiator.handle_timeout(local);
            self.settle(i)?;
        }
        Ok(())
    }

    /// Reads node `i`'s notices: failure detection for the outcome, false deaths, failed
    /// auctions, refusals.
    fn drain_events(&mut self, i: usize) -> Result<(), Violation> {
        let crashed = self.config.crash.map(|c| node_id(c.node));
        while let Some(event) = self.nodes[i].negotiator.poll_event() {
            if self.trace && !matches!(event, Event::Sent { .. }) {
                eprintln!("{} ms: n{i} event: {event:?}", self.now);
            }
            match event {
                Event::Membership(event) => {
                    let (stopped_trusting, died) = match &event {
                        MembershipEvent::Suspected(node) => (Some(node), None),
                        MembershipEvent::Died(node) => (Some(node), Some(node)),
                        _ => (None, None),
                    };
                    if stopped_trusting.is_some()
                        && stopped_trusting == crashed.as_ref()
                        && !self.suspected_crash[i]
                        && let Some(crash) = self.config.crash
                    {
                        self.suspected_crash[i] = true;
                        self.outcome
                            .suspected_crash_ms
                            .push(self.now.saturating_sub(crash.at_ms));
                    }
                    if let Some(node) = died {
                        self.learned_of_death(i, node)?;
                    }
                }
                Event::Auction(AnnouncerEvent::NotPlaced { .. }) => {
                    self.outcome.failed_auctions += 1
                }
                Event::Denied { .. } => self.outcome.denied += 1,
                Event::AcceptorsChanged { set, .. } if set.leaving.is_none() => {
                    self.outcome.acceptors_replaced += 1
                }
                Event::RecordRefused { .. } => self.outcome.records_refused += 1,
                Event::RecordTaken {
                    workload,
                    generation,
                    author,
                    ..
                } => {
                    self.outcome.records_taken += 1;
                    let key = (workload, generation);
                    if author == self.nodes[i].id {
                        self.written_at.entry(key).or_insert(self.now);
                    } else if let Some(at) = self.written_at.get(&key) {
                        self.outcome.record_spread_ms.push(self.now - at);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn learned_of_death(&mut self, i: usize, node: &str) -> Result<(), Violation> {
        let crashed = self.config.crash.map(|c| node_id(c.node));
        if Some(node) == crashed.as_deref() {
            if let Some(crash) = self.config.crash {
                let after = self.now.saturating_sub(crash.at_ms);
                self.outcome.detection_ms.get_or_insert(after);
                self.outcome.learned_of_crash_ms.push(after);
            }
            return Ok(());
        }
        self.outcome.false_deaths += 1;
        if self.now >= self.config.stable_after_ms.saturating_add(30_000) {
            return Err(self.violation(format!(
                "{} declared {node} dead long after the network stabilized",
                self.nodes[i].id
            )));
        }
        Ok(())
    }

    /// Invariants that hold after every step of node `i`.
    fn check_always(&self, i: usize) -> Result<(), Violation> {
        if let Some((workload, least)) = &self.must_keep_running {
            let running = self.running_replicas(workload);
            if running < *least {
                return Err(self.violation(format!(
                    "during its update only {running} replicas of {workload} run, fewer than {least}"
                )));
            }
        }
        let node = &self.nodes[i];
        // A paused node's timers wait with it: what they would have expired is still
        // there when it goes on, and checked then.
        if !node.alive || self.paused(i) {
            return Ok(());
        }
        let bidder = node.negotiator.bidder();
        let used = bidder
            .committed_resources()
            .plus(&bidder.reserved_resources());
        if !used.fits_in(&bidder.profile().allocatable) {
            return Err(self.violation(format!("{} commits {used:?} beyond its capacity", node.id)));
        }
        if let Some(r) = bidder
            .reservations()
            .find(|r| r.expires_at_ms <= self.clock(i))
        {
            return Err(self.violation(format!(
                "{} still holds reservation {} past its expiry",
                node.id, r.id
            )));
        }
        if self.config.no_bid_node == Some(i)
            && let Some(c) = bidder.committed().next()
        {
            return Err(self.violation(format!(
                "{} may not bid, yet holds replica {} of {}",
                node.id, c.replica, c.workload
            )));
        }
        if let Some(m) = node
            .negotiator
            .membership()
            .members()
            .find(|m| m.meta.as_ref().is_some_and(|meta| meta.arch == FORGED_ARCH))
        {
            return Err(self.violation(format!("{} took forged metadata for {}", node.id, m.id)));
        }
        if let Some(m) = node
            .negotiator
            .membership()
            .members()
            .find(|m| index_of(&m.id).is_none_or(|j| j >= self.nodes.len()))
        {
            return Err(self.violation(format!(
                "{} holds {}, a member nobody enrolled",
                node.id, m.id
            )));
        }
        if self.config.hosts_only_node == Some(i)
            && node.negotiator.announcer().workload_count() > 0
        {
            return Err(self.violation(format!(
                "{} may not submit, yet owns {} workloads",
                node.id,
                node.negotiator.announcer().workload_count()
            )));
        }
        Ok(())
    }

    /// Alive members in node `i`'s view, itself included.
    fn view(&self, i: usize) -> Vec<&str> {
        let membership = self.nodes[i].negotiator.membership();
        std::iter::once(self.nodes[i].id.as_str())
            .chain(
                membership
                    .members()
                    .filter(|m| m.state != MemberState::Dead)
                    .map(|m| &*m.id),
            )
            .collect()
    }

    /// Whether node `i` holds `id` (itself included) as not dead.
    fn sees_alive(&self, i: usize, id: &str) -> bool {
        id == self.nodes[i].id
            || self.config.static_membership
            || self.nodes[i]
                .negotiator
                .membership()
                .member(id)
                .is_some_and(|m| m.state != MemberState::Dead)
    }

    /// The owner of a submitted workload in node `i`'s view of the members.
    fn owner_in_view(&self, i: usize, workload: &str) -> Option<String> {
        let submitter = node_id(*self.submitters.get(workload)?);
        // The submitter owns while alive: a lookup, not a pass over every member.
        if self.sees_alive(i, &submitter) {
            return Some(submitter);
        }
        // Successors are chosen among the nodes the policy lets own workloads.
        let hosts_only = self.config.hosts_only_node.map(node_id);
        let view = self.view(i);
        let heirs = view
            .iter()
            .copied()
            .filter(|member| hosts_only.as_deref() != Some(*member));
        crate::ownership::successor(workload, heirs).map(str::to_owned)
    }

    /// The node every alive node agrees owns `workload`; a violation if they disagree.
    fn agreed_owner(&self, workload: &str) -> Result<usize, Violation> {
        let mut owners = BTreeSet::new();
        for i in (0..self.nodes.len()).filter(|i| self.nodes[*i].alive) {
            owners.insert(self.owner_in_view(i, workload));
        }
        match owners.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(owner)] => index_of(owner).ok_or_else(|| self.violation("owner is not a node")),
            other => {
                let views: Vec<String> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].alive)
                    .map(|i| {
                        let states: Vec<String> = self.nodes[i]
                            .negotiator
                            .membership()
                            .members()
                            .map(|m| {
                                format!(
                                    "{}:{:?}/{}",
                                    &m.id[m.id.len() - 2..],
                                    m.state,
                                    m.incarnation
                                )
                            })
                            .collect();
                        format!("n{i} sees [{}]", states.join(" "))
                    })
                    .collect();
                Err(self.violation(format!(
                    "nodes disagree on the owner of {workload}: {other:?}; {}",
                    views.join("; ")
                )))
            }
        }
    }

    /// Whether `workload` must be owned and placed: submitted, not removed, and either
    /// its submitter is alive or some other node knew it when the submitter died (the
    /// spec lives only with the submitter and the nodes running its replicas).
    fn must_survive(&self, workload: &str) -> bool {
        let Some(&submitter) = self.submitters.get(workload) else {
            return false;
        };
        !self.removed.contains(workload)
            && (self.nodes[submitter].alive || self.known_elsewhere.contains(workload))
    }

    /// The live nodes whose announcer owns `workload`.
    fn live_owners(&self, workload: &str) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.alive && n.negotiator.announcer().owns(workload))
            .map(|n| n.id.as_str())
            .collect()
    }

    /// Once the network has been stable for a while, every workload whose submitter is
    /// dead and that must survive is owned by exactly one live node.
    fn check_ownership(&self) -> Result<(), Violation> {
        for (workload, &submitter) in &self.submitters {
            if self.nodes[submitter].alive || !self.must_survive(workload) {
                continue;
            }
            let owners = self.live_owners(workload);
            if owners.len() != 1 {
                return Err(self.violation(format!(
                    "{workload}, whose submitter {} is dead, is owned by {owners:?} \
                     {OWNERSHIP_SETTLES_MS} ms after the network stabilized",
                    node_id(submitter)
                )));
            }
        }
        Ok(())
    }

    /// No question goes unanswered past its deadline.
    fn check_answers(&self) -> Result<(), Violation> {
        for (asked, deadline) in &self.asked {
            let node = &self.nodes[asked.node];
            if node.alive && node.boot == asked.boot && *deadline < self.now {
                return Err(self.violation(format!(
                    "{} left question {} unanswered past its deadline",
                    node.id, asked.token
                )));
            }
        }
        Ok(())
    }

    /// At the end: every replica of every workload that must survive runs exactly once on
    /// a live node, matching its owner's record, spread when its owner knows it must be;
    /// a removed workload runs nowhere and nobody owns it; the one that fits nowhere runs
    /// nowhere and is explained.
    /// Every live node holds the issuer's revocation once it had time to spread, and no
    /// node holds one the root did not sign.
    fn check_revocation(&self) -> Result<(), Violation> {
        for node in self.nodes.iter().filter(|n| n.alive) {
            if let Some(forged) = node
                .negotiator
                .revocations()
                .into_iter()
                .find(|r| r.signature != sim_root_signature(r))
            {
                return Err(self.violation(format!(
                    "{} keeps a forged revocation of {}",
                    node.id, forged.subject
                )));
            }
        }
        let Some((revoked, told)) = &self.revoked else {
            return Ok(());
        };
        // Sent at once to every member the issuer held alive: with a stable network they
        // all have it; later ones learn it by gossip, which this run may end too soon for.
        if revoked.revoked_at < self.config.stable_after_ms
            || self.now < revoked.revoked_at + config::REVOCATION_SPREAD_MS
        {
            return Ok(());
        }
        let restarted = self
            .config
            .crash
            .filter(|c| c.restart_at_ms.is_some())
            .map(|c| c.node);
        for node in told
            .iter()
            .filter(|i| Some(**i) != restarted)
            .map(|i| &self.nodes[*i])
            .filter(|n| n.alive)
        {
            if !node
                .negotiator
                .holds_revocation(&revoked.subject, &revoked.public_key)
            {
                return Err(self.violation(format!(
                    "{} does not hold the revocation of {} made at {} ms",
                    node.id, revoked.subject, revoked.revoked_at
                )));
            }
        }
        Ok(())
    }

    /// After the network healed, every live node holds the same newest record of each
    /// workload: a tombstone for each removed one, a spec for each that must survive.
    fn check_records(&self) -> Result<(), Violation> {
        // Without membership (the auction-alone benchmarks) nodes know no members to
        // replicate records to.
        if self.config.static_membership {
            return Ok(());
        }
        for workload in self.submitters.keys() {
            let versions: BTreeMap<Option<crate::messages::RecordVersion>, Vec<&str>> = self
                .nodes
                .iter()
                .filter(|n| n.alive)
                .fold(BTreeMap::new(), |mut by, n| {
                    let version = n
                        .negotiator
                        .records()
                        .get(workload)
                        .map(|h| h.version.clone());
                    by.entry(version).or_default().push(n.id.as_str());
                    by
                });
            if versions.len() > 1 {
                return Err(self.violation(format!(
                    "live nodes disagree on the record of {workload}: {versions:?}"
                )));
            }
            let Some(version) = versions.into_keys().next() else {
                continue;
            };
            if self.removed.contains(workload) && !version.as_ref().is_some_and(|v| v.removed) {
                return Err(self.violation(format!(
                    "{workload} was removed, but every node holds {version:?}"
                )));
            }
            if self.must_survive(workload) && version.as_ref().is_none_or(|v| v.removed) {
                return Err(self.violation(format!(
                    "{workload} must survive, but every node holds {version:?}"
                )));
            }
        }
        Ok(())
    }

    /// After an update: its workload runs the new image everywhere, or, when that image
    /// fails, the old one again (rolled back), and every replica its owner placed runs
    /// the spec of the newest record.
    fn check_update(&self) -> Result<(), Violation> {
        let Some((workload, old, new, failing)) = &self.updated else {
            return Ok(());
        };
        if !self.must_survive(workload) {
            return Ok(());
        }
        // With no spare node to run a replacement beside the replica it replaces, the
        // update waits, saying why (a cluster too small for the surge asked).
        let owner = self.agreed_owner(workload)?;
        if self.nodes[owner]
            .negotiator
            .announcer()
            .rollout_stalled(workload)
            .is_some()
        {
            return Ok(());
        }
        let Some(held) = self
            .nodes
            .iter()
            .find(|n| n.alive)
            .and_then(|n| n.negotiator.records().get(workload))
        else {
            return Ok(());
        };
        let Some(record) = held.record.spec.clone() else {
            return Ok(());
        };
        let expected = if *failing { old } else { new };
        if record.image != *expected {
            return Err(self.violation(format!(
                "{workload} was updated from {old} to {new} (failing: {failing}), but its newest record runs {}",
                record.image
            )));
        }
        let owner = self.agreed_owner(workload)?;
        let announcer = self.nodes[owner].negotiator.announcer();
        let Some((target, digests)) = announcer.digests(workload) else {
            return Err(self.violation(format!("{workload}'s owner holds no rollout state")));
        };
        if target != crate::records::spec_digest(&record) {
            return Err(self.violation(format!(
                "{workload}'s owner rolls out another spec than its newest record"
            )));
        }
        let placed = announcer.placements(workload);
        let behind: Vec<u32> = placed
            .keys()
            .filter(|r| digests.get(r) != Some(&target))
            .copied()
            .collect();
        if !behind.is_empty() {
            return Err(self.violation(format!(
                "{workload} replicas {behind:?} still run an older spec (rolling out: {})",
                announcer.rolling_out(workload)
            )));
        }
        Ok(())
    }

    fn check_final(&mut self) -> Result<(), Violation> {
        self.check_answers()?;
        self.check_revocation()?;
        self.check_records()?;
        self.check_update()?;
        let mut holders_of: BTreeMap<&str, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.alive) {
            for c in node.negotiator.bidder().committed() {
                holders_of
                    .entry(c.workload.as_str())
                    .or_default()
                    .entry(c.replica)
                    .or_default()
                    .push(node.id.clone());
            }
        }
        let mut placed = 0;
        for request in &self.requests {
            let workload = request.workload.as_str();
            let holders = holders_of.get(workload).cloned().unwrap_or_default();
            if self.removed.contains(workload) {
                let owners = self.live_owners(workload);
                if !holders.is_empty() || !owners.is_empty() {
                    return Err(self.violation(format!(
                        "{workload} was removed but runs on {holders:?} and is owned by {owners:?}"
                    )));
                }
                continue;
            }
            if !self.must_survive(workload) {
                continue;
            }
            let owner = self.agreed_owner(workload)?;
            let announcer = self.nodes[owner].negotiator.announcer();
            if !announcer.owns(workload) {
                return Err(self.violation(format!("{workload} has no announcer")));
            }
            if workload == TOO_BIG {
                if !holders.is_empty() {
                    return Err(self.violation("a workload that fits nowhere was placed"));
                }
                let explanation = announcer.explain(workload);
                let declined = explanation.get(&0).is_some_and(|e| {
                    e.answers.values().any(
                        |a| matches!(a, Answer::Declined(r) if r.code() == "insufficient-memory"),
                    )
                });
                if !declined {
                    return Err(self.violation(format!(
                        "no reason given for not placing too-big: {explanation:?}"
                    )));
                }
                continue;
            }
            let record = announcer.placements(workload);
            for replica in 0..request.replicas {
                let on = holders.get(&replica).cloned().unwrap_or_default();
                if on.len() != 1 {
                    return Err(self.violation(format!(
                        "{workload} replica {replica} runs on {on:?}, expected exactly one node (announcer: {}; last: {:?})",
                        announcer.auction_state(workload),
                        announcer.explain(workload).get(&replica)
                    )));
                }
                if record.get(&replica).map(|(n, _)| n) != on.first() {
                    return Err(self.violation(format!(
                        "{workload} replica {replica}: the announcer records {:?} but it runs on {on:?}",
                        record.get(&replica)
                    )));
                }
                // What runs is known where it is owned (and so by whoever lists the mesh).
                let phase = self.nodes[owner]
                    .negotiator
                    .reported_state(workload, replica)
                    .map(|s| s.phase);
                if phase != Some(crate::messages::Phase::Running) {
                    let claim = on
                        .first()
                        .and_then(|id| index_of(id))
                        .and_then(|j| self.nodes[j].negotiator.claims().get(workload, replica));
                    return Err(self.violation(format!(
                        "{workload} replica {replica} runs on {on:?}, but its owner has it as {phase:?} (lease claim: {claim:?})"
                    )));
                }
                placed += 1;
            }
            // A successor that took the workload over knows only its spec, which does not
            // carry placement hints (the agent sets none): spread is its submitter's to keep.
            let spread_known = announcer
                .request(workload)
                .is_some_and(|r| r.spread_label.is_some());
            if spread_known {
                let racks: BTreeSet<_> = holders
                    .values()
                    .flatten()
                    .filter_map(|id| index_of(id))
                    .map(|i| i % 3)
                    .collect();
                if racks.len() != request.replicas as usize {
                    return Err(self.violation(format!("{workload} shares a failure domain")));
                }
            }
        }
        self.outcome.replicas_placed = placed;
        self.check_acceptor_sets()
    }

    /// Long after a node died for good, no register held by a live node still names it
    /// among its acceptors when there was a live member to take its place: the holder
    /// replaced it.
    fn check_acceptor_sets(&self) -> Result<(), Violation> {
        let (Some(_), Some(crash)) = (self.config.strong, self.config.crash) else {
            return Ok(());
        };
        let settled_from = crash.at_ms.max(self.config.stable_after_ms) + 30_000;
        if crash.restart_at_ms.is_some() || self.nodes[crash.node].alive || self.now < settled_from
        {
            return Ok(());
        }
        let dead = node_id(crash.node);
        for node in self.nodes.iter().filter(|n| n.alive) {
            for ((workload, replica), claim) in node.negotiator.claims().iter() {
                let held = matches!(
                    claim.state,
                    crate::lease::ClaimState::Held { running: true, .. }
                );
                let spare = self.nodes.iter().any(|n| n.alive && !claim.set.has(&n.id));
                if held && spare && claim.set.has(&dead) {
                    return Err(self.violation(format!(
                        "{} holds replica {replica} of {workload} on acceptors {:?}, {} ms after {dead} died",
                        node.id,
                        claim.set,
                        self.now - crash.at_ms
                    )));
                }
            }
        }
        Ok(())
    }

    /// Brings a crashed node back with what it stored: its acknowledged awards, and the
    /// workloads it owned, which it takes up again as the agent does at start. Everything
    /// else starts afresh, membership at incarnation 0.
    fn restart(&mut self, i: usize) -> Result<(), Violation> {
        let store = self.nodes[i].store.clone();
        let (meta, boot) = (self.nodes[i].meta.clone(), self.nodes[i].boot + 1);
        self.nodes[i] = self.start_node(i, meta, boot, store.clone());
        self.timer_of[i] = None;
        self.outcome.restarts += 1;
        let now = self.clock(i);
        let records = store.records.into_values().collect();
        self.nodes[i].negotiator.restore_records(now, records);
        let registers = store.registers.into_iter().collect();
        self.nodes[i].negotiator.restore_registers(now, registers);
        // The agent's first reconcile pass finds the containers that kept running (those
        // of strong workloads it stops: they wait for their lease).
        for ((workload, replica), assignment) in &store.assignments {
            if assignment.spec.consistency == crate::workload::Consistency::Strong {
                continue;
            }
            let failing = assignment.spec.image.contains("/bad:");
            let running = run_state(started_phase(failing), now, None);
            self.nodes[i]
                .negotiator
                .set_replica_state(workload, *replica, running);
        }
        for request in store.owned.into_values() {
            let token = self.token();
            self.nodes[i]
                .negotiator
                .handle_request(now, token, Request::Adopt(request));
        }
        for seed in (0..self.nodes.len()).filter(|s| *s != i).take(2) {
            self.nodes[i].negotiator.handle_seed(now, &node_id(seed));
        }
        self.settle(i)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Whether every replica of the crashed node runs elsewhere, by its owners' records.
    fn healed(&self, crash: Crash) -> bool {
        let dead = node_id(crash.node);
        self.requests
            .iter()
            .filter(|r| r.workload != TOO_BIG && self.must_survive(&r.workload))
            .all(|r| {
                let placed = self
                    .agreed_owner(&r.workload)
                    .map(|o| self.nodes[o].negotiator.announcer().placements(&r.workload))
                    .unwrap_or_default();
                placed.len() == r.replicas as usize && placed.values().all(|(n, _)| *n != dead)
            })
    }

    /// A user submits a workload to their node (or the next one up if it is down), which
    /// stores it and places it.
    fn submit(&mut self, request: PlacementRequest, index: usize) -> Result<(), Violation> {
        let count = self.nodes.len();
        let first = index % self.config.submitters.clamp(1, count);
        let Some(to) = (0..count).map(|k| (first + k) % count).find(|i| {
            self.nodes[*i].alive && !self.paused(*i) && Some(*i) != self.config.hosts_only_node
        }) else {
            return Ok(());
        };
        self.submitters.insert(request.workload.clone(), to);
        self.nodes[to]
            .store
            .owned
            .insert(request.workload.clone(), request.clone());
        let (now, token) = (self.clock(to), self.token());
        self.nodes[to]
            .negotiator
            .handle_request(now, token, Request::Place(request));
        self.settle(to)
    }

    /// A user removes a workload through node `at`: its owner forgets it and revokes its
    /// replicas; any other node asks every member, and the owner does.
    fn remove(&mut self, removal: Removal) -> Result<(), Violation> {
        let Some(request) = self.requests.get(removal.workload) else {
            return Ok(());
        };
        let workload = request.workload.clone();
        let at = removal.node;
        if !self.nodes[at].alive || !self.submitters.contains_key(&workload) {
            return Ok(());
        }
        // The agent removes a workload its records hold, whoever owns it and whether or
        // not the owner is reachable: the tombstone reaches the owner, and the nodes
        // running replicas, when they are. A node that has not heard of the workload yet
        // tells the user it does not exist, and the user may try again.
        let recorded = self.nodes[at]
            .negotiator
            .records()
            .get(&workload)
            .is_some_and(|h| !h.record.is_tombstone());
        if !recorded {
            return Ok(());
        }
        self.removed.insert(workload.clone());
        let (now, token) = (self.clock(at), self.token());
        let request = if self.nodes[at].negotiator.announcer().owns(&workload) {
            self.nodes[at].store.owned.remove(&workload);
            Request::Remove(workload)
        } else {
            Request::RemoveRemote(workload)
        };
        self.nodes[at]
            .negotiator
            .handle_request(now, token, request);
        self.settle(at)
    }

    /// A user changes a workload's replica count through node `at`, which holds its
    /// record: whoever owns it, reachable or not, follows when the new generation reaches
    /// it.
    fn scale(&mut self, scaling: Scaling) -> Result<(), Violation> {
        let Some(request) = self.requests.get(scaling.workload) else {
            return Ok(());
        };
        let workload = request.workload.clone();
        let at = scaling.node;
        let recorded = self.nodes[at]
            .negotiator
            .records()
            .get(&workload)
            .is_some_and(|h| !h.record.is_tombstone());
        // The agent refuses a scaling its own node may not submit, before it reaches the
        // negotiator.
        let may_submit = Some(at) != self.config.hosts_only_node;
        if workload == TOO_BIG || !self.nodes[at].alive || !recorded || !may_submit {
            return Ok(());
        }
        let most = self
            .max_replicas
            .get(scaling.workload)
            .copied()
            .unwrap_or(1);
        let replicas = scaling.replicas.clamp(1, most);
        self.requests[scaling.workload].replicas = replicas;
        self.outcome.scalings += 1;
        let (now, token) = (self.clock(at), self.token());
        self.nodes[at]
            .negotiator
            .handle_request(now, token, Request::Scale { workload, replicas });
        self.settle(at)
    }

    /// A user changes a workload's image through node `at`, which holds its record; its
    /// owner rolls it out replica by replica (and back, if the new image fails).
    fn update(&mut self, update: Update) -> Result<(), Violation> {
        let Some(request) = self.requests.get(update.workload) else {
            return Ok(());
        };
        let workload = request.workload.clone();
        let at = update.node;
        let spec = self.nodes[at]
            .negotiator
            .records()
            .get(&workload)
            .and_then(|h| h.record.spec.clone());
        let may_submit = Some(at) != self.config.hosts_only_node;
        let Some(mut spec) =
            spec.filter(|_| workload != TOO_BIG && self.nodes[at].alive && may_submit)
        else {
            return Ok(());
        };
        let old_image = spec.image.clone();
        spec.image = if update.failing {
            "registry.test/bad:2".to_owned()
        } else {
            "registry.test/app:2".to_owned()
        };
        let max_unavailable = u32::from(update.max_surge == 0);
        self.updated = Some((
            workload.clone(),
            old_image,
            spec.image.clone(),
            update.failing,
        ));
        self.outcome.updates += 1;
        // Availability is checked where nothing else takes replicas away.
        let owner = self.agreed_owner(&workload).ok();
        // Lost messages and partitions take no running replica away; crashes do.
        let quiet = self.config.crash.is_none()
            && update.owner_crash_after_ms.is_none()
            && self
                .config
                .scaling
                .is_none_or(|s| s.workload != update.workload)
            && self
                .config
                .removal
                .is_none_or(|r| r.workload != update.workload);
        let running = self.running_replicas(&workload);
        if quiet && running == request.replicas as usize {
            self.outcome.updates_kept_available += 1;
            self.must_keep_running = Some((workload.clone(), running - max_unavailable as usize));
        }
        if let (Some(after), Some(owner)) = (update.owner_crash_after_ms, owner)
            && self.config.crash.is_none()
        {
            self.config.crash = Some(Crash {
                node: owner,
                at_ms: self.now + after,
                restart_at_ms: Some(self.now + after + 10_000),
            });
        }
        let policy = crate::messages::RolloutPolicy {
            max_surge: update.max_surge,
            max_unavailable,
            ..Default::default()
        };
        let (now, token) = (self.clock(at), self.token());
        self.nodes[at].negotiator.handle_request(
            now,
            token,
            Request::Update {
                spec: Box::new(spec),
                policy,
            },
        );
        self.settle(at)
    }

    /// How many replicas of `workload` live nodes hold (each index once).
    fn running_replicas(&self, workload: &str) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.negotiator.bidder().committed())
            .filter(|c| c.workload == workload)
            .map(|c| c.replica)
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// A user asks node `question.node` something; the answer must come by its deadline.
    fn ask(&mut self, question: Question) -> Result<(), Violation> {
        let i = question.node;
        if !self.nodes[i].alive {
            return Ok(());
        }
        let (request, deadline) = match question.kind {
            QuestionKind::ListMesh => (Request::ListMesh, QUERY_TIMEOUT_MS),
            QuestionKind::Explain => {
                let workload = self.requests.first().map(|r| r.workload.clone());
                (Request::Explain(workload.unwrap_or_default()), 0)
            }
            QuestionKind::Logs => {
                // A replica some live node runs, asked of that node.
                let running = self.nodes.iter().filter(|n| n.alive).find_map(|n| {
                    n.negotiator
                        .bidder()
                        .committed()
                        .next()
                        .map(|c| (n.id.clone(), c.workload.clone(), c.replica))
                });
                let Some((node, workload, replica)) = running else {
                    return Ok(());
                };
                let window = Default::default();
                let request = Request::Logs {
                    node,
                    workload,
                    replica,
                    window,
                };
                (request, LOGS_TIMEOUT_MS)
            }
        };
        let token = self.token();
        let asked = Asked {
            node: i,
            boot: self.nodes[i].boot,
            token,
        };
        self.asked
            .insert(asked, self.now + deadline + ANSWER_SLACK_MS);
        let now = self.clock(i);
        self.nodes[i].negotiator.handle_request(now, token, request);
        self.settle(i)
    }

    fn crash(&mut self, i: usize) {
        self.note_lost_holder(i);
        self.nodes[i].alive = false;
        self.timer_of[i] = None;
        // Store work in flight dies with the process: nothing of it was written.
        self.store_work[i].clear();
        let gone = node_id(i);
        let workloads: Vec<String> = self.submitters.keys().cloned().collect();
        for workload in workloads {
            let elsewhere = self.nodes.iter().any(|n| {
                n.alive
                    && n.id != gone
                    && (n.negotiator.knows(&workload)
                        || n.negotiator.records().get(&workload).is_some())
            });
            if elsewhere {
                self.known_elsewhere.insert(workload);
            }
        }
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        // Every node joins through two seeds, as an operator would configure it: with one,
        // a node whose seed dies before answering stays alone forever. Joins are staggered
        // over the first 100 ms (the first second, in large clusters).
        let cluster = self.nodes.len();
        let stagger_ms = if cluster > 200 { 1_000 } else { 100 };
        let mut joins: Vec<(u64, usize)> =
            if self.config.static_membership || self.config.preconverged {
                Vec::new()
            } else {
                (1..cluster)
                    .map(|i| (i as u64 * stagger_ms / cluster as u64, i))
                    .collect()
            };
        joins.reverse();
        let mut submissions: Vec<(u64, usize, PlacementRequest)> = self
            .requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = self.config.submit_from_ms + self.config.submit_interval_ms * i as u64;
                (at, i, r.clone())
            })
            .collect();
        submissions.reverse();
        let mut questions = self.config.questions.clone();
        questions.sort_by_key(|q| Reverse(q.at_ms));
        let mut removal = self.config.removal;
        let mut scaling = self.config.scaling;
        let mut update = self.config.update;
        let mut revocation = self.config.revocation_at_ms;
        let mut pause = self.config.strong.and_then(|s| s.pause);

        loop {
            let next_delivery = self.in_flight.peek().map(|Reverse(d)| d.at_ms);
            let next_submission = submissions.last().map(|(at, _, _)| *at);
            let next_join = joins.last().map(|(at, _)| *at);
            // What a user asks of a paused node waits until it runs again.
            let next_timer = self.next_timer();
            let due = |at: u64, node: usize| at.max(self.paused_until[node]);
            let next_question = questions.last().map(|q| due(q.at_ms, q.node));
            let next_crash = self.config.crash.and_then(|c| {
                let node = &self.nodes[c.node];
                if node.alive && node.boot == 0 {
                    Some(c.at_ms)
                } else if !node.alive {
                    c.restart_at_ms
                } else {
                    None
                }
            });
            let Some(next) = [
                next_delivery,
                next_timer,
                next_submission,
                next_join,
                next_crash,
                next_question,
                removal.map(|r| due(r.at_ms, r.node)),
                scaling.map(|s| due(s.at_ms, s.node)),
                update.map(|u| due(u.at_ms, u.node)),
                revocation,
                pause.map(|p| p.at_ms),
                self.next_store_work(),
                Some(self.next_ownership_check),
            ]
            .into_iter()
            .flatten()
            .min() else {
                break;
            };
            if next > self.config.end_ms {
                break;
            }
            self.now = next.max(self.now);

            // Timers due now first: a reservation that lapses at this instant is gone
            // before a message arriving at the same instant finds it.
            self.fire_timers()?;
            for i in 0..cluster {
                if !self.paused(i)
                    && self.store_work[i]
                        .front()
                        .is_some_and(|(at, _)| *at <= self.now)
                {
                    self.finish_store_work(i)?;
                    self.settle(i)?;
                }
            }
            while let Some(Reverse(d)) = self.in_flight.peek() {
                if d.at_ms > self.now {
                    break;
                }
                let Some(Reverse(delivery)) = self.in_flight.pop() else {
                    break;
                };
                self.deliver(delivery)?;
            }
            while joins.last().is_some_and(|(at, _)| *at <= self.now) {
                if let Some((_, node)) = joins.pop() {
                    let now = self.clock(node);
                    for seed in (0..cluster).filter(|s| *s != node).take(2) {
                        self.nodes[node].negotiator.handle_seed(now, &node_id(seed));
                    }
                    self.settle(node)?;
                }
            }
            while submissions.last().is_some_and(|(at, _, _)| *at <= self.now) {
                if let Some((_, index, request)) = submissions.pop() {
                    self.submit(request, index)?;
                }
            }
            if let Some(p) = pause.filter(|p| p.at_ms <= self.now) {
                pause = None;
                if self.nodes[p.node].alive {
                    self.note_lost_holder(p.node);
                    self.paused_until[p.node] = self.now + p.for_ms;
                }
            }
            while questions
                .last()
                .is_some_and(|q| q.at_ms <= self.now && !self.paused(q.node))
            {
                if let Some(question) = questions.pop() {
                    self.ask(question)?;
                }
            }
            if let Some(due) = removal.filter(|r| r.at_ms <= self.now && !self.paused(r.node)) {
                removal = None;
                self.remove(due)?;
            }
            if let Some(due) = scaling.filter(|s| s.at_ms <= self.now && !self.paused(s.node)) {
                scaling = None;
                self.scale(due)?;
            }
            if let Some(due) = update.filter(|u| u.at_ms <= self.now && !self.paused(u.node)) {
                update = None;
                self.update(due)?;
            }
            if let Some(at) = revocation.filter(|at| *at <= self.now) {
                revocation = None;
                if self.nodes[0].alive {
                    let (now, notice) = (self.clock(0), sim_revocation(cluster, at));
                    // Not the revoked node itself: nothing is sent to it.
                    let told: Vec<usize> = self.nodes[0]
                        .negotiator
                        .membership()
                        .live_members()
                        .filter(|m| *m.id != notice.subject)
                        .filter_map(|m| index_of(&m.id))
                        .collect();
                    self.revoked = Some((notice.clone(), told));
                    self.nodes[0]
                        .negotiator
                        .handle_revocation(now, notice, true);
                    self.settle(0)?;
                }
            }
            if let Some(crash) = self.config.crash {
                let node = &self.nodes[crash.node];
                if node.alive && node.boot == 0 && self.now >= crash.at_ms {
                    self.crash(crash.node);
                } else if !node.alive && crash.restart_at_ms.is_some_and(|at| self.now >= at) {
                    self.restart(crash.node)?;
                }
            }
            self.fire_timers()?;
            if self.now >= self.next_ownership_check {
                self.next_ownership_check = self.now + 1_000;
                self.check_ownership()?;
                self.check_answers()?;
            }

            if let Some(crash) = self.config.crash
                && self.outcome.heal_ms.is_none()
                && self.outcome.detection_ms.is_some()
                && !self.nodes[crash.node].alive
                && self.healed(crash)
            {
                self.outcome.heal_ms = Some(self.now - crash.at_ms);
            }
        }
        self.check_final()?;
        self.outcome.statements_refused = self
            .nodes
            .iter()
            .map(|n| n.negotiator.membership().refused_statements())
            .sum();
        Ok(self.outcome)
    }
}

/// What the simulated host reports of a replica: `phase` since `since_ms`.
fn run_state(
    phase: crate::messages::Phase,
    since_ms: u64,
    reason: Option<String>,
) -> crate::messages::RunState {
    crate::messages::RunState {
        phase,
        exit_code: None,
        restarts: 0,
        since_ms,
        reason,
        container_id: None,
    }
}

/// How a started replica's container fares: an image of the failing kind fails.
fn started_phase(failing: bool) -> crate::messages::Phase {
    if failing {
        crate::messages::Phase::Failed
    } else {
        crate::messages::Phase::Running
    }
}

/// The simulated root's "signature" on a revocation (the host's check is the identity
/// crate's business; the protocol only needs true and false ones).
fn sim_root_signature(notice: &RevocationNotice) -> String {
    format!(
        "root:{}:{}:{}",
        notice.subject, notice.public_key, notice.revoked_at
    )
}

/// The revocation the run's issuer makes, of the last node's key.
fn sim_revocation(nodes: usize, at_ms: u64) -> RevocationNotice {
    let mut notice = RevocationNotice {
        subject: node_id(nodes - 1),
        public_key: "key-1".to_owned(),
        revoked_at: at_ms,
        signature: String::new(),
    };
    notice.signature = sim_root_signature(&notice);
    notice
}

/// A placement request for workload `name` of the default namespace, with its spec (the
/// winners need it, as in the agent).
fn request_for(name: &str, image: &str, replicas: u32, resources: Resources) -> PlacementRequest {
    let mut spec = WorkloadSpec::new(
        WorkloadName::new(name).expect("simulated workload names are valid"),
        image,
        Vec::new(),
        Vec::new(),
    )
    .expect("simulated specs are valid");
    spec.replicas = replicas;
    spec.resources = resources;
    PlacementRequest::for_spec(&crate::workload::default_key(name), &spec)
}

/// The workload that fits on no node, in every run.
const TOO_BIG_NAME: &str = "too-big";
const TOO_BIG: &str = "default/too-big";

/// Runs one simulation with cheap signatures and checks every invariant.
pub fn run(config: SimConfig) -> Result<Outcome, Violation> {
    run_with(config, &CheapCrypto)
}

/// Runs one simulation with `crypto` signing and verifying every frame.
pub fn run_with(config: SimConfig, crypto: &dyn SimCrypto) -> Result<Outcome, Violation> {
    Sim::new(config, crypto).run()
}
