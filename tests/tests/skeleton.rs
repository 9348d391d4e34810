//! End-to-end tests of the walking skeleton: one real agent, real rootless Podman, the
//! real sled store, driven through the `parley` CLI exactly as a user would.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use parley_e2e::{Agent, TEST_IMAGE, first_replica, test_user};
use serde_json::Value;

#[test]
fn run_ps_restart_adopt_rm_on_rootless_podman() {
    let mut agent = Agent::start("lifecycle");

    let status = agent.cli(["status", "-o", "json"]).json();
    assert_eq!(
        status["podman"]["rootless"], true,
        "Podman must run rootless: {status}"
    );
    assert_eq!(status["podman_origin"], "started-by-agent", "{status}");

    agent
        .cli([
            "run",
            "hello",
            "--image",
            TEST_IMAGE,
            "--env",
            "GREETING=hi",
            "--stop-timeout",
            "1",
            "--",
            "sleep",
            "3600",
        ])
        .ok();
    let ps = agent.ps();
    let first = first_replica(&ps, "hello");
    assert_eq!(first["state"], "running", "{ps}");
    assert_eq!(first["container"], "parley-hello-0");
    let id = first["container_id"]
        .as_str()
        .expect("container id")
        .to_owned();
    assert_eq!(agent.podman_containers(), std::slice::from_ref(&id));

    // Podman itself agrees: labelled, with the environment, running as the test user.
    let inspect = test_user().podman([
        "inspect",
        &id,
        "--format",
        "{{.Config.Labels}} {{.Config.Env}} {{.State.Running}}",
    ]);
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.contains("io.parley.workload:hello"), "{inspect}");
    assert!(inspect.contains("GREETING=hi"), "{inspect}");
    assert!(inspect.trim_end().ends_with("true"), "{inspect}");

    let table = agent.cli(["ps"]).ok().to_owned();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hello") && l.contains("running")),
        "{table}"
    );

    // A restarted agent lists the stored workload and adopts the container it runs.
    agent.restart();
    let ps = agent.ps();
    let after = first_replica(&ps, "hello");
    assert_eq!(
        after["container_id"],
        id.as_str(),
        "the container was replaced: {ps}"
    );
    assert_eq!(after["state"], "running");
    assert_eq!(
        agent.podman_containers(),
        std::slice::from_ref(&id),
        "a duplicate was started"
    );
    assert!(agent.log().contains("adopted=1"), "{}", agent.log());

    agent.cli(["rm", "hello"]).ok();
    assert!(agent.workload_names().is_empty());
    assert!(
        agent.podman_containers().is_empty(),
        "the container is still there"
    );

    let status = agent.stop();
    assert!(status.success(), "agent exited with {status}");
    assert!(
        !agent.api_socket().exists(),
        "the API socket was left behind"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let agent = Agent::start("badinput");
    agent.run_sleeper("keep").ok();
    let before = agent.ps();
    let containers_before = agent.podman_containers();

    // An invalid name is refused by the CLI (usage error) before the agent is asked.
    let out = agent.cli(["run", "Not_Valid", "--image", TEST_IMAGE]);
    out.fails_with(2, "invalid workload name \"Not_Valid\"");

    // The same name again.
    let out = agent.cli(["run", "keep", "--image", TEST_IMAGE, "--", "true"]);
    out.fails_with(1, "a workload named keep already exists");

    // An image that exists nowhere.
    let out = agent.cli([
        "run",
        "ghost",
        "--image",
        "localhost/parley-no-such-image:1",
    ]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .contains("image localhost/parley-no-such-image:1 is not available"),
        "{}",
        out.stderr
    );

    // A command the image does not have: Podman fails the start, the run is rolled back.
    let out = agent.cli([
        "run",
        "nocmd",
        "--image",
        TEST_IMAGE,
        "--",
        "/no/such/binary",
    ]);
    out.fails_with(1, "podman failed to start a container");

    // A malformed environment entry and an unknown output format are usage errors.
    let out = agent.cli(["run", "envy", "--image", TEST_IMAGE, "--env", "1BAD=x"]);
    out.fails_with(2, "invalid environment variable");

    // Removing something that does not exist.
    let out = agent.cli(["rm", "never-was"]);
    out.fails_with(1, "no workload named never-was");

    assert_eq!(agent.ps(), before, "the stored state changed");
    assert_eq!(
        agent.podman_containers(),
        containers_before,
        "containers changed"
    );
}

#[test]
fn podman_down_is_reported_and_nothing_is_stored() {
    // A socket where no Podman answers, and the agent told not to start one.
    let mut agent = Agent::start_with(
        "podmandown",
        &[
            "--podman-autostart",
            "false",
            "--podman-socket",
            "/nonexistent/podman.sock",
        ],
    );
    assert!(
        agent.log().contains("podman_autostart is off"),
        "{}",
        agent.log()
    );

    let status = agent.cli(["status", "-o", "json"]).json();
    assert_eq!(status["podman"], Value::Null);
    assert!(
        status["podman_error"]
            .as_str()
            .expect("error")
            .contains("not reachable"),
        "{status}"
    );

    let out = agent.cli(["run", "web", "--image", TEST_IMAGE]);
    assert_eq!(out.code(), 1, "{out:?}");
    assert!(
        out.stderr
            .contains("the Podman service at /nonexistent/podman.sock is not reachable"),
        "{}",
        out.stderr
    );

    let ps = agent.ps();
    assert!(agent.workload_names().is_empty(), "{ps}");
    assert!(ps["runtime_error"].is_string(), "{ps}");

    // Nothing was stored: a restart still lists nothing.
    agent.restart();
    assert!(agent.workload_names().is_empty());
}

#[test]
fn the_cli_explains_when_no_agent_runs() {
    let user = test_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = user.parley(&dir.path().join("nobody.sock"), ["ps"]);
    out.fails_with(69, "cannot reach the parley agent");
    assert!(
        out.stderr.contains("parley agent"),
        "the hint is missing: {}",
        out.stderr
    );
}

#[test]
fn the_api_socket_is_private_and_a_second_agent_is_refused() {
    let agent = Agent::start("socket");
    let meta = std::fs::metadata(agent.api_socket()).expect("socket metadata");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second agent on the same socket must not steal it.
    let second_data = agent.data_dir().with_file_name("second-data");
    let second = agent.cli([
        "agent".as_ref(),
        "--data-dir".as_ref(),
        second_data.as_os_str(),
        "--podman-autostart".as_ref(),
        "false".as_ref(),
    ]);
    assert_eq!(second.code(), 1, "{second:?}");
    assert!(
        second.stderr.contains("another agent is already listening"),
        "{}",
        second.stderr
    );
    assert!(
        agent.cli(["status"]).status.success(),
        "the first agent stopped answering"
    );
    assert!(
        !second_data.exists(),
        "the refused agent touched its data directory"
    );
}

#[test]
fn an_invalid_config_file_exits_64_naming_the_field() {
    let user = test_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "reconcile_interval_secs = 0\n").expect("write config");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = user.parley(
        &dir.path().join("api.sock"),
        ["agent", "--config", config.to_str().expect("utf-8")],
    );
    out.fails_with(64, "`reconcile_interval_secs`");
    assert!(
        !dir.path().join("api.sock").exists(),
        "a socket was opened despite the bad config"
    );
}

/// Polls `check` every 200 ms for up to 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("timed out waiting until {what}");
}

#[test]
fn reconcile_replaces_a_removed_container_and_removes_an_unknown_one() {
    let agent = Agent::start_with("reconcile", &["--reconcile-interval", "1"]);
    // Container names are per Podman user, and tests run in parallel as one user: each
    // test uses its own workload names.
    agent.run_sleeper("healme").ok();
    let first = agent.container_id("healme");

    // Someone removes the container behind the agent's back: a new one replaces it.
    let removed = test_user().podman(["rm", "-f", "-t", "0", &first]);
    assert!(removed.status.success(), "{removed:?}");
    eventually("a replacement container runs", || {
        let now = first_replica(&agent.ps(), "healme");
        now["state"] == "running" && now["container_id"] != first.as_str()
    });
    assert_eq!(agent.podman_containers().len(), 1);

    // A container labelled as this node's, for a workload it does not have and without a
    // spec to restore it from, is removed.
    let node_label = format!("io.parley.node={}", agent.node());
    let stray = test_user().podman([
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        "io.parley.managed=true",
        "--label",
        &node_label,
        "--label",
        "io.parley.workload=stray",
        "--label",
        "io.parley.replica=0",
        TEST_IMAGE,
        "sleep",
        "3600",
    ]);
    assert!(stray.status.success(), "{stray:?}");
    let stray_id = String::from_utf8_lossy(&stray.stdout).trim().to_owned();
    eventually("the stray container is gone", || {
        !agent.podman_containers().iter().any(|id| id == &stray_id)
    });
    assert_eq!(agent.workload_names(), ["healme"], "the stray was adopted");
    assert_eq!(agent.podman_containers().len(), 1);
}

#[test]
fn host_checks_describe_the_real_host() {
    let agent = Agent::start("hostcheck");
    let status = agent.cli(["status", "-o", "json"]).json();
    let checks: Vec<&str> = status["host_warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no host_warnings in {status}"))
        .iter()
        .map(|w| w["check"].as_str().expect("check name"))
        .collect();
    // scripts/setup-host.sh gave the test user subordinate ids and a usable /dev/net/tun.
    for fixed in ["subuid", "subgid", "tun", "rootful"] {
        assert!(!checks.contains(&fixed), "{fixed} reported: {status}");
    }
    // Podman's own report decides whether the cgroup v1 finding is due.
    let v1 = status["podman"]["cgroup_version"] == "v1";
    assert_eq!(checks.contains(&"cgroup-v1"), v1, "{status}");
    if v1 {
        assert!(
            agent
                .log()
                .contains("cgroup v1: rootless containers cannot be given"),
            "the agent did not log the finding: {}",
            agent.log()
        );
        let table = agent.cli(["status"]).ok().to_owned();
        assert!(
            table.contains("warning:") && table.contains("fix:"),
            "{table}"
        );
    }
}

#[test]
fn a_workload_too_large_for_the_node_is_refused_with_the_reasons() {
    let agent = Agent::start("capacity");
    let nodes = agent.cli(["nodes", "-o", "json"]).json();
    let allocatable = &nodes["nodes"][0]["meta"]["allocatable"];
    let cpu = allocatable["cpu_millis"].as_u64().expect("allocatable cpu");

    agent
        .cli([
            "run",
            "huge",
            "--image",
            TEST_IMAGE,
            "--cpu",
            "100000",
            "--memory",
            "1000T",
            "--constraint",
            "zone=nowhere",
            "--",
            "sleep",
            "60",
        ])
        .fails_with(1, "cannot run on this node");
    let refused = agent.cli([
        "run", "huge", "--image", TEST_IMAGE, "--cpu", "100000", "--memory", "1000T", "--",
        "sleep", "60",
    ]);
    for needle in ["insufficient CPU", "insufficient memory"] {
        assert!(refused.stderr.contains(needle), "{needle}: {refused:?}");
    }
    agent
        .cli([
            "run",
            "many",
            "--image",
            TEST_IMAGE,
            "--replicas",
            "3",
            "--",
            "sleep",
            "60",
        ])
        .fails_with(1, "3 replicas");
    assert!(
        agent.workload_names().is_empty(),
        "a refused workload was stored"
    );
    assert!(
        agent.podman_containers().is_empty(),
        "a refused workload started"
    );

    // A workload that fits takes its share of the free capacity.
    agent
        .cli([
            "run",
            "small",
            "--image",
            TEST_IMAGE,
            "--cpu",
            "50m",
            "--stop-timeout",
            "1",
            "--",
            "sleep",
            "60",
        ])
        .ok();
    let nodes = agent.cli(["nodes", "-o", "json"]).json();
    assert_eq!(
        nodes["nodes"][0]["meta"]["free"]["cpu_millis"].as_u64(),
        Some(cpu - 50),
        "{nodes}"
    );
}

#[test]
fn exited_containers_restart_as_the_workloads_restart_policy_says() {
    let agent = Agent::start_with("restarts", &["--reconcile-interval", "1"]);
    let run = |name: &str, policy: &str, script: &str| {
        agent
            .cli([
                "run",
                name,
                "--image",
                TEST_IMAGE,
                "--restart",
                policy,
                "--stop-timeout",
                "1",
                "--",
                "sh",
                "-c",
                script,
            ])
            .ok();
    };
    // Each start prints a line; the container's log keeps them across restarts.
    run("flaky", "on-failure", "echo start; sleep 1; exit 4");
    run("job", "never", "exit 3");
    run("done", "on-failure", "exit 0");

    eventually("flaky is restarted after failing", || {
        agent
            .cli(["events", "-o", "json"])
            .json()
            .as_array()
            .is_some_and(|events| {
                events.iter().any(|e| {
                    e["kind"] == "container-restarted"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("parley-flaky-0 exited with code 4"))
                })
            })
    });
    eventually("flaky's container ran again (same container)", || {
        agent.cli(["logs", "flaky"]).stdout.matches("start").count() >= 2
    });

    // A job that failed and must not restart stays exited, with its code shown.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let job = first_replica(&agent.ps(), "job");
    assert_eq!(job["state"], "exited", "{job}");
    assert_eq!(job["exit_code"], 3, "{job}");
    let done = first_replica(&agent.ps(), "done");
    assert_eq!(done["state"], "exited", "{done}");
    assert_eq!(done["exit_code"], 0, "{done}");
    let table = agent.cli(["ps"]).ok().to_owned();
    assert!(table.contains("exited (3)"), "{table}");
    for name in ["flaky", "job", "done"] {
        agent.cli(["rm", name]).ok();
    }
}

/// A replica's named volume outlives it: the workload removed and run again on the same
/// node finds what its first replica wrote, in a volume labelled with its workload. A
/// malformed `--volume` is refused before the agent is asked.
#[test]
fn a_replicas_named_volume_keeps_its_data_after_the_workload_is_removed() {
    // Its own container storage, so that no volume of an earlier run is found.
    let agent = Agent::start_isolated("volume", &[]);
    agent
        .cli(["run", "notes", "--image", TEST_IMAGE, "--volume", "no-path"])
        .fails_with(2, "give it as NAME:/path");
    let run = |command: &str| {
        agent
            .cli([
                "run",
                "notes",
                "--image",
                TEST_IMAGE,
                "--volume",
                "data:/data",
                "--stop-timeout",
                "1",
                "--",
                "sh",
                "-c",
                command,
            ])
            .ok();
    };
    run("echo kept > /data/note; sleep 3600");
    eventually("the first replica wrote its note", || {
        let out = agent.podman(["exec", "parley-notes-0", "cat", "/data/note"]);
        String::from_utf8_lossy(&out.stdout).trim() == "kept"
    });
    let labels = agent.podman([
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"io.parley.workload\"}}/{{index .Labels \"io.parley.replica\"}}",
        "parley-notes-0-data",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&labels.stdout).trim(),
        "notes/0",
        "{}",
        String::from_utf8_lossy(&labels.stderr)
    );
    agent.cli(["rm", "notes"]).ok();
    eventually("the first replica is gone", || {
        agent.podman_containers().is_empty()
    });
    run("cat /data/note; sleep 3600");
    eventually("the second replica read the first one's note", || {
        agent.cli(["logs", "notes"]).stdout.contains("kept")
    });
}
