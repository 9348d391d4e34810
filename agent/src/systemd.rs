//! Integration with systemd, all of it optional: readiness and status notifications
//! (`Type=notify`), watchdog pings, and a listening API socket passed by socket
//! activation. Without systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`) every function here
//! does nothing.

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

/// With `WatchdogSec=` set, pings the watchdog at half the interval until shutdown. The
/// pings come from the async runtime, so a wedged runtime stops them and systemd restarts
/// the agent.
pub fn spawn_watchdog(shutdown: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(?interval, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => send(&[sd_notify::NotifyState::Watchdog]),
            }
        }
    }))
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
