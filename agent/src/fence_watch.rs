//! The lease watchdog: a process of its own that stops strong replicas' containers at
//! their lease deadlines, whatever becomes of the agent.
//!
//! The agent fences its strong replicas itself when it cannot renew their leases. That
//! needs the agent to run: one stopped by SIGSTOP, swapped out or wedged would leave a
//! container running past its lease while another node starts the replica. So every
//! deadline also goes to this watchdog, a child started with the agent's own binary
//! (`parley fence-watch`, hidden), which keeps no state but the deadlines and removes a
//! container through Podman's socket when its deadline passes without a renewal.
//!
//! The agent writes one line per change on the watchdog's stdin: `arm NAME DEADLINE_MS`
//! (on `CLOCK_MONOTONIC`, which both processes read alike) and `disarm NAME`. When the
//! agent's end of the pipe closes (it exited or crashed), the watchdog still enforces the
//! deadlines it holds, then exits.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::runtime::ContainerRuntime;
use crate::runtime::podman::PodmanRuntime;

/// Longest line the watchdog reads; anything longer is not the agent's.
const MAX_LINE: usize = 1_024;

/// Most deadlines held (one per strong replica this node runs).
const MAX_ARMED: usize = 65_536;

/// How often the watchdog looks at its deadlines.
const TICK: Duration = Duration::from_millis(100);

/// Failed removals of one container before the watchdog gives it up (5 s of ticks): a
/// Podman that no longer answers (its service gone with the agent) would otherwise keep
/// the watchdog alive for ever.
const MAX_FAILURES: u32 = 50;

/// Milliseconds on `CLOCK_MONOTONIC`: the same clock in the agent and the watchdog, and
/// one no one can set.
pub fn monotonic_ms() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable on Linux");
    now.tv_sec() as u64 * 1_000 + now.tv_nsec() as u64 / 1_000_000
}

/// The agent's end: the watchdog process and the pipe to it.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    stdin: ChildStdin,
}

impl Watchdog {
    /// Starts the watchdog of containers behind `podman_socket`.
    pub fn spawn(podman_socket: &Path) -> std::io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("fence-watch")
            .arg("--podman-socket")
            .arg(podman_socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        Ok(Self { child, stdin })
    }

    /// Stop container `name` at `deadline_ms` (see [`monotonic_ms`]) unless armed again.
    pub fn arm(&mut self, name: &str, deadline_ms: u64) -> std::io::Result<()> {
        writeln!(self.stdin, "arm {name} {deadline_ms}")
    }

    /// Forget container `name`'s deadline (the agent stopped it).
    pub fn disarm(&mut self, name: &str) -> std::io::Result<()> {
        writeln!(self.stdin, "disarm {name}")
    }

    /// Whether the watchdog process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// One line from the agent.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    Arm(String, u64),
    Disarm(String),
}

fn parse(line: &str) -> Option<Order> {
    let mut words = line.split_ascii_whitespace();
    let order = match (words.next()?, words.next()?, words.next()) {
        ("arm", name, Some(deadline)) => Order::Arm(name.to_owned(), deadline.parse().ok()?),
        ("disarm", name, None) => Order::Disarm(name.to_owned()),
        _ => return None,
    };
    words.next().is_none().then_some(order)
}

/// The watchdog's main loop (`parley fence-watch`).
pub fn run(podman_socket: PathBuf) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("parley fence-watch: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(watch(PodmanRuntime::new(&podman_socket)));
    ExitCode::SUCCESS
}

async fn watch(podman: PodmanRuntime) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Container name → (deadline, failed removals).
    let mut armed: HashMap<String, (u64, u32)> = HashMap::new();
    let mut agent_gone = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            line = lines.next_line(), if !agent_gone => match line {
                Ok(Some(line)) if line.len() <= MAX_LINE => match parse(&line) {
                    Some(Order::Arm(name, deadline)) => {
                        if armed.len() < MAX_ARMED || armed.contains_key(&name) {
                            armed.insert(name, (deadline, 0));
                        }
                    }
                    Some(Order::Disarm(name)) => {
                        armed.remove(&name);
                    }
                    None => eprintln!("parley fence-watch: ignored a line that is not an order"),
                },
                Ok(Some(_)) => eprintln!("parley fence-watch: ignored an overlong line"),
                // The agent is gone: what it armed is still enforced.
                Ok(None) | Err(_) => agent_gone = true,
            },
            _ = tick.tick() => {
                let now = monotonic_ms();
                let due: Vec<String> = armed
                    .iter()
                    .filter(|(_, (deadline, _))| *deadline <= now)
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in due {
                    match podman.remove(&name).await {
                        Ok(()) => {
                            eprintln!("parley fence-watch: stopped {name}: its lease ran out without a renewal");
                            armed.remove(&name);
                        }
                        Err(error) => {
                            let failures = armed.get_mut(&name).map_or(MAX_FAILURES, |(_, f)| {
                                *f += 1;
                                *f
                            });
                            if failures >= MAX_FAILURES {
                                eprintln!("parley fence-watch: gave up stopping {name} after {failures} tries: {error}");
                                armed.remove(&name);
                            } else if failures == 1 {
                                // Tried again on every tick.
                                eprintln!("parley fence-watch: could not stop {name}: {error}; trying again");
                            }
                        }
                    }
                }
                if agent_gone && armed.is_empty() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_parsed_strictly() {
        assert_eq!(
            parse("arm parley-db-0 1234"),
            Some(Order::Arm("parley-db-0".to_owned(), 1234))
        );
        assert_eq!(
            parse("disarm parley-db-0"),
            Some(Order::Disarm("parley-db-0".to_owned()))
        );
        for bad in [
            "",
            "arm",
            "arm x",
            "arm x y",
            "arm x 1 2",
            "disarm",
            "disarm x y",
            "kill x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let before = monotonic_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(monotonic_ms() >= before + 5);
    }
}
