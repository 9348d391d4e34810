//! Scale benchmarks of the negotiation protocol, run in the deterministic simulator.
//!
//! ```sh
//! cargo bench -p parley-negotiation --bench scale                # everything (~15 min)
//! cargo bench -p parley-negotiation --bench scale -- placement   # one section
//! ```
//!
//! Sections: `placement` (1,000 nodes, 10,000 workloads: placements per CPU-second with
//! cheap and with real P-256 signatures, messages per placement), `messages` (auction
//! messages per placement as the cluster grows) and `detection` (how long until every
//! member learns of a crashed node, with 1 % message loss), `records` (how fast workload
//! records reach every node, and what replicating them costs). CPU time is the thread's own
//! (`/proc/thread-self/schedstat`), so a busy machine slows the run but not the figure.
//! Every run also checks all of the simulator's invariants; a violation aborts the bench.

use std::collections::BTreeMap;
use std::time::Duration;

use parley_identity::{
    Credential, Issuer, PendingRequest, SpiffeId, TrustBundle, Validity, VerifiedIdentity,
};
use parley_negotiation::codec::{Signer, Verifier};
use parley_negotiation::membership::{MembershipConfig, Notary, StatementKind};
use parley_negotiation::messages::SignedStatement;
use parley_negotiation::sim::{self, CheapCrypto, Outcome, SimConfig, SimCrypto};

/// CPU time this thread has used so far.
fn thread_cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("/proc/thread-self/schedstat is readable on Linux");
    let nanos: u64 = text
        .split_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .expect("schedstat starts with nanoseconds on CPU");
    Duration::from_nanos(nanos)
}

/// Runs `config`, returning what it did and the CPU time it took.
fn measure(config: SimConfig, crypto: &dyn SimCrypto) -> (Outcome, Duration) {
    let started = thread_cpu_time();
    let outcome = match sim::run_with(config, crypto) {
        Ok(outcome) => outcome,
        Err(violation) => panic!("invariant broken during the benchmark: {violation}"),
    };
    (outcome, thread_cpu_time() - started)
}

/// Real node identities: an ECQV credential per node from one root. A receiver verifies
/// with the sender's key reconstructed once from its chain, as the agent's transport does
/// at the handshake; each message then costs one ECDSA signature and one verification.
struct RealCrypto {
    credentials: BTreeMap<String, std::sync::Arc<Credential>>,
    verifier: KeyedVerifier,
}

struct KeyedVerifier {
    peers: std::sync::Arc<BTreeMap<String, VerifiedIdentity>>,
}

/// Membership statements signed with the node's key; the bench's verifiers know every
/// node's key, so the statement carries no credential.
#[derive(Debug)]
struct CredentialNotary {
    credential: std::sync::Arc<Credential>,
    peers: std::sync::Arc<BTreeMap<String, VerifiedIdentity>>,
}

impl Notary for CredentialNotary {
    fn sign(&self, kind: StatementKind, statement: Vec<u8>) -> SignedStatement {
        SignedStatement {
            signature: self.credential.sign(kind.context(), &statement),
            statement,
            credential: Vec::new(),
        }
    }

    fn verify(
        &self,
        kind: StatementKind,
        signer: &str,
        signed: &SignedStatement,
        _now_ms: u64,
    ) -> bool {
        self.peers.get(signer).is_some_and(|peer| {
            peer.verify(kind.context(), &signed.statement, &signed.signature)
                .is_ok()
        })
    }
}

impl Verifier for KeyedVerifier {
    fn verify(&self, sender: &str, context: &str, bytes: &[u8], signature: &[u8]) -> bool {
        self.peers
            .get(sender)
            .is_some_and(|peer| peer.verify(context, bytes, signature).is_ok())
    }
}

struct CredentialSigner {
    id: String,
    credential: std::sync::Arc<Credential>,
}

impl Signer for CredentialSigner {
    fn id(&self) -> &str {
        &self.id
    }

    fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8> {
        self.credential.sign(context, bytes)
    }
}

impl RealCrypto {
    fn enroll(nodes: usize) -> Self {
        const NOW: u64 = 1_800_000_000;
        let root = Issuer::generate_root("sim.test").expect("valid trust domain");
        let mut bundle = TrustBundle::new();
        bundle.add("sim.test", root.public_key());
        let mut credentials = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for i in 0..nodes {
            let id = format!("spiffe://sim.test/node/n{i}");
            let pending = PendingRequest::new(SpiffeId::parse(&id).expect("valid node id"));
            let issued = root
                .issue(pending.request(), Validity::starting(NOW, 86_400))
                .expect("root issues node identities");
            let credential = pending
                .accept(&issued, &root.public_key())
                .expect("issued credential checks out");
            let verified = bundle
                .verify_chain(&[credential.cert().clone()], NOW)
                .expect("chain verifies");
            peers.insert(id.clone(), verified);
            credentials.insert(id, std::sync::Arc::new(credential));
        }
        Self {
            credentials,
            verifier: KeyedVerifier {
                peers: std::sync::Arc::new(peers),
            },
        }
    }
}

impl SimCrypto for RealCrypto {
    fn signer(&self, id: &str) -> Box<dyn Signer> {
        Box::new(CredentialSigner {
            id: id.to_owned(),
            credential: self.credentials[id].clone(),
        })
    }

    fn verifier(&self) -> &dyn Verifier {
        &self.verifier
    }

    fn notary(&self, id: &str) -> Box<dyn Notary> {
        Box::new(CredentialNotary {
            credential: self.credentials[id].clone(),
            peers: self.verifier.peers.clone(),
        })
    }
}

/// Whether to run a cluster of `nodes`: `PARLEY_BENCH_NODES=100,1000` runs only those
/// sizes (the largest take long).
fn size_selected(nodes: usize) -> bool {
    std::env::var("PARLEY_BENCH_NODES").map_or(true, |list| {
        list.split(',')
            .filter_map(|n| n.trim().parse().ok())
            .any(|n: usize| n == nodes)
    })
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}

fn per(count: u64, of: u64) -> f64 {
    count as f64 / of.max(1) as f64
}

fn placement() {
    println!("## placement: 1,000 nodes, 10,000 workloads (SWIM membership running)\n");
    println!(
        "| signatures | replicas placed | CPU time | placements / CPU-s | auction msgs / placement | all msgs / placement |"
    );
    println!("|---|---|---|---|---|---|");
    let config = SimConfig::placement_benchmark(1, 1_000, 10_000);
    let row = |name: &str, (outcome, cpu): (Outcome, Duration)| {
        println!(
            "| {name} | {} | {:.1} s | {:.0} | {:.2} | {:.2} |",
            outcome.replicas_placed,
            cpu.as_secs_f64(),
            outcome.replicas_placed as f64 / cpu.as_secs_f64(),
            per(outcome.auction_messages(), outcome.replicas_placed),
            per(outcome.messages, outcome.replicas_placed),
        );
    };
    // Each row as soon as it is measured: the real signatures take many minutes more.
    row("cheap checksum", measure(config.clone(), &CheapCrypto));
    let enroll_started = thread_cpu_time();
    let real_crypto = RealCrypto::enroll(1_000);
    eprintln!(
        "enrolled 1,000 nodes in {:.1} s of CPU",
        (thread_cpu_time() - enroll_started).as_secs_f64()
    );
    row("ECQV P-256", measure(config, &real_crypto));
    println!();
}

fn messages() {
    println!("## messages: auction messages per placement as the cluster grows\n");
    println!(
        "One or ten workloads per node, submitted through 100 nodes. `SWIM`: membership \
         runs, every node starting with the full member list; `SWIM, joined`: every node \
         joins through two seeds first; `static`: the member list without SWIM (the \
         auction alone).\n"
    );
    println!(
        "| nodes | workloads | membership | replicas placed | auction msgs / placement | cfp | bid | decline | award | accept | release | revoke | CPU | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let runs = [
        (100, 1, "SWIM"),
        (1_000, 1, "SWIM"),
        (10_000, 1, "SWIM"),
        (100, 1, "static"),
        (1_000, 1, "static"),
        (10_000, 1, "static"),
        (100, 10, "SWIM"),
        (100, 10, "SWIM, joined"),
        (100, 10, "static"),
        (1_000, 10, "SWIM"),
        (1_000, 10, "static"),
    ];
    // `PARLEY_BENCH_MEMBERSHIP=static` runs only those rows.
    let kinds = std::env::var("PARLEY_BENCH_MEMBERSHIP").ok();
    for (nodes, per_node, membership) in runs {
        if !size_selected(nodes) || kinds.as_ref().is_some_and(|k| k != membership) {
            continue;
        }
        let mut config = SimConfig::placement_benchmark(2, nodes, nodes * per_node);
        config.static_membership = membership == "static";
        if membership == "SWIM, joined" {
            config.preconverged = false;
            config.submit_from_ms = 5_000;
            config.end_ms += 2_000;
        }
        let (outcome, cpu) = measure(config, &CheapCrypto);
        let kind = |k: &str| {
            per(
                outcome.messages_by_kind.get(k).copied().unwrap_or(0),
                outcome.replicas_placed,
            )
        };
        println!(
            "| {nodes} | {} | {membership} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} s | {} MiB |",
            nodes * per_node,
            outcome.replicas_placed,
            per(outcome.auction_messages(), outcome.replicas_placed),
            kind("cfp"),
            kind("bid"),
            kind("decline"),
            kind("award"),
            kind("accept"),
            kind("release"),
            kind("revoke"),
            cpu.as_secs_f64(),
            peak_rss_mib(),
        );
    }
    println!();
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn detection() {
    println!("## detection: one node crashes, 1 % of messages are lost throughout\n");
    println!(
        "Per observer: time from the crash until it stops offering the node work (suspects it) \
         and until it declares it dead (its replicas are re-placed). p50/p99/max over every \
         observer of every seed; false positives are live nodes declared dead.\n"
    );
    println!(
        "| nodes | profile | seeds | suspected p50 / p99 / max | dead p50 / p99 / max | observers that learned | false positives | CPU | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let fast = MembershipConfig {
        probe_interval_ms: 500,
        probe_timeout_ms: 200,
        suspicion_multiplier: 2,
        min_suspicion_ms: 2_000,
        ..MembershipConfig::default()
    };
    let runs = [
        (100, "LAN (default)", MembershipConfig::default(), 20),
        (100, "fast", fast, 20),
        (1_000, "LAN (default)", MembershipConfig::default(), 3),
        (1_000, "fast", fast, 3),
        (10_000, "LAN (default)", MembershipConfig::default(), 1),
        (10_000, "fast", fast, 1),
    ];
    for (nodes, profile, membership, seeds) in runs {
        if !size_selected(nodes) {
            continue;
        }
        let (mut suspected, mut dead, mut false_positives, mut expected) =
            (Vec::new(), Vec::new(), 0, 0);
        let mut cpu = Duration::ZERO;
        for seed in 0..seeds {
            let mut config = SimConfig::detection_benchmark(seed, nodes);
            config.membership = membership;
            let (outcome, took) = measure(config, &CheapCrypto);
            cpu += took;
            suspected.extend(outcome.suspected_crash_ms);
            dead.extend(outcome.learned_of_crash_ms);
            false_positives += outcome.false_deaths;
            expected += nodes as u64 - 1;
        }
        suspected.sort_unstable();
        dead.sort_unstable();
        let stats = |v: &[u64]| {
            format!(
                "{:.1} / {:.1} / {:.1} s",
                percentile(v, 50.0) as f64 / 1000.0,
                percentile(v, 99.0) as f64 / 1000.0,
                v.last().copied().unwrap_or(0) as f64 / 1000.0
            )
        };
        println!(
            "| {nodes} | {profile} | {seeds} | {} | {} | {} of {expected} | {false_positives} | {:.0} s | {} MiB |",
            stats(&suspected),
            stats(&dead),
            dead.len(),
            cpu.as_secs_f64(),
            peak_rss_mib(),
        );
    }
    println!();
}

/// Bytes of the record replication's messages in an outcome.
fn record_bytes(outcome: &Outcome) -> u64 {
    ["records", "record-digest", "record-versions"]
        .iter()
        .map(|kind| outcome.bytes_by_kind.get(kind).copied().unwrap_or(0))
        .sum()
}

fn records() {
    println!("## records: workload records replicated to every node, 1 % of messages lost\n");
    println!(
        "Spread: for every node, the time from a record's write until it held it (pushed at \
         once; a lost push is repaired by anti-entropy, one digest to one random member every \
         2 s). Steady state: the replication's bytes per node per second once every record is \
         everywhere (the run extended by 60 s, minus the run without), counting frames as \
         they travel (envelope and signature included).\n"
    );
    println!(
        "| nodes | workloads | seeds | spread p50 / p99 / max | took by anti-entropy | replication bytes in all | steady state per node | CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (nodes, workloads, seeds) in [(100, 20, 5), (1_000, 20, 1), (100, 1_000, 1)] {
        if !size_selected(nodes) {
            continue;
        }
        let (mut spread, mut bytes, mut steady) = (Vec::new(), 0, 0.0);
        let mut cpu = Duration::ZERO;
        for seed in 0..seeds {
            let config = SimConfig::records_benchmark(seed, nodes, workloads);
            let mut longer = config.clone();
            longer.end_ms += 60_000;
            let (outcome, took) = measure(config, &CheapCrypto);
            let (extended, took_longer) = measure(longer, &CheapCrypto);
            cpu += took + took_longer;
            spread.extend(outcome.record_spread_ms.iter().copied());
            bytes += record_bytes(&outcome);
            steady += (record_bytes(&extended) - record_bytes(&outcome)) as f64
                / 60.0
                / nodes as f64
                / seeds as f64;
        }
        spread.sort_unstable();
        let repaired = spread.iter().filter(|ms| **ms >= 1_000).count();
        println!(
            "| {nodes} | {workloads} | {seeds} | {} / {} / {} ms | {repaired} of {} | {:.1} MB | {steady:.0} B/s | {:.0} s |",
            percentile(&spread, 50.0),
            percentile(&spread, 99.0),
            spread.last().copied().unwrap_or(0),
            spread.len(),
            bytes as f64 / 1e6,
            cpu.as_secs_f64(),
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; anything else names sections to run.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    if run("placement") {
        placement();
    }
    if run("messages") {
        messages();
    }
    if run("detection") {
        detection();
    }
    if run("records") {
        records();
    }
}
