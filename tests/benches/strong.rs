//! Benchmarks of strong workloads on three real agents, each in a network namespace of
//! its own on one bridge (issue #17): how long a replica takes to run elsewhere after its
//! holder is killed; what keeping a lease costs on the wire, against an eventual
//! replica; and `run` → running for strong against eventual, on the same three agents.
//!
//! ```sh
//! cargo build --release -p parley-agent
//! PARLEY_BIN=$PWD/target/release/parley PARLEY_E2E_USER=parley-e2e \
//!   cargo bench -p parley-e2e --bench strong          # as root: the bed needs it
//! ```
//!
//! `PARLEY_BENCH_FAILOVERS` (default 20), `PARLEY_BENCH_STARTS` (10 of each class),
//! `PARLEY_BENCH_TRAFFIC_SECS` (30 per measurement) and `PARLEY_BENCH_REPLICAS` (5
//! one-replica workloads kept while the wire is counted) size the runs. It prints
//! Markdown.
//!
//! Times are the agents' own: a replica runs from its `replica-started` event, which the
//! agent records once Podman has started the container. Traffic is what each host's link
//! carried out, counted by nftables in its namespace: IP packets and bytes, the QUIC
//! framing and SWIM's gossip included.

use std::time::{Duration, Instant};

use parley_e2e::hostile::unix_millis;
use parley_e2e::mesh::{bed_agent, wait_for_full_mesh, wait_until};
use parley_e2e::netbed::NetBed;
use parley_e2e::{Agent, TEST_IMAGE, TrustDomain};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// The earliest `replica-started` of `workload` that `agent` recorded at or after
/// `since_ms`.
fn started_at(agent: &Agent, workload: &str, since_ms: u64) -> Option<u64> {
    let out = agent.cli(["events", "-o", "json", "--limit", "200"]);
    if out.code() != 0 {
        return None;
    }
    let workload = format!("default/{workload}");
    out.json()
        .as_array()?
        .iter()
        .filter(|e| e["kind"] == "replica-started" && e["workload"] == workload.as_str())
        .filter_map(|e| e["at_ms"].as_u64())
        .filter(|&at| at >= since_ms)
        .min()
}

/// Waits until one of `agents` records a start of `workload` at or after `since_ms`;
/// returns the agent's index and the time.
fn wait_for_start(agents: &[&Agent], workload: &str, since_ms: u64) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(found) = agents
            .iter()
            .enumerate()
            .filter_map(|(i, a)| Some((i, started_at(a, workload, since_ms)?)))
            .min_by_key(|&(_, at)| at)
        {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no agent started {workload} within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The running containers of `workload` on `agent`'s node.
fn running_on(agent: &Agent, workload: &str) -> usize {
    let out = agent.podman([
        "ps",
        "-q",
        "--filter",
        &format!("label=io.parley.workload={workload}"),
        "--filter",
        "status=running",
    ]);
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn percentile(samples: &mut [u64], p: usize) -> u64 {
    samples.sort_unstable();
    let rank = (samples.len() * p).div_ceil(100).max(1);
    samples[rank - 1]
}

fn run(agent: &Agent, name: &str, strong: bool, replicas: u32) {
    let class = if strong { "strong" } else { "eventual" };
    agent
        .run_sleepers_with(name, replicas, &["--consistency", class])
        .ok();
}

fn remove(agents: &[&Agent], name: &str) {
    agents[0].cli(["rm", name]).ok();
    wait_until(
        &format!("{name} is gone everywhere"),
        Duration::from_secs(60),
        || agents.iter().all(|a| running_on(a, name) == 0),
    );
}

/// Packets and bytes per second that all hosts sent over `secs` seconds from now.
fn sent_per_second(bed: &NetBed, secs: u64) -> (f64, f64) {
    for host in 0..bed.hosts() {
        bed.heal(host); // replaces the counters
    }
    std::thread::sleep(Duration::from_secs(secs));
    let (packets, bytes) = (0..bed.hosts())
        .map(|h| bed.traffic(h))
        .fold((0, 0), |(p, b), t| (p + t.packets_out, b + t.bytes_out));
    (packets as f64 / secs as f64, bytes as f64 / secs as f64)
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported.
    let failovers = setting("PARLEY_BENCH_FAILOVERS", 20);
    let starts = setting("PARLEY_BENCH_STARTS", 10);
    let traffic_secs = setting("PARLEY_BENCH_TRAFFIC_SECS", 30);
    let replicas = setting("PARLEY_BENCH_REPLICAS", 5) as u32;

    let bed = NetBed::new(3);
    let domain = TrustDomain::new("bench.strong");
    let identities: Vec<_> = ["a", "b", "c"].iter().map(|n| domain.enroll(n)).collect();
    let mut agents: Vec<Agent> = (0..3)
        .map(|host| {
            let seeds: &[usize] = if host == 0 { &[] } else { &[0] };
            bed_agent(
                &bed,
                host,
                &format!("bench-{host}"),
                &identities[host],
                seeds,
                &[],
            )
        })
        .collect();
    wait_for_full_mesh(&agents.iter().collect::<Vec<_>>());

    // run → running, strong and eventual alternately, one replica each.
    let (mut eventual_ms, mut strong_ms) = (Vec::new(), Vec::new());
    for round in 0..starts {
        let all: Vec<&Agent> = agents.iter().collect();
        for strong in [false, true] {
            let name = format!("start-{round}-{}", if strong { "s" } else { "e" });
            let before = unix_millis();
            run(all[0], &name, strong, 1);
            let (_, at) = wait_for_start(&all, &name, before);
            if strong {
                strong_ms.push(at - before);
            } else {
                eventual_ms.push(at - before);
            }
            remove(&all, &name);
            // Let the removal settle everywhere (reservations released, reports sent), so
            // that each start is measured on its own and not behind the last one's tail.
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    eprintln!("run → running (ms): eventual {eventual_ms:?}, strong {strong_ms:?}");

    // The wire: idle, then with `replicas` eventual replicas, then as many strong ones
    // (one-replica workloads: the replicas of one workload spread one to a node).
    let all: Vec<&Agent> = agents.iter().collect();
    let idle = sent_per_second(&bed, traffic_secs);
    let wire = |class: &str, strong: bool| {
        let names: Vec<String> = (0..replicas).map(|k| format!("wire-{class}-{k}")).collect();
        for name in &names {
            run(all[0], name, strong, 1);
        }
        wait_until(
            &format!("the {class} replicas run"),
            Duration::from_secs(120),
            || {
                names
                    .iter()
                    .all(|name| all.iter().map(|a| running_on(a, name)).sum::<usize>() == 1)
            },
        );
        let rate = sent_per_second(&bed, traffic_secs);
        for name in &names {
            remove(&all, name);
        }
        rate
    };
    let eventual = wire("eventual", false);
    let strong = wire("strong", true);
    eprintln!(
        "sent per second (packets, bytes): idle {idle:?}, eventual {eventual:?}, strong {strong:?}"
    );

    // Failover at the default lease: the holder's agent is killed (SIGKILL); the time
    // runs from the kill to another agent's start of the replica. The killed agent is
    // started again, and the next round kills whoever holds the replica then.
    // The default stop timeout, so the default lease: not `run`'s `--stop-timeout 1`.
    all[0]
        .cli([
            "run",
            "db",
            "--image",
            TEST_IMAGE,
            "--consistency",
            "strong",
            "--",
            "sleep",
            "3600",
        ])
        .ok();
    let (mut holder, _) = wait_for_start(&all, "db", 0);
    let mut failover_ms = Vec::new();
    for round in 0..failovers {
        let killed_at = unix_millis();
        agents[holder].kill();
        let survivors: Vec<(usize, &Agent)> = agents
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != holder)
            .collect();
        let (which, at) = wait_for_start(
            &survivors.iter().map(|&(_, a)| a).collect::<Vec<_>>(),
            "db",
            killed_at,
        );
        failover_ms.push(at - killed_at);
        eprintln!("failover {round}: {} ms", at - killed_at);
        let next = survivors[which].0;
        let rejoin = bed.agent_address(next);
        if let Err((status, log)) = agents[holder].try_launch(&["--join", &rejoin]) {
            panic!("the killed agent did not start again ({status}):\n{log}");
        }
        holder = next;
        wait_for_full_mesh(&agents.iter().collect::<Vec<_>>());
        // The restarted agent removed what its crash left behind: one replica runs.
        wait_until("one copy of db runs", Duration::from_secs(60), || {
            agents.iter().map(|a| running_on(a, "db")).sum::<usize>() == 1
        });
    }

    let median = |samples: &mut Vec<u64>| percentile(samples, 50);
    let (eventual_p50, strong_p50) = (median(&mut eventual_ms), median(&mut strong_ms));
    println!("| measure | value |");
    println!("|---|---|");
    println!("| `run` → running, eventual (baseline), p50 of {starts} | {eventual_p50} ms |");
    println!(
        "| `run` → running, strong, p50 of {starts} | {strong_p50} ms (ratio {:.2}) |",
        strong_p50 as f64 / eventual_p50 as f64
    );
    let per_replica = |with: (f64, f64)| {
        (
            (with.0 - idle.0) / replicas as f64,
            (with.1 - idle.1) / replicas as f64,
        )
    };
    let (e_packets, e_bytes) = per_replica(eventual);
    let (s_packets, s_bytes) = per_replica(strong);
    println!(
        "| sent by all three, idle mesh | {:.1} packets/s, {:.0} B/s |",
        idle.0, idle.1
    );
    println!(
        "| added per eventual replica ({replicas} running, baseline) | {e_packets:.1} packets/s, {e_bytes:.0} B/s |"
    );
    println!(
        "| added per strong replica ({replicas} running) | {s_packets:.1} packets/s, {s_bytes:.0} B/s (ratio {:.2} in bytes) |",
        s_bytes / e_bytes.max(1.0)
    );
    let rounds = failover_ms.len();
    println!(
        "| failover, holder killed → running elsewhere, default lease, {rounds} rounds | p50 {} ms, p99 {} ms, max {} ms |",
        percentile(&mut failover_ms, 50),
        percentile(&mut failover_ms, 99),
        failover_ms.iter().max().copied().unwrap_or(0)
    );
    drop(agents);
}
