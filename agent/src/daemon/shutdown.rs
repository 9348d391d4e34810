//! One shutdown path (mini-redis, linkerd2-proxy): a token every task watches, a tracker
//! every task is spawned on, and an order of teardown that never closes the store under a
//! write: cancel, wait for the tasks (within a grace period), close the QUIC endpoint so
//! peers see the connections end, then flush and close the store.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::Transport;

/// How the agent's tasks are told to stop and waited for.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the agent stops; every task watches it.
    pub token: CancellationToken,
    /// Every task of the agent runs on it.
    pub tasks: TaskTracker,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Tasks still running when the grace period ended (0 on a clean stop).
    pub abandoned: usize,
}

impl Shutdown {
    /// A shutdown not yet requested.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` on the tracker.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Stops everything in order: cancels the tasks and waits up to `grace` for them (an
    /// award being persisted finishes first), closes `endpoint`, then closes `store`.
    pub async fn drain(
        &self,
        grace: Duration,
        endpoint: Option<&Transport>,
        store: &parley_store::Store,
    ) -> Result<Drained, parley_store::StoreError> {
        self.token.cancel();
        self.tasks.close();
        let abandoned = match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.tasks.len();
                tracing::warn!(
                    ?grace,
                    tasks = left,
                    "tasks did not stop within the grace period"
                );
                left
            }
        };
        if let Some(endpoint) = endpoint {
            endpoint.close().await;
        }
        store.close()?;
        Ok(Drained { abandoned })
    }
}
