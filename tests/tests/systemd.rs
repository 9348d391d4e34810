//! The systemd integration: unit files that `systemd-analyze verify` accepts, the notify
//! protocol (READY, STATUS, WATCHDOG, STOPPING) as a service manager sees it, and socket
//! activation of the API socket. systemd is not PID 1 on these machines, so the test
//! plays the service manager's part with a datagram socket and `systemd-socket-activate`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use parley_e2e::{Agent, test_user};

const UNITS: [&str; 3] = ["parley.service", "parley.socket", "parley@.service"];

fn units_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: install Debian's systemd package (scripts/setup-host.sh does)"
    );
    // Verify checks that ExecStart exists: point it at the built binary.
    let binary = test_user().binary().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in UNITS {
        let text = std::fs::read_to_string(units_dir().join(unit)).expect("read unit");
        let text = text.replace("/usr/bin/parley", binary.to_str().expect("utf-8 path"));
        std::fs::write(dir.path().join(unit), text).expect("write unit");
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS.iter().map(|u| dir.path().join(u)))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
}

/// Reads datagrams until one contains `needle` or `timeout` passes.
fn wait_for(
    socket: &UnixDatagram,
    needle: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.contains(needle);
            seen.push(message);
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_agent_speaks_the_notify_protocol_and_pings_the_watchdog() {
    let dir = tempfile::Builder::new()
        .prefix("parley-e2e-notify-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let notify = path.to_str().expect("utf-8 path");
    let mut agent = Agent::start_custom(
        "notify",
        &[],
        &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
        &[],
    );
    let mut seen = Vec::new();
    assert!(
        wait_for(&socket, "READY=1", Duration::from_secs(10), &mut seen),
        "no READY: {seen:?}\n{}",
        agent.log()
    );
    assert!(
        seen.iter()
            .any(|m| m.contains("READY=1\nSTATUS=listening on")),
        "no STATUS with READY: {seen:?}"
    );
    // Only the agent speaks: the Podman service it starts must not inherit the socket.
    assert!(
        seen.iter().all(|m| !m.contains("MAINPID")),
        "a child process notified: {seen:?}"
    );
    // Two watchdog pings within a second at a 400 ms watchdog interval.
    assert!(
        wait_for(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut seen),
        "no watchdog ping: {seen:?}"
    );
    assert!(
        wait_for(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut seen),
        "watchdog stopped: {seen:?}"
    );
    let status = agent.stop();
    assert!(status.success(), "{status}");
    assert!(
        wait_for(&socket, "STOPPING=1", Duration::from_secs(2), &mut seen),
        "no STOPPING: {seen:?}"
    );
}

#[test]
fn the_api_socket_can_come_from_socket_activation() {
    let activator = Command::new("systemd-socket-activate")
        .arg("--help")
        .output();
    assert!(
        activator.is_ok_and(|o| o.status.success()),
        "systemd-socket-activate is missing: install Debian's systemd package (scripts/setup-host.sh does)"
    );
    // The activator listens on the socket and execs the agent with LISTEN_FDS=1.
    let dir = tempfile::Builder::new()
        .prefix("parley-e2e-activate-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let socket = dir.path().join("activated.sock");
    let socket_arg = socket.to_str().expect("utf-8 path").to_owned();
    let mut agent = Agent::start_custom(
        "activated",
        &["--api-socket", &socket_arg],
        &[],
        &["systemd-socket-activate", "-l", &socket_arg],
    );
    assert!(agent.log().contains("socket activation"), "{}", agent.log());
    let status = test_user().parley(&socket, ["status", "-o", "json"]);
    assert!(status.status.success(), "{status:?}");
    assert!(agent.stop().success());
    assert!(socket.exists(), "the agent removed a socket systemd owns");
}
