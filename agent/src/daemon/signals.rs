//! Signals: SIGTERM and SIGINT stop the agent; SIGHUP reloads the policy.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

/// Installs the SIGTERM and SIGINT handlers now and returns a future that completes on
/// the first of them.
pub(super) fn wait_for_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    })
}

/// Reloads the authorization policy on each SIGHUP. A policy file that no longer parses
/// is reported and the policy in force stays.
pub(super) async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    policy: Option<crate::policy::PolicyHandle>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        let Some(policy) = &policy else {
            tracing::info!(signal = "SIGHUP", "not in a mesh: no policy to reload");
            continue;
        };
        match policy.reload() {
            Ok(now) => {
                tracing::info!(
                    signal = "SIGHUP",
                    policy = now.source(),
                    grants = now.grants(),
                    "authorization policy reloaded"
                );
                now.warn_if_crippling();
            }
            Err(error) => tracing::error!(
                signal = "SIGHUP",
                %error,
                "authorization policy not reloaded; the previous one stays in force"
            ),
        }
    }
}
