//! End-to-end tests of strong workloads (issue #17): a replica runs only under a lease
//! from a quorum of agents, with its epoch as a fencing token, and never on two nodes at
//! once: not when its holder is cut off from the others (both ways, or one way), and not
//! when it stops dead (SIGSTOP) without a chance to stop its container. Real agents, each
//! in a network namespace of its own on one bridge (so root, as CI runs them), real QUIC,
//! rootless Podman (each agent with its own container storage and service), sled. And a
//! dead acceptor replaced by the holder, on loopback.

use std::time::{Duration, Instant};

use parley_e2e::mesh::{
    address, bed_agent, logs, mesh_agent, running_containers, svid_in, wait_for_full_mesh,
    wait_until,
};
use parley_e2e::netbed::{Cut, NetBed};
use parley_e2e::{Agent, TrustDomain};

/// The running containers of `workload` on any of `agents`: (node label, epoch label),
/// read at one moment.
fn running(agents: &[&Agent], workload: &str) -> Vec<(String, String)> {
    running_containers(agents, workload)
        .into_iter()
        .map(|c| (c.node, c.epoch))
        .collect()
}

/// The value of `PARLEY_EPOCH` in container `name`'s environment.
fn epoch_env(agent: &Agent, name: &str) -> Option<String> {
    let out = agent.podman([
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        name,
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("PARLEY_EPOCH=").map(str::to_owned))
}

/// How a test takes the holder of a replica away from the others.
#[derive(Clone, Copy, Debug)]
enum Isolation {
    /// Its link is cut, as [`Cut`] says; the agent itself goes on.
    Cut(Cut),
    /// Its process stops (SIGSTOP), as a wedged or swapped-out host's would; its Podman
    /// and its lease watchdog go on.
    Pause,
}

/// Three agents on a bed run a strong replica; its holder is isolated as `isolation`
/// says. Sampling every agent's containers every 100 ms never sees two running; another
/// node runs the replica at a higher epoch after the lease; when the holder is back, its
/// container is gone and stays gone, and the replica runs (somewhere) again. Returns the
/// failover time: isolation → running elsewhere.
fn strong_replica_fails_over(isolation: Isolation) -> Duration {
    let bed = NetBed::new(3);
    let domain = TrustDomain::new("strong.e2e");
    let identities = [domain.enroll("a"), domain.enroll("b"), domain.enroll("c")];
    let a = bed_agent(&bed, 0, "strong-a", &identities[0], &[], &[]);
    let b = bed_agent(&bed, 1, "strong-b", &identities[1], &[0], &[]);
    let c = bed_agent(&bed, 2, "strong-c", &identities[2], &[0], &[]);
    let agents = [&a, &b, &c];
    wait_for_full_mesh(&agents);

    a.run_sleepers_with("db", 1, &["--consistency", "strong"])
        .ok();
    let started = Instant::now();
    while running(&agents, "db").len() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the strong replica did not run within 60 s:\n{}",
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (holder_node, first_epoch) = running(&agents, "db").remove(0);
    let holder_host = agents
        .iter()
        .position(|x| x.node() == holder_node)
        .expect("the holder is one of the agents");
    let holder = agents[holder_host];
    let holder_identity = &identities[holder_host];
    assert_eq!(
        epoch_env(holder, "parley-db-0").as_deref(),
        Some(first_epoch.as_str()),
        "the container's PARLEY_EPOCH is its lease's epoch"
    );

    // The workload identity states the epoch too, signed by the holder, and verifies.
    let svid = svid_in(holder, "parley-db-0");
    assert_eq!(svid["lease"]["epoch"].to_string(), first_epoch, "{svid}");
    let svid_path = holder.dir().join("svid-copy.json");
    std::fs::write(&svid_path, svid.to_string()).expect("write the identity's copy");
    let identity_dir = holder_identity.display().to_string();
    let verified = holder.cli([
        "identity",
        "--dir",
        &identity_dir,
        "verify-svid",
        &svid_path.display().to_string(),
        "-o",
        "json",
    ]);
    assert_eq!(
        verified.json()["epoch"].to_string(),
        first_epoch,
        "{}",
        verified.stderr
    );

    // `explain` states the guarantee and, on the holder, the lease it holds; the others,
    // all acceptors in a mesh of three, name the holder they accepted.
    let explained = holder.cli(["explain", "db", "-o", "json"]).json();
    assert_eq!(explained["consistency"], "strong", "{explained}");
    let lease = &explained["placements"][0]["lease"];
    assert_eq!(lease["state"], "held", "{explained}");
    assert_eq!(lease["epoch"].to_string(), first_epoch, "{explained}");
    let holder_id = format!("spiffe://strong.e2e/node/{}", ["a", "b", "c"][holder_host]);
    for other in agents.iter().filter(|x| x.node() != holder_node) {
        let explained = other.cli(["explain", "db", "-o", "json"]).json();
        let lease = &explained["placements"][0]["lease"];
        assert_eq!(lease["state"], "accepted", "{explained}");
        assert_eq!(lease["holder"], holder_id.as_str(), "{explained}");
    }

    match isolation {
        Isolation::Cut(cut) => bed.cut(holder_host, cut),
        Isolation::Pause => holder.pause(),
    }
    let restore = || match isolation {
        Isolation::Cut(_) => bed.heal(holder_host),
        Isolation::Pause => holder.resume(),
    };
    let isolated_at = Instant::now();
    let mut failover = None;
    while isolated_at.elapsed() < Duration::from_secs(90) {
        let now_running = running(&agents, "db");
        if std::env::var_os("PARLEY_E2E_TRACE").is_some() {
            eprintln!("{:?}: {now_running:?}", isolated_at.elapsed());
        }
        if now_running.len() > 1 {
            restore();
            panic!(
                "two containers of one strong replica run at once ({isolation:?}): \
                 {now_running:?}\n{}",
                logs(&agents)
            );
        }
        if let Some((node, epoch)) = now_running.first()
            && *node != holder_node
        {
            assert!(
                epoch.parse::<u64>().unwrap() > first_epoch.parse::<u64>().unwrap(),
                "the new holder runs at epoch {epoch}, not above {first_epoch}"
            );
            failover = Some(isolated_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let failover = failover.unwrap_or_else(|| {
        restore();
        panic!(
            "no other node ran the replica within 90 s of its holder's isolation \
             ({isolation:?}):\n{}",
            logs(&agents)
        )
    });
    eprintln!("failover after {isolation:?}: {} ms", failover.as_millis());
    if std::env::var_os("PARLEY_E2E_TRACE").is_some() {
        eprintln!("holder: host {holder_host}\n{}", logs(&agents));
    }
    if let Isolation::Cut(_) = isolation {
        // Cut off, the holder runs nothing, and its `explain` says why.
        let mut why = serde_json::Value::Null;
        let asked = Instant::now();
        while asked.elapsed() < Duration::from_secs(15) {
            let now_running = running(&agents, "db");
            assert!(
                now_running.len() <= 1,
                "two containers of one strong replica run at once ({isolation:?}): \
                 {now_running:?}"
            );
            let explained = holder.cli(["explain", "db", "-o", "json"]).json();
            why = explained["placements"][0]["lease"].clone();
            if why["state"] == "seeking"
                && why["why"]
                    .as_str()
                    .is_some_and(|w| w.contains("no quorum of acceptors"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            why["why"]
                .as_str()
                .is_some_and(|w| w.contains("no quorum of acceptors")),
            "the cut-off holder's explain should say it has no quorum ({isolation:?}): {why}"
        );
    }

    restore();
    // The holder fences what it believed it held: its container (of the first epoch)
    // never comes back, and never two run. Ownership may move back to it and with it the
    // replica, at a new epoch, once the other lease has run out.
    let restored = Instant::now();
    let mut runs_again = false;
    while restored.elapsed() < Duration::from_secs(40) {
        let now_running = running(&agents, "db");
        assert!(
            now_running.len() <= 1,
            "two containers of one strong replica run at once after the holder came back \
             ({isolation:?}): {now_running:?}\n{}",
            logs(&agents)
        );
        assert!(
            now_running.iter().all(|(_, epoch)| *epoch != first_epoch),
            "the isolated holder's container of epoch {first_epoch} came back \
             ({isolation:?}): {now_running:?}"
        );
        runs_again = now_running.len() == 1;
        if runs_again && restored.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        runs_again,
        "the replica does not run anywhere 40 s after its old holder came back \
         ({isolation:?}):\n{}",
        logs(&agents)
    );
    // Who stopped the old container: the agent itself, before its lease ran out, when it
    // could not renew; the watchdog when the agent was paused.
    let stopper = match isolation {
        Isolation::Cut(_) => "fenced a strong replica",
        Isolation::Pause => "fence-watch: stopped parley-db-0",
    };
    assert!(
        holder.log().contains(stopper),
        "the holder's log should say \"{stopper}\" ({isolation:?}):\n{}",
        holder.log()
    );
    failover
}

/// The holder is cut off both ways: it fences itself when it cannot renew, and another
/// node runs the replica only after the lease.
#[test]
fn a_strong_replica_never_runs_twice_when_its_holder_is_cut_off() {
    strong_replica_fails_over(Isolation::Cut(Cut::Both));
}

/// The holder hears the others but nothing it sends arrives: its renewals never reach
/// the acceptors, so it fences itself and another node takes the replica over.
#[test]
fn a_strong_replica_never_runs_twice_when_its_holder_cannot_send() {
    strong_replica_fails_over(Isolation::Cut(Cut::Outbound));
}

/// The holder's messages arrive but it hears nothing: acceptors may grant what it asks,
/// it never learns so, it fences itself, and the others wait out every lease it might
/// hold before another runs the replica.
#[test]
fn a_strong_replica_never_runs_twice_when_its_holder_cannot_hear() {
    strong_replica_fails_over(Isolation::Cut(Cut::Inbound));
}

/// The holder stops dead (SIGSTOP): its watchdog stops the container when the lease
/// runs out, and when the holder goes on, its container is gone and stays gone.
#[test]
fn a_strong_replica_never_runs_twice_when_its_holder_is_paused() {
    strong_replica_fails_over(Isolation::Pause);
}

/// Slow links, then a holder too slow to keep its lease. First every host's packets are
/// held 150 ms (a round trip of 300 ms, so a lease round of two takes 600 ms of the second
/// it may): the holder renews through it, and the replica runs on, on the same node at
/// the same epoch, never fenced, for four leases. Then the holder's packets are held
/// 1.5 s, longer than a round may take: its renewals time out and its container stops.
/// Healed, the replica runs again at a higher epoch. Sampled every 100 ms throughout,
/// never two run.
#[test]
fn a_strong_replica_rides_out_slow_links_and_a_holder_too_slow_to_renew_stops_it() {
    let bed = NetBed::new(3);
    let domain = TrustDomain::new("slow.e2e");
    let a = bed_agent(&bed, 0, "slow-a", &domain.enroll("a"), &[], &[]);
    let b = bed_agent(&bed, 1, "slow-b", &domain.enroll("b"), &[0], &[]);
    let c = bed_agent(&bed, 2, "slow-c", &domain.enroll("c"), &[0], &[]);
    let agents = [&a, &b, &c];
    wait_for_full_mesh(&agents);
    a.run_sleepers_with("db", 1, &["--consistency", "strong"])
        .ok();
    let started = Instant::now();
    while running(&agents, "db").len() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the strong replica did not run within 60 s:\n{}",
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = running(&agents, "db").remove(0);
    let holder_host = agents
        .iter()
        .position(|x| x.node() == first.0)
        .expect("the holder is one of the agents");
    let holder = agents[holder_host];

    for host in 0..bed.hosts() {
        bed.delay(host, Duration::from_millis(150));
    }
    // At `--stop-timeout 1` the lease is 5 s: 20 s is four of them, renewed all along.
    let slowed = Instant::now();
    while slowed.elapsed() < Duration::from_secs(20) {
        let now_running = running(&agents, "db");
        assert_eq!(
            now_running,
            vec![first.clone()],
            "over links 150 ms slow the replica should run on where and as it ran, after \
             {:?}:\n{}",
            slowed.elapsed(),
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let explained = holder.cli(["explain", "db", "-o", "json"]).json();
    let lease = &explained["placements"][0]["lease"];
    assert_eq!(lease["state"], "held", "{explained}");
    assert_eq!(lease["epoch"].to_string(), first.1, "{explained}");
    assert!(
        !holder.log().contains("fenced a strong replica"),
        "the holder fenced over links it could renew through:\n{}",
        holder.log()
    );

    // Now only the holder is slow, beyond what a round may take. It cannot renew, so its
    // container stops before its lease ends. It is not dead either (its messages arrive,
    // late), so it keeps its award: the replica is down until it recovers
    // (docs/strong-consistency.md, "Not built").
    bed.delay(holder_host, Duration::from_millis(1_500));
    let slowed = Instant::now();
    let mut stopped_after = None;
    while slowed.elapsed() < Duration::from_secs(20) {
        let now_running = running(&agents, "db");
        assert!(
            now_running.len() <= 1,
            "two containers of one strong replica run at once: {now_running:?}\n{}",
            logs(&agents)
        );
        if now_running.is_empty() && stopped_after.is_none() {
            stopped_after = Some(slowed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped_after = stopped_after.unwrap_or_else(|| {
        panic!(
            "a holder 1.5 s slow, which cannot renew, still ran the replica 20 s on:\n{}",
            logs(&agents)
        )
    });
    eprintln!("a holder 1.5 s slow stopped the replica after {stopped_after:?}");
    // Stopped by the agent, or by its watchdog when the agent's own check came late.
    let log = holder.log();
    assert!(
        log.contains("fenced a strong replica") || log.contains("fence-watch: stopped"),
        "the slow holder should have stopped its container itself:\n{log}"
    );

    for host in 0..bed.hosts() {
        bed.heal(host);
    }
    let healed = Instant::now();
    loop {
        let now_running = running(&agents, "db");
        assert!(
            now_running.len() <= 1,
            "two containers of one strong replica run at once after the heal: \
             {now_running:?}\n{}",
            logs(&agents)
        );
        if let Some((_, epoch)) = now_running.first() {
            assert!(
                epoch.parse::<u64>().unwrap() > first.1.parse::<u64>().unwrap(),
                "after its fence the replica runs at epoch {epoch}, not above {}",
                first.1
            );
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(60),
            "the replica did not run again within 60 s of the heal:\n{}",
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An acceptor restarts over its data directory: it takes its register slots back from
/// sled, and answers for the lease it accepted before (that lease counted again from its
/// restart). The holder renews with the other two meanwhile, so its container runs on at
/// the same epoch throughout.
#[test]
fn a_restarted_acceptor_takes_back_the_lease_it_accepted() {
    let bed = NetBed::new(3);
    let domain = TrustDomain::new("acceptor.e2e");
    let mut agents = vec![
        bed_agent(&bed, 0, "acc-a", &domain.enroll("a"), &[], &[]),
        bed_agent(&bed, 1, "acc-b", &domain.enroll("b"), &[0], &[]),
        bed_agent(&bed, 2, "acc-c", &domain.enroll("c"), &[0], &[]),
    ];
    wait_for_full_mesh(&agents.iter().collect::<Vec<_>>());
    agents[0]
        .run_sleepers_with("db", 1, &["--consistency", "strong"])
        .ok();
    let all = |agents: &[Agent]| running(&agents.iter().collect::<Vec<_>>(), "db");
    let started = Instant::now();
    while all(&agents).len() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the strong replica did not run within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = all(&agents);
    let holder_host = agents
        .iter()
        .position(|x| x.node() == before[0].0)
        .expect("the holder is one of the agents");
    let holder_id = format!(
        "spiffe://acceptor.e2e/node/{}",
        ["a", "b", "c"][holder_host]
    );
    let acceptor = (holder_host + 1) % 3;
    let accepted = |agent: &Agent| {
        let explained = agent.cli(["explain", "db", "-o", "json"]).json();
        explained["placements"][0]["lease"].clone()
    };
    let lease = accepted(&agents[acceptor]);
    assert_eq!(lease["state"], "accepted", "{lease}");
    assert_eq!(lease["holder"], holder_id.as_str(), "{lease}");

    assert!(agents[acceptor].stop().success());
    // Down, then back through the holder (host 0 has no seeds of its own).
    std::thread::sleep(Duration::from_secs(2));
    let rejoin = bed.agent_address(holder_host);
    if let Err((status, log)) = agents[acceptor].try_launch(&["--join", &rejoin]) {
        panic!("the acceptor did not start again ({status}):\n{log}");
    }
    assert!(
        agents[acceptor]
            .log()
            .contains("taking back the lease registers stored before the restart"),
        "{}",
        agents[acceptor].log()
    );
    let lease = accepted(&agents[acceptor]);
    assert_eq!(lease["state"], "accepted", "{lease}");
    assert_eq!(lease["holder"], holder_id.as_str(), "{lease}");
    assert_eq!(lease["epoch"].to_string(), before[0].1, "{lease}");
    // The holder's container never stopped: same node, same epoch, for 10 s more.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        assert_eq!(all(&agents), before, "the holder's replica changed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With fewer live agents than a strong workload needs for its lease acceptors, `parley
/// run` refuses it and says why, and nothing is stored or placed.
#[test]
fn a_strong_workload_is_refused_with_fewer_than_three_live_agents() {
    let domain = TrustDomain::new("few.e2e");
    let a = mesh_agent("few-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("few-b", &domain.enroll("b"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b]);
    a.run_sleepers_with("db", 1, &["--consistency", "strong"])
        .fails_with(1, "needs 3 live agents for its lease acceptors");
    let ps = a.ps();
    assert!(
        ps["workloads"].as_array().is_none_or(|w| w.is_empty()),
        "{ps}"
    );
}

/// An acceptor of a strong replica's register dies for good: the holder replaces it with
/// the spare agent, in two register rounds, and says so in its log and in `explain`.
/// Then a second of the first acceptors dies: with the first set, only one of three would
/// be left and the holder would have to stop its container; with the new set two of three
/// answer, and the replica runs on, on the same node at the same epoch. Four agents on
/// loopback (no namespaces needed), real QUIC, rootless Podman, sled.
#[test]
fn a_dead_acceptor_is_replaced_and_the_replica_runs_on() {
    let domain = TrustDomain::new("replace.e2e");
    let names = ["a", "b", "c", "d"];
    let identities: Vec<_> = names.iter().map(|n| domain.enroll(n)).collect();
    let first = mesh_agent("repl-a", &identities[0], &[], &[]);
    let seed = address(&first);
    let mut agents = vec![first];
    for (i, tag) in ["repl-b", "repl-c", "repl-d"].into_iter().enumerate() {
        agents.push(mesh_agent(tag, &identities[i + 1], &[&seed], &[]));
    }
    wait_for_full_mesh(&agents.iter().collect::<Vec<_>>());
    let id_of = |host: usize| format!("spiffe://replace.e2e/node/{}", names[host]);
    let host_of = |id: &str| {
        (0..names.len())
            .find(|h| id_of(*h) == id)
            .unwrap_or_else(|| panic!("{id} is none of the agents"))
    };

    agents[0]
        .run_sleepers_with("db", 1, &["--consistency", "strong"])
        .ok();
    let all = |agents: &[Agent]| running(&agents.iter().collect::<Vec<_>>(), "db");
    wait_until("the strong replica runs", Duration::from_secs(60), || {
        all(&agents).len() == 1
    });
    let before = all(&agents);
    let holder = agents
        .iter()
        .position(|x| x.node() == before[0].0)
        .expect("the holder is one of the agents");
    let acceptors_seen_by_holder = |agents: &[Agent]| -> Vec<String> {
        let explained = agents[holder].cli(["explain", "db", "-o", "json"]).json();
        let lease = &explained["placements"][0]["lease"];
        assert_eq!(lease["state"], "held", "{explained}");
        lease["acceptors"]
            .as_array()
            .unwrap_or_else(|| panic!("no acceptors in {explained}"))
            .iter()
            .map(|a| a.as_str().expect("an id").to_owned())
            .collect()
    };
    let first_set = acceptors_seen_by_holder(&agents);
    assert_eq!(first_set.len(), 3, "{first_set:?}");

    // An acceptor other than the holder dies.
    let dead = first_set
        .iter()
        .map(|id| host_of(id))
        .find(|h| *h != holder)
        .expect("an acceptor that is not the holder");
    agents[dead].kill();
    // Both steps: the set with both, then the new set alone (which the log says).
    wait_until(
        "the holder replaces the dead acceptor",
        Duration::from_secs(45),
        || {
            !acceptors_seen_by_holder(&agents).contains(&id_of(dead))
                && agents[holder].log().contains("replaced a gone acceptor")
        },
    );
    let new_set = acceptors_seen_by_holder(&agents);
    let spare = (0..names.len())
        .find(|h| !first_set.contains(&id_of(*h)))
        .expect("the fourth agent");
    assert!(new_set.contains(&id_of(spare)), "{new_set:?}");
    assert_eq!(new_set.len(), 3, "{new_set:?}");
    let log = agents[holder].log();
    assert!(
        log.contains("replacing a gone acceptor: both sets keep the lease register"),
        "the holder did not log the first step:\n{log}"
    );
    // The new acceptor answers for the register too.
    let explained = agents[spare].cli(["explain", "db", "-o", "json"]).json();
    let lease = &explained["placements"][0]["lease"];
    if spare != holder {
        assert_eq!(lease["state"], "accepted", "{explained}");
        assert_eq!(lease["holder"], id_of(holder).as_str(), "{explained}");
    }

    // A second acceptor of the first set dies: the new set still has a quorum.
    let second = first_set
        .iter()
        .map(|id| host_of(id))
        .find(|h| *h != holder && *h != dead)
        .expect("another acceptor of the first set");
    agents[second].kill();
    let alive: Vec<usize> = (0..names.len())
        .filter(|h| *h != dead && *h != second)
        .collect();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(15) {
        let now: Vec<_> = alive
            .iter()
            .flat_map(|h| running(&[&agents[*h]], "db"))
            .collect();
        assert_eq!(
            now,
            before,
            "the replica stopped or moved after the second acceptor died:\n{}",
            agents[holder].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !agents[holder].log().contains("fenced a strong replica"),
        "{}",
        agents[holder].log()
    );
}
