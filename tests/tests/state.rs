//! End-to-end tests of the agent's state under damage: a corrupt store, a full disk.
//! Real agents, real rootless Podman, the real sled store.

use std::io::{Seek, SeekFrom, Write};

use parley_e2e::{Agent, SmallFs, TEST_IMAGE};
use serde_json::Value;

#[test]
fn a_corrupt_store_is_refused_clearly_and_reset_state_rebuilds_it_from_podman() {
    let mut agent = Agent::start("corrupt");
    agent
        .cli([
            "run",
            "keep",
            "--image",
            TEST_IMAGE,
            "--env",
            "MODE=x",
            "--stop-timeout",
            "1",
            "--",
            "sleep",
            "3600",
        ])
        .ok();
    let id = agent.container_id("keep");
    assert!(agent.stop().success());

    // Garble the store's data file.
    let db = agent.data_dir().join("store/db");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db");
    let len = file.metadata().expect("metadata").len();
    for i in 0..32u64 {
        file.seek(SeekFrom::Start(
            (i * 7919 * 64) % len.saturating_sub(64).max(1),
        ))
        .expect("seek");
        file.write_all(&[0xA5; 64]).expect("write");
    }
    file.sync_all().expect("sync");
    drop(file);

    let (status, log) = agent
        .try_launch(&[])
        .expect_err("the agent started on a garbled store");
    assert_eq!(status.code(), Some(1), "{log}");
    let store_path = agent.data_dir().join("store").display().to_string();
    assert!(
        log.contains(&store_path),
        "the message does not name the store: {log}"
    );
    assert!(
        log.contains("parley agent --reset-state"),
        "no way out offered: {log}"
    );
    assert!(
        !log.contains("RUST_BACKTRACE"),
        "the agent panicked instead of reporting: {log}"
    );

    // The way out: the broken store is kept aside and the workload comes back from the
    // labels of the container that kept running all along.
    agent
        .try_launch(&["--reset-state"])
        .expect("start with --reset-state");
    assert_eq!(agent.workload_names(), ["keep"]);
    assert_eq!(agent.container_id("keep"), id, "the container was replaced");
    assert_eq!(agent.podman_containers(), std::slice::from_ref(&id));
    let aside: Vec<_> = std::fs::read_dir(agent.data_dir())
        .expect("read data dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("store.broken-"))
        .collect();
    assert_eq!(aside.len(), 1, "the broken store was not kept aside");
    let events = agent.cli(["events", "-o", "json"]).json();
    assert!(
        events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["kind"] == "workload-restored"),
        "{events}"
    );

    // The restored workload is a normal one: it survives a restart and can be removed.
    agent.restart();
    assert_eq!(agent.workload_names(), ["keep"]);
    agent.cli(["rm", "keep"]).ok();
    assert!(agent.podman_containers().is_empty());
}

#[test]
fn a_full_disk_stops_new_work_without_losing_or_inventing_any() {
    let disk = SmallFs::mount(8 << 20);
    let data_dir = disk.path().join("data");
    let mut agent = Agent::start_with(
        "diskfull",
        &["--data-dir", data_dir.to_str().expect("utf-8 path")],
    );
    agent.run_sleeper("first").ok();

    disk.fill();
    // sled may still have room in a segment it already holds; keep asking until the disk
    // says no, which it must within a few workloads.
    let mut accepted = vec!["first".to_owned()];
    let mut refusal = None;
    for i in 0..40 {
        let name = format!("more-{i}");
        let out = agent.run_sleeper(&name);
        if out.status.success() {
            accepted.push(name);
        } else {
            refusal = Some((name, out));
            break;
        }
    }
    let (refused, out) = refusal.expect("40 workloads were accepted on a full disk");
    out.fails_with(1, "is full");
    assert!(
        out.stderr.contains(&data_dir.display().to_string()),
        "{}",
        out.stderr
    );

    // The agent is still up, says what is wrong, and takes no new work.
    assert!(agent.is_running(), "the agent crashed: {}", agent.log());
    let status = agent.cli(["status", "-o", "json"]).json();
    assert!(
        status["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("is full")),
        "{status}"
    );
    let again = agent.cli(["run", "later", "--image", TEST_IMAGE]);
    again.fails_with(1, "takes no new work");

    // Nothing acknowledged was lost, and nothing refused was half-created.
    let mut listed = agent.workload_names();
    listed.sort();
    accepted.sort();
    assert_eq!(
        listed, accepted,
        "listed workloads differ from the acknowledged ones"
    );
    assert!(!listed.contains(&refused));
    assert_eq!(
        agent.podman_containers().len(),
        accepted.len(),
        "a refused workload has a container"
    );
    let ps: Value = agent.ps();
    assert!(
        ps["workloads"]
            .as_array()
            .expect("list")
            .iter()
            .all(|w| w["replicas"][0]["state"] == "running"),
        "{ps}"
    );

    // With space back and a restart, the agent takes work again and kept everything.
    disk.free();
    let _ = agent.stop();
    agent.try_launch(&[]).expect("restart after freeing space");
    let mut listed = agent.workload_names();
    listed.sort();
    assert_eq!(listed, accepted);
    agent.run_sleeper("after").ok();
}
