//! The reconcile pass: what the store wants against what Podman runs, fixed item by
//! item (a failed item is logged and retried, never fatal).

use super::*;

impl<R: ContainerRuntime> Node<R> {
    /// One reconcile pass: start what is stored but not running, restore workloads whose
    /// containers outlived their store records (after `--reset-state`, say), and remove
    /// duplicates and containers nothing accounts for. Failures are logged per item and
    /// retried on the next pass; the pass itself fails only when Podman or the store
    /// cannot be read at all.
    pub async fn reconcile(&self) -> Result<ReconcileReport, NodeError> {
        let _changing = self.changes.lock().await;
        let mut desired: HashMap<String, WorkloadRecord> = self
            .desired()?
            .into_iter()
            .map(|(_, record)| (record.spec.name.to_string(), record))
            .collect();
        let actual = self.runtime.list_managed(&self.info.name).await?;
        let mut report = ReconcileReport::default();

        for container in &actual {
            if self.info.mesh.is_none()
                && !desired.contains_key(&container.workload)
                && let Some(record) = self.restore_from_label(container)
            {
                report.restored += 1;
                desired.insert(container.workload.clone(), record);
            }
        }

        let mut by_replica: BTreeMap<(String, u32), Vec<&ManagedContainer>> = BTreeMap::new();
        for container in &actual {
            by_replica
                .entry((container.workload.clone(), container.replica))
                .or_default()
                .push(container);
        }
        // In a mesh this node runs what it was awarded; alone, replica 0 of what it stores.
        let wanted: BTreeMap<(String, u32), (WorkloadRecord, u64)> = if self.info.mesh.is_some() {
            self.assignments
                .list()?
                .into_iter()
                .map(|(_, a)| {
                    let record = WorkloadRecord {
                        spec: a.spec,
                        created_at: a.assigned_at_ms / 1000,
                        submitter: None,
                    };
                    ((record.spec.name.to_string(), a.replica), (record, a.epoch))
                })
                .collect()
        } else {
            desired
                .iter()
                .flat_map(|(name, record)| {
                    (0..REPLICAS).map(move |replica| ((name.clone(), replica), (record.clone(), 0)))
                })
                .collect()
        };
        for ((workload, replica), mut containers) in by_replica {
            if wanted.contains_key(&(workload.clone(), replica)) {
                // Keep one container per replica, preferring one that runs.
                containers.sort_by_key(|c| c.state != ContainerState::Running);
                containers.remove(0);
            }
            for extra in containers {
                match self.runtime.remove(&extra.id).await {
                    Ok(()) => {
                        tracing::info!(workload = %workload, container = %extra.name, "removed a container that is not wanted");
                        self.record_event(
                            "container-removed",
                            Some(&key(&workload)),
                            &format!("unwanted container {}", extra.name),
                        );
                        report.removed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(workload = %workload, container = %extra.name, error = %e, "could not remove an unwanted container; will retry");
                        report.failed += 1;
                    }
                }
            }
        }

        if self.health().fault.is_some() {
            // Starting containers the store cannot account for would outlive a restart
            // that forgets them; wait until the store takes writes again.
            return Ok(report);
        }
        for ((name, replica), (record, epoch)) in &wanted {
            let replica = *replica;
            {
                let present = actual
                    .iter()
                    .filter(|c| &c.workload == name && c.replica == replica)
                    .min_by_key(|c| c.state != ContainerState::Running);
                if let Some(container) = present {
                    let restart = container.state == ContainerState::Exited
                        && record.spec.restart.restarts(container.exit_code);
                    if !restart {
                        report.adopted += 1;
                        continue;
                    }
                    let exit = container
                        .exit_code
                        .map_or_else(|| "unknown".to_owned(), |code| code.to_string());
                    match self.runtime.start(&container.id).await {
                        Ok(()) => {
                            tracing::info!(workload = %name, replica, exit_code = %exit, "restarted an exited container");
                            self.record_event(
                                "container-restarted",
                                Some(&key(name)),
                                &format!("{} exited with code {exit}", container.name),
                            );
                            report.restarted += 1;
                        }
                        Err(e) => {
                            tracing::warn!(workload = %name, replica, error = %e, "could not restart an exited container; will retry");
                            report.failed += 1;
                        }
                    }
                    continue;
                }
                match self.launch_replica(record, replica, *epoch).await {
                    Ok(_) => {
                        tracing::info!(workload = %name, replica, "started a missing container");
                        self.record_event(
                            "container-started",
                            Some(&key(name)),
                            "replaced a missing container",
                        );
                        report.started += 1;
                    }
                    Err(e) => {
                        tracing::warn!(workload = %name, replica, error = %e, "could not start a missing container; will retry");
                        report.failed += 1;
                    }
                }
            }
        }
        self.renew_workload_identities(&wanted, &actual);
        Ok(report)
    }

    /// Re-creates the store record of a container's workload from the spec in its label,
    /// if it has a valid one. The container is then adopted like any other.
    pub(super) fn restore_from_label(
        &self,
        container: &ManagedContainer,
    ) -> Option<WorkloadRecord> {
        let spec: WorkloadSpec = serde_json::from_str(container.spec_label.as_deref()?).ok()?;
        if spec.name.as_str() != container.workload || spec.validate().is_err() {
            return None;
        }
        let record = WorkloadRecord {
            spec,
            created_at: crate::clock::unix_secs(),
            submitter: None,
        };
        let key = key(&container.workload);
        match self.workloads.insert_new(&key, &record) {
            Ok(_) => {
                if let Err(e) = self.store.flush_blocking() {
                    self.note_store_error(e);
                    return None;
                }
                tracing::info!(workload = %container.workload, container = %container.name, "restored a workload from its container's labels");
                self.record_event(
                    "workload-restored",
                    Some(&key),
                    &format!("from the labels of container {}", container.name),
                );
                Some(record)
            }
            Err(e) => {
                self.note_store_error(e);
                None
            }
        }
    }
}
