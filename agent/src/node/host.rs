//! What the negotiation loop asks of the node ([`Host`]): store awards and takeovers,
//! start, stop and read replicas.

use parley_negotiation::messages::Phase;

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
        let _changing = self.changes.lock().await;
        let Ok(Some(assignment)) = self.assignments.get(&assignment_key(&workload, replica)) else {
            return;
        };
        let already = self
            .runtime
            .list_managed(&self.info.name)
            .await
            .is_ok_and(|cs| {
                cs.iter()
                    .any(|c| c.workload == workload && c.replica == replica)
            });
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
        match self
            .launch_replica(&record, replica, assignment.epoch)
            .await
        {
            Ok(id) => {
                let running =
                    self.observe_replica(&workload, replica, Phase::Running, None, None, Some(id));
                self.publish_states(vec![(workload.clone(), replica, running)]);
                tracing::info!(%workload, replica, epoch = assignment.epoch, "replica started");
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
