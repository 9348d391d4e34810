//! End-to-end tests of strong workloads (issue #17): a replica runs only under a lease
//! from a quorum of agents, with its epoch as a fencing token, and never on two nodes at
//! once, even when its holder stops (SIGSTOP) without a chance to stop it. Real agents on
//! loopback, real QUIC, rootless Podman (each agent with its own container storage), sled.

use std::time::{Duration, Instant};

use parley_e2e::mesh::{address, mesh_agent, wait_for_full_mesh};
use parley_e2e::{Agent, TEST_IMAGE, TrustDomain};

/// The running containers of `workload` on any of `agents`: (node label, epoch label).
/// Each agent has its own container storage; they are read at once, one thread each, so
/// that a sample shows one moment.
fn running(agents: &[&Agent], workload: &str) -> Vec<(String, String)> {
    let read = |agent: &Agent| {
        let out = agent.podman([
            "ps",
            "--filter",
            &format!("label=io.parley.workload={workload}"),
            "--filter",
            "status=running",
            "--format",
            "{{index .Labels \"io.parley.node\"}} {{index .Labels \"io.parley.epoch\"}}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (node, epoch) = l.split_once(' ')?;
                Some((node.to_owned(), epoch.to_owned()))
            })
            .collect::<Vec<_>>()
    };
    std::thread::scope(|scope| {
        let reads: Vec<_> = agents
            .iter()
            .map(|agent| scope.spawn(move || read(agent)))
            .collect();
        reads
            .into_iter()
            .flat_map(|r| r.join().expect("a podman read"))
            .collect()
    })
}

/// Every agent's log, for a failure's message.
fn logs(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|x| format!("== {}\n{}", x.node(), x.log()))
        .collect::<Vec<_>>()
        .join("\n")
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

/// The holder of a strong replica stops dead (SIGSTOP): its watchdog stops the container
/// when the lease runs out, another node runs the replica at a higher epoch only after
/// that, and sampling every 100 ms never sees two running. When the holder goes on, its
/// container is gone and stays gone.
#[test]
fn a_strong_replica_never_runs_twice_when_its_holder_is_paused() {
    let domain = TrustDomain::new("strong.e2e");
    let a = mesh_agent("strong-a", &domain.enroll("a"), &[], &[]);
    let seed = address(&a);
    let b = mesh_agent("strong-b", &domain.enroll("b"), &[&seed], &[]);
    let c = mesh_agent("strong-c", &domain.enroll("c"), &[&seed], &[]);
    let agents = [&a, &b, &c];
    wait_for_full_mesh(&agents);

    a.cli([
        "run",
        "db",
        "--image",
        TEST_IMAGE,
        "--consistency",
        "strong",
        "--stop-timeout",
        "1",
        "--",
        "sleep",
        "3600",
    ])
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
    let holder = agents
        .iter()
        .find(|x| x.node() == holder_node)
        .expect("the holder is one of the agents");
    assert_eq!(
        epoch_env(holder, "parley-db-0").as_deref(),
        Some(first_epoch.as_str()),
        "the container's PARLEY_EPOCH is its lease's epoch"
    );

    holder.pause();
    let paused_at = Instant::now();
    let mut failover = None;
    while paused_at.elapsed() < Duration::from_secs(90) {
        let now_running = running(&agents, "db");
        if std::env::var_os("PARLEY_E2E_TRACE").is_some() {
            eprintln!("{:?}: {now_running:?}", paused_at.elapsed());
        }
        assert!(
            now_running.len() <= 1,
            "two containers of one strong replica run at once: {now_running:?}"
        );
        if let Some((node, epoch)) = now_running.first()
            && *node != holder_node
        {
            assert!(
                epoch.parse::<u64>().unwrap() > first_epoch.parse::<u64>().unwrap(),
                "the new holder runs at epoch {epoch}, not above {first_epoch}"
            );
            failover = Some(paused_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let failover = failover.unwrap_or_else(|| {
        holder.resume();
        panic!(
            "no other node ran the replica within 90 s of its holder's pause:\n{}",
            logs(&agents)
        )
    });
    eprintln!("failover after a pause: {} ms", failover.as_millis());

    holder.resume();
    // The resumed holder fences what it believed it held: its container (of the first
    // epoch) never comes back, and never two run. Ownership may move back to it and
    // with it the replica, at a new epoch, once the other lease has run out.
    let resumed = Instant::now();
    let mut runs_again = false;
    while resumed.elapsed() < Duration::from_secs(40) {
        let now_running = running(&agents, "db");
        assert!(
            now_running.len() <= 1,
            "two containers of one strong replica run at once after the holder went on: {now_running:?}"
        );
        assert!(
            now_running.iter().all(|(_, epoch)| *epoch != first_epoch),
            "the paused holder's container of epoch {first_epoch} came back: {now_running:?}"
        );
        runs_again = now_running.len() == 1;
        if runs_again && resumed.elapsed() > Duration::from_secs(15) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        runs_again,
        "the replica does not run anywhere 40 s after its old holder went on:\n{}",
        logs(&agents)
    );
    assert!(
        holder.log().contains("fenced") || holder.log().contains("lease"),
        "the holder's log should say what happened to its lease:\n{}",
        holder.log()
    );
}
