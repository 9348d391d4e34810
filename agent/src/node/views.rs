//! What the node shows: status, members, metrics, and how placements and declines read.

use super::*;

impl<R: ContainerRuntime> Node<R> {
    pub(super) fn status_of(
        &self,
        record: &WorkloadRecord,
        containers: &[ManagedContainer],
    ) -> WorkloadStatus {
        let name = record.spec.name.as_str();
        let replicas = (0..REPLICAS)
            .map(|replica| {
                let container = containers
                    .iter()
                    .find(|c| c.workload == name && c.replica == replica);
                ReplicaStatus {
                    replica,
                    epoch: 0,
                    remote: false,
                    node: self.info.name.clone(),
                    container: container.map(|c| c.name.clone()),
                    container_id: container.map(|c| c.id.clone()),
                    state: container.map(|c| c.state.clone()),
                    exit_code: container.and_then(|c| c.exit_code),
                    ..ReplicaStatus::default()
                }
            })
            .collect();
        WorkloadStatus {
            name: name.to_owned(),
            image: record.spec.image.clone(),
            command: record.spec.command.clone(),
            created_at: record.created_at,
            replicas,
            owner: None,
            desired: None,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut snapshot = crate::metrics::Snapshot {
            workloads: self.desired().map_or(0, |d| d.len() as u64),
            assignments: self.assignments.len() as u64,
            ..Default::default()
        };
        if let Some(mesh) = &self.info.mesh {
            for member in mesh.view.borrow().iter() {
                let state = match member.state {
                    MemberState::Alive => "alive",
                    MemberState::Suspect => "suspect",
                    MemberState::Dead => "dead",
                };
                *snapshot.peers.entry(state).or_insert(0) += 1;
            }
            for (refusal, count) in mesh.transport.refusals() {
                snapshot.message_errors.insert(refusal.code(), count);
            }
        }
        crate::metrics::render(self.info.mesh.as_ref().map(|m| &*m.metrics), &snapshot)
    }

    /// This node and, in a mesh, every member it knows of, this node first.
    pub fn nodes(&self) -> NodeList {
        let (id, address) = match &self.info.mesh {
            Some(mesh) => (mesh.id.clone(), Some(mesh.address.to_string())),
            None => (self.info.name.clone(), None),
        };
        let mut meta = self.info.meta.clone();
        meta.address = address;
        if let Ok(free) = self.free() {
            meta.free = free;
        }
        let mut nodes = vec![NodeEntry {
            id,
            this_node: true,
            state: MemberState::Alive,
            incarnation: None,
            meta: Some(meta),
        }];
        if let Some(mesh) = &self.info.mesh {
            let mut members: Vec<NodeEntry> = mesh
                .view
                .borrow()
                .iter()
                .map(|member| NodeEntry {
                    id: member.id.to_string(),
                    this_node: false,
                    state: member.state,
                    incarnation: Some(member.incarnation),
                    meta: member.meta.as_deref().cloned(),
                })
                .collect();
            members.sort_by(|a, b| a.id.cmp(&b.id));
            nodes.extend(members);
        }
        NodeList {
            mesh: self.info.mesh.is_some(),
            nodes,
        }
    }

    /// The agent's own status and Podman's.
    pub async fn status(&self) -> AgentStatus {
        // `parley status` answers promptly even when Podman does not: a wedged service is
        // what it is asked about then.
        let (podman, podman_error) =
            match tokio::time::timeout(STATUS_PODMAN_WAIT, self.runtime.info()).await {
                Ok(Ok(info)) => (Some(info), None),
                Ok(Err(e)) => (None, Some(e.to_string())),
                Err(_) => (
                    None,
                    Some(format!(
                        "no answer within {} s: the Podman service is wedged or overloaded \
                         (the agent keeps taking part in the mesh; its Podman calls time out)",
                        STATUS_PODMAN_WAIT.as_secs()
                    )),
                ),
            };
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: self.info.name.clone(),
            data_dir: self.info.data_dir.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            workloads: self.desired().map(|d| d.len()).unwrap_or(0),
            podman_socket: self.info.podman_socket.clone(),
            podman_origin: self.info.podman_origin,
            podman,
            podman_error,
            store_error: self.health().fault.clone(),
            host_warnings: self.info.host_warnings.clone(),
        }
    }
}

/// How long `parley status` waits for Podman's own status.
const STATUS_PODMAN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A replica as `ps` shows it in a mesh: where it was placed (`-` when not yet), and the
/// local container's state when it was placed on this node (`this_node`).
pub(super) fn placed_replica(
    this_node: &str,
    replica: u32,
    placed: Option<(&str, u64)>,
    local: Option<&ManagedContainer>,
    reported: Option<&RunState>,
) -> ReplicaStatus {
    let here = placed.is_some_and(|(node, _)| node == this_node);
    let container = local.filter(|_| here);
    ReplicaStatus {
        replica,
        epoch: placed.map_or(0, |(_, epoch)| epoch),
        remote: placed.is_some() && !here,
        node: placed.map_or_else(|| "-".to_owned(), |(node, _)| node.to_owned()),
        container: container.map(|c| c.name.clone()),
        container_id: container
            .map(|c| c.id.clone())
            .or_else(|| reported.and_then(|r| r.container_id.clone())),
        state: container.map(|c| c.state.clone()),
        exit_code: container
            .and_then(|c| c.exit_code)
            .or_else(|| reported.and_then(|r| r.exit_code)),
        phase: reported.map(|r| r.phase.name().to_owned()),
        restarts: reported.map_or(0, |r| r.restarts),
        since: reported.map(|r| r.since_ms / 1000),
        reason: reported.and_then(|r| r.reason.clone()),
        spec_digest: None,
    }
}

/// The name in a `namespace/name` key.
pub(super) fn workload_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

/// One auction answer, as `parley explain` shows it.
pub(super) fn node_answer(node: &str, answer: &Answer) -> NodeAnswer {
    let (outcome, reason, detail) = match answer {
        Answer::Bid { score } => ("bid", None, Some(format!("score {score}"))),
        Answer::Declined(reason) => (
            "declined",
            Some(reason.code().to_owned()),
            Some(describe_decline(reason)),
        ),
        Answer::Excluded(why) => ("excluded", Some((*why).to_owned()), None),
        Answer::NoAnswer => ("no-answer", None, None),
    };
    NodeAnswer {
        node: node.to_owned(),
        outcome: outcome.to_owned(),
        reason,
        detail,
    }
}

pub(super) fn describe_decline(reason: &DeclineReason) -> String {
    let mib = |bytes: u64| bytes >> 20;
    let cpus = |millis: u64| millis as f64 / 1000.0;
    match reason {
        DeclineReason::InsufficientCpu {
            free_millis,
            needed_millis,
        } => format!(
            "needs {} CPUs, {} free",
            cpus(*needed_millis),
            cpus(*free_millis)
        ),
        DeclineReason::InsufficientMemory {
            free_bytes,
            needed_bytes,
        } => format!(
            "needs {} MiB, {} MiB free",
            mib(*needed_bytes),
            mib(*free_bytes)
        ),
        DeclineReason::ConstraintMismatch { key, wanted, found } => match found {
            Some(found) => format!("wants {key}={wanted}, the node has {key}={found}"),
            None => format!("wants {key}={wanted}, the node has no {key} label"),
        },
        DeclineReason::WrongArch { wanted, found } => {
            format!("wants arch {wanted}, the node is {found}")
        }
        DeclineReason::AlreadyHostsReplica => "already hosts a replica of it".to_owned(),
        DeclineReason::Draining => "draining: takes no new work".to_owned(),
        DeclineReason::PolicyDenied => "policy forbids it".to_owned(),
        DeclineReason::TooManyReservations { held } => {
            format!("holds too many reservations ({held} for this owner); retry later")
        }
        DeclineReason::DiskFull {
            available_bytes,
            reserve_bytes,
        } => format!(
            "disk full: {} MiB left for containers, below the {} MiB reserve",
            available_bytes >> 20,
            reserve_bytes >> 20
        ),
    }
}

pub(super) fn assignment_key(workload: &str, replica: u32) -> String {
    format!("{}#{replica}", key(workload))
}
