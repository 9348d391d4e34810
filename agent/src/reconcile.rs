//! The reconcile loop: on start and every interval, make what Podman runs match what the
//! store says should run. A failed pass is logged and retried; it never stops the agent.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::runtime::ContainerRuntime;

/// Runs reconcile passes until `shutdown` is cancelled. The first pass runs at once, so a
/// restarted agent adopts its containers (or restarts missing ones) before its first tick.
pub async fn run<R: ContainerRuntime>(
    node: Arc<Node<R>>,
    interval: Duration,
    shutdown: CancellationToken,
    heartbeat: Arc<crate::systemd::Heartbeat>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        heartbeat.beat();
        let outcome = node.reconcile().await;
        heartbeat.beat();
        match outcome {
            Ok(report)
                if first
                    || report.started
                        + report.restarted
                        + report.removed
                        + report.restored
                        + report.failed
                        > 0 =>
            {
                tracing::info!(
                    adopted = report.adopted,
                    restored = report.restored,
                    started = report.started,
                    restarted = report.restarted,
                    removed = report.removed,
                    failed = report.failed,
                    "reconciled"
                );
            }
            Ok(_) => tracing::debug!("reconciled, nothing to do"),
            Err(e) => tracing::warn!(error = %e, "reconcile pass failed; will retry"),
        }
        first = false;
    }
}
