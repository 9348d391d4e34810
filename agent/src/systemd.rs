//! Integration with systemd, all of it optional: readiness and status notifications
//! (`Type=notify`), watchdog pings, and a listening API socket passed by socket
//! activation. Without systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`) every function here
//! does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Tells the service manager the agent is ready, with a status line for `systemctl status`.
pub fn ready(status: &str) {
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Updates the status line.
pub fn status(status: &str) {
    send(&[sd_notify::NotifyState::Status(status)]);
}

/// Tells the service manager the agent is stopping.
pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("shutting down"),
    ]);
}

fn send(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// With `WatchdogSec=` set, pings the watchdog at half the interval until shutdown, as
/// long as every loop in `loops` (negotiation, reconcile) made progress within its
/// allowance: a wedged runtime, or a loop stuck on a call, stops the pings and systemd
/// restarts the agent.
pub fn spawn_watchdog(
    shutdown: CancellationToken,
    loops: Vec<Arc<Heartbeat>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(?interval, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        let mut withheld = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    let now = crate::clock::unix_millis();
                    match loops.iter().find(|beat| !beat.is_fresh(now)) {
                        None => {
                            withheld = false;
                            send(&[sd_notify::NotifyState::Watchdog]);
                        }
                        Some(stuck) if !withheld => {
                            withheld = true;
                            tracing::error!(
                                task = stuck.name,
                                silent_ms = stuck.silent_ms(now),
                                "a loop made no progress; withholding the watchdog so that systemd restarts the agent"
                            );
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }))
}

/// When one of the agent's loops last made progress, for the watchdog: pinging systemd
/// from a task of its own proves only that the runtime runs, not that the agent works.
#[derive(Debug)]
pub struct Heartbeat {
    /// The loop's name, for logs.
    pub name: &'static str,
    last_ms: AtomicU64,
    allowed: Duration,
}

impl Heartbeat {
    /// A loop named `name` that must beat at least every `allowed`.
    pub fn new(name: &'static str, allowed: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            last_ms: AtomicU64::new(crate::clock::unix_millis()),
            allowed,
        })
    }

    /// The loop made progress now.
    pub fn beat(&self) {
        self.last_ms
            .store(crate::clock::unix_millis(), Ordering::Relaxed);
    }

    /// How long since the last beat, at `now_ms`.
    pub fn silent_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }

    /// Whether it beat within its allowance.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        u128::from(self.silent_ms(now_ms)) <= self.allowed.as_millis()
    }
}

/// The API socket systemd passed by socket activation (`parley.socket`), if any.
pub fn activated_api_socket() -> std::io::Result<Option<tokio::net::UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    match fds.take_unix_listener(0)? {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            Ok(Some(tokio::net::UnixListener::from_std(listener)?))
        }
        None => Ok(None),
    }
}
