//! A deterministic simulator: a cluster of announcers and bidders exchanging real,
//! signed, encoded frames over a virtual network with latency, loss, a partition, forged
//! messages and a crash (followed, in some runs, by a restart with the node's store),
//! all drawn from one seed. Invariants are checked after every
//! step; a violation reports the seed, which replays the run exactly.
//!
//! Every node runs SWIM membership; node 0, which takes every workload, learns of crashes
//! from it and re-places the lost replicas.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::auction::{
    Announced, Announcer, AnnouncerConfig, AnnouncerEvent, Answer, Bidder, BidderConfig, Candidate,
    Committed, NodeProfile, PlacementRequest,
};
use crate::codec::{self, ReplayGuard, Signer, Verifier};
use crate::membership::{Interner, Member, Membership, MembershipConfig, MembershipEvent};
use crate::messages::{Body, MemberState, MemberUpdate, NodeMeta, Resources, Scoring};
use crate::testing::{ChecksumVerifier, KeyedChecksum};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Virtual clock origin (ms); any positive value works, a realistic one reads better.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// How often nodes report their instances to announcers.
const REPORT_INTERVAL_MS: u64 = 2_000;
/// Key shared by the cluster's cheap signatures.
const CLUSTER_SEED: u64 = 0x5EED;

/// SplitMix64: small, fast, and identical on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

/// A time span during which the cluster is split in two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Start (ms from the run's start).
    pub start_ms: u64,
    /// End.
    pub end_ms: u64,
}

/// A node that crashes, and may come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// Its index.
    pub node: usize,
    /// When (ms from the run's start).
    pub at_ms: u64,
    /// When it restarts with what it had persisted (its committed replicas), if it does.
    /// It comes back with a fresh membership at incarnation 0, as an agent that lost its
    /// in-memory state would, and must refute its own death to rejoin.
    pub restart_at_ms: Option<u64>,
}

/// One simulated run, all drawn from `seed` by [`SimConfig::from_seed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Workloads submitted (plus the unplaceable one, if asked for).
    pub workloads: usize,
    /// Adds a workload too large to fit anywhere, whose auctions must say why node by
    /// node. Benchmarks leave it out: its retries ask every node again and again, which
    /// would be counted against the placements that were made.
    pub unplaceable: bool,
    /// One-way latency range (ms).
    pub latency_ms: (u64, u64),
    /// Message loss before the network stabilizes (per mille).
    pub loss_per_mille: u64,
    /// Forged messages injected per mille of sent ones.
    pub forge_per_mille: u64,
    /// An optional partition.
    pub partition: Option<Partition>,
    /// An optional crash.
    pub crash: Option<Crash>,
    /// From this time on, no loss and no partition.
    pub stable_after_ms: u64,
    /// Where the run ends.
    pub end_ms: u64,
    /// When the first workload is submitted (ms), and the gap between submissions.
    pub submit_from_ms: u64,
    /// Gap between submissions (ms; 0 submits them all at once).
    pub submit_interval_ms: u64,
    /// Workloads go to the first this many nodes in turn (a user talks to their local
    /// agent); 1 sends them all to node 0.
    pub submitters: usize,
    /// Replicas small enough that thousands of workloads fit (for benchmarks).
    pub small_workloads: bool,
    /// Every node knows every other from the start and SWIM does not run: measures the
    /// auction alone at sizes where N² membership records do not fit in one process.
    pub static_membership: bool,
    /// Every node starts knowing every other, as after a completed join, and SWIM runs
    /// from there: large clusters are measured without minutes of joining first.
    pub preconverged: bool,
    /// Every node's SWIM settings.
    pub membership: MembershipConfig,
}

impl SimConfig {
    /// A run shaped by `seed`: 4–16 nodes, 2–6 workloads, 1–40 ms latency, up to 10 %
    /// loss, and in some runs a partition, a crash, or both.
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = rng.range(4, 16) as usize;
        let partition = rng.chance(400).then(|| {
            let start_ms = rng.range(100, 3_000);
            Partition {
                start_ms,
                end_ms: start_ms + rng.range(500, 8_000),
            }
        });
        let crash = rng.chance(400).then(|| {
            let at_ms = rng.range(500, 6_000);
            Crash {
                // Any node, the owner of every workload (node 0) included.
                node: rng.range(0, nodes as u64 - 1) as usize,
                at_ms,
                // Some before membership can declare it dead, some long after.
                restart_at_ms: rng.chance(500).then(|| at_ms + rng.range(300, 20_000)),
            }
        });
        Self {
            seed,
            nodes,
            workloads: rng.range(2, 6) as usize,
            unplaceable: true,
            latency_ms: (1, rng.range(2, 40)),
            loss_per_mille: rng.range(0, 100),
            forge_per_mille: rng.range(0, 50),
            partition,
            crash,
            stable_after_ms: 12_000,
            end_ms: 50_000,
            submit_from_ms: 3_000,
            submit_interval_ms: 50,
            submitters: 1,
            small_workloads: false,
            static_membership: false,
            preconverged: false,
            membership: MembershipConfig::default(),
        }
    }

    /// A benchmark run: `nodes` nodes that start knowing each other (see
    /// [`SimConfig::preconverged`]) and `workloads` small workloads submitted through up
    /// to 100 nodes in turn, 1 ms apart after 3 s of membership traffic, on a lossless
    /// network with 1–5 ms latency; no crash, no partition, no forgery.
    pub fn placement_benchmark(seed: u64, nodes: usize, workloads: usize) -> Self {
        let settle_ms = 3_000;
        let submit_interval_ms = 1;
        Self {
            seed,
            nodes,
            workloads,
            unplaceable: false,
            latency_ms: (1, 5),
            loss_per_mille: 0,
            forge_per_mille: 0,
            partition: None,
            crash: None,
            stable_after_ms: 0,
            end_ms: settle_ms + workloads as u64 * submit_interval_ms + 60_000,
            submit_from_ms: settle_ms,
            submit_interval_ms,
            submitters: nodes.min(100),
            small_workloads: true,
            static_membership: false,
            preconverged: true,
            membership: MembershipConfig::default(),
        }
    }

    /// A failure-detection run: `nodes` nodes with SWIM that start knowing each other,
    /// 1 % message loss throughout, and one node crashing at 10 s; no workloads but the
    /// one that fits nowhere.
    pub fn detection_benchmark(seed: u64, nodes: usize) -> Self {
        let crash_at_ms = 10_000;
        Self {
            seed,
            nodes,
            workloads: 0,
            unplaceable: true,
            latency_ms: (1, 5),
            loss_per_mille: 10,
            forge_per_mille: 0,
            partition: None,
            crash: Some(Crash {
                node: nodes / 2,
                at_ms: crash_at_ms,
                restart_at_ms: None,
            }),
            // Loss never stops.
            stable_after_ms: u64::MAX,
            end_ms: crash_at_ms + 40_000,
            submit_from_ms: 1_000,
            submit_interval_ms: 0,
            submitters: 1,
            small_workloads: false,
            static_membership: false,
            preconverged: true,
            membership: MembershipConfig::default(),
        }
    }
}

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

struct Node {
    id: String,
    profile: NodeProfile,
    meta: NodeMeta,
    /// Counts the node's starts; frames sent to or by an earlier run are dropped, as the
    /// QUIC connections carrying them die with the process.
    boot: u64,
    signer: Box<dyn Signer>,
    membership: Membership,
    bidder: Bidder,
    announcer: Announcer,
    replays: ReplayGuard,
    alive: bool,
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

struct Sim<'c> {
    config: SimConfig,
    membership: MembershipSetup,
    crypto: &'c dyn SimCrypto,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    in_flight: BinaryHeap<Reverse<Delivery>>,
    seq: u64,
    message_ids: u64,
    outcome: Outcome,
    requests: Vec<PlacementRequest>,
    /// Workload → the node it was submitted to (specs are known to every node: in the
    /// agent they travel by gossip).
    submitters: BTreeMap<String, String>,
    next_report: u64,
    /// Each node's next timer as last computed, and a heap of them (entries that no
    /// longer match `timer_of` are stale and skipped).
    timer_of: Vec<Option<u64>>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// Nodes that received input this step: only they can have output, events, broken
    /// invariants or new timers. Keeps a step's cost independent of the cluster's size.
    touched: Vec<usize>,
    is_touched: Vec<bool>,
    /// Which nodes stopped counting the crashed node as alive.
    suspected_crash: Vec<bool>,
    /// Nodes whose announcer's member list is out of date.
    members_stale: Vec<bool>,
    /// Nodes whose view changed since `degraded` last looked at it.
    view_changed: Vec<usize>,
    /// Nodes that do not see every other node alive: only they can disagree that a
    /// workload's submitter owns it.
    degraded: std::collections::BTreeSet<usize>,
}

/// What every node's membership is built with.
struct MembershipSetup {
    config: MembershipConfig,
    /// Shared by every node's membership table (N² records would not fit otherwise).
    interner: Interner,
}

impl Node {
    /// Starts (or restarts, with `boot` > 0 and what it had persisted) a node.
    fn start(
        profile: NodeProfile,
        meta: NodeMeta,
        boot: u64,
        persisted: Vec<Committed>,
        signer: Box<dyn Signer>,
        setup: &MembershipSetup,
        rng: &mut Rng,
    ) -> Self {
        let id = profile.id.clone();
        let mut membership =
            Membership::new(id.clone(), meta.clone(), setup.config, 0, rng.next_u64());
        membership.share_interner(setup.interner.clone());
        let mut bidder =
            Bidder::restarted(profile.clone(), BidderConfig::default(), boot, persisted);
        for image in &meta.images {
            bidder.add_image(image);
        }
        Self {
            membership,
            signer,
            announcer: Announcer::new(id.clone(), AnnouncerConfig::default(), rng.next_u64()),
            bidder,
            replays: ReplayGuard::default(),
            alive: true,
            boot,
            profile,
            meta,
            id,
        }
    }
}

/// What an announcer knows of a node from its metadata.
fn announced(meta: &NodeMeta) -> Announced {
    Announced {
        arch: meta.arch.clone(),
        labels: meta.labels.clone(),
        free: Some(meta.free),
    }
}

/// A member as an announcer's candidate, as the agent builds it.
fn candidate(member: &Member) -> Candidate {
    Candidate {
        node: member.id.to_string(),
        compatible: member.meta.as_ref().is_some_and(|meta| {
            (meta.protocol_min..=meta.protocol_max).contains(&codec::PROTOCOL_VERSION)
        }),
        announced: member.meta.as_deref().map(announced),
    }
}

fn node_id(i: usize) -> String {
    format!("spiffe://sim.test/node/n{i}")
}

impl<'c> Sim<'c> {
    fn new(config: SimConfig, crypto: &'c dyn SimCrypto) -> Self {
        let mut rng = Rng::new(config.seed ^ 0xA5A5_A5A5);
        let membership = MembershipSetup {
            config: config.membership,
            interner: Interner::default(),
        };
        let nodes = (0..config.nodes)
            .map(|i| {
                let id = node_id(i);
                let profile = NodeProfile {
                    id: id.clone(),
                    arch: if i % 3 == 2 { "arm64" } else { "amd64" }.to_owned(),
                    labels: BTreeMap::from([("rack".to_owned(), format!("rack-{}", i % 3))]),
                    allocatable: Resources {
                        cpu_millis: rng.range(2, 8) * 1000,
                        memory_bytes: rng.range(4, 16) * GIB,
                    },
                };
                let has_image = rng.chance(500);
                let meta = NodeMeta {
                    agent_version: "sim".to_owned(),
                    protocol_min: codec::MIN_PROTOCOL_VERSION,
                    protocol_max: codec::PROTOCOL_VERSION,
                    arch: profile.arch.clone(),
                    labels: profile.labels.clone(),
                    allocatable: profile.allocatable,
                    free: profile.allocatable,
                    images: if has_image {
                        vec!["registry.test/app:1".to_owned()]
                    } else {
                        Vec::new()
                    },
                    address: None,
                    issuer: false,
                    disk_free_bytes: None,
                };
                let signer = crypto.signer(&id);
                Node::start(profile, meta, 0, Vec::new(), signer, &membership, &mut rng)
            })
            .collect::<Vec<_>>();
        let count = nodes.len();
        let mut sim = Self {
            membership,
            requests: Vec::new(),
            config,
            crypto,
            rng,
            now: 0,
            nodes,
            in_flight: BinaryHeap::new(),
            seq: 0,
            message_ids: 0,
            outcome: Outcome::default(),
            submitters: BTreeMap::new(),
            next_report: REPORT_INTERVAL_MS,
            timer_of: vec![None; count],
            timers: BinaryHeap::new(),
            touched: Vec::new(),
            is_touched: vec![false; count],
            suspected_crash: vec![false; count],
            members_stale: vec![true; count],
            view_changed: (0..count).collect(),
            degraded: std::collections::BTreeSet::new(),
        };
        sim.requests = sim.make_requests();
        if sim.config.preconverged && !sim.config.static_membership {
            let everyone: Vec<MemberUpdate> = sim
                .nodes
                .iter()
                .map(|n| n.membership.announcement())
                .collect();
            for node in &mut sim.nodes {
                node.membership.assume_known(0, &everyone);
            }
        }
        if sim.config.static_membership {
            // Only nodes that take submissions announce; only they need the member list.
            for i in 0..sim.config.submitters.min(count) {
                let members = sim.members(i);
                sim.nodes[i].announcer.set_members(members);
            }
            sim.members_stale.fill(false);
        }
        // Timers from the start: a node's first probe comes at its own random point of
        // the first interval, not at the first event of the run (which would put every
        // node's probes in lockstep).
        for i in 0..count {
            sim.schedule_timer(i);
        }
        sim
    }

    /// Workloads that fit: small replicas, total demand well under capacity, spread
    /// across racks only with at most one replica per rack; plus one that fits nowhere.
    fn make_requests(&mut self) -> Vec<PlacementRequest> {
        // "Fits" is judged on the nodes that survive the run.
        let crashed = self.config.crash.map(|c| c.node);
        let survivors: Vec<usize> = (0..self.config.nodes)
            .filter(|i| Some(*i) != crashed)
            .collect();
        let arm_nodes = survivors.iter().filter(|i| *i % 3 == 2).count() as u64;
        let racks = survivors
            .iter()
            .map(|i| i % 3)
            .collect::<std::collections::BTreeSet<_>>()
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
            requests.push(PlacementRequest {
                workload: format!("default/w{w}"),
                image: "registry.test/app:1".to_owned(),
                replicas: self.rng.range(1, max_replicas) as u32,
                resources: Resources {
                    cpu_millis: self.rng.range(1, 4) * cpu_unit,
                    memory_bytes: self.rng.range(1, 4) * memory_unit,
                },
                constraints: BTreeMap::new(),
                arch: arm.then(|| "arm64".to_owned()),
                spread_label: spread.then(|| "rack".to_owned()),
                scoring: if self.rng.chance(500) {
                    Scoring::Spread
                } else {
                    Scoring::BinPack
                },
                spec: None,
                submitter: None,
            });
        }
        if !self.config.unplaceable {
            return requests;
        }
        requests.push(PlacementRequest {
            workload: TOO_BIG.to_owned(),
            image: "registry.test/huge:1".to_owned(),
            replicas: 1,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 64 * GIB,
            },
            constraints: BTreeMap::new(),
            arch: None,
            spread_label: None,
            scoring: Scoring::Spread,
            spec: None,
            submitter: None,
        });
        requests
    }

    fn violation(&self, what: impl Into<String>) -> Violation {
        Violation {
            seed: self.config.seed,
            at_ms: self.now,
            what: what.into(),
        }
    }

    fn touch(&mut self, i: usize) {
        if !self.is_touched[i] {
            self.is_touched[i] = true;
            self.touched.push(i);
        }
    }

    /// Node `i`'s candidates: itself plus the members its membership considers alive,
    /// compatible when their announced protocol range includes ours.
    fn members(&self, i: usize) -> Vec<Candidate> {
        if self.config.static_membership {
            // Static facts only: arch and labels, no free capacity.
            return (0..self.nodes.len())
                .map(|j| Candidate {
                    announced: Some(Announced {
                        free: None,
                        ..announced(&self.nodes[j].meta)
                    }),
                    ..Candidate::new(node_id(j))
                })
                .collect();
        }
        let me = std::iter::once(Candidate {
            announced: Some(announced(&self.nodes[i].meta)),
            ..Candidate::new(node_id(i))
        });
        let view = &self.nodes[i].membership;
        me.chain(
            view.members()
                .filter(|m| m.state == MemberState::Alive)
                .map(candidate),
        )
        .collect()
    }

    /// Follows metadata changes of single members in node `i`'s announcer (a full
    /// refresh costs a pass over every member, on every change, in every announcer).
    fn update_members(&mut self, i: usize, changed: &[String]) {
        if self.members_stale[i] {
            // The next full refresh brings them.
            return;
        }
        for id in changed {
            let Some(member) = self.nodes[i].membership.member(id) else {
                continue;
            };
            if member.state == MemberState::Alive {
                let updated = candidate(member);
                self.nodes[i].announcer.update_member(updated);
            }
        }
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.config
            .partition
            .is_some_and(|p| self.now >= p.start_ms && self.now < p.end_ms && (a % 2) != (b % 2))
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        id.strip_prefix("spiffe://sim.test/node/n")?.parse().ok()
    }

    /// Encodes and sends everything node `from` queued, through loss and the partition.
    fn flush_transmits(&mut self, from: usize) -> Result<(), Violation> {
        loop {
            let next = {
                let node = &mut self.nodes[from];
                node.announcer
                    .poll_transmit()
                    .or_else(|| node.bidder.poll_transmit())
                    .or_else(|| node.membership.poll_transmit())
            };
            let Some((to_id, body)) = next else { break };
            let to = self
                .index_of(&to_id)
                .ok_or_else(|| self.violation(format!("message to unknown node {to_id}")))?;
            self.message_ids += 1;
            let frame = codec::encode(
                &body,
                self.nodes[from].signer.as_ref(),
                self.message_ids,
                EPOCH_MS + self.now,
            );
            self.send(from, to, frame, false);
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
        self.touch(delivery.to);
        let now = self.now;
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
        let from = received.sender.as_str();
        match &received.body {
            Body::Cfp(cfp) => node.bidder.handle_cfp(now, from, cfp),
            Body::Award(award) => node.bidder.handle_award(now, from, award),
            Body::Release(release) => node.bidder.handle_release(from, release),
            Body::Revoke(revoke) => node.bidder.handle_revoke(from, revoke),
            Body::Bid(bid) => node.announcer.handle_bid(now, from, bid),
            Body::Decline(decline) => node.announcer.handle_decline(from, decline),
            Body::Accept(accept) => node.announcer.handle_accept(now, from, accept),
            Body::Reject(reject) => node.announcer.handle_reject(now, from, reject),
            Body::Instance(instance) => node.announcer.handle_instance(now, from, instance),
            Body::Ping(ping) => node.membership.handle_ping(now, from, ping),
            Body::PingReq(request) => node.membership.handle_ping_req(now, from, request),
            Body::Ack(ack) => node.membership.handle_ack(now, from, ack),
            Body::Sync(sync) => node.membership.handle_sync(now, from, sync),
            // The simulator's users ask nothing of other nodes.
            Body::WorkloadQuery(_)
            | Body::WorkloadReport(_)
            | Body::RemoveWorkload(_)
            | Body::LogsRequest(_)
            | Body::LogsReply(_)
            | Body::Handover(_) => {}
        }
        Ok(())
    }

    /// When node `i` next needs [`Sim::fire_timers`].
    fn timer(&self, i: usize) -> Option<u64> {
        let node = &self.nodes[i];
        if !node.alive {
            return None;
        }
        let membership = if self.config.static_membership {
            None
        } else {
            node.membership.poll_timeout()
        };
        [
            node.bidder.poll_timeout(),
            node.announcer.poll_timeout(),
            membership,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn schedule_timer(&mut self, i: usize) {
        let next = self.timer(i);
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
    fn fire_timers(&mut self) {
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
            self.touch(i);
            let node = &mut self.nodes[i];
            if node.bidder.poll_timeout().is_some_and(|t| t <= now) {
                node.bidder.handle_timeout(now);
            }
            if node.announcer.poll_timeout().is_some_and(|t| t <= now) {
                node.announcer.handle_timeout(now);
            }
            if !self.config.static_membership
                && node.membership.poll_timeout().is_some_and(|t| t <= now)
            {
                node.membership.handle_timeout(now);
            }
        }
    }

    /// Whether node `i` holds `id` (itself included) as not dead.
    fn sees_alive(&self, i: usize, id: &str) -> bool {
        id == self.nodes[i].id
            || self.config.static_membership
            || self.nodes[i]
                .membership
                .member(id)
                .is_some_and(|m| m.state != MemberState::Dead)
    }

    /// Alive members in node `i`'s view, itself included.
    fn view(&self, i: usize) -> Vec<&str> {
        std::iter::once(self.nodes[i].id.as_str())
            .chain(
                self.nodes[i]
                    .membership
                    .members()
                    .filter(|m| m.state != MemberState::Dead)
                    .map(|m| &*m.id),
            )
            .collect()
    }

    /// The owner of a submitted workload in node `i`'s view.
    fn owner_in_view(&self, i: usize, workload: &str) -> Option<String> {
        let submitter = self.submitters.get(workload)?;
        // The submitter owns while alive: a lookup, not a pass over every member.
        if self.sees_alive(i, submitter) {
            return Some(submitter.clone());
        }
        let view = self.view(i);
        crate::ownership::successor(workload, view.iter().copied()).map(str::to_owned)
    }

    /// Makes node `i` act on its view of ownership of `workload`: adopt it if it now owns
    /// it, hand it over if it no longer does, and point its replicas' reports at the owner.
    fn apply_ownership_of(&mut self, i: usize, workload: &str) {
        let Some(owner) = self.owner_in_view(i, workload) else {
            return;
        };
        self.nodes[i].bidder.set_owner(workload, &owner);
        let owns = self.nodes[i].announcer.owns(workload);
        if owner == self.nodes[i].id && !owns {
            if let Some(request) = self
                .requests
                .iter()
                .find(|r| r.workload == workload)
                .cloned()
            {
                let gather_until = self.now + 2 * REPORT_INTERVAL_MS;
                self.nodes[i].announcer.adopt(gather_until, request);
            }
        } else if owner != self.nodes[i].id && owns {
            self.nodes[i].announcer.relinquish(workload);
        }
    }

    /// Applies node `i`'s view of ownership to every workload, and refreshes its
    /// announcer's view of the members.
    fn apply_ownership(&mut self, i: usize) {
        self.members_stale[i] = true;
        let workloads: Vec<String> = self.submitters.keys().cloned().collect();
        for workload in workloads {
            self.apply_ownership_of(i, &workload);
        }
        self.refresh_members(i, false);
    }

    /// Gives node `i`'s announcer its current view of the members, if it changed and the
    /// announcer has workloads (or `force`): building the list costs O(N), and during a
    /// large cluster's join every node sees N changes.
    fn refresh_members(&mut self, i: usize, force: bool) {
        if self.members_stale[i] && (force || self.nodes[i].announcer.workload_count() > 0) {
            let members = self.members(i);
            self.nodes[i].announcer.set_members(members);
            self.members_stale[i] = false;
        }
    }

    fn drain_events(&mut self, i: usize) -> Result<(), Violation> {
        if !self.nodes[i].alive {
            return Ok(());
        }
        // Liveness changes move ownership and the set of candidates; metadata changes
        // (free capacity, after every placement) only update one candidate each.
        let mut changed = false;
        let mut meta_changed = Vec::new();
        let mut died = Vec::new();
        let crashed = self.config.crash.map(|c| node_id(c.node));
        while let Some(event) = self.nodes[i].membership.poll_event() {
            if let MembershipEvent::MetaChanged(node) = &event {
                meta_changed.push(node.clone());
                continue;
            }
            changed = true;
            if let MembershipEvent::Suspected(node) | MembershipEvent::Died(node) = &event
                && Some(node) == crashed.as_ref()
                && !self.suspected_crash[i]
                && let Some(crash) = self.config.crash
            {
                self.suspected_crash[i] = true;
                self.outcome
                    .suspected_crash_ms
                    .push(self.now.saturating_sub(crash.at_ms));
            }
            if let MembershipEvent::Died(node) = event {
                died.push(node);
            }
        }
        for node in died {
            if Some(&node) == crashed.as_ref() {
                if let Some(crash) = self.config.crash {
                    let after = self.now.saturating_sub(crash.at_ms);
                    self.outcome.detection_ms.get_or_insert(after);
                    self.outcome.learned_of_crash_ms.push(after);
                }
            } else {
                self.outcome.false_deaths += 1;
                if self.now >= self.config.stable_after_ms.saturating_add(30_000) {
                    return Err(self.violation(format!(
                        "{} declared {node} dead long after the network stabilized",
                        self.nodes[i].id
                    )));
                }
            }
            for request in &self.requests {
                let lost: Vec<u32> = self.nodes[i]
                    .announcer
                    .placements(&request.workload)
                    .into_iter()
                    .filter(|(_, (on, _))| *on == node)
                    .map(|(replica, _)| replica)
                    .collect();
                for replica in lost {
                    self.nodes[i]
                        .announcer
                        .replica_lost(self.now, &request.workload, replica);
                }
            }
        }
        if changed {
            self.view_changed.push(i);
            self.apply_ownership(i);
        } else if !meta_changed.is_empty() {
            self.update_members(i, &meta_changed);
        }
        let node = &mut self.nodes[i];
        while node.bidder.poll_event().is_some() {}
        while let Some(event) = node.announcer.poll_event() {
            if let AnnouncerEvent::NotPlaced { .. } = event {
                self.outcome.failed_auctions += 1;
            }
        }
        Ok(())
    }

    /// The node every alive node agrees owns `workload`; a violation if they disagree.
    fn agreed_owner(&self, workload: &str) -> Result<usize, Violation> {
        let mut owners = std::collections::BTreeSet::new();
        for i in (0..self.nodes.len()).filter(|i| self.nodes[*i].alive) {
            owners.insert(self.owner_in_view(i, workload));
        }
        match owners.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(owner)] => self
                .index_of(owner)
                .ok_or_else(|| self.violation("owner is not a node")),
            other => {
                let views: Vec<String> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].alive)
                    .map(|i| {
                        let states: Vec<String> = self.nodes[i]
                            .membership
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

    /// Invariants that hold after every step, checked on the nodes the step touched
    /// (the others did not change).
    fn check_always(&self, i: usize) -> Result<(), Violation> {
        let node = &self.nodes[i];
        if !node.alive {
            return Ok(());
        }
        let used = node
            .bidder
            .committed_resources()
            .plus(&node.bidder.reserved_resources());
        if !used.fits_in(&node.bidder.profile().allocatable) {
            return Err(self.violation(format!("{} commits {used:?} beyond its capacity", node.id)));
        }
        if let Some(r) = node
            .bidder
            .reservations()
            .find(|r| r.expires_at_ms <= self.now)
        {
            return Err(self.violation(format!(
                "{} still holds reservation {} past its expiry",
                node.id, r.id
            )));
        }
        Ok(())
    }

    /// At the end: every replica of every workload that fits runs exactly once on a live
    /// node, matching its announcer's record; the one that fits nowhere runs nowhere and
    /// is explained.
    fn check_final(&mut self) -> Result<(), Violation> {
        let mut holders_of: BTreeMap<&str, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.alive) {
            for c in node.bidder.committed() {
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
            let holders = holders_of
                .get(request.workload.as_str())
                .cloned()
                .unwrap_or_default();
            let owner = self.agreed_owner(&request.workload)?;
            if !self.nodes[owner].announcer.owns(&request.workload) {
                return Err(self.violation(format!("{} has no announcer", request.workload)));
            }
            if request.workload == TOO_BIG {
                if !holders.is_empty() {
                    return Err(self.violation("a workload that fits nowhere was placed"));
                }
                let explanation = self.nodes[owner].announcer.explain(&request.workload);
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
            let record = self.nodes[owner].announcer.placements(&request.workload);
            for replica in 0..request.replicas {
                let on = holders.get(&replica).cloned().unwrap_or_default();
                if on.len() != 1 {
                    return Err(self.violation(format!(
                        "{} replica {replica} runs on {on:?}, expected exactly one node (announcer: {}; last: {:?})",
                        request.workload,
                        self.nodes[owner].announcer.auction_state(&request.workload),
                        self.nodes[owner].announcer.explain(&request.workload).get(&replica)
                    )));
                }
                if record.get(&replica).map(|(n, _)| n) != on.first() {
                    return Err(self.violation(format!(
                        "{} replica {replica}: the announcer records {:?} but it runs on {on:?}",
                        request.workload,
                        record.get(&replica)
                    )));
                }
                placed += 1;
            }
            if request.spread_label.is_some() {
                let racks: std::collections::BTreeSet<_> = holders
                    .values()
                    .flatten()
                    .filter_map(|id| self.index_of(id))
                    .map(|i| i % 3)
                    .collect();
                if racks.len() != request.replicas as usize {
                    return Err(
                        self.violation(format!("{} shares a failure domain", request.workload))
                    );
                }
            }
        }
        self.outcome.replicas_placed = placed;
        Ok(())
    }

    /// Brings a crashed node back with what it persisted: its committed replicas (the
    /// agent flushes an award before accepting it). Everything else starts afresh.
    fn restart(&mut self, i: usize) {
        let old = &self.nodes[i];
        let persisted: Vec<Committed> = old.bidder.committed().cloned().collect();
        let (profile, meta, boot) = (old.profile.clone(), old.meta.clone(), old.boot + 1);
        let signer = self.crypto.signer(&old.id);
        self.nodes[i] = Node::start(
            profile,
            meta,
            boot,
            persisted,
            signer,
            &self.membership,
            &mut self.rng,
        );
        let seeds: Vec<String> = (0..self.nodes.len())
            .filter(|s| *s != i)
            .take(2)
            .map(node_id)
            .collect();
        self.nodes[i].membership.join(&seeds);
        self.timer_of[i] = None;
        self.view_changed.push(i);
        self.touch(i);
        self.outcome.restarts += 1;
    }

    /// Whether every replica of the crashed node runs elsewhere, by its owners' records.
    fn healed(&self, crash: Crash) -> bool {
        let dead = node_id(crash.node);
        self.requests
            .iter()
            .filter(|r| r.workload != TOO_BIG)
            .all(|r| {
                let placed = self
                    .agreed_owner(&r.workload)
                    .map(|o| self.nodes[o].announcer.placements(&r.workload))
                    .unwrap_or_default();
                placed.len() == r.replicas as usize && placed.values().all(|(n, _)| *n != dead)
            })
    }

    fn submit(&mut self, request: PlacementRequest, index: usize) {
        // The user submits to their node, or to the next one up if it is down.
        let count = self.nodes.len();
        let first = index % self.config.submitters.clamp(1, count);
        let Some(to) = (0..count)
            .map(|k| (first + k) % count)
            .find(|i| self.nodes[*i].alive)
        else {
            return;
        };
        let workload = request.workload.clone();
        self.submitters
            .insert(workload.clone(), self.nodes[to].id.clone());
        self.refresh_members(to, true);
        self.nodes[to].announcer.place(self.now, request);
        self.touch(to);
        if self.config.static_membership {
            return;
        }
        // A node that sees every other alive agrees the submitter owns it, and holds no
        // replica of it yet: nothing to do there. Only the others are visited, so that a
        // submission costs no pass over thousands of nodes.
        for i in std::mem::take(&mut self.view_changed) {
            let membership = &self.nodes[i].membership;
            let whole = membership.member_count() + 1 == count
                && membership.members().all(|m| m.state == MemberState::Alive);
            if whole {
                self.degraded.remove(&i);
            } else {
                self.degraded.insert(i);
            }
        }
        let degraded: Vec<usize> = self.degraded.iter().copied().collect();
        for i in degraded {
            if self.nodes[i].alive {
                self.apply_ownership_of(i, &workload);
                if i != to && self.nodes[i].announcer.owns(&workload) {
                    self.touch(i);
                }
            }
        }
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        // Every node joins through two seeds, as an operator would configure it: with one,
        // a node whose seed dies before answering stays alone forever. Joins are staggered
        // over the first 100 ms (the first second, in large clusters).
        let cluster = self.nodes.len();
        let seeds_of = move |i: usize| -> Vec<String> {
            (0..cluster)
                .filter(|s| *s != i)
                .take(2)
                .map(node_id)
                .collect()
        };
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

        loop {
            let next_delivery = self.in_flight.peek().map(|Reverse(d)| d.at_ms);
            let next_submission = submissions.last().map(|(at, _, _)| *at);
            let next_join = joins.last().map(|(at, _)| *at);
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
                self.next_timer(),
                next_submission,
                next_join,
                next_crash,
                Some(self.next_report),
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
                    let seeds = seeds_of(node);
                    self.nodes[node].membership.join(&seeds);
                    self.touch(node);
                }
            }
            while submissions.last().is_some_and(|(at, _, _)| *at <= self.now) {
                if let Some((_, index, request)) = submissions.pop() {
                    self.submit(request, index);
                }
            }
            if let Some(crash) = self.config.crash {
                let node = &self.nodes[crash.node];
                if node.alive && node.boot == 0 && self.now >= crash.at_ms {
                    self.nodes[crash.node].alive = false;
                    self.timer_of[crash.node] = None;
                } else if !node.alive && crash.restart_at_ms.is_some_and(|at| self.now >= at) {
                    self.restart(crash.node);
                }
            }
            if self.now >= self.next_report {
                self.next_report = self.now + REPORT_INTERVAL_MS;
                for i in 0..cluster {
                    let static_membership = self.config.static_membership;
                    let node = &mut self.nodes[i];
                    if !node.alive {
                        continue;
                    }
                    let mut spoke = false;
                    if node.bidder.committed().next().is_some() {
                        node.bidder.report_instances();
                        spoke = true;
                    }
                    // Free capacity is re-announced when it changed, as the agent does.
                    let free = node.bidder.free();
                    if free != node.meta.free {
                        node.meta.free = free;
                        if !static_membership {
                            node.membership.set_meta_paced(self.now, node.meta.clone());
                            spoke = true;
                        }
                    }
                    if spoke {
                        self.touch(i);
                    }
                }
            }
            self.fire_timers();
            let touched = std::mem::take(&mut self.touched);
            for &i in &touched {
                self.drain_events(i)?;
            }
            // Events may have touched more nodes (adoptions); settle those too.
            let touched: Vec<usize> = touched
                .into_iter()
                .chain(std::mem::take(&mut self.touched))
                .collect();
            for &i in &touched {
                self.is_touched[i] = false;
                if self.nodes[i].alive {
                    self.flush_transmits(i)?;
                    self.check_always(i)?;
                }
                self.schedule_timer(i);
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
        Ok(self.outcome)
    }
}

/// The workload that fits on no node, in every run.
const TOO_BIG: &str = "default/too-big";

/// Runs one simulation with cheap signatures and checks every invariant.
pub fn run(config: SimConfig) -> Result<Outcome, Violation> {
    run_with(config, &CheapCrypto)
}

/// Runs one simulation with `crypto` signing and verifying every frame.
pub fn run_with(config: SimConfig, crypto: &dyn SimCrypto) -> Result<Outcome, Violation> {
    Sim::new(config, crypto).run()
}
