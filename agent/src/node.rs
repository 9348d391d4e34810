//! The agent's local workload logic: accept, list and remove workloads, and reconcile
//! what is stored with what Podman runs.
//!
//! Everything here works through the [`ContainerRuntime`] trait and the store, so the
//! logic is unit-tested against the fake runtime and end-to-end against real Podman.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use parley_negotiation::messages::{MemberState, NodeMeta, Resources};
use parley_negotiation::{SpecError, WorkloadName, WorkloadSpec};
use parley_store::records::Event;
use parley_store::{DEFAULT_NAMESPACE, Store, StoreError, Tree};

use crate::api::types::{
    AgentStatus, Assignment, JoinTokenIssued, LogsQuery, NodeAnswer, NodeEntry, NodeList,
    ReplicaExplanation, ReplicaStatus, WorkloadExplanation, WorkloadList, WorkloadLogs,
    WorkloadRecord, WorkloadStatus,
};
use crate::hostcheck::HostWarning;
use crate::mesh::{Command, Host, HostError, MeshHandle};
use crate::policy::Action;
use crate::runtime::podman::service::ServiceOrigin;
use crate::runtime::{
    BindMount, ContainerRuntime, ContainerSpec, ContainerState, ManagedContainer, RuntimeError,
    labels,
};
use crate::workload_identity::WorkloadIdentities;
use parley_negotiation::auction::{Answer, PlacementRequest};
use parley_negotiation::messages::{DeclineReason, LogChunk, LogWindow, OwnedWorkload};

/// How long the node running a replica gets to return its logs.
const LOGS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Replicas per workload an agent outside a mesh runs: each replica needs a node of its
/// own.
const REPLICAS: u32 = 1;

/// Largest spec copied into a container label. Labels let a node rebuild its store from
/// Podman; a spec beyond this (thousands of long environment values) is not worth bloating
/// every container listing for.
const MAX_SPEC_LABEL_BYTES: usize = 16 * 1024;

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The spec is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// A workload of that name is already stored.
    #[error(
        "a workload named {name} already exists; remove it first with `parley rm {name}` or choose another name"
    )]
    AlreadyExists {
        /// The name.
        name: String,
    },
    /// No workload of that name is stored.
    #[error("no workload named {name}; `parley ps` lists the workloads")]
    NotFound {
        /// The name.
        name: String,
    },
    /// More replicas than this node can place: each replica needs its own node, and an
    /// agent outside a mesh has only its own.
    #[error(
        "{name} asks for {replicas} replicas, but this agent is not in a mesh (no `listen`), \
         so it places workloads on its own host only, one replica each; use --replicas 1, or \
         join a mesh (docs/three-hosts.md)"
    )]
    TooManyReplicas {
        /// The workload.
        name: String,
        /// Replicas asked for.
        replicas: u32,
    },
    /// The workload does not fit this node: its resources or constraints.
    #[error("{name} cannot run on this node ({node}): {}", .reasons.join("; "))]
    DoesNotFit {
        /// The workload.
        name: String,
        /// This node.
        node: String,
        /// Each reason, for people (the same reasons a bidder declines with).
        reasons: Vec<String>,
    },
    /// The authorization policy refuses the request.
    #[error("refused: {0}; a grant in the policy must allow it")]
    Denied(#[from] crate::policy::Denied),
    /// No replica of the workload runs where the request can reach it.
    #[error("{name} has no replica {replica} placed{hint}")]
    ReplicaNotPlaced {
        /// The workload.
        name: String,
        /// The replica asked for (or the lowest one).
        replica: u32,
        /// What to try instead.
        hint: &'static str,
    },
    /// The node running the replica refused or failed the request, or did not answer.
    #[error("{node} did not return the logs: {message}")]
    Remote {
        /// The node asked.
        node: String,
        /// Its answer, or that none came.
        message: String,
        /// Whether its policy refused this node.
        denied: bool,
    },
    /// Join tokens come from an agent that holds the root key.
    #[error("{0}")]
    NotIssuer(String),
    /// A join token cannot be made as asked.
    #[error(transparent)]
    Token(#[from] crate::join::TokenError),
    /// The mesh's negotiation loop is not running (the agent is shutting down).
    #[error("the mesh is not running (the agent is shutting down); try again once it is back")]
    MeshStopped,
    /// The container engine failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An earlier write failure means the store takes no writes; the node refuses new
    /// work rather than start containers it could not account for.
    #[error(
        "the agent takes no new work: its state store cannot take writes ({fault}); fix that and restart the agent"
    )]
    StoreUnavailable {
        /// The failure that stopped writes.
        fault: String,
    },
}

/// Fixed facts about this node, for status reports.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name, written into container labels.
    pub name: String,
    /// Data directory.
    pub data_dir: String,
    /// Podman socket.
    pub podman_socket: String,
    /// Where the Podman service came from.
    pub podman_origin: ServiceOrigin,
    /// Problems found on the host at start (see [`crate::hostcheck`]).
    pub host_warnings: Vec<HostWarning>,
    /// What this node announces: version, arch, labels, capacity.
    pub meta: NodeMeta,
    /// The mesh, when the agent takes part in one.
    pub mesh: Option<MeshHandle>,
    /// The workload identities of the replicas this node runs (in a mesh).
    pub identities: Option<WorkloadIdentities>,
    /// Whether the engine can enforce CPU and memory limits (not rootless on cgroup v1).
    pub enforce_limits: bool,
}

/// What the node knows about its store's ability to take writes.
#[derive(Debug, Default)]
struct StoreHealth {
    /// The first write failure that means no write will succeed (full disk, I/O error):
    /// while set, the node takes no new work.
    fault: Option<String>,
    /// Workloads written to the store's memory whose flush failed: they were never
    /// acknowledged, will not survive a restart, and must not be acted on.
    unpersisted: HashSet<String>,
}

/// The local node: store plus runtime.
pub struct Node<R> {
    info: NodeInfo,
    store: Store,
    workloads: Tree<WorkloadRecord>,
    /// Replicas awarded to this node by owners in the mesh.
    assignments: Tree<Assignment>,
    runtime: R,
    started: Instant,
    health: Mutex<StoreHealth>,
    /// Serializes changes (run, rm, reconcile) so that a reconcile pass never races a
    /// half-done `run` into creating the same container twice.
    changes: tokio::sync::Mutex<()>,
}

/// Why an awarded replica's container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Podman could not provide the image or start the container.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Its workload identity could not be issued.
    #[error(transparent)]
    Identity(#[from] crate::workload_identity::IssueError),
}

/// The store key of a workload in the default namespace.
fn key(name: &str) -> String {
    format!("{DEFAULT_NAMESPACE}/{name}")
}

impl<R: ContainerRuntime> Node<R> {
    /// A node over an open store and a runtime.
    pub fn new(info: NodeInfo, store: Store, runtime: R) -> Result<Arc<Self>, NodeError> {
        let workloads = store.workloads()?;
        let assignments = store.assignments()?;
        Ok(Arc::new(Self {
            info,
            store,
            workloads,
            assignments,
            runtime,
            started: Instant::now(),
            health: Mutex::new(StoreHealth::default()),
            changes: tokio::sync::Mutex::new(()),
        }))
    }

    /// The store, for a final flush on shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn health(&self) -> MutexGuard<'_, StoreHealth> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a store failure that stops all writes, and passes the error on.
    fn note_store_error(&self, error: StoreError) -> NodeError {
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
    fn check_writable(&self) -> Result<(), NodeError> {
        match &self.health().fault {
            Some(fault) => Err(NodeError::StoreUnavailable {
                fault: fault.clone(),
            }),
            None => Ok(()),
        }
    }

    fn record_event(&self, kind: &str, workload: Option<&str>, message: &str) {
        // The audit log is best effort: failing a placement because its log entry could
        // not be written would be worse than a gap in the log.
        if let Err(e) =
            self.store
                .record_event(crate::clock::unix_millis(), kind, workload, message)
        {
            tracing::warn!(error = %e, kind, "could not record an event");
        }
    }

    fn container_spec(&self, record: &WorkloadRecord, replica: u32, epoch: u64) -> ContainerSpec {
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
            env: spec
                .env
                .iter()
                .map(|v| (v.key.clone(), v.value.clone()))
                .collect(),
            labels,
            stop_timeout_secs: spec.stop_timeout_secs.into(),
            mounts: self
                .info
                .identities
                .iter()
                .map(|identities| BindMount {
                    source: identities.dir(spec.name.as_str(), replica),
                    target: crate::workload_identity::MOUNT_TARGET.to_owned(),
                    read_only: true,
                })
                .collect(),
            limits: (self.info.enforce_limits && spec.resources != Resources::default())
                .then_some(spec.resources),
        }
    }

    /// Writes `value` under `key` and flushes, for what another node relies on (an award
    /// about to be acknowledged, a workload taken over); a store failure is noted so that
    /// the node takes no new work, and returned as the peer-facing reason.
    async fn put_flushed<T: serde::Serialize + serde::de::DeserializeOwned>(
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

    /// Starts an awarded replica's container: pulls its image, issues its workload
    /// identity (due or missing), creates and starts it.
    async fn launch_replica(
        &self,
        record: &WorkloadRecord,
        replica: u32,
        epoch: u64,
    ) -> Result<String, LaunchError> {
        self.runtime.ensure_image(&record.spec.image).await?;
        let name = record.spec.name.as_str();
        if let Some(identities) = &self.info.identities {
            let now = crate::clock::unix_secs();
            if identities.due(name, replica, now) {
                identities.issue(DEFAULT_NAMESPACE, name, replica, now)?;
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
    fn renew_workload_identities(
        &self,
        wanted: &BTreeMap<(String, u32), (WorkloadRecord, u64)>,
        running: &[ManagedContainer],
    ) {
        let Some(identities) = &self.info.identities else {
            return;
        };
        let now = crate::clock::unix_secs();
        for (name, replica) in wanted.keys() {
            let runs = running
                .iter()
                .any(|c| &c.workload == name && c.replica == *replica);
            if runs && identities.due(name, *replica, now) {
                match identities.issue(DEFAULT_NAMESPACE, name, *replica, now) {
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

    /// Accepts a workload and starts it. Either the workload is stored and its container
    /// runs, or nothing changed and the error says why.
    pub async fn run(&self, spec: WorkloadSpec) -> Result<WorkloadStatus, NodeError> {
        spec.validate()?;
        self.check_writable()?;
        let name = spec.name.to_string();
        let key = key(&name);
        if self.workloads.get(&key)?.is_some() {
            return Err(NodeError::AlreadyExists { name });
        }
        if let Some(mesh) = &self.info.mesh {
            return self.place_in_mesh(mesh, spec).await;
        }
        if spec.replicas > REPLICAS {
            return Err(NodeError::TooManyReplicas {
                name,
                replicas: spec.replicas,
            });
        }
        // Pulling can take long; do it before taking the lock so other requests proceed.
        self.runtime.ensure_image(&spec.image).await?;

        let _changing = self.changes.lock().await;
        // Under the lock, so that two requests cannot both take the last free capacity.
        self.check_fits(&spec)?;
        let record = self.store_new_workload(&key, name.clone(), spec).await?;

        let mut started = Vec::new();
        for replica in 0..REPLICAS {
            match self
                .runtime
                .create_and_start(&self.container_spec(&record, replica, 0))
                .await
            {
                Ok(id) => started.push(id),
                Err(error) => {
                    self.roll_back(&key, &started).await;
                    self.record_event("workload-failed", Some(&key), &error.to_string());
                    return Err(error.into());
                }
            }
        }
        tracing::info!(workload = %name, image = %record.spec.image, "workload started");
        self.record_event(
            "workload-started",
            Some(&key),
            &format!("image {}", record.spec.image),
        );
        let containers = self
            .runtime
            .list_managed(&self.info.name)
            .await
            .unwrap_or_default();
        Ok(self.status_of(&record, &containers))
    }

    /// A record whose flush failed was never acknowledged: drop it from memory if sled
    /// still lets us, and otherwise make sure nothing acts on it until a restart.
    fn forget_unpersisted(&self, key: &str) {
        if self.workloads.remove(key).is_err() {
            self.health().unpersisted.insert(key.to_owned());
        }
    }

    /// Undoes a `run` whose containers could not all start.
    async fn roll_back(&self, key: &str, started: &[String]) {
        for id in started {
            if let Err(e) = self.runtime.remove(id).await {
                tracing::warn!(workload = %key, container = %id, error = %e, "could not remove a container while rolling back");
            }
        }
        let removed = self.workloads.remove(key).map(|_| ());
        if let Err(e) = removed.and(self.store.flush().await) {
            tracing::error!(workload = %key, error = %e, "could not roll back the stored workload; the reconciler will start it instead");
        }
    }

    /// Stops and removes a workload's containers, then forgets the workload. If the
    /// containers cannot be removed, the workload stays stored and the error says why.
    pub async fn remove(&self, name: &str) -> Result<(), NodeError> {
        if let Some(mesh) = &self.info.mesh {
            return self.remove_from_mesh(mesh, name).await;
        }
        let _changing = self.changes.lock().await;
        let key = key(name);
        let stored = self.workloads.get(&key)?.is_some() && !self.is_unpersisted(&key);
        let containers = match self.runtime.list_managed(&self.info.name).await {
            Ok(containers) => containers,
            // Unknown name and no Podman: say it is unknown, the more useful answer.
            Err(_) if !stored => {
                return Err(NodeError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let ours: Vec<_> = containers.iter().filter(|c| c.workload == name).collect();
        if !stored && ours.is_empty() {
            return Err(NodeError::NotFound {
                name: name.to_owned(),
            });
        }
        // Containers first: a workload whose removal fails half-way stays stored, and the
        // reconciler restores what was already removed rather than leaking it.
        for container in ours {
            self.runtime.remove(&container.id).await?;
        }
        self.delete_workload_record(&key).await?;
        tracing::info!(workload = %name, "workload removed");
        self.record_event("workload-removed", Some(&key), "removed on request");
        Ok(())
    }

    fn is_unpersisted(&self, key: &str) -> bool {
        self.health().unpersisted.contains(key)
    }

    /// Stored workloads that were acknowledged (see [`StoreHealth::unpersisted`]).
    fn desired(&self) -> Result<Vec<(String, WorkloadRecord)>, NodeError> {
        let mut records = self.workloads.list()?;
        let health = self.health();
        records.retain(|(key, _)| !health.unpersisted.contains(key));
        Ok(records)
    }

    /// All stored workloads with the states of their containers. Works with Podman down,
    /// reporting unknown states and the reason.
    pub async fn list(&self) -> Result<WorkloadList, NodeError> {
        if let Some(mesh) = &self.info.mesh {
            return self.list_in_mesh(mesh).await;
        }
        let records = self.desired()?;
        let (containers, runtime_error) = match self.runtime.list_managed(&self.info.name).await {
            Ok(containers) => (containers, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Ok(WorkloadList {
            workloads: records
                .iter()
                .map(|(_, r)| self.status_of(r, &containers))
                .collect(),
            runtime_error,
        })
    }

    /// The newest `limit` events of the audit log.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, NodeError> {
        Ok(self.store.events(limit)?)
    }

    fn status_of(
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
        }
    }

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
    async fn delete_workload_record(&self, key: &str) -> Result<(), NodeError> {
        self.workloads
            .remove(key)
            .map_err(|e| self.note_store_error(e))?;
        self.store
            .flush()
            .await
            .map_err(|e| self.note_store_error(e))
    }

    /// Stores a new workload record, flushed. Call with `changes` held.
    async fn store_new_workload(
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

    /// Stores a workload this node now owns and hands it to the mesh to place.
    async fn place_in_mesh(
        &self,
        mesh: &MeshHandle,
        spec: WorkloadSpec,
    ) -> Result<WorkloadStatus, NodeError> {
        mesh.policy
            .check(&mesh.id, Action::Submit, DEFAULT_NAMESPACE)?;
        let name = spec.name.to_string();
        let key = key(&name);
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
        })
    }

    /// Forgets a workload this node owns; the mesh revokes its replicas wherever they run.
    async fn remove_from_mesh(&self, mesh: &MeshHandle, name: &str) -> Result<(), NodeError> {
        mesh.policy
            .check(&mesh.id, Action::Remove, DEFAULT_NAMESPACE)?;
        let key = key(name);
        if self.workloads.get(&key)?.is_none() || self.is_unpersisted(&key) {
            // Owned elsewhere? Ask the members; the owner removes it.
            let owned_elsewhere = self
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
            tracing::info!(workload = %name, "asked the owner to remove the workload");
            self.record_event(
                "workload-remove-requested",
                Some(&key),
                "asked its owner to remove it",
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
    async fn mesh_workloads(&self, mesh: &MeshHandle) -> Vec<(String, OwnedWorkload)> {
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
    async fn list_in_mesh(&self, mesh: &MeshHandle) -> Result<WorkloadList, NodeError> {
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
            let name = record.spec.name.to_string();
            let replicas = (0..record.spec.replicas)
                .map(|replica| {
                    let placed = placements.get(&replica).map(|(n, e)| (n.as_str(), *e));
                    placed_replica(&mesh.id, replica, placed, local(&name, replica))
                })
                .collect();
            listed.insert(name.clone());
            workloads.push(WorkloadStatus {
                name,
                image: record.spec.image.clone(),
                command: record.spec.command.clone(),
                created_at: record.created_at,
                replicas,
                owner: Some(mesh.id.clone()),
            });
        }
        // Workloads owned elsewhere, as their owners report them.
        for (owner, reported) in self.mesh_workloads(mesh).await {
            let name = workload_name(&reported.workload).to_owned();
            if owner == mesh.id || !listed.insert(name.clone()) {
                continue;
            }
            let replicas = (0..reported.replicas)
                .map(|replica| {
                    let placed = reported
                        .placements
                        .iter()
                        .find(|p| p.replica == replica)
                        .map(|p| (p.node.as_str(), p.epoch));
                    placed_replica(&mesh.id, replica, placed, local(&name, replica))
                })
                .collect();
            workloads.push(WorkloadStatus {
                name,
                image: reported.image,
                command: Vec::new(),
                created_at: 0,
                replicas,
                owner: Some(owner),
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
            others
                .entry(name.clone())
                .or_insert_with(|| WorkloadStatus {
                    name: name.clone(),
                    image: assignment.spec.image.clone(),
                    command: assignment.spec.command.clone(),
                    created_at: assignment.assigned_at_ms / 1000,
                    replicas: Vec::new(),
                    owner: None,
                })
                .replicas
                .push(ReplicaStatus {
                    replica: assignment.replica,
                    epoch: assignment.epoch,
                    remote: false,
                    node: mesh.id.clone(),
                    container: container.map(|c| c.name.clone()),
                    container_id: container.map(|c| c.id.clone()),
                    state: container.map(|c| c.state.clone()),
                    exit_code: container.and_then(|c| c.exit_code),
                });
        }
        workloads.extend(others.into_values());
        Ok(WorkloadList {
            workloads,
            runtime_error,
        })
    }

    /// Makes a one-time join token valid for `ttl_secs`, on an agent that holds its trust
    /// domain's root key.
    pub async fn create_join_token(&self, ttl_secs: u64) -> Result<JoinTokenIssued, NodeError> {
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
        let token = enrollment.create_token(ttl_secs).await?;
        tracing::info!(token = %token.id, ttl_secs, "join token issued");
        self.record_event(
            "join-token-issued",
            None,
            &format!("token {} for {ttl_secs} s", token.id),
        );
        Ok(JoinTokenIssued {
            trust_domain: token.trust_domain.clone(),
            expires_at: crate::clock::unix_secs().saturating_add(ttl_secs),
            address: mesh.address.to_string(),
            token: token.to_string(),
        })
    }

    /// A replica's output, from this node's Podman or, in a mesh, from the node that runs
    /// it. Without `query.replica`, the lowest-numbered replica placed.
    pub async fn logs(&self, name: &str, query: &LogsQuery) -> Result<WorkloadLogs, NodeError> {
        let window = LogWindow {
            since_micros: query.since_micros,
            until_micros: None,
            tail: query.tail,
            follow: query.follow,
        };
        let key = key(name);
        let local = match self.runtime.list_managed(&self.info.name).await {
            Ok(containers) => containers,
            // In a mesh the replica may run elsewhere; alone, Podman is the only source.
            Err(_) if self.info.mesh.is_some() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let here = |replica: u32| {
            local
                .iter()
                .find(|c| c.workload == name && c.replica == replica)
        };
        let mut replicas_here: Vec<u32> = local
            .iter()
            .filter(|c| c.workload == name)
            .map(|c| c.replica)
            .collect();
        replicas_here.sort_unstable();
        let answer = |replica, node: String, chunk| WorkloadLogs {
            name: name.to_owned(),
            replica,
            node,
            chunk,
        };

        let Some(mesh) = &self.info.mesh else {
            let replica = query
                .replica
                .or_else(|| replicas_here.first().copied())
                .unwrap_or(0);
            if let Some(container) = here(replica) {
                let chunk = self.local_logs(&container.id, window).await?;
                return Ok(answer(replica, self.info.name.clone(), chunk));
            }
            if self.workloads.get(&key)?.is_none() {
                return Err(NodeError::NotFound {
                    name: name.to_owned(),
                });
            }
            return Err(NodeError::ReplicaNotPlaced {
                name: name.to_owned(),
                replica,
                hint: "; `parley ps` shows its state",
            });
        };
        mesh.policy
            .check(&mesh.id, Action::Logs, DEFAULT_NAMESPACE)?;
        if let Some(replica) = query.replica
            && let Some(container) = here(replica)
        {
            let chunk = self.local_logs(&container.id, window).await?;
            return Ok(answer(replica, mesh.id.clone(), chunk));
        }
        let placements: Vec<(u32, String)> = self
            .mesh_workloads(mesh)
            .await
            .into_iter()
            .filter(|(_, w)| w.workload == key)
            .flat_map(|(_, w)| w.placements)
            .map(|p| (p.replica, p.node))
            .collect();
        if placements.is_empty() && replicas_here.is_empty() {
            return Err(NodeError::NotFound {
                name: name.to_owned(),
            });
        }
        let replica = query.replica.unwrap_or_else(|| {
            placements
                .iter()
                .map(|(replica, _)| *replica)
                .chain(replicas_here.iter().copied())
                .min()
                .unwrap_or(0)
        });
        if let Some(container) = here(replica) {
            let chunk = self.local_logs(&container.id, window).await?;
            return Ok(answer(replica, mesh.id.clone(), chunk));
        }
        let Some(node) = placements
            .into_iter()
            .find(|(r, node)| *r == replica && *node != mesh.id)
            .map(|(_, node)| node)
        else {
            return Err(NodeError::ReplicaNotPlaced {
                name: name.to_owned(),
                replica,
                hint: "; `parley explain` says why",
            });
        };
        let (reply, answered) = tokio::sync::oneshot::channel();
        mesh.commands
            .send(Command::Logs {
                node: node.clone(),
                workload: key,
                replica,
                window,
                reply,
            })
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        let remote = |message: String, denied| NodeError::Remote {
            node: node.clone(),
            message,
            denied,
        };
        match tokio::time::timeout(LOGS_TIMEOUT, answered).await {
            Ok(Ok(Ok(chunk))) => Ok(answer(replica, node.clone(), chunk)),
            Ok(Ok(Err(failure))) => Err(remote(failure.message, failure.denied)),
            Ok(Err(_)) | Err(_) => Err(remote(format!("no answer within {LOGS_TIMEOUT:?}"), false)),
        }
    }

    /// Reads a container's output here. When following, the window ends a second before
    /// now (a line can take that long to reach the log), and the answer says where.
    async fn local_logs(&self, id: &str, mut window: LogWindow) -> Result<LogChunk, RuntimeError> {
        if window.follow && window.until_micros.is_none() {
            let now = crate::clock::unix_micros();
            window.until_micros = Some(now.saturating_sub(1_000_000));
        }
        let mut chunk = self.runtime.logs(id, &window).await?;
        chunk.until_micros = window.until_micros.filter(|_| window.follow);
        Ok(chunk)
    }

    /// Why each replica of a workload is or is not placed: in a mesh, the answers of its
    /// last auctions; alone, where it runs.
    pub async fn explain(&self, name: &str) -> Result<WorkloadExplanation, NodeError> {
        let key = key(name);
        let Some(record) = self
            .workloads
            .get(&key)?
            .filter(|_| !self.is_unpersisted(&key))
        else {
            return Err(NodeError::NotFound {
                name: name.to_owned(),
            });
        };
        let replicas = record.spec.replicas;
        let Some(mesh) = &self.info.mesh else {
            return Ok(WorkloadExplanation {
                name: name.to_owned(),
                replicas,
                placements: vec![ReplicaExplanation {
                    replica: 0,
                    node: Some(self.info.name.clone()),
                    epoch: Some(0),
                    answers: Vec::new(),
                }],
            });
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        mesh.commands
            .send(Command::Explain {
                workload: key,
                reply,
            })
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        let (placements, explanations) = answer.await.map_err(|_| NodeError::MeshStopped)?;
        let placements = (0..replicas)
            .map(|replica| {
                let placed = placements.get(&replica);
                let answers = explanations
                    .get(&replica)
                    .map(|e| {
                        e.answers
                            .iter()
                            .map(|(node, a)| node_answer(node, a))
                            .collect()
                    })
                    .unwrap_or_default();
                ReplicaExplanation {
                    replica,
                    node: placed.map(|(node, _)| node.clone()),
                    epoch: placed.map(|(_, epoch)| *epoch),
                    answers,
                }
            })
            .collect();
        Ok(WorkloadExplanation {
            name: name.to_owned(),
            replicas,
            placements,
        })
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

    /// Refuses a spec this node cannot host, with every reason (not just the first).
    fn check_fits(&self, spec: &WorkloadSpec) -> Result<(), NodeError> {
        let free = self.free()?;
        let allocatable = self.info.meta.allocatable;
        let mut reasons = Vec::new();
        let wanted = spec.resources;
        if wanted.cpu_millis > free.cpu_millis {
            reasons.push(format!(
                "insufficient CPU: needs {} CPUs, {} free of {} allocatable",
                wanted.cpu_millis as f64 / 1000.0,
                free.cpu_millis as f64 / 1000.0,
                allocatable.cpu_millis as f64 / 1000.0
            ));
        }
        if wanted.memory_bytes > free.memory_bytes {
            reasons.push(format!(
                "insufficient memory: needs {} MiB, {} MiB free of {} MiB allocatable",
                wanted.memory_bytes >> 20,
                free.memory_bytes >> 20,
                allocatable.memory_bytes >> 20
            ));
        }
        for (key, value) in &spec.constraints {
            match self.info.meta.labels.get(key) {
                Some(found) if found == value => {}
                Some(found) => reasons.push(format!(
                    "constraint {key}={value} not met: this node has {key}={found}"
                )),
                None => reasons.push(format!(
                    "constraint {key}={value} not met: this node has no label {key} \
                     (set it with --label {key}={value} or `labels` in the config)"
                )),
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(NodeError::DoesNotFit {
                name: spec.name.to_string(),
                node: self.info.name.clone(),
                reasons,
            })
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
        let (podman, podman_error) = match self.runtime.info().await {
            Ok(info) => (Some(info), None),
            Err(e) => (None, Some(e.to_string())),
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
    fn restore_from_label(&self, container: &ManagedContainer) -> Option<WorkloadRecord> {
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

/// A replica as `ps` shows it in a mesh: where it was placed (`-` when not yet), and the
/// local container's state when it was placed on this node (`this_node`).
fn placed_replica(
    this_node: &str,
    replica: u32,
    placed: Option<(&str, u64)>,
    local: Option<&ManagedContainer>,
) -> ReplicaStatus {
    let here = placed.is_some_and(|(node, _)| node == this_node);
    let container = local.filter(|_| here);
    ReplicaStatus {
        replica,
        epoch: placed.map_or(0, |(_, epoch)| epoch),
        remote: placed.is_some() && !here,
        node: placed.map_or_else(|| "-".to_owned(), |(node, _)| node.to_owned()),
        container: container.map(|c| c.name.clone()),
        container_id: container.map(|c| c.id.clone()),
        state: container.map(|c| c.state.clone()),
        exit_code: container.and_then(|c| c.exit_code),
    }
}

/// The name in a `namespace/name` key.
fn workload_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

/// One auction answer, as `parley explain` shows it.
fn node_answer(node: &str, answer: &Answer) -> NodeAnswer {
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

fn describe_decline(reason: &DeclineReason) -> String {
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

fn assignment_key(workload: &str, replica: u32) -> String {
    format!("{}#{replica}", key(workload))
}

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
        match self
            .launch_replica(&record, replica, assignment.epoch)
            .await
        {
            Ok(_) => {
                tracing::info!(%workload, replica, epoch = assignment.epoch, "replica started");
                self.record_event(
                    "replica-started",
                    Some(&key(&workload)),
                    &format!("replica {replica}"),
                );
            }
            Err(error) => {
                // The reconciler retries; the owner hears of the replica in reports either way.
                tracing::warn!(%workload, replica, %error, "could not start an awarded replica; will retry");
                self.record_event("replica-failed", Some(&key(&workload)), &error.to_string());
            }
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

/// What one reconcile pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Containers already present for a wanted replica.
    pub adopted: usize,
    /// Workloads restored into the store from their containers' labels.
    pub restored: usize,
    /// Containers started for replicas that had none.
    pub started: usize,
    /// Exited containers started again, as their workload's restart policy says.
    pub restarted: usize,
    /// Unwanted containers removed.
    pub removed: usize,
    /// Items that failed and will be retried.
    pub failed: usize,
}

/// `parley-<workload>-<replica>`.
pub fn container_name(workload: &WorkloadName, replica: u32) -> String {
    format!("parley-{workload}-{replica}")
}

#[cfg(test)]
mod tests {
    use parley_negotiation::{EnvVar, RestartPolicy};

    use super::*;
    use crate::runtime::fake::FakeRuntime;

    const IMAGE: &str = "localhost/parley-test:latest";

    fn node_over(store: &Store, runtime: &FakeRuntime) -> Arc<Node<FakeRuntime>> {
        node_with_meta(store, runtime, NodeMeta::default())
    }

    fn node_with_meta(
        store: &Store,
        runtime: &FakeRuntime,
        meta: NodeMeta,
    ) -> Arc<Node<FakeRuntime>> {
        Node::new(info(meta, false), store.clone(), runtime.clone()).unwrap()
    }

    /// A node alone, named `node-a`, announcing `meta`.
    fn info(meta: NodeMeta, enforce_limits: bool) -> NodeInfo {
        NodeInfo {
            name: "node-a".to_owned(),
            data_dir: "/tmp/unused".to_owned(),
            podman_socket: "fake".to_owned(),
            podman_origin: ServiceOrigin::Existing,
            host_warnings: Vec::new(),
            meta,
            mesh: None,
            identities: None,
            enforce_limits,
        }
    }

    fn fixture() -> (
        tempfile::TempDir,
        Store,
        FakeRuntime,
        Arc<Node<FakeRuntime>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let runtime = FakeRuntime::with_images([IMAGE]);
        let node = node_over(&store, &runtime);
        (dir, store, runtime, node)
    }

    fn spec(name: &str, image: &str) -> WorkloadSpec {
        WorkloadSpec::new(
            WorkloadName::new(name).unwrap(),
            image,
            vec!["sleep".into(), "60".into()],
            vec![EnvVar::parse("A=1").unwrap()],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn exited_containers_restart_as_their_policy_says() {
        let (_dir, _store, runtime, node) = fixture();
        for (name, restart) in [
            ("always", RestartPolicy::Always),
            ("on-failure", RestartPolicy::OnFailure),
            ("never", RestartPolicy::Never),
        ] {
            let mut workload = spec(name, IMAGE);
            workload.restart = restart;
            node.run(workload).await.unwrap();
        }
        for code in [0, 3] {
            for name in ["always", "on-failure", "never"] {
                runtime.exit_container(&format!("parley-{name}-0"), code);
            }
            let report = node.reconcile().await.unwrap();
            let running = |name: &str| {
                runtime.state_of(&format!("parley-{name}-0")) == Some(ContainerState::Running)
            };
            assert!(running("always"), "exit {code}");
            assert_eq!(running("on-failure"), code != 0, "exit {code}");
            assert!(!running("never"), "exit {code}");
            assert_eq!(report.restarted, if code == 0 { 1 } else { 2 });
            assert_eq!(report.started, 0, "restarted in place, not recreated");
        }
        let events = node.events(10).unwrap();
        assert!(
            events.iter().any(
                |e| e.kind == "container-restarted" && e.message.contains("exited with code 3")
            ),
            "{events:?}"
        );
    }

    #[test]
    fn limits_go_to_the_engine_only_where_it_enforces_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut record = WorkloadRecord {
            spec: spec("web", IMAGE),
            created_at: 0,
            submitter: None,
        };
        record.spec.resources = Resources {
            cpu_millis: 250,
            memory_bytes: 64 << 20,
        };
        let node = |enforce_limits| {
            let info = info(NodeMeta::default(), enforce_limits);
            Node::new(info, store.clone(), FakeRuntime::default()).unwrap()
        };
        assert_eq!(
            node(true).container_spec(&record, 0, 0).limits,
            Some(record.spec.resources)
        );
        assert_eq!(node(false).container_spec(&record, 0, 0).limits, None);
        record.spec.resources = Resources::default();
        assert_eq!(node(true).container_spec(&record, 0, 0).limits, None);
    }

    #[tokio::test]
    async fn logs_come_from_the_container_and_unknown_names_say_so() {
        let (_dir, _store, runtime, node) = fixture();
        node.run(spec("talker", IMAGE)).await.unwrap();
        runtime.write_output("parley-talker-0", "one\ntwo\nthree\npartial");
        let logs = node.logs("talker", &LogsQuery::default()).await.unwrap();
        let texts: Vec<&str> = logs.chunk.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three", "partial"]);
        assert_eq!((logs.replica, logs.node.as_str()), (0, "node-a"));
        assert_eq!(logs.chunk.until_micros, None);

        let tail = LogsQuery {
            tail: Some(2),
            ..LogsQuery::default()
        };
        let logs = node.logs("talker", &tail).await.unwrap();
        assert_eq!(logs.chunk.lines.len(), 2);

        // Following: the window ends a second before now, and the answer says where.
        let follow = LogsQuery {
            follow: true,
            ..LogsQuery::default()
        };
        let until = node
            .logs("talker", &follow)
            .await
            .unwrap()
            .chunk
            .until_micros;
        let now = crate::clock::unix_micros();
        assert!(
            until.is_some_and(|u| u < now && now - u < 5_000_000),
            "{until:?}"
        );

        assert!(matches!(
            node.logs("nosuch", &LogsQuery::default()).await,
            Err(NodeError::NotFound { .. })
        ));
        let other = LogsQuery {
            replica: Some(3),
            ..LogsQuery::default()
        };
        let err = node.logs("talker", &other).await.unwrap_err();
        assert!(
            matches!(err, NodeError::ReplicaNotPlaced { replica: 3, .. }),
            "{err}"
        );

        runtime.set_down(true);
        assert!(matches!(
            node.logs("talker", &LogsQuery::default()).await,
            Err(NodeError::Runtime(RuntimeError::Unavailable { .. }))
        ));
    }

    #[test]
    fn output_is_split_into_lines_per_stream_in_bounded_memory() {
        use crate::runtime::{LineSplitter, LogStream};
        let mut lines = LineSplitter::default();
        lines.push(LogStream::Stdout, b"hel");
        lines.push(LogStream::Stderr, b"warn\n");
        lines.push(LogStream::Stdout, b"lo\nworld\n\xff\n");
        lines.push(LogStream::Stdout, &vec![b'x'; 100_000]);
        let chunk = lines.finish();
        let seen: Vec<(LogStream, usize, &str)> = chunk
            .lines
            .iter()
            .map(|l| (l.stream, l.text.len(), &l.text[..l.text.len().min(6)]))
            .collect();
        assert_eq!(
            seen,
            [
                (LogStream::Stderr, 4, "warn"),
                (LogStream::Stdout, 5, "hello"),
                (LogStream::Stdout, 5, "world"),
                (LogStream::Stdout, 3, "\u{fffd}"),
                (LogStream::Stdout, 4096, "xxxxxx"),
            ]
        );
    }

    #[tokio::test]
    async fn a_workload_that_does_not_fit_is_refused_with_every_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let runtime = FakeRuntime::with_images([IMAGE]);
        let meta = NodeMeta {
            allocatable: Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            labels: [("zone".to_owned(), "eu-1".to_owned())].into(),
            ..NodeMeta::default()
        };
        let node = node_with_meta(&store, &runtime, meta);

        let mut first = spec("first", IMAGE);
        first.resources.cpu_millis = 600;
        first
            .constraints
            .insert("zone".to_owned(), "eu-1".to_owned());
        node.run(first).await.unwrap();
        assert_eq!(node.free().unwrap().cpu_millis, 400);
        assert_eq!(
            node.nodes().nodes[0].meta.as_ref().unwrap().free.cpu_millis,
            400
        );

        let mut second = spec("second", IMAGE);
        second.resources.cpu_millis = 600;
        second.resources.memory_bytes = 2 << 30;
        second
            .constraints
            .insert("zone".to_owned(), "us-2".to_owned());
        second
            .constraints
            .insert("gpu".to_owned(), "yes".to_owned());
        let err = node.run(second).await.unwrap_err();
        let NodeError::DoesNotFit { reasons, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(reasons.len(), 4, "{err}");
        let message = err.to_string();
        for needle in [
            "insufficient CPU",
            "insufficient memory",
            "zone=eu-1",
            "no label gpu",
        ] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        // Nothing was stored or started for it.
        assert_eq!(stored_names(&node), ["default/first"]);
        assert_eq!(runtime.container_names().len(), 1);

        let mut three = spec("three", IMAGE);
        three.replicas = 3;
        assert!(matches!(
            node.run(three).await,
            Err(NodeError::TooManyReplicas { replicas: 3, .. })
        ));
        // Removing the first frees its capacity.
        node.remove("first").await.unwrap();
        assert_eq!(node.free().unwrap().cpu_millis, 1000);
    }

    fn stored_names(node: &Node<FakeRuntime>) -> Vec<String> {
        node.workloads
            .list()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[tokio::test]
    async fn run_stores_the_workload_and_starts_a_labelled_container() {
        let (_dir, _store, runtime, node) = fixture();
        let status = node.run(spec("web", IMAGE)).await.unwrap();
        assert_eq!(status.replicas[0].state, Some(ContainerState::Running));
        assert_eq!(
            status.replicas[0].container.as_deref(),
            Some("parley-web-0")
        );
        assert_eq!(stored_names(&node), ["default/web"]);
        let listed = runtime.list_managed("node-a").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].workload, "web");
    }

    #[tokio::test]
    async fn a_second_run_with_the_same_name_changes_nothing() {
        let (_dir, _store, runtime, node) = fixture();
        node.run(spec("web", IMAGE)).await.unwrap();
        let before = node.workloads.get("default/web").unwrap();
        let mut other = spec("web", IMAGE);
        other.command = vec!["true".into()];
        let err = node.run(other).await.unwrap_err();
        assert!(matches!(err, NodeError::AlreadyExists { .. }), "{err}");
        assert_eq!(node.workloads.get("default/web").unwrap(), before);
        assert_eq!(runtime.creates(), 1);
    }

    #[tokio::test]
    async fn a_missing_image_is_refused_before_anything_is_stored() {
        let (_dir, _store, runtime, node) = fixture();
        let err = node
            .run(spec("web", "localhost/absent:1"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, NodeError::Runtime(RuntimeError::ImageNotFound { .. })),
            "{err}"
        );
        assert!(stored_names(&node).is_empty());
        assert_eq!(runtime.creates(), 0);
    }

    #[tokio::test]
    async fn podman_down_refuses_runs_but_still_lists_stored_workloads() {
        let (_dir, _store, runtime, node) = fixture();
        node.run(spec("web", IMAGE)).await.unwrap();
        runtime.set_down(true);
        let err = node.run(spec("api", IMAGE)).await.unwrap_err();
        assert!(
            matches!(err, NodeError::Runtime(RuntimeError::Unavailable { .. })),
            "{err}"
        );
        assert_eq!(stored_names(&node), ["default/web"]);
        let list = node.list().await.unwrap();
        assert_eq!(list.workloads.len(), 1);
        assert_eq!(list.workloads[0].replicas[0].state, None);
        assert!(list.runtime_error.is_some());
        // Removal cannot stop the container, so the workload is kept, not lost.
        assert!(node.remove("web").await.is_err());
        assert_eq!(stored_names(&node), ["default/web"]);
    }

    #[tokio::test]
    async fn a_container_that_fails_to_start_is_rolled_back() {
        let (_dir, _store, runtime, node) = fixture();
        runtime.fail_starts_of(IMAGE);
        let err = node.run(spec("web", IMAGE)).await.unwrap_err();
        assert!(
            matches!(err, NodeError::Runtime(RuntimeError::Failed { .. })),
            "{err}"
        );
        assert!(stored_names(&node).is_empty());
        assert!(runtime.container_names().is_empty());
    }

    #[tokio::test]
    async fn a_restarted_node_adopts_its_containers_instead_of_duplicating_them() {
        let (_dir, store, runtime, node) = fixture();
        node.run(spec("web", IMAGE)).await.unwrap();
        drop(node);
        let restarted = node_over(&store, &runtime);
        let report = restarted.reconcile().await.unwrap();
        assert_eq!(
            report,
            ReconcileReport {
                adopted: 1,
                ..Default::default()
            }
        );
        assert_eq!(runtime.creates(), 1);
        assert_eq!(runtime.container_names(), ["parley-web-0"]);
    }

    #[tokio::test]
    async fn reconcile_replaces_missing_containers_and_removes_unwanted_ones() {
        let (_dir, _store, runtime, node) = fixture();
        node.run(spec("web", IMAGE)).await.unwrap();
        // Someone removed the container behind the agent's back ...
        let id = runtime.list_managed("node-a").await.unwrap()[0].id.clone();
        runtime.remove(&id).await.unwrap();
        // ... and a container of a workload the store no longer has is still around.
        let mut orphan =
            node.container_spec(&node.workloads.get("default/web").unwrap().unwrap(), 0, 0);
        orphan.name = "parley-gone-0".to_owned();
        orphan
            .labels
            .insert(labels::WORKLOAD.to_owned(), "gone".to_owned());
        runtime.create_and_start(&orphan).await.unwrap();

        let report = node.reconcile().await.unwrap();
        assert_eq!(
            report,
            ReconcileReport {
                started: 1,
                removed: 1,
                ..Default::default()
            }
        );
        assert_eq!(runtime.container_names(), ["parley-web-0"]);
        // A second pass has nothing left to do.
        assert_eq!(
            node.reconcile().await.unwrap(),
            ReconcileReport {
                adopted: 1,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn a_fresh_store_is_rebuilt_from_container_labels() {
        let (_dir, _store, runtime, node) = fixture();
        node.run(spec("web", IMAGE)).await.unwrap();
        drop(node);
        // The store is lost (moved aside by --reset-state); the container still runs.
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = Store::open(fresh_dir.path()).unwrap();
        let rebuilt = node_over(&fresh, &runtime);
        let report = rebuilt.reconcile().await.unwrap();
        assert_eq!(
            report,
            ReconcileReport {
                restored: 1,
                adopted: 1,
                ..Default::default()
            }
        );
        let record = rebuilt.workloads.get("default/web").unwrap().unwrap();
        assert_eq!(record.spec, spec("web", IMAGE));
        assert_eq!(
            runtime.creates(),
            1,
            "the container was replaced instead of adopted"
        );
        let events = rebuilt.events(10).unwrap();
        assert!(
            events.iter().any(|e| e.kind == "workload-restored"),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn containers_of_other_nodes_are_left_alone() {
        let (_dir, _store, runtime, node) = fixture();
        let mut foreign = node.container_spec(
            &WorkloadRecord {
                spec: spec("web", IMAGE),
                created_at: 0,
                submitter: None,
            },
            0,
            0,
        );
        foreign
            .labels
            .insert(labels::NODE.to_owned(), "node-b".to_owned());
        runtime.create_and_start(&foreign).await.unwrap();
        assert_eq!(node.reconcile().await.unwrap(), ReconcileReport::default());
        assert_eq!(runtime.container_names().len(), 1);
    }

    #[tokio::test]
    async fn remove_forgets_the_workload_and_its_container() {
        let (_dir, _store, runtime, node) = fixture();
        node.run(spec("web", IMAGE)).await.unwrap();
        node.remove("web").await.unwrap();
        assert!(stored_names(&node).is_empty());
        assert!(runtime.container_names().is_empty());
        let err = node.remove("web").await.unwrap_err();
        assert!(matches!(err, NodeError::NotFound { .. }), "{err}");
    }
}
