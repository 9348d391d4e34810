//! What this node sees of the replicas it runs in a mesh (pending, starting, running,
//! exited, restarting, failed), kept with when each entered its phase and how often it
//! was started again, and sent into the negotiation loop, which carries it to the
//! replica's owner in the next report — and from there to `parley ps` on any node.

use std::sync::PoisonError;

use parley_negotiation::messages::Phase;

use super::*;

impl<R: ContainerRuntime> Node<R> {
    /// Notes the phase this node sees replica `replica` of workload `name` in; returns its
    /// state, with the time it entered that phase and its restart count carried over.
    pub(super) fn observe_replica(
        &self,
        name: &str,
        replica: u32,
        phase: Phase,
        exit_code: Option<i32>,
        reason: Option<String>,
        container_id: Option<String>,
    ) -> RunState {
        let now = crate::clock::unix_millis();
        let mut states = self
            .run_states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = states
            .entry((name.to_owned(), replica))
            .or_insert_with(|| RunState {
                phase,
                exit_code: None,
                restarts: 0,
                since_ms: now,
                reason: None,
                container_id: None,
            });
        if state.phase != phase {
            let after_an_exit = matches!(
                state.phase,
                Phase::Exited | Phase::Restarting | Phase::Failed
            );
            if phase == Phase::Running && after_an_exit {
                state.restarts = state.restarts.saturating_add(1);
            }
            state.phase = phase;
            state.since_ms = now;
        }
        state.exit_code = exit_code;
        state.reason = reason;
        if container_id.is_some() {
            state.container_id = container_id;
        }
        state.clone()
    }

    /// The state last noted of a replica this node runs.
    pub(super) fn local_state(&self, name: &str, replica: u32) -> Option<RunState> {
        self.run_states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name.to_owned(), replica))
            .cloned()
    }

    /// Forgets the states of replicas this node no longer runs.
    pub(super) fn retain_states(&self, runs: impl Fn(&str, u32) -> bool) {
        self.run_states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(name, replica), _| runs(name, *replica));
    }

    /// Hands states to the negotiation loop, which reports them to the replicas' owners.
    /// A full command queue drops them: the next reconcile pass sends them again.
    pub(super) fn publish_states(&self, states: Vec<(String, u32, RunState)>) {
        if let Some(mesh) = &self.info.mesh
            && !states.is_empty()
        {
            let states = states
                .into_iter()
                .map(|(name, replica, state)| (key(&name), replica, state))
                .collect();
            if mesh
                .commands
                .try_send(Command::ReplicaStates(states))
                .is_err()
            {
                tracing::debug!("negotiation loop busy; replica states go with the next pass");
            }
        }
    }
}

/// The phase a container's engine state means for a replica.
pub(super) fn phase_of(container: &ManagedContainer) -> Phase {
    match container.state {
        ContainerState::Running | ContainerState::Paused => Phase::Running,
        ContainerState::Exited => Phase::Exited,
        ContainerState::Created | ContainerState::Stopping | ContainerState::Other(_) => {
            Phase::Starting
        }
    }
}
