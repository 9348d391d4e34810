//! End-to-end tests of eventual workloads across a partition (issue #17's test bed): a
//! node cut off from the others may run a replica that the rest placed again (an
//! eventual workload allows that duplicate while the partition lasts), but once the link
//! heals the mesh converges: each replica runs exactly once, and the stale copy is gone
//! for good (no zombie). Real agents, each in a network namespace of its own on one
//! bridge (so root, as CI runs them), real QUIC, rootless Podman, sled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parley_e2e::mesh::{
    RunningContainer as Running, bed_agent, logs, owner_seen_by, running_containers,
    wait_for_full_mesh, wait_until,
};
use parley_e2e::netbed::{Cut, NetBed};
use parley_e2e::{Agent, TrustDomain};

/// How many containers run each replica.
fn copies(now: &[Running]) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for r in now {
        *copies.entry(r.replica.clone()).or_default() += 1;
    }
    copies
}

/// Whether `now` runs replicas 0..replicas exactly once each.
fn each_once(now: &[Running], replicas: usize) -> bool {
    let copies = copies(now);
    copies.len() == replicas && (0..replicas).all(|r| copies.get(&r.to_string()) == Some(&1))
}

/// Which node a partition test cuts off.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// A node that runs a replica but does not own the workload.
    Holder,
    /// The node the workload was submitted to, which owns it.
    Owner,
}

/// Three agents run a two-replica eventual workload; `victim` is cut off both ways until
/// the other two run both replicas, then healed. Afterwards every replica runs exactly
/// once, the cut-off node's stale containers are gone, all three agree who owns the
/// workload, and it stays so.
fn converges_after_a_partition(victim: Victim) {
    let bed = NetBed::new(3);
    let domain = TrustDomain::new("partition.e2e");
    let a = bed_agent(&bed, 0, "part-a", &domain.enroll("a"), &[], &[]);
    let b = bed_agent(&bed, 1, "part-b", &domain.enroll("b"), &[0], &[]);
    let c = bed_agent(&bed, 2, "part-c", &domain.enroll("c"), &[0], &[]);
    let agents = [&a, &b, &c];
    wait_for_full_mesh(&agents);
    let owner_id = "spiffe://partition.e2e/node/a";

    a.run_sleepers("web", 2).ok();
    wait_until("both replicas run", Duration::from_secs(60), || {
        each_once(&running_containers(&agents, "web"), 2)
    });
    let before = running_containers(&agents, "web");
    let cut_host = match victim {
        Victim::Owner => 0,
        Victim::Holder => {
            // Two replicas spread over three nodes: b or c runs one.
            let holder = before
                .iter()
                .find(|r| r.node != a.node())
                .unwrap_or_else(|| panic!("both replicas run on the owner: {before:?}"));
            agents
                .iter()
                .position(|x| x.node() == holder.node)
                .expect("the holder is one of the agents")
        }
    };
    let cut_off = agents[cut_host];
    let majority: Vec<&Agent> = agents
        .iter()
        .copied()
        .filter(|x| x.node() != cut_off.node())
        .collect();
    // A cut-off holder's copy is replaced by the owner, at a higher epoch, and must go.
    // A cut-off owner's copies are its own placements, which it still holds when it is
    // back: what the successor placed meanwhile gives way to them (a replica the
    // successor granted to itself is refused by the owner), so no copy is known to be
    // stale before the heal; that each replica runs once, and stays so, says no copy
    // outlived its loss.
    let stale: Vec<Running> = match victim {
        Victim::Holder => before
            .iter()
            .filter(|r| r.node == cut_off.node())
            .cloned()
            .collect(),
        Victim::Owner => Vec::new(),
    };

    bed.cut(cut_host, Cut::Both);
    let cut_at = Instant::now();
    // The two that still see each other run both replicas between them, whatever runs
    // on the far side of the cut.
    let deadline = cut_at + Duration::from_secs(90);
    while !each_once(&running_containers(&majority, "web"), 2) {
        if Instant::now() > deadline {
            bed.heal(cut_host);
            panic!(
                "the majority did not run both replicas within 90 s of the cut ({victim:?}):\n{}",
                logs(&agents)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{victim:?} cut off: the majority runs both replicas after {} ms; the far side runs {:?}",
        cut_at.elapsed().as_millis(),
        running_containers(&[cut_off], "web")
    );

    bed.heal(cut_host);
    let healed_at = Instant::now();
    let deadline = healed_at + Duration::from_secs(90);
    loop {
        let now = running_containers(&agents, "web");
        let owners: Vec<Option<String>> = agents.iter().map(|x| owner_seen_by(x, "web")).collect();
        let stale_left: Vec<&Running> = stale
            .iter()
            .filter(|old| now.iter().any(|r| r.id == old.id))
            .collect();
        if each_once(&now, 2)
            && stale_left.is_empty()
            && owners.iter().all(|o| o.as_deref() == Some(owner_id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "90 s after the heal ({victim:?}) the workload has not converged: running \
             {now:?}, stale containers left {stale_left:?}, owners as a, b, c see them \
             {owners:?}\n{}",
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "{victim:?}: converged {} ms after the heal",
        healed_at.elapsed().as_millis()
    );
    // And it stays converged: nothing stale comes back once the mesh has settled.
    let settled = running_containers(&agents, "web");
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        let now = running_containers(&agents, "web");
        assert_eq!(
            now,
            settled,
            "the workload changed after it converged ({victim:?}):\n{}",
            logs(&agents)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    a.cli(["rm", "web"]).ok();
    wait_until("web is gone everywhere", Duration::from_secs(30), || {
        running_containers(&agents, "web").is_empty()
    });
}

/// A node running a replica is cut off both ways: the owner places its replica again,
/// and after the heal the cut-off node's copy is removed.
#[test]
fn an_eventual_workload_converges_after_a_holder_is_cut_off_with_no_zombie() {
    converges_after_a_partition(Victim::Holder);
}

/// The owner is cut off both ways: a successor on the other side takes the workload over
/// and runs both replicas; after the heal the owner has its workload back, and each
/// replica runs once: the copies placed on either side meet, and one gives way.
#[test]
fn an_eventual_workload_converges_after_its_owner_is_cut_off_with_no_zombie() {
    converges_after_a_partition(Victim::Owner);
}
