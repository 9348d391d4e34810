//! The simulated cluster, over many seeds. `PARLEY_SIM_SEEDS=N` runs N seeds (default
//! 1,000), `PARLEY_SIM_FIRST=S` starts at seed S; a failure prints the seeds that broke,
//! and `PARLEY_SIM_FIRST=S PARLEY_SIM_SEEDS=1` replays one exactly (add
//! `PARLEY_SIM_TRACE=1 -- --nocapture` to see its messages and host actions).

use parley_negotiation::sim::{self, SimConfig};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p`th percentile of `values` (0 when there are none).
fn percentile(values: &mut [u64], p: usize) -> u64 {
    values.sort_unstable();
    match values.len() {
        0 => 0,
        n => values[((n - 1) * p / 100).min(n - 1)],
    }
}

#[test]
fn every_seed_keeps_every_invariant() {
    let first = env("PARLEY_SIM_FIRST", 0);
    let seeds = env("PARLEY_SIM_SEEDS", 1_000);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let (mut messages, mut placed, mut forged, mut crashes, mut partitions, mut heal_max) =
        (0, 0, 0, 0, 0, 0);
    let mut restarts = 0;
    let (mut commit_failures, mut denied, mut takeovers, mut answered, mut removals) =
        (0, 0, 0, 0, 0);
    let mut statements_refused = 0;
    let (mut records_taken, mut records_refused, mut scalings, mut updates) = (0, 0, 0, 0);
    let mut kept_available = 0;
    let (mut strong_runs, mut paused, mut leases, mut fences, mut lease_checks) = (0, 0, 0, 0, 0);
    let mut failovers: Vec<u64> = Vec::new();
    let mut replaced = 0;
    for seed in first..first + seeds {
        let config = SimConfig::from_seed(seed);
        crashes += u64::from(config.crash.is_some());
        partitions += u64::from(config.partition.is_some());
        removals += u64::from(config.removal.is_some());
        strong_runs += u64::from(config.strong.is_some());
        paused += u64::from(config.strong.is_some_and(|s| s.pause.is_some()));
        match sim::run(config) {
            Ok(outcome) => {
                messages += outcome.messages;
                placed += outcome.replicas_placed;
                forged += outcome.forged_refused;
                heal_max = heal_max.max(outcome.heal_ms.unwrap_or(0));
                restarts += outcome.restarts;
                commit_failures += outcome.commit_failures;
                denied += outcome.denied;
                takeovers += outcome.takeovers;
                answered += outcome.answered;
                statements_refused += outcome.statements_refused;
                records_taken += outcome.records_taken;
                records_refused += outcome.records_refused;
                scalings += outcome.scalings;
                updates += outcome.updates;
                kept_available += outcome.updates_kept_available;
                leases += outcome.leases_run;
                fences += outcome.fences;
                lease_checks += outcome.lease_checks;
                failovers.extend(outcome.failover_ms);
                replaced += outcome.acceptors_replaced;
            }
            Err(violation) => failures.push(violation.to_string()),
        }
    }
    eprintln!(
        "{seeds} seeds in {:.1} s: {placed} replicas placed, {messages} messages, {forged} forgeries refused, \
         {partitions} runs with a partition, {crashes} with a crash, {restarts} restarts (slowest heal {heal_max} ms), \
         {commit_failures} failed commits, {denied} messages refused by policy, {takeovers} takeovers by a successor, \
         {removals} runs with a removal, {answered} questions answered, \
         {statements_refused} membership statements refused, \
         {records_taken} workload records taken, {records_refused} refused, {scalings} scalings, {updates} updates ({kept_available} checked for availability), \
         {strong_runs} runs with strong workloads ({paused} with a paused node): {leases} leases run or renewed, {fences} fences, \
         {lease_checks} lease checks, {} failovers (p50 {} ms, max {} ms), {replaced} acceptors replaced",
        started.elapsed().as_secs_f64(),
        failovers.len(),
        percentile(&mut failovers, 50),
        percentile(&mut failovers, 100),
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        placed > seeds,
        "the runs placed almost nothing; they prove little"
    );
    if seeds >= 100 {
        assert!(
            crashes > 0
                && restarts > 0
                && partitions > 0
                && forged > 0
                && commit_failures > 0
                && denied > 0
                && takeovers > 0
                && removals > 0
                && answered > 0
                && statements_refused > 0
                && records_taken > 0
                && records_refused > 0
                && scalings > 0
                && updates > 0
                && kept_available > 0
                && strong_runs > 0
                && paused > 0
                && leases > 0
                && fences > 0
                && replaced > 0
                && !failovers.is_empty(),
            "the seeds exercised no faults"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 42] {
        assert_eq!(
            sim::run(SimConfig::from_seed(seed)),
            sim::run(SimConfig::from_seed(seed))
        );
    }
}
