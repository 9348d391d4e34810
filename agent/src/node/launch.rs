//! Starting replicas: the container spec from a workload, images, workload identities,
//! and reading a container's output.

use super::*;
use crate::enroll::workload::IssueError;
use parley_negotiation::messages::SignedStatement;

/// The engine's name for volume `volume` of replica `replica` of `workload`: one per
/// replica, and no two workloads share one.
pub fn volume_name(workload: &str, replica: u32, volume: &str) -> String {
    format!("parley-{workload}-{replica}-{volume}")
}

impl<R: ContainerRuntime> Node<R> {
    pub(super) fn container_spec(
        &self,
        record: &WorkloadRecord,
        replica: u32,
        epoch: u64,
    ) -> ContainerSpec {
        let spec = &record.spec;
        let mut labels = BTreeMap::from([
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::NODE.to_owned(), self.info.name.clone()),
            (labels::WORKLOAD.to_owned(), spec.name.to_string()),
            (labels::REPLICA.to_owned(), replica.to_string()),
            (labels::EPOCH.to_owned(), epoch.to_string()),
        ]);
        match serde_json::to_string(spec) {
            Ok(json) if json.len() <= MAX_SPEC_LABEL_BYTES => {
                labels.insert(labels::SPEC.to_owned(), json);
            }
            _ => {
                tracing::debug!(workload = %spec.name, "spec too large for a label; this workload cannot be restored from Podman alone")
            }
        }
        ContainerSpec {
            name: container_name(&spec.name, replica),
            image: spec.image.clone(),
            command: spec.command.clone(),
            // A strong replica learns its fencing token: storage and peers can refuse a
            // writer whose epoch is older than one they have seen.
            env: spec
                .env
                .iter()
                .map(|v| (v.key.clone(), v.value.clone()))
                .chain(
                    (!spec.consistency.is_eventual())
                        .then(|| ("PARLEY_EPOCH".to_owned(), epoch.to_string())),
                )
                .collect(),
            labels,
            stop_timeout_secs: spec.stop_timeout_secs.into(),
            mounts: self
                .info
                .identities
                .iter()
                .map(|identities| BindMount {
                    source: identities.dir(spec.name.as_str(), replica),
                    target: crate::enroll::workload::MOUNT_TARGET.to_owned(),
                    read_only: true,
                })
                .collect(),
            volumes: spec
                .volumes
                .iter()
                .map(|volume| VolumeSpec {
                    name: volume_name(spec.name.as_str(), replica, &volume.name),
                    target: volume.path.clone(),
                    labels: BTreeMap::from([
                        (labels::MANAGED.to_owned(), "true".to_owned()),
                        (labels::WORKLOAD.to_owned(), spec.name.to_string()),
                        (labels::REPLICA.to_owned(), replica.to_string()),
                    ]),
                })
                .collect(),
            limits: (self.info.enforce_limits && spec.resources != Resources::default())
                .then_some(spec.resources),
        }
    }

    /// Starts an awarded replica's container: pulls its image, issues its workload
    /// identity (due or missing), creates and starts it.
    pub(super) async fn launch_replica(
        &self,
        record: &WorkloadRecord,
        replica: u32,
        epoch: u64,
    ) -> Result<String, LaunchError> {
        self.runtime.ensure_image(&record.spec.image).await?;
        let name = record.spec.name.as_str();
        if let Some(identities) = &self.info.identities {
            let now = crate::clock::unix_secs();
            // A strong replica's identity states the lease epoch it runs at.
            let lease_epoch = (!record.spec.consistency.is_eventual()).then_some(epoch);
            match self.grant_of(name, replica) {
                Some(grant) => {
                    if identities.due(name, replica, now, lease_epoch) {
                        identities.issue(
                            DEFAULT_NAMESPACE,
                            name,
                            replica,
                            now,
                            &grant,
                            lease_epoch,
                        )?;
                    }
                }
                None => {
                    identities
                        .withhold(name, replica)
                        .map_err(|e| IssueError::Write {
                            name: name.to_owned(),
                            reason: e.to_string(),
                        })?;
                    tracing::warn!(
                        workload = name,
                        replica,
                        "the owner sent no grant of this replica (it runs an older version): \
                         the replica runs without a workload identity"
                    );
                }
            }
        }
        let id = self
            .runtime
            .create_and_start(&self.container_spec(record, replica, epoch))
            .await?;
        Ok(id)
    }

    /// Renews the workload identities of running replicas past half their lifetime, and
    /// deletes those of replicas this node no longer runs.
    pub(super) fn renew_workload_identities(
        &self,
        wanted: &BTreeMap<(String, u32), (WorkloadRecord, u64)>,
        running: &[ManagedContainer],
    ) {
        let Some(identities) = &self.info.identities else {
            return;
        };
        let now = crate::clock::unix_secs();
        for ((name, replica), (record, _)) in wanted {
            let Some(container) = running
                .iter()
                .find(|c| &c.workload == name && c.replica == *replica)
            else {
                continue;
            };
            let Some(grant) = self.grant_of(name, *replica) else {
                continue;
            };
            // Renewed at the epoch the container runs at (its label).
            let lease_epoch = if record.spec.consistency.is_eventual() {
                None
            } else {
                container.epoch
            };
            if identities.due(name, *replica, now, lease_epoch) {
                match identities.issue(DEFAULT_NAMESPACE, name, *replica, now, &grant, lease_epoch)
                {
                    Ok(until) => {
                        tracing::info!(workload = %name, replica, valid_until = until, "workload identity renewed");
                    }
                    Err(error) => {
                        tracing::warn!(workload = %name, replica, %error, "could not renew a workload identity; will retry");
                    }
                }
            }
        }
        for (name, replica) in identities.present() {
            if !wanted.contains_key(&(name.clone(), replica)) {
                identities.remove(&name, replica);
            }
        }
    }

    /// The owner's grant of replica `replica` of `name` to this node, as stored with its
    /// award.
    fn grant_of(&self, name: &str, replica: u32) -> Option<SignedStatement> {
        self.assignments
            .get(&assignment_key(name, replica))
            .ok()
            .flatten()
            .and_then(|assignment| assignment.grant)
    }

    /// Reads a container's output here. When following, the window ends a second before
    /// now (a line can take that long to reach the log), and the answer says where.
    pub(super) async fn local_logs(
        &self,
        id: &str,
        mut window: LogWindow,
    ) -> Result<LogChunk, RuntimeError> {
        if window.follow && window.until_micros.is_none() {
            let now = crate::clock::unix_micros();
            window.until_micros = Some(now.saturating_sub(1_000_000));
        }
        let mut chunk = self.runtime.logs(id, &window).await?;
        chunk.until_micros = window.until_micros.filter(|_| window.follow);
        Ok(chunk)
    }
}
