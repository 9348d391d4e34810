//! End-to-end tests of desired state that no single node holds (issue #16): workload
//! records replicated to every agent, tombstones, and successors that place what a dead
//! owner never did. Real agents on loopback, real QUIC, rootless Podman, sled.

use std::time::Duration;

use parley_e2e::mesh::{
    address, member_states, mesh_agent, replicas_on, wait_for_full_mesh, wait_until,
};
use parley_e2e::{Agent, TEST_IMAGE, TrustDomain};

/// Replicas of `workload` running on any of `agents`.
fn running_anywhere(agents: &[&Agent], workload: &str) -> usize {
    agents.iter().map(|a| replicas_on(a, workload).len()).sum()
}

fn lists(agent: &Agent, workload: &str) -> bool {
    agent.workload_names().iter().any(|n| n == workload)
}

/// `rm` on a node while the workload's owner is down: the tombstone stops the replicas
/// it can reach at once, reaches the owner when it returns, and the workload stays
/// removed on every node (it used to come back with its owner).
#[test]
fn a_workload_removed_while_its_owner_is_down_stays_removed_when_the_owner_returns() {
    let domain = TrustDomain::new("records.e2e");
    let a = mesh_agent("rec-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let mut b = mesh_agent("rec-b", &domain.enroll("b"), &[&seed], &[]);
    let c = mesh_agent("rec-c", &domain.enroll("c"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b, &c]);

    b.run_sleepers("gone", 2).ok();
    wait_until("both replicas run", Duration::from_secs(60), || {
        running_anywhere(&[&a, &b, &c], "gone") == 2
    });
    wait_until("c holds the record", Duration::from_secs(10), || {
        lists(&c, "gone")
    });

    b.stop();
    let b_id = "spiffe://records.e2e/node/b".to_owned();
    wait_until("c declares b dead", Duration::from_secs(30), || {
        member_states(&c).contains(&(b_id.clone(), "dead".to_owned()))
    });
    c.cli(["rm", "gone"]).ok();
    wait_until(
        "the replicas a and c run are stopped",
        Duration::from_secs(30),
        || running_anywhere(&[&a, &c], "gone") == 0,
    );

    b.try_launch(&[]).expect("b starts again");
    wait_until("b stops what it ran", Duration::from_secs(30), || {
        replicas_on(&b, "gone").is_empty()
    });
    // Several report and anti-entropy rounds later, nothing came back anywhere.
    std::thread::sleep(Duration::from_secs(8));
    for agent in [&a, &b, &c] {
        assert!(
            !lists(agent, "gone"),
            "{} still lists the removed workload: {}\n{}",
            agent.node(),
            agent.ps(),
            b.log()
        );
        assert!(
            replicas_on(agent, "gone").is_empty(),
            "a replica of the removed workload runs on {}",
            agent.node()
        );
    }
    assert!(
        b.log().contains("workload record: removed"),
        "b should say it learned of the removal:\n{}",
        b.log()
    );
}

/// An owner killed before any replica of its workload could be placed (nothing fits
/// yet): the record it wrote lives on in the others, a successor takes the workload up,
/// and places it once a node that fits arrives.
#[test]
fn a_workload_whose_owner_died_before_placing_it_is_placed_by_another_node() {
    let domain = TrustDomain::new("orphan.e2e");
    let a = mesh_agent("orph-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let mut b = mesh_agent("orph-b", &domain.enroll("b"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b]);

    // No node carries the label yet: the replica cannot be placed.
    b.cli([
        "run",
        "late",
        "--image",
        TEST_IMAGE,
        "--constraint",
        "zone=late",
        "--detach",
        "--stop-timeout",
        "1",
        "--",
        "sleep",
        "3600",
    ])
    .ok();
    wait_until("a holds the record", Duration::from_secs(10), || {
        lists(&a, "late")
    });
    b.kill();
    let b_id = "spiffe://orphan.e2e/node/b".to_owned();
    wait_until("a declares b dead", Duration::from_secs(30), || {
        member_states(&a).contains(&(b_id.clone(), "dead".to_owned()))
    });

    let c = mesh_agent(
        "orph-c",
        &domain.enroll("c"),
        &[&seed],
        &["--label", "zone=late"],
    );
    wait_until("the replica runs on c", Duration::from_secs(90), || {
        replicas_on(&c, "late").len() == 1
    });
    let ps = a.ps();
    let late = ps["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["name"] == "late"))
        .unwrap_or_else(|| panic!("a does not list late: {ps}"));
    assert_eq!(
        late["replicas"][0]["node"], "spiffe://orphan.e2e/node/c",
        "{late}"
    );
    assert_ne!(
        late["owner"],
        b_id.as_str(),
        "the dead node cannot be the owner: {late}"
    );
}

/// `parley ps` on a node that runs none of a workload's replicas shows each one as its
/// node reported it — `running`, on that node — and an exit as it happens there.
#[test]
fn ps_on_a_node_that_runs_nothing_shows_every_replica_running_with_its_node() {
    let domain = TrustDomain::new("actual.e2e");
    // a may do everything but host: it runs nothing.
    let policy = domain.write_file(
        "policy.toml",
        "[[allow]]\n\
         ids = [\"spiffe://actual.e2e/node/a\"]\n\
         actions = [\"member\", \"submit\", \"list\", \"logs\", \"remove\"]\n\
         \n\
         [[allow]]\n\
         ids = [\"spiffe://actual.e2e/node/b\", \"spiffe://actual.e2e/node/c\"]\n\
         actions = [\"member\", \"submit\", \"bid\", \"list\", \"logs\", \"remove\"]\n",
    );
    let policy_flag = format!("--policy={}", policy.display());
    let a = mesh_agent("act-a", &domain.enroll("a"), &[], &[&policy_flag]);
    let seed = address(&a);
    let b = mesh_agent("act-b", &domain.enroll("b"), &[&seed], &[&policy_flag]);
    let c = mesh_agent("act-c", &domain.enroll("c"), &[&seed], &[&policy_flag]);
    wait_for_full_mesh(&[&a, &b, &c]);

    b.run_sleepers("seen", 2).ok();
    wait_until("both replicas run", Duration::from_secs(60), || {
        replicas_on(&b, "seen").len() + replicas_on(&c, "seen").len() == 2
    });
    let replicas_seen_by_a = || {
        let ps = a.ps();
        ps["workloads"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["name"] == "seen"))
            .map(|w| w["replicas"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    wait_until(
        "a shows both replicas running on b and c",
        Duration::from_secs(10),
        || {
            let replicas = replicas_seen_by_a();
            let mut nodes: Vec<&str> = replicas
                .iter()
                .filter(|r| r["phase"] == "running")
                .filter_map(|r| r["node"].as_str())
                .collect();
            nodes.sort_unstable();
            nodes == ["spiffe://actual.e2e/node/b", "spiffe://actual.e2e/node/c"]
        },
    );
    assert!(replicas_on(&a, "seen").is_empty(), "a may not host");
    let table = a.cli(["ps"]).ok().to_owned();
    assert_eq!(table.matches("running").count(), 2, "{table}");
    assert!(
        table.contains("RESTARTS") && table.contains("AGE"),
        "{table}"
    );

    // The container on c is stopped behind the agent's back: the reconciler starts it
    // again, and a sees the restart counted.
    let on_c = replicas_on(&c, "seen").remove(0);
    assert!(c.podman(["stop", "-t", "0", &on_c]).status.success());
    wait_until(
        "a sees c's replica restarted once",
        Duration::from_secs(40),
        || {
            replicas_seen_by_a().iter().any(|r| {
                r["node"] == "spiffe://actual.e2e/node/c"
                    && r["phase"] == "running"
                    && r["restarts"] == 1
            })
        },
    );
}

/// `parley scale` on a node that does not own the workload: the new generation reaches
/// the owner, which places or stops replicas; the command waits until they run (or are
/// gone), and at no sample in between do fewer replicas run than asked.
#[test]
fn scale_up_and_down_from_any_node_waits_for_the_replicas_and_never_drops_below() {
    let domain = TrustDomain::new("scale.e2e");
    let a = mesh_agent("scale-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("scale-b", &domain.enroll("b"), &[&seed], &[]);
    let c = mesh_agent("scale-c", &domain.enroll("c"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b, &c]);
    let agents = [&a, &b, &c];

    // `run` waits until its replica runs, and says so.
    let run = a.run_sleeper("elastic");
    run.ok();
    assert!(run.stderr.contains("elastic: 1/1 running"), "{run:?}");
    assert_eq!(running_anywhere(&agents, "elastic"), 1);
    wait_until("c holds the record", Duration::from_secs(10), || {
        lists(&c, "elastic")
    });

    let sampling = std::sync::atomic::AtomicBool::new(true);
    let fewest = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut fewest = usize::MAX;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                fewest = fewest.min(running_anywhere(&agents, "elastic"));
                std::thread::sleep(Duration::from_millis(200));
            }
            fewest
        });
        let up = c.cli(["scale", "elastic", "3", "--timeout", "90s"]);
        up.ok();
        assert!(up.stderr.contains("elastic: 3/3 running"), "{up:?}");
        assert_eq!(running_anywhere(&agents, "elastic"), 3);
        let down = b.cli(["scale", "elastic", "1"]);
        down.ok();
        assert!(down.stderr.contains("elastic: 1/1 running"), "{down:?}");
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("the sampler")
    });
    assert!(fewest >= 1, "at some sample no replica ran");
    wait_until(
        "the extra replicas are stopped",
        Duration::from_secs(30),
        || running_anywhere(&agents, "elastic") == 1,
    );
    // Every node sees the new count.
    for agent in agents {
        wait_until(
            &format!("{} lists one replica", agent.node()),
            Duration::from_secs(10),
            || {
                let ps = agent.ps();
                ps["workloads"]
                    .as_array()
                    .and_then(|w| w.iter().find(|w| w["name"] == "elastic"))
                    .is_some_and(|w| w["replicas"].as_array().is_some_and(|r| r.len() == 1))
            },
        );
    }
    // A count out of range is refused, and a name nobody holds is not found.
    c.cli(["scale", "elastic", "0"])
        .fails_with(1, "invalid replica count 0");
    c.cli(["scale", "nothing", "2"]).fails_with(1, "nothing");
}

/// Images of `workload`'s running containers on `agents`.
fn running_images(agents: &[&Agent], workload: &str) -> Vec<String> {
    let mut images: Vec<String> = agents
        .iter()
        .flat_map(|agent| {
            let out = agent.podman([
                "ps",
                "--filter",
                &format!("label=io.parley.node={}", agent.node()),
                "--filter",
                &format!("label=io.parley.workload={workload}"),
                "--filter",
                "status=running",
                "--format",
                "{{.Image}}",
            ]);
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    images.sort();
    images
}

/// `parley update --image` between two local images, from a node that does not own the
/// workload: each replacement starts beside the replica it replaces, so that at no
/// sample (every 200 ms) fewer replicas run than asked; an image that cannot run stops
/// the update and rolls it back, and `run` says so.
#[test]
fn update_rolls_out_without_dropping_a_replica_and_a_failing_image_rolls_back() {
    let domain = TrustDomain::new("update.e2e");
    let a = mesh_agent("upd-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("upd-b", &domain.enroll("b"), &[&seed], &[]);
    let c = mesh_agent("upd-c", &domain.enroll("c"), &[&seed], &[]);
    wait_for_full_mesh(&[&a, &b, &c]);
    let agents = [&a, &b, &c];
    // The second image: the test image under another name, in every node's storage.
    const V2: &str = "localhost/parley-test:v2";
    for agent in agents {
        let tagged = agent.podman(["tag", TEST_IMAGE, V2]);
        assert!(tagged.status.success(), "podman tag: {tagged:?}");
    }

    a.run_sleepers("roll", 2).ok();
    assert_eq!(running_anywhere(&agents, "roll"), 2);
    wait_until("c holds the record", Duration::from_secs(10), || {
        lists(&c, "roll")
    });

    let sampling = std::sync::atomic::AtomicBool::new(true);
    let fewest = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut fewest = usize::MAX;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                fewest = fewest.min(running_anywhere(&agents, "roll"));
                std::thread::sleep(Duration::from_millis(200));
            }
            fewest
        });
        let update = c.cli([
            "update",
            "roll",
            "--image",
            V2,
            "--max-unavailable",
            "0",
            "--timeout",
            "120s",
        ]);
        update.ok();
        assert!(update.stderr.contains("roll: 2/2 running"), "{update:?}");
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        sampler.join().expect("the sampler")
    });
    assert!(fewest >= 2, "at some sample only {fewest} replica(s) ran");
    wait_until("the old replicas are gone", Duration::from_secs(30), || {
        running_images(&agents, "roll") == [V2, V2]
    });
    let status = b.cli(["rollout", "status", "roll"]);
    assert!(status.ok().contains("2/2 replicas updated"), "{status:?}");

    // By hand: undo goes back to the image the update replaced, rolled out the same way.
    c.cli(["rollout", "undo", "roll", "--timeout", "120s"]).ok();
    wait_until(
        "the first image runs again",
        Duration::from_secs(30),
        || running_images(&agents, "roll") == [TEST_IMAGE, TEST_IMAGE],
    );

    // An image that exists nowhere: its replacement fails, the update is rolled back.
    let failing = b.cli([
        "update",
        "roll",
        "--image",
        "localhost/parley-no-such-image:1",
        "--timeout",
        "120s",
    ]);
    failing.fails_with(1, "the update was rolled back");
    wait_until(
        "every node holds the rollback",
        Duration::from_secs(10),
        || {
            agents.iter().all(|agent| {
                agent
                    .cli(["rollout", "status", "roll", "-o", "json"])
                    .json()["rolled_back"]
                    .is_string()
            })
        },
    );
    let status = a.cli(["rollout", "status", "roll"]);
    assert!(
        status
            .ok()
            .contains("rolled back from localhost/parley-no-such-image:1"),
        "{status:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(running_images(&agents, "roll"), [TEST_IMAGE, TEST_IMAGE]);
}
