//! The node's state in the store: the only writer of sled in the agent (workloads, awards,
//! the audit log), and its health after a store failure.

use super::*;

impl<R: ContainerRuntime> Node<R> {
    /// The store, for a final flush on shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn health(&self) -> MutexGuard<'_, StoreHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a store failure that stops all writes, and passes the error on.
    pub(super) fn note_store_error(&self, error: StoreError) -> NodeError {
        if error.is_fatal_for_writes() {
            let mut health = self.health();
            if health.fault.is_none() {
                tracing::error!(error = %error, "the state store cannot take writes; taking no new work");
                health.fault = Some(error.to_string());
            }
        }
        NodeError::Store(error)
    }

    /// Refuses new work while the store cannot take writes.
    pub(super) fn check_writable(&self) -> Result<(), NodeError> {
        match &self.health().fault {
            Some(fault) => Err(NodeError::StoreUnavailable {
                fault: fault.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn record_event(&self, kind: &str, workload: Option<&str>, message: &str) {
        // The audit log is best effort: failing a placement because its log entry could
        // not be written would be worse than a gap in the log.
        if let Err(e) =
            self.store
                .record_event(crate::clock::unix_millis(), kind, workload, message)
        {
            tracing::warn!(error = %e, kind, "could not record an event");
        }
    }

    /// Writes `value` under `key` and flushes, for what another node relies on (an award
    /// about to be acknowledged, a workload taken over); a store failure is noted so that
    /// the node takes no new work, and returned as the peer-facing reason.
    pub(super) async fn put_flushed<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        tree: &Tree<T>,
        key: &str,
        value: &T,
    ) -> Result<(), NodeError> {
        self.check_writable()?;
        tree.put(key, value).map_err(|e| self.note_store_error(e))?;
        self.store
            .flush()
            .await
            .map_err(|e| self.note_store_error(e))
    }

    /// A record whose flush failed was never acknowledged: drop it from memory if sled
    /// still lets us, and otherwise make sure nothing acts on it until a restart.
    pub(super) fn forget_unpersisted(&self, key: &str) {
        if self.workloads.remove(key).is_err() {
            self.health().unpersisted.insert(key.to_owned());
        }
    }

    pub(super) fn is_unpersisted(&self, key: &str) -> bool {
        self.health().unpersisted.contains(key)
    }

    /// Stored workloads that were acknowledged (see [`StoreHealth::unpersisted`]).
    pub(super) fn desired(&self) -> Result<Vec<(String, WorkloadRecord)>, NodeError> {
        let mut records = self.workloads.list()?;
        let health = self.health();
        records.retain(|(key, _)| !health.unpersisted.contains(key));
        Ok(records)
    }

    /// The newest `limit` events of the audit log.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, NodeError> {
        Ok(self.store.events(limit)?)
    }

    /// The workload records this node holds, as stored by the negotiation loop (handed
    /// back to it at start).
    pub fn stored_records(&self) -> Result<Vec<SignedStatement>, NodeError> {
        Ok(self.records.list()?.into_iter().map(|(_, r)| r).collect())
    }

    /// The newest record of workload `key` this node holds (a tombstone for one removed).
    pub(super) fn mesh_record(&self, key: &str) -> Result<Option<MeshRecord>, NodeError> {
        Ok(self
            .records
            .get(key)?
            .and_then(|signed| MeshRecord::decode(&signed.statement)))
    }

    /// The newest generation of workload `key` this node holds, as `parley ps` shows it.
    pub(super) fn desired_of(
        &self,
        key: &str,
    ) -> Result<Option<crate::api::types::Desired>, NodeError> {
        Ok(self.mesh_record(key)?.and_then(|record| {
            let spec = record.spec.as_ref()?;
            Some(crate::api::types::Desired {
                generation: record.generation,
                spec_digest: parley_negotiation::records::spec_digest(spec),
                rolled_back: record.rollout.as_ref().and_then(|r| r.rolled_back.clone()),
                previous_image: record
                    .rollout
                    .as_ref()
                    .and_then(|r| r.previous.as_ref())
                    .map(|s| s.image.clone()),
            })
        }))
    }

    /// Every live (not removed) workload record this node holds.
    pub(super) fn live_mesh_records(&self) -> Result<Vec<MeshRecord>, NodeError> {
        Ok(self
            .records
            .list()?
            .into_iter()
            .filter_map(|(_, signed)| MeshRecord::decode(&signed.statement))
            .filter(|r| !r.is_tombstone())
            .collect())
    }

    /// The replicas this node was awarded.
    pub fn assignments(&self) -> Result<Vec<Assignment>, NodeError> {
        Ok(self
            .assignments
            .list()?
            .into_iter()
            .map(|(_, a)| a)
            .collect())
    }

    /// Deletes a workload record, flushed. Call with `changes` held.
    pub(super) async fn delete_workload_record(&self, key: &str) -> Result<(), NodeError> {
        self.workloads
            .remove(key)
            .map_err(|e| self.note_store_error(e))?;
        self.store
            .flush()
            .await
            .map_err(|e| self.note_store_error(e))
    }

    /// Stores a new workload record, flushed. Call with `changes` held.
    pub(super) async fn store_new_workload(
        &self,
        key: &str,
        name: String,
        spec: WorkloadSpec,
    ) -> Result<WorkloadRecord, NodeError> {
        let record = WorkloadRecord {
            spec,
            created_at: crate::clock::unix_secs(),
            submitter: None,
        };
        let inserted = self
            .workloads
            .insert_new(key, &record)
            .map_err(|e| self.note_store_error(e))?;
        if !inserted {
            return Err(NodeError::AlreadyExists { name });
        }
        if let Err(error) = self.store.flush().await {
            self.forget_unpersisted(key);
            return Err(self.note_store_error(error));
        }
        Ok(record)
    }

    /// Capacity not yet committed: to stored workloads alone, to awarded replicas in a
    /// mesh.
    pub fn free(&self) -> Result<Resources, NodeError> {
        // In a mesh this node hosts what it was awarded; alone, what it stores.
        let committed: Vec<Resources> = if self.info.mesh.is_some() {
            self.assignments()?
                .into_iter()
                .map(|a| a.spec.resources)
                .collect()
        } else {
            self.desired()?
                .into_iter()
                .map(|(_, record)| record.spec.resources)
                .collect()
        };
        Ok(crate::capacity::free(
            &self.info.meta.allocatable,
            committed,
        ))
    }
}
