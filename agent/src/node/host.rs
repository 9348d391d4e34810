//! What the negotiation loop asks of the node ([`Host`]): store awards and takeovers,
//! start, stop and read replicas.

use std::sync::PoisonError;
use std::time::Duration;

use parley_negotiation::messages::Phase;
use parley_negotiation::register::SlotState;
use parley_negotiation::workload::key_name;

use super::*;

impl<R: ContainerRuntime> Host for Node<R> {
    async fn commit(&self, assignment: Assignment) -> Result<(), HostError> {
        let _changing = self.changes.lock().await;
        let name = assignment.spec.name.to_string();
        let key = assignment_key(&name, assignment.replica);
        self.put_flushed(&self.assignments, &key, &assignment)
            .await
            .map_err(|e| HostError::Store(e.to_string()))?;
        self.record_event(
            "replica-assigned",
            Some(&self::key(&name)),
            &format!(
                "replica {} at epoch {} for {}",
                assignment.replica, assignment.epoch, assignment.owner
            ),
        );
        Ok(())
    }

    async fn start(&self, workload: String, replica: u32) {
        self.start_at(workload, replica, None).await;
    }

    async fn store_record(&self, workload: String, record: SignedStatement) {
        // Not flushed one by one: a record lost in a crash comes back from any peer in
        // the first anti-entropy round.
        if let Err(error) = self.records.put(&workload, &record) {
            let error = self.note_store_error(error);
            tracing::warn!(%workload, %error, "could not store a workload record; peers still hold it");
        }
    }

    async fn drop_record(&self, workload: String) {
        if let Err(error) = self.records.remove(&workload) {
            let error = self.note_store_error(error);
            tracing::warn!(%workload, %error, "could not drop an expired tombstone");
        }
    }

    async fn adopt(&self, spec: WorkloadSpec, submitter: String) -> Result<(), HostError> {
        let _changing = self.changes.lock().await;
        let key = key(spec.name.as_str());
        let record = WorkloadRecord {
            spec,
            created_at: crate::clock::unix_secs(),
            submitter: Some(submitter.clone()),
        };
        self.put_flushed(&self.workloads, &key, &record)
            .await
            .map_err(|e| HostError::Store(e.to_string()))?;
        self.record_event(
            "workload-adopted",
            Some(&key),
            &format!("its owner {submitter} died; this node is its successor"),
        );
        Ok(())
    }

    async fn forget(&self, workload: String, why: &'static str) {
        let _changing = self.changes.lock().await;
        let key = key(&workload);
        if let Err(error) = self.delete_workload_record(&key).await {
            tracing::error!(%workload, %error, why, "could not forget a workload");
            return;
        }
        self.record_event("workload-forgotten", Some(&key), why);
    }

    async fn logs(
        &self,
        workload: String,
        replica: u32,
        window: LogWindow,
    ) -> Result<LogChunk, HostError> {
        let containers = self
            .runtime
            .list_managed(&self.info.name)
            .await
            .map_err(|e| HostError::Runtime(e.to_string()))?;
        let Some(container) = containers
            .iter()
            .find(|c| c.workload == workload && c.replica == replica)
        else {
            return Err(HostError::NotRunning(format!(
                "replica {replica} of {workload} has no container on this node"
            )));
        };
        self.local_logs(&container.id, window)
            .await
            .map_err(|e| HostError::Runtime(e.to_string()))
    }

    fn stored_registers(&self) -> Vec<((String, u32), SlotState)> {
        let stored = match self.registers.list() {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(%error, "could not read the stored lease registers; this node answers as an acceptor that forgot, which its peers' quorums outvote");
                return Vec::new();
            }
        };
        stored
            .into_iter()
            .filter_map(|(key, slot)| {
                let (workload, replica) = key.rsplit_once('#')?;
                Some(((workload.to_owned(), replica.parse().ok()?), slot))
            })
            .collect()
    }

    async fn store_register(
        &self,
        workload: String,
        replica: u32,
        slot: SlotState,
    ) -> Result<(), HostError> {
        let key = format!("{workload}#{replica}");
        self.put_flushed(&self.registers, &key, &slot)
            .await
            .map_err(|e| HostError::Store(e.to_string()))
    }

    async fn drop_register(&self, workload: String, replica: u32) {
        if let Err(error) = self.registers.remove(&format!("{workload}#{replica}")) {
            let error = self.note_store_error(error);
            tracing::warn!(%workload, replica, %error, "could not drop a removed workload's lease register");
        }
    }

    async fn run_leased(&self, workload: String, replica: u32, epoch: u64, fence_in: Duration) {
        let name = key_name(&workload).to_owned();
        let deadline = Instant::now() + fence_in;
        let renewed = self
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((name.clone(), replica), (epoch, deadline))
            .is_some_and(|(held, _)| held == epoch);
        // Armed before the container starts: it never runs unguarded.
        self.arm_watchdog(&name, replica, fence_in);
        if renewed {
            return;
        }
        tracing::info!(workload = %name, replica, epoch, "holding the lease of a strong replica; starting it");
        self.start_at(name, replica, Some(epoch)).await;
    }

    async fn fence(&self, workload: String, replica: u32, epoch: u64, why: String) {
        let name = key_name(&workload).to_owned();
        {
            let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
            if leases
                .get(&(name.clone(), replica))
                .is_some_and(|(held, _)| *held == epoch)
            {
                leases.remove(&(name.clone(), replica));
            }
        }
        let _changing = self.changes.lock().await;
        self.stop_unleased(&name, replica).await;
        self.disarm_watchdog(&name, replica);
        tracing::warn!(workload = %name, replica, epoch, %why, "fenced a strong replica: its container is stopped before its lease ends");
        self.record_event(
            "replica-fenced",
            Some(&key(&name)),
            &format!("replica {replica} at epoch {epoch}: {why}"),
        );
        let pending = self.observe_replica(
            &name,
            replica,
            Phase::Pending,
            None,
            Some(format!("fenced: {why}")),
            None,
        );
        self.publish_states(vec![(name, replica, pending)]);
    }

    async fn revoke(&self, workload: String, replica: u32, epoch: u64) {
        let _changing = self.changes.lock().await;
        let akey = assignment_key(&workload, replica);
        if let Ok(Some(assignment)) = self.assignments.get(&akey)
            && assignment.epoch == epoch
        {
            let removed = self.assignments.remove(&akey).map(|_| ());
            if let Err(error) = removed.and(self.store.flush().await) {
                tracing::error!(%workload, replica, %error, "could not forget a revoked replica");
                return;
            }
        }
        if let Ok(containers) = self.runtime.list_managed(&self.info.name).await {
            for container in containers
                .iter()
                .filter(|c| c.workload == workload && c.replica == replica)
            {
                match self.runtime.remove(&container.id).await {
                    Ok(()) => {
                        tracing::info!(%workload, replica, container = %container.name, "stopped a revoked replica")
                    }
                    Err(error) => {
                        tracing::warn!(%workload, replica, %error, "could not stop a revoked replica; the reconciler will")
                    }
                }
            }
        }
        self.record_event(
            "replica-revoked",
            Some(&key(&workload)),
            &format!("replica {replica} at epoch {epoch}"),
        );
    }
}

impl<R: ContainerRuntime> Node<R> {
    /// Starts a committed replica's container at its award's epoch or, for a strong
    /// replica, at `lease_epoch`, replacing a container of another epoch.
    pub(super) async fn start_at(&self, workload: String, replica: u32, lease_epoch: Option<u64>) {
        let _changing = self.changes.lock().await;
        let Ok(Some(assignment)) = self.assignments.get(&assignment_key(&workload, replica)) else {
            return;
        };
        if let Some(epoch) = lease_epoch
            && !self.holds_lease(&workload, replica, epoch)
        {
            // Fenced while this start waited for the lock.
            return;
        }
        let epoch = lease_epoch.unwrap_or(assignment.epoch);
        let containers = self
            .runtime
            .list_managed(&self.info.name)
            .await
            .unwrap_or_default();
        let mut already = false;
        for c in containers
            .iter()
            .filter(|c| c.workload == workload && c.replica == replica)
        {
            if lease_epoch.is_none()
                || (c.epoch == Some(epoch) && c.state == ContainerState::Running)
            {
                already = true;
            } else if let Err(error) = self.runtime.remove(&c.id).await {
                // Never two containers of a strong replica: no start until it is gone.
                tracing::warn!(%workload, replica, %error, "could not remove the container of an older epoch; not starting");
                return;
            }
        }
        if already {
            return;
        }
        let record = WorkloadRecord {
            spec: assignment.spec,
            created_at: crate::clock::unix_secs(),
            submitter: None,
        };
        let starting = self.observe_replica(&workload, replica, Phase::Starting, None, None, None);
        self.publish_states(vec![(workload.clone(), replica, starting)]);
        match self.launch_replica(&record, replica, epoch).await {
            Ok(id) => {
                let running =
                    self.observe_replica(&workload, replica, Phase::Running, None, None, Some(id));
                self.publish_states(vec![(workload.clone(), replica, running)]);
                tracing::info!(%workload, replica, epoch, "replica started");
                self.record_event(
                    "replica-started",
                    Some(&key(&workload)),
                    &format!("replica {replica}"),
                );
            }
            Err(error) => {
                let failed = self.observe_replica(
                    &workload,
                    replica,
                    Phase::Failed,
                    None,
                    Some(error.to_string()),
                    None,
                );
                self.publish_states(vec![(workload.clone(), replica, failed)]);
                // The reconciler retries; the owner hears of the replica in reports either way.
                tracing::warn!(%workload, replica, %error, "could not start an awarded replica; will retry");
                self.record_event("replica-failed", Some(&key(&workload)), &error.to_string());
            }
        }
    }

    /// Whether this node holds the lease of `replica` of `name` at `epoch`, unexpired.
    pub(super) fn holds_lease(&self, name: &str, replica: u32, epoch: u64) -> bool {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name.to_owned(), replica))
            .is_some_and(|(held, until)| *held == epoch && Instant::now() < *until)
    }

    /// The epoch of the lease this node holds of `replica` of `name`, unexpired.
    pub(super) fn lease_epoch(&self, name: &str, replica: u32) -> Option<u64> {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(name.to_owned(), replica))
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(epoch, _)| *epoch)
    }

    /// Gives the watchdog a strong replica's deadline, `fence_in` from now (starting it
    /// first if need be).
    fn arm_watchdog(&self, name: &str, replica: u32, fence_in: Duration) {
        if !self.info.lease_watchdog {
            return;
        }
        let container = container_name(&WorkloadName::new(name).expect("a stored name"), replica);
        let deadline = crate::fence_watch::monotonic_ms() + fence_in.as_millis() as u64;
        let mut watchdog = self.watchdog.lock().unwrap_or_else(PoisonError::into_inner);
        if !watchdog.as_mut().is_some_and(|w| w.alive()) {
            match crate::fence_watch::Watchdog::spawn(std::path::Path::new(
                &self.info.podman_socket,
            )) {
                Ok(started) => *watchdog = Some(started),
                Err(error) => {
                    tracing::error!(%error, "could not start the lease watchdog: strong replicas are fenced by this agent alone, and run past their lease if it stops");
                    return;
                }
            }
        }
        if let Some(w) = watchdog.as_mut()
            && let Err(error) = w.arm(&container, deadline)
        {
            tracing::error!(%error, %container, "could not arm the lease watchdog");
        }
    }

    fn disarm_watchdog(&self, name: &str, replica: u32) {
        let Ok(workload) = WorkloadName::new(name) else {
            return;
        };
        let container = container_name(&workload, replica);
        if let Some(w) = self
            .watchdog
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            let _ = w.disarm(&container);
        }
    }

    /// Removes the containers of a strong replica that no lease held here covers.
    async fn stop_unleased(&self, name: &str, replica: u32) {
        let held = self.lease_epoch(name, replica);
        let Ok(containers) = self.runtime.list_managed(&self.info.name).await else {
            tracing::warn!(workload = %name, replica, "could not list containers to fence; the reconciler will");
            return;
        };
        for c in containers.iter().filter(|c| {
            c.workload == name && c.replica == replica && held.is_none_or(|e| c.epoch != Some(e))
        }) {
            if let Err(error) = self.runtime.remove(&c.id).await {
                tracing::error!(workload = %name, replica, %error, "could not stop a fenced container; the reconciler retries");
            }
        }
    }
}
