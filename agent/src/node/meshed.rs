//! The node in a mesh: placing, removing, listing through the negotiation loop
//! ([`MeshHandle`]), taking up owned workloads after a restart, join tokens.

use super::*;

impl<R: ContainerRuntime> Node<R> {
    /// Hands the workloads this node owned before a restart back to the mesh, which
    /// adopts their running replicas and places what is missing.
    pub async fn resume_ownership(&self) -> Result<(), NodeError> {
        let Some(mesh) = &self.info.mesh else {
            return Ok(());
        };
        for (key, record) in self.desired()? {
            let request = PlacementRequest {
                submitter: record.submitter,
                ..PlacementRequest::for_spec(&key, &record.spec)
            };
            mesh.commands
                .send(Command::Adopt(Box::new(request)))
                .await
                .map_err(|_| NodeError::MeshStopped)?;
        }
        Ok(())
    }

    /// Stores a workload this node now owns and hands it to the mesh to place.
    pub(super) async fn place_in_mesh(
        &self,
        mesh: &MeshHandle,
        spec: WorkloadSpec,
    ) -> Result<WorkloadStatus, NodeError> {
        mesh.policy
            .check(&mesh.id, Action::Submit, DEFAULT_NAMESPACE)?;
        if !spec.consistency.is_eventual() {
            // Fewer acceptors than this would make one agent's loss (or two's) stop the
            // replica from ever failing over: refused now rather than found out then.
            // Only agents that keep lease registers count (older ones cannot accept).
            let needed = parley_negotiation::register::DEFAULT_ACCEPTORS;
            let live = 1 + mesh
                .view
                .borrow()
                .iter()
                .filter(|m| {
                    m.state == parley_negotiation::messages::MemberState::Alive
                        && *m.id != *mesh.id
                        && m.meta.as_ref().is_some_and(|meta| meta.lease_registers)
                })
                .count();
            if live < needed {
                return Err(NodeError::TooFewForStrong { live, needed });
            }
        }
        let name = spec.name.to_string();
        let key = key(&name);
        // Submitted on another node (whose records reached this one): one name, one
        // workload, whoever holds it.
        if self.mesh_record(&key)?.is_some_and(|r| !r.is_tombstone()) {
            return Err(NodeError::AlreadyExists { name });
        }
        let _changing = self.changes.lock().await;
        let record = self.store_new_workload(&key, name.clone(), spec).await?;
        let spec = &record.spec;
        let request = PlacementRequest::for_spec(&key, spec);
        if mesh
            .commands
            .send(Command::Place(Box::new(request)))
            .await
            .is_err()
        {
            return Err(NodeError::MeshStopped);
        }
        tracing::info!(workload = %name, replicas = spec.replicas, "workload accepted; placing it across the mesh");
        self.record_event(
            "workload-accepted",
            Some(&key),
            &format!(
                "placing {} replica(s) of {} across the mesh",
                spec.replicas, spec.image
            ),
        );
        Ok(WorkloadStatus {
            name,
            image: spec.image.clone(),
            command: spec.command.clone(),
            created_at: record.created_at,
            replicas: Vec::new(),
            owner: Some(mesh.id.clone()),
            desired: None,
        })
    }

    /// Forgets a workload this node owns; the mesh revokes its replicas wherever they run.
    pub(super) async fn remove_from_mesh(
        &self,
        mesh: &MeshHandle,
        name: &str,
    ) -> Result<(), NodeError> {
        mesh.policy
            .check(&mesh.id, Action::Remove, DEFAULT_NAMESPACE)?;
        let key = key(name);
        if self.workloads.get(&key)?.is_none() || self.is_unpersisted(&key) {
            // Recorded here (submitted anywhere, its owner up or down), or owned by a
            // member of an older version: the tombstone written here reaches the owner
            // and every replica whenever they are reachable.
            let recorded = self.mesh_record(&key)?.is_some_and(|r| !r.is_tombstone());
            let owned_elsewhere = recorded
                || self
                    .mesh_workloads(mesh)
                    .await
                    .iter()
                    .any(|(owner, w)| owner != &mesh.id && w.workload == key);
            if !owned_elsewhere {
                return Err(NodeError::NotFound {
                    name: name.to_owned(),
                });
            }
            mesh.commands
                .send(Command::RemoveRemote {
                    workload: key.clone(),
                })
                .await
                .map_err(|_| NodeError::MeshStopped)?;
            tracing::info!(workload = %name, "workload removed; its tombstone is spreading to every node");
            self.record_event(
                "workload-remove-requested",
                Some(&key),
                "removed here; its owner and the nodes running it stop it when the removal reaches them",
            );
            return Ok(());
        }
        let _changing = self.changes.lock().await;
        self.delete_workload_record(&key).await?;
        if mesh
            .commands
            .send(Command::Remove(key.clone()))
            .await
            .is_err()
        {
            return Err(NodeError::MeshStopped);
        }
        tracing::info!(workload = %name, "workload removed; revoking its replicas");
        self.record_event(
            "workload-removed",
            Some(&key),
            "revoking its replicas across the mesh",
        );
        Ok(())
    }

    /// Every workload the alive members own, as their owners report them.
    pub(super) async fn mesh_workloads(&self, mesh: &MeshHandle) -> Vec<(String, OwnedWorkload)> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if mesh
            .commands
            .send(Command::ListMesh { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Workloads this node owns, with where their replicas were placed; those other
    /// members own, as their owners report them; and any replica this node runs that
    /// neither covers.
    pub(super) async fn list_in_mesh(&self, mesh: &MeshHandle) -> Result<WorkloadList, NodeError> {
        mesh.policy
            .check(&mesh.id, Action::List, DEFAULT_NAMESPACE)?;
        let (containers, runtime_error) = match self.runtime.list_managed(&self.info.name).await {
            Ok(containers) => (containers, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let local = |name: &str, replica: u32| {
            containers
                .iter()
                .find(|c| c.workload == name && c.replica == replica)
        };
        // Every owner's report, this node's included: where each replica runs, and what
        // the node running it last said of it.
        let reports = self.mesh_workloads(mesh).await;
        type Seen<'a> = (&'a str, u64, Option<&'a RunState>, Option<&'a String>);
        let states: HashMap<(&str, u32), Seen<'_>> = reports
            .iter()
            .flat_map(|(_, w)| {
                w.placements.iter().map(|p| {
                    (
                        (w.workload.as_str(), p.replica),
                        (
                            p.node.as_str(),
                            p.epoch,
                            p.state.as_ref(),
                            p.spec_digest.as_ref(),
                        ),
                    )
                })
            })
            .collect();
        let seen = |key: &str, replica: u32, placed: Option<(&str, u64)>| {
            let (node, epoch, state, digest) = states.get(&(key, replica))?;
            (placed == Some((*node, *epoch))).then_some((*state, *digest))
        };
        let reported = |key: &str, replica: u32, placed: Option<(&str, u64)>| {
            seen(key, replica, placed).and_then(|(state, _)| state)
        };
        let digest_of = |key: &str, replica: u32, placed: Option<(&str, u64)>| {
            seen(key, replica, placed)
                .and_then(|(_, digest)| digest)
                .cloned()
        };
        let mut workloads = Vec::new();
        let mut listed = std::collections::BTreeSet::new();
        for (key, record) in self.desired()? {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let asked = mesh
                .commands
                .send(Command::Placements {
                    workload: key.clone(),
                    reply,
                })
                .await;
            let placements = match asked {
                Ok(()) => answer.await.unwrap_or_default(),
                Err(_) => BTreeMap::new(),
            };
            // The newest generation, which a scale on any node may have written.
            let spec = self
                .mesh_record(&key)?
                .and_then(|r| r.spec)
                .unwrap_or(record.spec);
            let name = spec.name.to_string();
            let replicas = (0..spec.replicas)
                .map(|replica| {
                    let placed = placements.get(&replica).map(|(n, e)| (n.as_str(), *e));
                    let state = reported(&key, replica, placed);
                    ReplicaStatus {
                        spec_digest: digest_of(&key, replica, placed),
                        ..placed_replica(&mesh.id, replica, placed, local(&name, replica), state)
                    }
                })
                .collect();
            listed.insert(name.clone());
            workloads.push(WorkloadStatus {
                name,
                image: spec.image.clone(),
                command: spec.command.clone(),
                created_at: record.created_at,
                replicas,
                owner: Some(mesh.id.clone()),
                desired: None,
            });
        }
        // Workloads owned elsewhere, as their owners report them.
        for (owner, owned) in &reports {
            let name = workload_name(&owned.workload).to_owned();
            if *owner == mesh.id || !listed.insert(name.clone()) {
                continue;
            }
            let replicas = (0..owned.replicas)
                .map(|replica| {
                    let placed = owned
                        .placements
                        .iter()
                        .find(|p| p.replica == replica)
                        .map(|p| (p.node.as_str(), p.epoch));
                    let state = reported(&owned.workload, replica, placed);
                    ReplicaStatus {
                        spec_digest: digest_of(&owned.workload, replica, placed),
                        ..placed_replica(&mesh.id, replica, placed, local(&name, replica), state)
                    }
                })
                .collect();
            workloads.push(WorkloadStatus {
                name,
                image: owned.image.clone(),
                command: Vec::new(),
                created_at: 0,
                replicas,
                owner: Some(owner.clone()),
                desired: None,
            });
        }
        // Replicas this node runs for workloads no answer covered.
        let mut others: BTreeMap<String, WorkloadStatus> = BTreeMap::new();
        for assignment in self.assignments()? {
            let name = assignment.spec.name.to_string();
            if listed.contains(&name) {
                continue;
            }
            let container = local(&name, assignment.replica);
            let state = self.local_state(&name, assignment.replica);
            others
                .entry(name.clone())
                .or_insert_with(|| WorkloadStatus {
                    name: name.clone(),
                    image: assignment.spec.image.clone(),
                    command: assignment.spec.command.clone(),
                    created_at: assignment.assigned_at_ms / 1000,
                    replicas: Vec::new(),
                    owner: None,
                    desired: None,
                })
                .replicas
                .push(placed_replica(
                    &mesh.id,
                    assignment.replica,
                    Some((mesh.id.as_str(), assignment.epoch)),
                    container,
                    state.as_ref(),
                ));
        }
        // Recorded workloads no owner reported: their owner is down and no successor
        // has taken them up yet, or none of their replicas was placed.
        for record in self.live_mesh_records()? {
            let Some(spec) = record.spec else { continue };
            let name = spec.name.to_string();
            if others.contains_key(&name) || !listed.insert(name.clone()) {
                continue;
            }
            let replicas = (0..spec.replicas)
                .map(|replica| placed_replica(&mesh.id, replica, None, None, None))
                .collect();
            workloads.push(WorkloadStatus {
                name,
                image: spec.image.clone(),
                command: spec.command.clone(),
                created_at: record.written_at_ms / 1000,
                replicas,
                owner: None,
                desired: None,
            });
        }
        workloads.extend(others.into_values());
        for workload in &mut workloads {
            workload.desired = self.desired_of(&key(&workload.name))?;
        }
        Ok(WorkloadList {
            workloads,
            runtime_error,
        })
    }

    /// Revokes the key of node `name`, on the agent that holds the root key: stored,
    /// refused from now on by this node's handshakes and renewals, and sent to every
    /// member, which refuse it too.
    pub async fn revoke_node(
        &self,
        name: &str,
    ) -> Result<crate::api::types::RevocationIssued, NodeError> {
        let (mesh, enrollment) = self.issuer("revoke node keys")?;
        let id = format!("spiffe://{}/node/{name}", enrollment.trust_domain());
        let revocation = enrollment
            .revoke(name, mesh.transport.peer_key(&id))
            .await?;
        if let Err(error) = mesh.transport.revoke(revocation.clone()) {
            // Signed with this node's own root a moment ago: cannot fail to verify.
            tracing::error!(%error, "a revocation made here does not verify");
        }
        mesh.commands
            .send(Command::Revoke(revocation.clone()))
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        tracing::warn!(subject = %revocation.subject, key = %revocation.public_key, "revoked a node key");
        self.record_event(
            "key-revoked",
            None,
            &format!("{} (key {})", revocation.subject, revocation.public_key),
        );
        Ok(crate::api::types::RevocationIssued {
            subject: revocation.subject,
            public_key: revocation.public_key,
            revoked_at: revocation.revoked_at,
        })
    }

    /// On an issuer: applies and spreads again the revocations it made before a restart
    /// (members that restarted meanwhile forgot them).
    pub async fn resume_revocations(&self) {
        let Ok((mesh, enrollment)) = self.issuer("spread revocations") else {
            return;
        };
        let revocations = match enrollment.revocations() {
            Ok(revocations) => revocations,
            Err(error) => {
                tracing::error!(%error, "cannot read the revocations made here");
                return;
            }
        };
        for revocation in revocations {
            let _ = mesh.transport.revoke(revocation.clone());
            if mesh
                .commands
                .send(Command::Revoke(revocation))
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// This agent's mesh and enrollment service, or why it cannot `what`.
    fn issuer(
        &self,
        what: &str,
    ) -> Result<(&MeshHandle, &Arc<crate::enroll::join::Enrollment>), NodeError> {
        let Some(mesh) = &self.info.mesh else {
            return Err(NodeError::NotIssuer(format!(
                "this agent is not in a mesh (no `listen`); only the mesh agent that holds \
                 the root key can {what}"
            )));
        };
        let Some(enrollment) = &mesh.enrollment else {
            return Err(NodeError::NotIssuer(format!(
                "this agent ({}) does not hold its trust domain's root key, so it cannot \
                 {what}; ask the agent whose identity directory holds root.key",
                mesh.id
            )));
        };
        Ok((mesh, enrollment))
    }

    /// Makes a one-time join token valid for `ttl_secs`, on an agent that holds its trust
    /// domain's root key.
    pub async fn create_join_token(
        &self,
        ttl_secs: u64,
        node: &str,
        replace: bool,
    ) -> Result<JoinTokenIssued, NodeError> {
        let Some(mesh) = &self.info.mesh else {
            return Err(NodeError::NotIssuer(
                "this agent is not in a mesh (no `listen`); join tokens come from a mesh agent \
                 that holds the root key"
                    .to_owned(),
            ));
        };
        let Some(enrollment) = &mesh.enrollment else {
            return Err(NodeError::NotIssuer(format!(
                "this agent ({}) does not hold its trust domain's root key, so it cannot \
                 enroll nodes; ask for a token on the agent whose identity directory holds \
                 root.key",
                mesh.id
            )));
        };
        let token = enrollment.create_token(ttl_secs, node, replace).await?;
        tracing::info!(token = %token.id, node, replace, ttl_secs, "join token issued");
        self.record_event(
            "join-token-issued",
            None,
            &format!(
                "token {} enrolls node {node}{} for {ttl_secs} s",
                token.id,
                if replace {
                    ", replacing its holder"
                } else {
                    ""
                }
            ),
        );
        Ok(JoinTokenIssued {
            trust_domain: token.trust_domain.clone(),
            node: node.to_owned(),
            expires_at: crate::clock::unix_secs().saturating_add(ttl_secs),
            address: mesh.address.to_string(),
            token: token.to_string(),
        })
    }
}
