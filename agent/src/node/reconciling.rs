//! The reconcile pass: what the store wants against what Podman runs, fixed item by
//! item (a failed item is logged and retried, never fatal). What to do is decided by
//! [`plan`], a pure function of the two; the pass applies it.

use parley_negotiation::messages::Phase;

use super::*;

/// What one reconcile pass does, decided from what is wanted and what runs alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// Containers nothing wants: of no wanted replica, or a wanted replica's extras.
    pub remove: Vec<&'a ManagedContainer>,
    /// Exited containers whose workload's restart policy says to start them again.
    pub restart: Vec<&'a ManagedContainer>,
    /// Wanted replicas with no container: (workload name, replica).
    pub start: Vec<(String, u32)>,
    /// Wanted replicas whose container is there and stays as it is.
    pub adopt: usize,
}

/// Decides a reconcile pass. Each wanted replica keeps one container, a running one if
/// it has one; every other container goes. Nothing is started or restarted unless
/// `may_start` (a store that cannot take writes would forget what was started).
pub(crate) fn plan<'a>(
    wanted: &BTreeMap<(String, u32), (WorkloadRecord, u64)>,
    actual: &'a [ManagedContainer],
    may_start: bool,
) -> Plan<'a> {
    let mut by_replica: BTreeMap<(&str, u32), Vec<&'a ManagedContainer>> = BTreeMap::new();
    for container in actual {
        by_replica
            .entry((container.workload.as_str(), container.replica))
            .or_default()
            .push(container);
    }
    let mut plan = Plan::default();
    let mut kept: BTreeMap<(&str, u32), &'a ManagedContainer> = BTreeMap::new();
    for ((workload, replica), mut containers) in by_replica {
        if wanted.contains_key(&(workload.to_owned(), replica)) {
            // Keep one container per replica, preferring one that runs.
            containers.sort_by_key(|c| c.state != ContainerState::Running);
            kept.insert((workload, replica), containers.remove(0));
        }
        plan.remove.extend(containers);
    }
    if !may_start {
        return plan;
    }
    for ((name, replica), (record, _)) in wanted {
        match kept.get(&(name.as_str(), *replica)) {
            Some(container)
                if container.state == ContainerState::Exited
                    && record.spec.restart.restarts(container.exit_code) =>
            {
                plan.restart.push(container);
            }
            Some(_) => plan.adopt += 1,
            None => plan.start.push((name.clone(), *replica)),
        }
    }
    plan
}

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

        // In a mesh this node runs what it was awarded; alone, replica 0 of what it stores.
        let mut wanted: BTreeMap<(String, u32), (WorkloadRecord, u64)> = if self.info.mesh.is_some()
        {
            self.assignments
                .list()?
                .into_iter()
                .filter_map(|(_, a)| {
                    // A strong replica is wanted only under a lease held here, at its
                    // epoch: unleased, its container goes (after a restart, all of them).
                    let epoch = if a.spec.consistency.is_eventual() {
                        a.epoch
                    } else {
                        self.lease_epoch(a.spec.name.as_str(), a.replica)?
                    };
                    let record = WorkloadRecord {
                        spec: a.spec,
                        created_at: a.assigned_at_ms / 1000,
                        submitter: None,
                    };
                    Some(((record.spec.name.to_string(), a.replica), (record, epoch)))
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
        // Starting containers the store cannot account for would outlive a restart that
        // forgets them: with the store faulty, only removals happen until it takes
        // writes again.
        let may_start = self.health().fault.is_none();
        // A strong replica's container of another epoch than its lease's never stays
        // beside it: gone before anything is kept or started.
        let (stale, actual): (Vec<ManagedContainer>, Vec<ManagedContainer>) =
            actual.into_iter().partition(|c| {
                wanted
                    .get(&(c.workload.clone(), c.replica))
                    .is_some_and(|(record, epoch)| {
                        !record.spec.consistency.is_eventual() && c.epoch != Some(*epoch)
                    })
            });
        for old in &stale {
            match self.runtime.remove(&old.id).await {
                Ok(()) => report.removed += 1,
                Err(e) => {
                    tracing::warn!(workload = %old.workload, container = %old.name, error = %e, "could not remove a strong replica's container of an older epoch; will retry, and start nothing beside it");
                    report.failed += 1;
                    wanted.remove(&(old.workload.clone(), old.replica));
                }
            }
        }
        let plan = plan(&wanted, &actual, may_start);
        for extra in plan.remove {
            let workload = &extra.workload;
            match self.runtime.remove(&extra.id).await {
                Ok(()) => {
                    tracing::info!(workload = %workload, container = %extra.name, "removed a container that is not wanted");
                    self.record_event(
                        "container-removed",
                        Some(&key(workload)),
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
        report.adopted += plan.adopt;
        // What each wanted replica came to in this pass, for the states reported.
        let mut outcome: HashMap<(String, u32), Result<Option<String>, String>> = HashMap::new();
        for container in plan.restart {
            let (name, replica) = (&container.workload, container.replica);
            let exit = container
                .exit_code
                .map_or_else(|| "unknown".to_owned(), |code| code.to_string());
            match self.runtime.start(&container.id).await {
                Ok(()) => {
                    outcome.insert((name.clone(), replica), Ok(Some(container.id.clone())));
                    tracing::info!(workload = %name, replica, exit_code = %exit, "restarted an exited container");
                    self.record_event(
                        "container-restarted",
                        Some(&key(name)),
                        &format!("{} exited with code {exit}", container.name),
                    );
                    report.restarted += 1;
                }
                Err(e) => {
                    outcome.insert((name.clone(), replica), Err(e.to_string()));
                    tracing::warn!(workload = %name, replica, error = %e, "could not restart an exited container; will retry");
                    report.failed += 1;
                }
            }
        }
        for (name, replica) in plan.start {
            let Some((record, epoch)) = wanted.get(&(name.clone(), replica)) else {
                continue;
            };
            match self.launch_replica(record, replica, *epoch).await {
                Ok(id) => {
                    outcome.insert((name.clone(), replica), Ok(Some(id)));
                    tracing::info!(workload = %name, replica, "started a missing container");
                    self.record_event(
                        "container-started",
                        Some(&key(&name)),
                        "replaced a missing container",
                    );
                    report.started += 1;
                }
                Err(e) => {
                    outcome.insert((name.clone(), replica), Err(e.to_string()));
                    tracing::warn!(workload = %name, replica, error = %e, "could not start a missing container; will retry");
                    report.failed += 1;
                }
            }
        }
        if may_start {
            self.renew_workload_identities(&wanted, &actual);
        }
        if self.info.mesh.is_some() {
            self.note_states(&wanted, &actual, &outcome);
        }
        Ok(report)
    }

    /// Notes and reports what each replica this node was awarded came to in a pass: the
    /// outcome of a start or restart made in it, else its container's state.
    fn note_states(
        &self,
        wanted: &BTreeMap<(String, u32), (WorkloadRecord, u64)>,
        actual: &[ManagedContainer],
        outcome: &HashMap<(String, u32), Result<Option<String>, String>>,
    ) {
        let mut states = Vec::new();
        for (name, replica) in wanted.keys() {
            let container = actual
                .iter()
                .find(|c| c.workload == *name && c.replica == *replica);
            let state = match (outcome.get(&(name.clone(), *replica)), container) {
                (Some(Ok(id)), _) => {
                    // Started again in this pass: a restart of a replica seen before.
                    if self.local_state(name, *replica).is_some() {
                        let code = container.and_then(|c| c.exit_code);
                        self.observe_replica(name, *replica, Phase::Restarting, code, None, None);
                    }
                    self.observe_replica(name, *replica, Phase::Running, None, None, id.clone())
                }
                (Some(Err(reason)), _) => self.observe_replica(
                    name,
                    *replica,
                    Phase::Failed,
                    None,
                    Some(reason.clone()),
                    None,
                ),
                (None, Some(c)) => self.observe_replica(
                    name,
                    *replica,
                    super::replica_states::phase_of(c),
                    c.exit_code,
                    None,
                    Some(c.id.clone()),
                ),
                // Not started yet (the store refuses writes): it waits.
                (None, None) => {
                    self.observe_replica(name, *replica, Phase::Pending, None, None, None)
                }
            };
            states.push((name.clone(), *replica, state));
        }
        self.retain_states(|name, replica| wanted.contains_key(&(name.to_owned(), replica)));
        self.publish_states(states);
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

#[cfg(test)]
mod tests {
    use parley_negotiation::RestartPolicy;

    use super::*;

    fn container(
        workload: &str,
        replica: u32,
        state: ContainerState,
        exit: Option<i32>,
    ) -> ManagedContainer {
        ManagedContainer {
            id: format!("{workload}-{replica}-{state:?}"),
            name: format!("parley-{workload}-{replica}"),
            workload: workload.to_owned(),
            replica,
            image: "img".to_owned(),
            state,
            exit_code: exit,
            spec_label: None,
            epoch: None,
        }
    }

    fn wanted(
        entries: &[(&str, u32, RestartPolicy)],
    ) -> BTreeMap<(String, u32), (WorkloadRecord, u64)> {
        entries
            .iter()
            .map(|(name, replica, restart)| {
                let mut spec =
                    WorkloadSpec::new(WorkloadName::new(*name).unwrap(), "img", vec![], vec![])
                        .unwrap();
                spec.restart = *restart;
                let record = WorkloadRecord {
                    spec,
                    created_at: 0,
                    submitter: None,
                };
                (((*name).to_owned(), *replica), (record, 1))
            })
            .collect()
    }

    fn ids(containers: &[&ManagedContainer]) -> Vec<String> {
        containers.iter().map(|c| c.id.clone()).collect()
    }

    #[test]
    fn a_wanted_replica_keeps_one_container_preferring_a_running_one() {
        let actual = [
            container("web", 0, ContainerState::Exited, Some(0)),
            container("web", 0, ContainerState::Running, None),
            container("gone", 0, ContainerState::Running, None),
        ];
        let plan = plan(&wanted(&[("web", 0, RestartPolicy::Never)]), &actual, true);
        assert_eq!(ids(&plan.remove), ["gone-0-Running", "web-0-Exited"]);
        assert_eq!(plan.adopt, 1);
        assert!(plan.start.is_empty() && plan.restart.is_empty());
    }

    #[test]
    fn exited_containers_restart_as_their_policy_says_and_missing_ones_start() {
        let actual = [
            container("always", 0, ContainerState::Exited, Some(0)),
            container("failing", 0, ContainerState::Exited, Some(3)),
            container("job", 0, ContainerState::Exited, Some(0)),
        ];
        let wanted = wanted(&[
            ("always", 0, RestartPolicy::Always),
            ("failing", 0, RestartPolicy::OnFailure),
            ("job", 0, RestartPolicy::OnFailure),
            ("new", 0, RestartPolicy::Always),
        ]);
        let plan = plan(&wanted, &actual, true);
        assert_eq!(ids(&plan.restart), ["always-0-Exited", "failing-0-Exited"]);
        assert_eq!(plan.adopt, 1, "the job that succeeded stays exited");
        assert_eq!(plan.start, [("new".to_owned(), 0)]);
        assert!(plan.remove.is_empty());
    }

    #[test]
    fn with_the_store_faulty_only_removals_are_planned() {
        let actual = [
            container("gone", 0, ContainerState::Running, None),
            container("always", 0, ContainerState::Exited, Some(1)),
        ];
        let wanted = wanted(&[
            ("always", 0, RestartPolicy::Always),
            ("new", 0, RestartPolicy::Always),
        ]);
        let plan = plan(&wanted, &actual, false);
        assert_eq!(ids(&plan.remove), ["gone-0-Running"]);
        assert!(plan.start.is_empty() && plan.restart.is_empty());
        assert_eq!(plan.adopt, 0);
    }
}
