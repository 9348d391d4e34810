//! End-to-end tests of the mesh: real agents on loopback, each with its own identity,
//! Podman service and store, finding each other over QUIC.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use parley_e2e::mesh::{
    address, member_states, mesh_agent, nodes, owner_seen_by, replicas_on, svid_in,
    wait_for_full_mesh, wait_until,
};
use parley_e2e::{Agent, TrustDomain};

#[test]
fn three_agents_find_each_other_share_capacity_and_see_a_killed_one_die() {
    let domain = TrustDomain::new("mesh.e2e");
    let a = mesh_agent("mesh-a", &domain.enroll("a"), &[], &["--label", "zone=z1"]);
    let seed = address(&a);
    let b = mesh_agent(
        "mesh-b",
        &domain.enroll("b"),
        &[&seed],
        &["--label", "zone=z2"],
    );
    let mut c = mesh_agent(
        "mesh-c",
        &domain.enroll("c"),
        &[&seed],
        &["--label", "zone=z3"],
    );

    wait_for_full_mesh(&[&a, &b, &c]);

    // Every member's metadata reached `a`: version, capacity, labels, address.
    let list = nodes(&a);
    let entries = list["nodes"].as_array().unwrap();
    let ids: Vec<&str> = entries.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "spiffe://mesh.e2e/node/a",
            "spiffe://mesh.e2e/node/b",
            "spiffe://mesh.e2e/node/c"
        ],
        "{list}"
    );
    for (entry, zone) in entries.iter().zip(["z1", "z2", "z3"]) {
        let meta = &entry["meta"];
        assert_eq!(meta["labels"]["zone"], zone, "{entry}");
        assert_eq!(meta["agent_version"], env!("CARGO_PKG_VERSION"), "{entry}");
        assert!(
            meta["allocatable"]["cpu_millis"].as_u64().unwrap() > 0,
            "{entry}"
        );
        assert!(
            meta["allocatable"]["memory_bytes"].as_u64().unwrap() > 0,
            "{entry}"
        );
        assert!(
            meta["address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{entry}"
        );
    }
    let table = a.cli(["nodes"]).ok().to_owned();
    assert!(
        table.contains("spiffe://mesh.e2e/node/a *") && table.contains("zone=z3"),
        "{table}"
    );

    // A crash: the survivors stop trusting c (suspect), then declare it dead.
    c.kill();
    let c_id = "spiffe://mesh.e2e/node/c".to_owned();
    for (name, agent) in [("a", &a), ("b", &b)] {
        wait_until(
            &format!("{name} declares c dead"),
            Duration::from_secs(60),
            || member_states(agent).contains(&(c_id.clone(), "dead".to_owned())),
        );
        let states = member_states(agent);
        assert!(
            states.iter().any(|(id, s)| id != &c_id && s == "alive"),
            "{name} lost the other survivor: {states:?}"
        );
    }
}

/// Starts a member of `ours` and an intruder enrolled by `theirs` that tries to join
/// through it; neither may ever see the other, and the member counts the refused
/// handshakes.
fn assert_refused(ours: &TrustDomain, theirs: &TrustDomain, tag: &str) {
    let a = mesh_agent(&format!("{tag}-a"), &ours.enroll("a"), &[], &[]);
    let seed = address(&a);
    let intruder = mesh_agent(&format!("{tag}-x"), &theirs.enroll("x"), &[&seed], &[]);

    // The intruder keeps trying (it retries its seed every second); give it a few tries.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        member_states(&a).is_empty(),
        "a accepted the intruder: {}",
        nodes(&a)
    );
    assert!(member_states(&intruder).is_empty(), "{}", nodes(&intruder));
    let log = intruder.log();
    assert!(
        log.contains("seed unreachable"),
        "the intruder's log does not say it could not join: {log}"
    );
    let metrics = a.cli(["metrics"]).ok().to_owned();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("parley_message_errors_total{kind=\"handshake\"} ")),
        "a did not count the refused handshake: {metrics}"
    );
}

#[test]
fn a_node_of_another_trust_domain_is_refused() {
    assert_refused(
        &TrustDomain::new("ours.e2e"),
        &TrustDomain::new("theirs.e2e"),
        "trust",
    );
}

#[test]
fn a_node_with_a_forged_identity_is_refused() {
    // Same trust domain name, another root key: a certificate for
    // spiffe://forge.e2e/node/x that the real root never issued.
    assert_refused(
        &TrustDomain::new("forge.e2e"),
        &TrustDomain::new("forge.e2e"),
        "forge",
    );
}

#[test]
fn an_agent_without_an_identity_refuses_to_join_and_says_how_to_enrol() {
    // Nothing enrolled in the default place, DATA_DIR/identity.
    let mut agent = Agent::unstarted("no-identity", &["--listen", "127.0.0.1:0"], &[], &[]);
    let (status, log) = agent
        .try_launch(&[])
        .expect_err("the agent started without an identity");
    assert!(!status.success());
    assert!(
        log.contains("cannot load this node's identity from"),
        "{log}"
    );
    assert!(log.contains("parley identity request"), "{log}");
}

#[test]
fn without_listen_nodes_shows_this_node_alone() {
    let agent = Agent::start("solo");
    let list = nodes(&agent);
    assert_eq!(list["mesh"], false, "{list}");
    let entries = list["nodes"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["id"], agent.node());
    assert_eq!(entries[0]["this_node"], true);
    // Allocatable is what the host has minus the default reserve (100 millicpus).
    let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .unwrap_or(1) as u64;
    let allocatable = entries[0]["meta"]["allocatable"]["cpu_millis"]
        .as_u64()
        .unwrap();
    assert!(allocatable > 0 && allocatable <= cpus * 1000, "{list}");
}

#[test]
fn a_three_replica_workload_lands_on_three_nodes_and_rm_removes_it_everywhere() {
    let domain = TrustDomain::new("place.e2e");
    let a = mesh_agent("place-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("place-b", &domain.enroll("b"), &[&seed], &[]);
    let c = mesh_agent("place-c", &domain.enroll("c"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b, &c]);

    a.cli([
        "run",
        "trio",
        "--cpu",
        "100m",
        "--image",
        parley_e2e::TEST_IMAGE,
        "--replicas",
        "3",
        "--stop-timeout",
        "1",
        "--",
        "sleep",
        "3600",
    ])
    .ok();

    // Each node runs exactly one replica, in its own Podman service.
    let agents = [&a, &b, &c];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agents
        .iter()
        .all(|agent| replicas_on(agent, "trio").len() == 1)
    {
        assert!(
            Instant::now() < deadline,
            "the replicas did not all start within 60 s; logs:\n--- a\n{}\n--- b\n{}\n--- c\n{}",
            a.log(),
            b.log(),
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut names: Vec<String> = agents
        .iter()
        .map(|agent| replicas_on(agent, "trio")[0].clone())
        .collect();
    names.sort();
    assert_eq!(names, ["parley-trio-0", "parley-trio-1", "parley-trio-2"]);

    // The owner's `ps` shows the three placements on three distinct nodes.
    let ps = a.ps();
    let workload = ps["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "trio")
        .unwrap_or_else(|| panic!("trio not listed: {ps}"))
        .clone();
    let placed_on: std::collections::BTreeSet<&str> = workload["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        placed_on.into_iter().collect::<Vec<_>>(),
        [
            "spiffe://place.e2e/node/a",
            "spiffe://place.e2e/node/b",
            "spiffe://place.e2e/node/c"
        ],
        "{ps}"
    );
    let table = a.cli(["ps"]).ok().to_owned();
    assert!(
        table.contains("EPOCH") && (table.contains("placed") || table.contains("running")),
        "{table}"
    );

    // Each node's free capacity, as gossiped, reflects the replica it committed to.
    wait_until(
        "every member announces 100m less free CPU",
        Duration::from_secs(30),
        || {
            nodes(&a)["nodes"].as_array().unwrap().iter().all(|n| {
                let meta = &n["meta"];
                meta["allocatable"]["cpu_millis"].as_u64().unwrap()
                    - meta["free"]["cpu_millis"].as_u64().unwrap()
                    == 100
            })
        },
    );

    let explained = a.cli(["explain", "trio"]).ok().to_owned();
    assert_eq!(
        explained
            .matches(": placed on spiffe://place.e2e/node/")
            .count(),
        3,
        "{explained}"
    );
    let metrics = a.cli(["metrics"]).ok().to_owned();
    for line in [
        "parley_placements_total 3",
        "parley_awards_total 3",
        "parley_peers{state=\"alive\"} 2",
        "parley_workloads 1",
        "parley_assignments 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }

    // Every node shows the same placement: the owner's, as it reports it.
    let placement_seen_by = |agent: &Agent| -> Vec<(u64, String, u64)> {
        let ps = agent.ps();
        let workload = ps["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "trio")
            .unwrap_or_else(|| panic!("{} does not list trio: {ps}", agent.node()))
            .clone();
        workload["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["replica"].as_u64().unwrap(),
                    r["node"].as_str().unwrap().to_owned(),
                    r["epoch"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let owners_view = placement_seen_by(&a);
    assert_eq!(placement_seen_by(&b), owners_view);
    assert_eq!(placement_seen_by(&c), owners_view);

    // Removing it on a node that does not own it asks the owner, which stops the replicas
    // on every node.
    c.cli(["rm", "trio"]).ok();
    wait_until("every replica is gone", Duration::from_secs(30), || {
        agents
            .iter()
            .all(|agent| replicas_on(agent, "trio").is_empty())
    });

    // A workload too large for every node stays pending, and the owner says why, node by
    // node.
    a.cli([
        "run",
        "huge",
        "--detach",
        "--image",
        parley_e2e::TEST_IMAGE,
        "--memory",
        "1000T",
        "--",
        "sleep",
        "60",
    ])
    .ok();
    wait_until(
        "every node declined the huge workload",
        Duration::from_secs(30),
        || {
            let explanation = a.cli(["explain", "huge", "-o", "json"]).json();
            let answers = &explanation["placements"][0]["answers"];
            explanation["placements"][0]["node"].is_null()
                && answers.as_array().is_some_and(|a| {
                    a.len() == 3 && a.iter().all(|x| x["reason"] == "insufficient-memory")
                })
        },
    );
    let declines = b.cli(["metrics"]).ok().to_owned();
    assert!(
        declines
            .lines()
            .any(|l| l == "parley_declines_total{reason=\"insufficient-memory\"} 1"),
        "{declines}"
    );
    let table = a.cli(["explain", "huge"]).ok().to_owned();
    assert!(
        table.contains("NOT PLACED (insufficient-memory: 3)"),
        "{table}"
    );
    assert!(table.contains("MiB free"), "{table}");
    assert!(
        agents
            .iter()
            .all(|agent| replicas_on(agent, "huge").is_empty())
    );
}

#[test]
fn a_killed_nodes_replica_is_placed_again_and_a_restarted_node_adopts_its_own() {
    let domain = TrustDomain::new("heal.e2e");
    let a = mesh_agent("heal-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let mut b = mesh_agent("heal-b", &domain.enroll("b"), &[&seed], &[]);
    let mut c = mesh_agent("heal-c", &domain.enroll("c"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b, &c]);
    a.run_sleepers("pair", 2).ok();
    let running = |agent: &Agent| replicas_on(agent, "pair").len();
    wait_until("both replicas run", Duration::from_secs(60), || {
        running(&a) + running(&b) + running(&c) == 2
    });

    // A restarted holder adopts its container: same container, no duplicate.
    let holder = if running(&b) == 1 { &mut b } else { &mut c };
    let before = replicas_on(holder, "pair");
    let container_id = |agent: &Agent, name: &str| {
        let out = agent.podman(["inspect", "-f", "{{.Id}}", name]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let id_before = container_id(holder, &before[0]);
    holder.restart();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replicas_on(holder, "pair"), before, "{}", holder.log());
    assert_eq!(
        container_id(holder, &before[0]),
        id_before,
        "the container was replaced"
    );
    wait_until("still two replicas in all", Duration::from_secs(30), || {
        running(&a) + running(&b) + running(&c) == 2
    });

    // A holder killed with SIGKILL: once membership declares it dead, the owner places its
    // replica on the node without one.
    let (victim, survivor) = if running(&b) == 1 {
        (&mut b, &c)
    } else {
        (&mut c, &b)
    };
    let started = Instant::now();
    victim.kill();
    // The killed agent's container still runs in its own storage (a crashed agent stops
    // nothing); what matters is that a survivor now runs the replica.
    let survivors_running = || running(&a) + running(survivor);
    let deadline = Instant::now() + Duration::from_secs(90);
    while survivors_running() != 2 {
        assert!(
            Instant::now() < deadline,
            "the replica was not placed again within 90 s; owner's log:\n{}\nsurvivor's log:\n{}",
            a.log(),
            survivor.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("re-placed {:?} after the kill", started.elapsed());
    assert_eq!(running(&a), 1, "{}", a.log());
    assert_eq!(running(survivor), 1, "{}", a.log());

    // The owner restarts: it takes the workload up again from its store, adopts the two
    // running replicas from their reports, and can still remove them.
    let before = {
        let ps = a.ps();
        ps["workloads"][0]["replicas"].clone()
    };
    let mut a = a;
    // Like any node, it rejoins through a member it knows (its own port changes here,
    // as every test agent listens on port 0).
    let rejoin = address(survivor);
    assert!(a.stop().success(), "{}", a.log());
    if let Err((status, log)) = a.try_launch(&["--join", &rejoin]) {
        panic!("the owner did not restart ({status}): {log}");
    }
    // Normally the replicas report before the owner's gathering window closes and it
    // knows them at their epochs as before; on a slow machine it may place one again,
    // then revoke the older duplicate. Either way it converges to two replicas, each
    // placed once.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let now = a.ps()["workloads"][0]["replicas"].clone();
        let placed = now
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|x| x["node"] != "-"));
        if placed && running(&a) + running(survivor) == 2 {
            if now != before {
                eprintln!("the restarted owner placed a replica again: before {before}, now {now}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted owner did not converge to two placed replicas:\nbefore {before}\nnow    {now}\nlog:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    a.cli(["rm", "pair"]).ok();
    wait_until("both replicas are gone", Duration::from_secs(30), || {
        running(&a) + running(survivor) == 0
    });
}

/// A policy granting nodes a and b everything and node c membership and what
/// `c_actions` lists.
fn policy(domain: &str, c_actions: &[&str]) -> String {
    let quoted: Vec<String> = std::iter::once(&"member")
        .chain(c_actions)
        .map(|a| format!("{a:?}"))
        .collect();
    format!(
        "[[allow]]\n\
         ids = [\"spiffe://{domain}/node/a\", \"spiffe://{domain}/node/b\"]\n\
         actions = [\"member\", \"submit\", \"bid\", \"logs\", \"remove\", \"list\"]\n\
         \n\
         [[allow]]\n\
         ids = [\"spiffe://{domain}/node/c\"]\n\
         actions = [{}]\n",
        quoted.join(", ")
    )
}

#[test]
fn the_policy_decides_who_may_place_work_and_a_sighup_reloads_it() {
    let domain = TrustDomain::new("policy.e2e");
    let limited = policy("policy.e2e", &["bid", "list"]);
    let shared = domain.write_file("policy-ab.toml", &limited);
    let own = domain.write_file("policy-c.toml", &limited);
    let shared_flag = format!("--policy={}", shared.display());
    let a = mesh_agent("pol-a", &domain.enroll("a"), &[], &[&shared_flag]);
    let seed = address(&a);
    let b = mesh_agent("pol-b", &domain.enroll("b"), &[&seed], &[&shared_flag]);
    let own_flag = format!("--policy={}", own.display());
    let c = mesh_agent("pol-c", &domain.enroll("c"), &[&seed], &[&own_flag]);
    wait_for_full_mesh(&[&a, &b, &c]);
    assert!(
        c.log().contains("policy file"),
        "c does not log its policy:\n{}",
        c.log()
    );

    // c's own policy refuses it: a clear refusal, exit code 77, nothing stored.
    // Replica 1 cannot be placed (a and b refuse c): the run does not wait for it.
    let run_duo = || {
        c.cli([
            "run",
            "duo",
            "--detach",
            "--image",
            parley_e2e::TEST_IMAGE,
            "--replicas",
            "2",
            "--stop-timeout",
            "1",
            "--",
            "sleep",
            "3600",
        ])
    };
    run_duo().fails_with(
        77,
        "refused: spiffe://policy.e2e/node/c may not submit workloads in namespace \"default\"",
    );

    c.cli(["logs", "duo"])
        .fails_with(77, "c may not read logs in namespace \"default\"");

    // c's operator grants c `submit` and `logs` locally and reloads; a and b still refuse
    // c's calls.
    std::fs::write(
        &own,
        policy("policy.e2e", &["bid", "list", "submit", "logs"]),
    )
    .unwrap();
    c.hangup();
    wait_until(
        "c's reloaded policy lets it submit",
        Duration::from_secs(15),
        || run_duo().code() == 0,
    );
    assert!(
        c.log().contains("authorization policy reloaded"),
        "{}",
        c.log()
    );
    wait_until(
        "replica 0 runs on c and a and b decline replica 1 for policy",
        Duration::from_secs(30),
        || {
            let explanation = c.cli(["explain", "duo", "-o", "json"]).json();
            let first = &explanation["placements"][0];
            let second = &explanation["placements"][1];
            let policy_declines = second["answers"].as_array().map_or(0, |answers| {
                answers
                    .iter()
                    .filter(|x| x["reason"] == "policy-denied")
                    .count()
            });
            first["node"] == "spiffe://policy.e2e/node/c"
                && second["node"].is_null()
                && policy_declines == 2
        },
    );
    let table = c.cli(["explain", "duo"]).ok().to_owned();
    assert!(table.contains("policy forbids it"), "{table}");
    for refusing in [&a, &b] {
        let metrics = refusing.cli(["metrics"]).ok().to_owned();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("parley_policy_denials_total{action=\"submit\"} ")),
            "{metrics}"
        );
        assert!(replicas_on(refusing, "duo").is_empty());
    }
    // The explanation records the accepted award; the container starts right after.
    wait_until("replica 0 runs on c", Duration::from_secs(30), || {
        replicas_on(&c, "duo") == ["parley-duo-0"]
    });

    // a's operator grants c too and reloads: a takes replica 1 at the next retry; b,
    // not reloaded, still refuses.
    std::fs::write(&shared, policy("policy.e2e", &["bid", "list", "submit"])).unwrap();
    a.hangup();
    wait_until("replica 1 is placed on a", Duration::from_secs(60), || {
        replicas_on(&a, "duo") == ["parley-duo-1"]
    });
    assert!(replicas_on(&b, "duo").is_empty());

    // Logs: a's policy does not grant c `logs`, so a refuses to send c its replica's
    // output; c's grants a, so a reads c's.
    c.cli(["logs", "duo", "--replica", "1"]).fails_with(
        77,
        "spiffe://policy.e2e/node/a did not return the logs: spiffe://policy.e2e/node/c may \
         not read logs",
    );
    a.cli(["logs", "duo", "--replica", "0"]).ok();

    // A broken edit is reported and changes nothing.
    std::fs::write(&shared, "[[allow]]\nids = [").unwrap();
    a.hangup();
    wait_until(
        "a reports the broken policy",
        Duration::from_secs(10),
        || a.log().contains("authorization policy not reloaded"),
    );
    assert_eq!(c.cli(["ps", "-o", "json"]).code(), 0);
    // c may not remove, even its own workload; a may, through c.
    c.cli(["rm", "duo"]).fails_with(77, "may not remove");
    a.cli(["rm", "duo"]).ok();
    wait_until("duo is gone everywhere", Duration::from_secs(30), || {
        [&a, &b, &c]
            .iter()
            .all(|agent| replicas_on(agent, "duo").is_empty())
    });
}

#[test]
fn logs_come_from_whichever_node_runs_the_replica() {
    let domain = TrustDomain::new("logs.e2e");
    let a = mesh_agent("logs-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("logs-b", &domain.enroll("b"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b]);

    // Each replica counts on stdout and stderr, five lines a second.
    a.cli([
        "run",
        "talker",
        "--image",
        parley_e2e::TEST_IMAGE,
        "--replicas",
        "2",
        "--stop-timeout",
        "1",
        "--",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo tick $i; echo oops $i >&2; sleep 0.2; done",
    ])
    .ok();
    wait_until("both replicas run", Duration::from_secs(60), || {
        replicas_on(&a, "talker").len() == 1 && replicas_on(&b, "talker").len() == 1
    });
    // The replica on a, read from b: b asks the mesh where it runs, then asks a.
    let on_a: u32 = replicas_on(&a, "talker")[0]
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let replica = on_a.to_string();
    wait_until("a's replica has written", Duration::from_secs(20), || {
        b.cli(["logs", "talker", "--replica", &replica])
            .stdout
            .contains("tick 3")
    });
    let read = b.cli(["logs", "talker", "--replica", &replica]);
    assert!(read.ok().starts_with("tick 1\ntick 2\n"), "{}", read.stdout);
    assert!(
        read.stderr.starts_with("oops 1\noops 2\n"),
        "{}",
        read.stderr
    );
    let json = b
        .cli([
            "logs",
            "talker",
            "--replica",
            &replica,
            "--tail",
            "2",
            "-o",
            "json",
        ])
        .json();
    assert_eq!(json["node"], "spiffe://logs.e2e/node/a", "{json}");
    assert_eq!(json["replica"], on_a, "{json}");
    assert_eq!(json["lines"].as_array().map(Vec::len), Some(2), "{json}");

    // Following from b: every line once, in order, none lost between windows.
    let mut follow = b.cli_spawn(["logs", "talker", "--replica", &replica, "--tail", "1", "-f"]);
    let stdout = follow.stdout.take().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if seen_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks.len() < 20 && Instant::now() < deadline {
        if let Ok(line) = seen.recv_timeout(Duration::from_secs(1)) {
            let tick: u64 = line
                .strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            ticks.push(tick);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(ticks.len() >= 20, "only {ticks:?} within 30 s");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "lines repeated or lost while following: {ticks:?}"
    );

    b.cli(["logs", "nosuch"])
        .fails_with(1, "no workload named nosuch");
    b.cli(["logs", "talker", "--replica", "7"])
        .fails_with(1, "talker has no replica 7 placed");
    a.cli(["rm", "talker"]).ok();
}

#[test]
fn a_new_host_joins_the_mesh_with_a_one_time_token() {
    let domain = TrustDomain::new("join.e2e");
    let a = mesh_agent("join-a", &domain.enroll_issuer("a"), &[], &[]);
    let seed = address(&a);
    let mut b = Agent::unstarted_isolated("join-b", &["--listen", "127.0.0.1:0"]);
    let b_name = b.node().to_owned();
    let issued = a
        .cli([
            "identity", "token", "--node", &b_name, "--ttl", "10m", "-o", "json",
        ])
        .json();
    assert_eq!(issued["address"], seed.as_str(), "{issued}");
    assert_eq!(issued["trust_domain"], "join.e2e", "{issued}");
    assert_eq!(issued["node"], b_name.as_str(), "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    // No token enrolls a second holder of the issuer's own name.
    a.cli(["identity", "token", "--node", "a"])
        .fails_with(1, "spiffe://join.e2e/node/a is this issuer's own name");

    // A token whose root key is another's: the joining host cannot authenticate the
    // issuer, and says so; the token is not spent.
    let impostor = TrustDomain::new("join.e2e").root_public_key();
    let mut fields: Vec<&str> = token.split(':').collect();
    fields[2] = &impostor;
    let forged = fields.join(":");
    let trial_dir = domain.dir().join("trial");
    let trial = |token: &str| {
        let dir = trial_dir.display().to_string();
        a.cli([
            "join",
            &seed,
            "--token",
            token,
            "--listen",
            "127.0.0.1:0",
            "--no-start",
            "--node-name",
            "trial",
            "--data-dir",
            &dir,
        ])
    };
    trial(&forged).fails_with(1, "is not an issuer of trust domain join.e2e");
    let mut wrong_secret = token.clone();
    wrong_secret.replace_range(token.len() - 4.., "0000");
    trial(&wrong_secret).fails_with(1, "unknown, used or expired join token");
    // A token enrolls the name it was made for, not the name the joiner picks (before,
    // any token enrolled any name: an existing node's, the issuer's own).
    trial(&token).fails_with(
        1,
        &format!("this token enrolls node {b_name:?}, not spiffe://join.e2e/node/trial"),
    );

    // The new host enrolls and starts in one command; its key never left it.
    // From a file: a token on the command line is visible to every user of the host.
    let token_file = domain.write_file("b.token", &token);
    let token_file = token_file.display().to_string();
    b.start_as(&["join", &seed, "--token-file", &token_file]);
    assert!(
        b.log().contains("enrolled as spiffe://join.e2e/node/"),
        "{}",
        b.log()
    );
    wait_for_full_mesh(&[&a, &b]);
    let b_id = format!("spiffe://join.e2e/node/{}", b.node());
    assert!(
        member_states(&a).contains(&(b_id.clone(), "alive".to_owned())),
        "{:?}",
        member_states(&a)
    );
    let key = b.data_dir().join("identity/node.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", key.display());

    // One time only.
    trial(&token).fails_with(1, "unknown, used or expired join token");
    // A name is enrolled once: a second holder would split the mesh.
    a.cli(["identity", "token", "--node", &b_name]).fails_with(
        1,
        &format!("spiffe://join.e2e/node/{b_name} is enrolled already"),
    );
    // A node without the root key does not enroll anyone.
    let b_address = address(&b);
    let dir = trial_dir.display().to_string();
    a.cli([
        "join",
        &b_address,
        "--token",
        &token,
        "--listen",
        "127.0.0.1:0",
        "--no-start",
        "--data-dir",
        &dir,
    ])
    .fails_with(1, "does not enroll nodes");
    // Only an agent holding the root key makes tokens.
    b.cli(["identity", "token", "--node", "c"])
        .fails_with(1, "does not hold its trust domain's root key");
    // The same command again (a unit file's ExecStart) starts with the stored identity.
    b.restart();
    assert!(
        b.log()
            .contains("already enrolled; the join token is not used"),
        "{}",
        b.log()
    );
    wait_for_full_mesh(&[&a, &b]);

    // The joined node takes work like any other.
    a.run_sleepers("pair", 2).ok();
    wait_until(
        "a replica runs on each node",
        Duration::from_secs(60),
        || replicas_on(&a, "pair").len() == 1 && replicas_on(&b, "pair").len() == 1,
    );
    a.cli(["rm", "pair"]).ok();

    // The host is rebuilt: a token that replaces the name's holder enrolls a new key, and
    // the old key is revoked at once (it would otherwise stay a member until its
    // certificate lapses): the old b is cut off and declared dead.
    let replacing = a
        .cli([
            "identity",
            "token",
            "--node",
            &b_name,
            "--replace",
            "-o",
            "json",
        ])
        .json();
    let rebuilt_dir = domain.dir().join("rebuilt").display().to_string();
    a.cli([
        "join",
        &seed,
        "--token",
        replacing["token"].as_str().expect("a token"),
        "--listen",
        "127.0.0.1:0",
        "--no-start",
        "--node-name",
        &b_name,
        "--data-dir",
        &rebuilt_dir,
    ])
    .ok();
    wait_until(
        "a declares the replaced b dead",
        Duration::from_secs(40),
        || member_states(&a).contains(&(b_id.clone(), "dead".to_owned())),
    );
    assert!(
        a.log().contains("revoked the key a re-enrollment replaced"),
        "{}",
        a.log()
    );
}

/// `not_after` of the node identity in `dir`, as `parley identity show` reads it.
fn identity_expiry(agent: &Agent, dir: &std::path::Path) -> u64 {
    let shown = agent
        .cli([
            std::ffi::OsStr::new("identity"),
            std::ffi::OsStr::new("--dir"),
            dir.as_os_str(),
            std::ffi::OsStr::new("show"),
            std::ffi::OsStr::new("-o"),
            std::ffi::OsStr::new("json"),
        ])
        .json();
    shown["node"]["not_after"]
        .as_u64()
        .unwrap_or_else(|| panic!("no identity in {shown}"))
}

#[test]
fn identities_are_renewed_from_the_issuer_before_they_expire_and_after_they_lapse() {
    let domain = TrustDomain::new("renew.e2e");
    let a = mesh_agent("renew-a", &domain.enroll_issuer("a"), &[], &[]);
    let seed = address(&a);

    // b's certificate lives 20 s: it renews at half-life, again and again.
    let b_dir = domain.enroll_for("b", "20s");
    let first_expiry = identity_expiry(&a, &b_dir);
    let b = mesh_agent("renew-b", &b_dir, &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b]);
    wait_until(
        "b renews its identity twice",
        Duration::from_secs(40),
        || b.log().matches("identity renewed").count() >= 2,
    );
    assert!(identity_expiry(&a, &b_dir) > first_expiry + 10);
    // Still a member: its peers verify its new key.
    wait_for_full_mesh(&[&a, &b]);
    assert!(
        a.log().contains("renew.e2e/node/b (renewal)"),
        "the issuer did not log the renewal:\n{}",
        a.log()
    );
    // Its membership statement, which members relay to nodes it has not met, is signed
    // again with the new key before the old certificate expires.
    assert!(
        b.log()
            .contains("membership statement signed again, with the renewed key"),
        "{}",
        b.log()
    );

    // c's certificate lapsed before its agent started: it renews through its join
    // address, says so, and joins.
    let c_dir = domain.enroll_for("c", "2s");
    std::thread::sleep(Duration::from_secs(3));
    let c = mesh_agent("renew-c", &c_dir, &[&seed], &[]);
    assert!(c.log().contains("lapsed identity renewed"), "{}", c.log());
    wait_for_full_mesh(&[&a, &b, &c]);
}

#[test]
fn a_dead_owners_workload_is_taken_over_by_its_successor_and_given_back() {
    let domain = TrustDomain::new("heir.e2e");
    let mut a = mesh_agent("heir-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("heir-b", &domain.enroll("b"), &[&seed], &[]);
    let c = mesh_agent("heir-c", &domain.enroll("c"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b, &c]);
    let a_id = "spiffe://heir.e2e/node/a".to_owned();

    a.run_sleepers("heir", 2).ok();
    let running =
        |agents: &[&Agent]| -> usize { agents.iter().map(|x| replicas_on(x, "heir").len()).sum() };
    wait_until("both replicas run", Duration::from_secs(60), || {
        running(&[&a, &b, &c]) == 2
    });
    assert_eq!(owner_seen_by(&b, "heir"), Some(a_id.clone()));

    // The owner crashes. Its successor, one of b and c, takes the workload over and
    // places again what ran on a; both survivors agree who that is.
    a.kill();
    let mut heir = String::new();
    wait_until(
        "a successor owns heir and both replicas run on b and c",
        Duration::from_secs(90),
        || {
            let (Some(on_b), Some(on_c)) = (owner_seen_by(&b, "heir"), owner_seen_by(&c, "heir"))
            else {
                return false;
            };
            heir = on_b.clone();
            on_b == on_c && on_b != a_id && running(&[&b, &c]) == 2
        },
    );
    let (successor, other) = if heir.ends_with("/b") {
        (&b, &c)
    } else {
        (&c, &b)
    };
    assert!(
        successor
            .log()
            .contains("this node is the successor: taking the workload over"),
        "{}",
        successor.log()
    );
    let explained = successor.cli(["explain", "heir", "-o", "json"]).json();
    assert_eq!(
        explained["placements"]
            .as_array()
            .map(|p| p.iter().filter(|r| !r["node"].is_null()).count()),
        Some(2),
        "{explained}\n{}",
        successor.log()
    );
    if !replicas_on(other, "heir").is_empty() {
        assert!(
            other
                .log()
                .contains("handing the workload to its successor"),
            "{}",
            other.log()
        );
    }

    // a comes back: it owns its workload again, the successor lets go, and exactly two
    // replicas run (a's stale one, left running by the crash, gave way to the newer).
    // a was the first member: it rejoins through b.
    let rejoin = address(&b);
    if let Err((status, log)) = a.try_launch(&["--join", &rejoin]) {
        panic!("a did not restart ({status}):\n{log}");
    }
    wait_until(
        "a owns heir again, two replicas run",
        Duration::from_secs(90),
        || {
            owner_seen_by(&b, "heir").as_deref() == Some(a_id.as_str())
                && owner_seen_by(&c, "heir").as_deref() == Some(a_id.as_str())
                && running(&[&a, &b, &c]) == 2
        },
    );
    assert!(
        successor
            .log()
            .contains("its submitter is back: giving the workload back"),
        "{}",
        successor.log()
    );
    a.cli(["rm", "heir"]).ok();
    wait_until("heir is gone everywhere", Duration::from_secs(30), || {
        running(&[&a, &b, &c]) == 0
    });
}

#[test]
fn each_replica_gets_a_workload_identity_mounted_read_only_and_renewed() {
    let domain = TrustDomain::new("wid.e2e");
    let fast = ["--workload-identity-ttl", "20", "--reconcile-interval", "1"];
    let a = mesh_agent("wid-a", &domain.enroll("a"), &[], &fast);
    let seed = address(&a);
    let b = mesh_agent("wid-b", &domain.enroll("b"), &[&seed], &fast);
    wait_for_full_mesh(&[&a, &b]);
    a.run_sleepers("idw", 2).ok();
    wait_until(
        "a replica runs on each node",
        Duration::from_secs(60),
        || replicas_on(&a, "idw").len() == 1 && replicas_on(&b, "idw").len() == 1,
    );

    for (agent, node) in [(&a, "a"), (&b, "b")] {
        let container = replicas_on(agent, "idw").remove(0);
        let svid = svid_in(agent, &container);
        assert_eq!(
            svid["spiffe_id"], "spiffe://wid.e2e/ns/default/wl/idw",
            "{svid}"
        );
        assert_eq!(svid["trust_domain"], "wid.e2e", "{svid}");
        assert_eq!(svid["chain"].as_array().map(Vec::len), Some(2), "{svid}");
        assert_eq!(
            svid["not_after"].as_u64().unwrap() - svid["not_before"].as_u64().unwrap(),
            20,
            "{svid}"
        );
        // The chain starts with the node's own certificate, which names it.
        let node_id_hex: String = format!("spiffe://wid.e2e/node/{node}")
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            svid["chain"][0].as_str().unwrap().contains(&node_id_hex),
            "{svid}"
        );
        let write = agent.podman(["exec", &container, "touch", "/run/parley/identity/x"]);
        assert!(!write.status.success(), "the identity mount is writable");
        assert!(
            String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
            "{}",
            String::from_utf8_lossy(&write.stderr)
        );

        // Renewed at half-life, in place: the container sees the new one.
        let first = svid["not_after"].as_u64().unwrap();
        wait_until(
            "the workload identity is renewed",
            Duration::from_secs(30),
            || svid_in(agent, &container)["not_after"].as_u64().unwrap() > first,
        );
    }

    a.cli(["rm", "idw"]).ok();
    wait_until(
        "the identities are deleted with the replicas",
        Duration::from_secs(30),
        || {
            [&a, &b].iter().all(|agent| {
                std::fs::read_dir(agent.data_dir().join("workload-identities"))
                    .map(|mut entries| entries.next().is_none())
                    .unwrap_or(true)
            })
        },
    );
}

#[test]
fn a_node_short_of_disk_declines_new_replicas_and_says_why() {
    let domain = TrustDomain::new("disk.e2e");
    let a = mesh_agent("disk-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    // b keeps back more than any disk holds: it is "full".
    let b = mesh_agent(
        "disk-b",
        &domain.enroll("b"),
        &[&seed],
        &["--reserve-disk-mib", "100000000"],
    );
    wait_for_full_mesh(&[&a, &b]);
    let disk_of = |id: &str| -> Option<u64> {
        nodes(&a)["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == id)?["meta"]["disk_free_bytes"]
            .as_u64()
    };
    assert!(disk_of("spiffe://disk.e2e/node/a").is_some_and(|free| free > 0));
    wait_until("b announces no free disk", Duration::from_secs(30), || {
        disk_of("spiffe://disk.e2e/node/b") == Some(0)
    });

    // One replica cannot be placed: the run does not wait for it.
    a.cli([
        "run",
        "roomy",
        "--detach",
        "--image",
        parley_e2e::TEST_IMAGE,
        "--replicas",
        "2",
        "--",
        "sleep",
        "3600",
    ])
    .ok();
    wait_until(
        "replica 1 is declined by b for its disk",
        Duration::from_secs(30),
        || {
            let explanation = a.cli(["explain", "roomy", "-o", "json"]).json();
            explanation["placements"]
                .as_array()
                .is_some_and(|replicas| {
                    replicas.iter().any(|r| {
                        r["answers"].as_array().is_some_and(|answers| {
                            answers.iter().any(|x| {
                                x["node"] == "spiffe://disk.e2e/node/b"
                                    && x["reason"] == "disk-full"
                            })
                        })
                    })
                })
        },
    );
    let table = a.cli(["explain", "roomy"]).ok().to_owned();
    assert!(table.contains("below the 100000000 MiB reserve"), "{table}");
    assert!(replicas_on(&b, "roomy").is_empty());
    a.cli(["rm", "roomy"]).ok();
}

/// Issue #16: an agent away longer than the suspicion timeout (a reboot, an agent
/// upgrade) is declared dead, and its replica is put up for a replacement; when nobody
/// else could take it, the node's report on its return wins over that auction, and its
/// container is left as it is (it used to be re-awarded at a new epoch and replaced).
#[test]
fn a_node_away_for_30_s_keeps_its_running_replica_when_nothing_replaced_it() {
    let domain = TrustDomain::new("away.e2e");
    // a places work but may not host it: b's replica has nowhere else to go.
    let policy = domain.write_file(
        "policy.toml",
        "[[allow]]\n\
         ids = [\"spiffe://away.e2e/node/a\"]\n\
         actions = [\"member\", \"submit\", \"list\", \"logs\", \"remove\"]\n\
         \n\
         [[allow]]\n\
         ids = [\"spiffe://away.e2e/node/b\"]\n\
         actions = [\"member\", \"submit\", \"bid\", \"list\", \"logs\", \"remove\"]\n",
    );
    let policy_flag = format!("--policy={}", policy.display());
    let a = mesh_agent("away-a", &domain.enroll("a"), &[], &[&policy_flag]);
    let seed = address(&a);
    let mut b = mesh_agent("away-b", &domain.enroll("b"), &[&seed], &[&policy_flag]);
    wait_for_full_mesh(&[&a, &b]);
    a.run_sleeper("stay").ok();
    wait_until("the replica runs on b", Duration::from_secs(60), || {
        replicas_on(&b, "stay").len() == 1
    });
    let name = replicas_on(&b, "stay").remove(0);
    let container_id = |agent: &Agent| {
        let out = agent.podman(["inspect", "-f", "{{.Id}}", &name]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let before = container_id(&b);
    let b_id = "spiffe://away.e2e/node/b".to_owned();

    let away = Instant::now();
    b.stop();
    wait_until("a declares b dead", Duration::from_secs(30), || {
        member_states(&a).contains(&(b_id.clone(), "dead".to_owned()))
    });
    std::thread::sleep(Duration::from_secs(30).saturating_sub(away.elapsed()));
    b.try_launch(&[]).expect("b starts again");
    wait_until("a sees b alive again", Duration::from_secs(30), || {
        member_states(&a).contains(&(b_id.clone(), "alive".to_owned()))
    });
    wait_until(
        "a records the replica on b again",
        Duration::from_secs(30),
        || {
            a.ps()["workloads"]
                .as_array()
                .and_then(|w| w.iter().find(|w| w["name"] == "stay"))
                .is_some_and(|w| w["replicas"][0]["node"] == b_id.as_str())
        },
    );
    // Some report rounds later, it is still the same container.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        replicas_on(&b, "stay"),
        std::slice::from_ref(&name),
        "{}",
        b.log()
    );
    assert_eq!(
        container_id(&b),
        before,
        "the container was replaced:\n{}",
        b.log()
    );
}
