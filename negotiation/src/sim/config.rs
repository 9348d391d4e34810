//! What one simulated run is made of, all drawn from its seed: the cluster, the
//! workloads, the network, and the faults.

use crate::membership::MembershipConfig;

use super::rng::Rng;

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
    /// Awards whose storing fails (per mille), as on a full disk: the node must not
    /// acknowledge them, and the owner places the replica elsewhere.
    pub commit_failure_per_mille: u64,
    /// Longest time a node's store work (storing an award or a takeover, forgetting,
    /// revoking) takes, drawn per item; 0 completes it at once.
    pub store_latency_ms: u64,
    /// A node the policy forbids to bid: every node refuses its bids, so it must never
    /// hold a replica.
    pub no_bid_node: Option<usize>,
    /// A node the policy lets host replicas but not own workloads (it may not submit):
    /// users never submit to it, and it must never become an owner, not even as a dead
    /// owner's successor.
    pub hosts_only_node: Option<usize>,
    /// A byzantine member: otherwise honest, it adds lies about other members to its
    /// membership gossip — deaths and suspicions at incarnations they never issued
    /// (`u64::MAX`), and `Alive @ u64::MAX` with forged metadata — and bids with the
    /// largest score and a reservation that never lapses. Honest nodes must neither kill
    /// a live node nor take the forged metadata, and every invariant must hold.
    pub liar_node: Option<usize>,
    /// When (ms) the issuer, node 0 if alive, revokes the key of the last node. Made on a
    /// stable network, every member it held alive must hold the revocation within
    /// [`REVOCATION_SPREAD_MS`]; no node may ever keep a forged one.
    pub revocation_at_ms: Option<u64>,
    /// A workload removed after the network is stable, from a node picked by the seed
    /// (the owner, or another node asking the owner).
    pub removal: Option<Removal>,
    /// A workload's replica count changed by a user at some node, at any time (during a
    /// partition or a crash too).
    pub scaling: Option<Scaling>,
    /// A workload's image changed by a user at some node (`parley update`), rolled out
    /// replica by replica; sometimes to an image that fails (then rolled back), sometimes
    /// with its owner crashing during the rollout.
    pub update: Option<Update>,
    /// Users asking questions of their nodes during the run (workload lists, logs,
    /// explanations); each must be answered by its deadline.
    pub questions: Vec<Question>,
    /// Strong workloads: every replica runs only under its lease, and the run checks
    /// that no two nodes ever hold one replica's lease at once.
    pub strong: Option<Strong>,
}

/// What a run with strong workloads adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strong {
    /// Each node's clock runs at its own rate, within ±1 % of real time.
    pub clock_skew: bool,
    /// A node stops (SIGSTOP) for a while, then goes on where it was.
    pub pause: Option<Pause>,
    /// The containers' stop timeout (which lengthens the lease).
    pub stop_timeout_secs: u32,
}

/// A node paused: it handles nothing (messages wait, timers wait) from `at_ms` for
/// `for_ms`; a watchdog outside it still stops its strong containers at their deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// The node.
    pub node: usize,
    /// When it stops.
    pub at_ms: u64,
    /// For how long.
    pub for_ms: u64,
}

/// How long a revocation the issuer sends out may take to reach the members it sent it
/// to, on a stable network (a message's latency, with room).
pub const REVOCATION_SPREAD_MS: u64 = 5_000;

/// A workload removed by a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// When (ms from the run's start).
    pub at_ms: u64,
    /// Which workload (its index).
    pub workload: usize,
    /// The node the user asks.
    pub node: usize,
}

/// A workload scaled by a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// When (ms from the run's start).
    pub at_ms: u64,
    /// Which workload (its index).
    pub workload: usize,
    /// The node the user asks.
    pub node: usize,
    /// Replicas wanted, as a share of the most the workload can have: 1..=this, capped.
    pub replicas: u32,
}

/// A workload updated by a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    /// When (ms from the run's start).
    pub at_ms: u64,
    /// Which workload (its index).
    pub workload: usize,
    /// The node the user asks.
    pub node: usize,
    /// Whether the new image fails to start everywhere (the update is rolled back).
    pub failing: bool,
    /// Replacements beside the replicas they replace (0: stop one first).
    pub max_surge: u32,
    /// How long after the update its owner crashes (and comes back 10 s later), if it
    /// does.
    pub owner_crash_after_ms: Option<u64>,
}

/// What a user asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuestionKind {
    /// `parley ps`: every member's workloads.
    ListMesh,
    /// `parley logs`: a replica's output, from whichever node runs it.
    Logs,
    /// `parley explain`: why each replica of a workload is or is not placed.
    Explain,
}

/// A question a user asks a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// When (ms from the run's start).
    pub at_ms: u64,
    /// The node asked.
    pub node: usize,
    /// What.
    pub kind: QuestionKind,
}

impl SimConfig {
    /// A run shaped by `seed`: 4–16 nodes, 2–6 workloads, 1–40 ms latency, up to 10 %
    /// loss, and in some runs a partition, a crash (and restart), failing commits, a node
    /// the policy forbids to bid, a removal, and users' questions.
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
        let workloads = rng.range(2, 6) as usize;
        let latency_ms = (1, rng.range(2, 40));
        let loss_per_mille = rng.range(0, 100);
        let forge_per_mille = rng.range(0, 50);
        let stable_after_ms = 12_000;
        let commit_failure_per_mille = if rng.chance(300) {
            rng.range(10, 200)
        } else {
            0
        };
        let store_latency_ms = if rng.chance(500) {
            rng.range(1, 300)
        } else {
            0
        };
        let no_bid_node = rng
            .chance(200)
            .then(|| rng.range(1, nodes as u64 - 1) as usize);
        // After the network is stable and any restart: a removal is one message to each
        // member, which a lossy network or a returning owner's old record could undo
        // (that is for replicated desired state to fix, not this simulation to hide).
        let settled_ms = crash
            .and_then(|c| c.restart_at_ms)
            .map_or(stable_after_ms, |at| at.max(stable_after_ms));
        let removal = rng.chance(300).then(|| Removal {
            at_ms: settled_ms + rng.range(1_000, 5_000),
            workload: rng.range(0, workloads as u64 - 1) as usize,
            node: rng.range(0, nodes as u64 - 1) as usize,
        });
        let questions = (0..rng.range(0, 6))
            .map(|_| Question {
                at_ms: rng.range(1_000, 45_000),
                node: rng.range(0, nodes as u64 - 1) as usize,
                kind: match rng.range(0, 2) {
                    0 => QuestionKind::ListMesh,
                    1 => QuestionKind::Logs,
                    _ => QuestionKind::Explain,
                },
            })
            .collect();
        // Drawn last, so that the scenarios above are those of earlier builds' seeds.
        let hosts_only_node = rng
            .chance(250)
            .then(|| rng.range(1, nodes as u64 - 1) as usize);
        let liar_node = rng
            .chance(250)
            .then(|| rng.range(1, nodes as u64 - 1) as usize);
        // Some before the network is stable (spread by gossip), some after (checked).
        let revocation_at_ms = rng
            .chance(250)
            .then(|| rng.range(2_000, stable_after_ms + 10_000));
        // Desired state is replicated now: a removal may come at any time, during a
        // partition or while its owner is down, and must still hold everywhere.
        let mut removal = removal;
        if let Some(r) = &mut removal
            && rng.chance(500)
        {
            r.at_ms = rng.range(4_000, 40_000);
        }
        let scaling = rng.chance(300).then(|| Scaling {
            at_ms: rng.range(4_000, 40_000),
            workload: rng.range(0, workloads as u64 - 1) as usize,
            node: rng.range(0, nodes as u64 - 1) as usize,
            replicas: rng.range(1, 3) as u32,
        });
        let update = rng.chance(400).then(|| Update {
            at_ms: rng.range(8_000, 25_000),
            workload: rng.range(0, workloads as u64 - 1) as usize,
            node: rng.range(0, nodes as u64 - 1) as usize,
            failing: rng.chance(300),
            max_surge: u32::from(!rng.chance(200)),
            owner_crash_after_ms: (crash.is_none() && rng.chance(300))
                .then(|| rng.range(100, 3_000)),
        });
        // Drawn after everything above, so that earlier builds' seeds keep their scenarios
        // (apart from the updates that strong runs leave out).
        let strong = rng.chance(300).then(|| Strong {
            clock_skew: true,
            // Over by 34 s: an owner back from a pause takes its workloads up again, and
            // gathers their reports, before the run's end checks who runs what.
            pause: rng.chance(500).then(|| Pause {
                node: rng.range(0, nodes as u64 - 1) as usize,
                at_ms: rng.range(3_000, 22_000),
                for_ms: rng.range(1_000, 12_000),
            }),
            stop_timeout_secs: rng.range(0, 2) as u32,
        });
        // Rolling updates of strong workloads are not simulated (nor built).
        let update = if strong.is_some() { None } else { update };
        Self {
            seed,
            nodes,
            workloads,
            unplaceable: true,
            latency_ms,
            loss_per_mille,
            forge_per_mille,
            partition,
            crash,
            stable_after_ms,
            end_ms: 50_000,
            submit_from_ms: 3_000,
            submit_interval_ms: 50,
            submitters: 1,
            small_workloads: false,
            static_membership: false,
            preconverged: false,
            membership: MembershipConfig::default(),
            commit_failure_per_mille,
            store_latency_ms,
            no_bid_node,
            hosts_only_node,
            liar_node,
            revocation_at_ms,
            removal,
            scaling,
            update,
            questions,
            strong,
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
            commit_failure_per_mille: 0,
            store_latency_ms: 0,
            no_bid_node: None,
            hosts_only_node: None,
            liar_node: None,
            revocation_at_ms: None,
            removal: None,
            scaling: None,
            update: None,
            questions: Vec::new(),
            strong: None,
        }
    }

    /// A record-replication run: `nodes` nodes that start knowing each other, 1 % message
    /// loss throughout (so some pushes are lost and anti-entropy repairs them), and
    /// `workloads` small workloads submitted through up to 100 nodes, then left for
    /// 60 s of steady state.
    pub fn records_benchmark(seed: u64, nodes: usize, workloads: usize) -> Self {
        let settle_ms = 3_000;
        Self {
            loss_per_mille: 10,
            stable_after_ms: u64::MAX,
            end_ms: settle_ms + workloads as u64 * 5 + 60_000,
            submit_interval_ms: 5,
            unplaceable: false,
            ..Self::placement_benchmark(seed, nodes, workloads)
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
            commit_failure_per_mille: 0,
            store_latency_ms: 0,
            no_bid_node: None,
            hosts_only_node: None,
            liar_node: None,
            revocation_at_ms: None,
            removal: None,
            scaling: None,
            update: None,
            questions: Vec::new(),
            strong: None,
        }
    }
}
