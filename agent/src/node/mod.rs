//! The agent's local workload logic: accept, list and remove workloads, and reconcile
//! what is stored with what Podman runs.
//!
//! Everything here works through the [`ContainerRuntime`] trait and the store, so the
//! logic is unit-tested against the fake runtime and end-to-end against real Podman.
//!
//! This file holds the [`Node`] and its public face (run, remove, list, logs, explain);
//! the rest is split by concern: `state` (the store), `launch` (containers and workload
//! identities), `meshed` (the mesh paths), `host` (what the negotiation loop asks),
//! `views` (status, members, metrics) and `reconciling` (the reconcile pass).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use parley_negotiation::messages::{
    MemberState, NodeMeta, Resources, RunState, SignedStatement, WorkloadRecord as MeshRecord,
};
use parley_negotiation::{SpecError, WorkloadName, WorkloadSpec};
use parley_store::records::Event;
use parley_store::{DEFAULT_NAMESPACE, Store, StoreError, Tree};

use crate::api::types::{
    AgentStatus, Assignment, JoinTokenIssued, LeaseExplanation, LogsQuery, NodeAnswer, NodeEntry,
    NodeList, ReplicaExplanation, ReplicaStatus, WorkloadExplanation, WorkloadList, WorkloadLogs,
    WorkloadRecord, WorkloadStatus,
};
use crate::enroll::workload::WorkloadIdentities;
use crate::hostcheck::HostWarning;
use crate::mesh::{Command, Host, HostError, MeshHandle};
use crate::policy::Action;
use crate::runtime::podman::service::ServiceOrigin;
use crate::runtime::{
    BindMount, ContainerRuntime, ContainerSpec, ContainerState, ManagedContainer, RuntimeError,
    VolumeSpec, labels,
};

mod host;
mod launch;
mod meshed;
mod reconciling;
mod replica_states;
mod state;
mod views;

use parley_negotiation::auction::{Answer, PlacementRequest};
use parley_negotiation::messages::{DeclineReason, LogChunk, LogWindow, OwnedWorkload};
use views::{assignment_key, node_answer, placed_replica, workload_name};

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
    /// Part of a spec this agent does not run yet.
    #[error("{what} are not available in this agent yet; leave them out")]
    Unsupported {
        /// What.
        what: &'static str,
    },
    /// A strong workload submitted where too few agents are live for its acceptors.
    #[error(
        "a strong workload needs {needed} live agents for its lease acceptors (a quorum that \
         survives the loss of one), and this node sees {live}: start more agents, or run it \
         with --consistency eventual"
    )]
    TooFewForStrong {
        /// Agents live, this one included.
        live: usize,
        /// Agents needed.
        needed: usize,
    },
    /// What was asked needs a mesh (an agent started with `--listen`).
    #[error("{what} need a mesh: start the agent with --listen (and --join) to use them")]
    NeedsMesh {
        /// What.
        what: &'static str,
    },
    /// An update that asks for what already runs.
    #[error("the update changes nothing {name} runs: give another --image, --env or command")]
    NothingChanged {
        /// The workload.
        name: String,
    },
    /// `rollout undo` of a workload whose newest generation replaced nothing.
    #[error("{name}'s newest generation did not come from an update: there is nothing to undo")]
    NothingToUndo {
        /// The workload.
        name: String,
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
    Token(#[from] crate::enroll::join::TokenError),
    /// A node's key cannot be revoked as asked.
    #[error(transparent)]
    Revoke(#[from] crate::enroll::join::RevokeError),
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
    /// Whether strong replicas' deadlines also go to a watchdog process
    /// ([`crate::fence_watch`]) that stops them if this agent cannot (real Podman only).
    pub lease_watchdog: bool,
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
    /// This node's copy of the mesh's replicated workload records (written by the
    /// negotiation loop; read for `run`, `rm` and `ps`).
    records: Tree<SignedStatement>,
    /// This node's acceptor state of strong replicas' lease registers.
    registers: Tree<parley_negotiation::register::SlotState>,
    /// The leases this node holds of strong replicas, by (name, replica): the epoch, and
    /// when its container must be stopped unless renewed. Memory only: after a restart
    /// no lease is held, and the first reconcile pass stops every strong container.
    leases: Mutex<HashMap<(String, u32), (u64, Instant)>>,
    /// The lease watchdog, started with the first lease.
    watchdog: Mutex<Option<crate::fence_watch::Watchdog>>,
    /// What this node last saw of each replica it runs in a mesh, by (name, replica).
    run_states: Mutex<HashMap<(String, u32), RunState>>,
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
    Identity(#[from] crate::enroll::workload::IssueError),
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
        let records = store.records()?;
        let registers = store.registers()?;
        Ok(Arc::new(Self {
            registers,
            leases: Mutex::new(HashMap::new()),
            watchdog: Mutex::new(None),
            info,
            store,
            workloads,
            assignments,
            records,
            run_states: Mutex::new(HashMap::new()),
            runtime,
            started: Instant::now(),
            health: Mutex::new(StoreHealth::default()),
            changes: tokio::sync::Mutex::new(()),
        }))
    }

    /// Accepts a workload and starts it. Either the workload is stored and its container
    /// runs, or nothing changed and the error says why.
    pub async fn run(&self, spec: WorkloadSpec) -> Result<WorkloadStatus, NodeError> {
        spec.validate()?;
        if !spec.consistency.is_eventual() && self.info.mesh.is_none() {
            // Alone, nothing could grant a lease or take the replica over.
            return Err(NodeError::NeedsMesh {
                what: "strong workloads",
            });
        }
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

    /// Changes how many replicas workload `name` runs. In a mesh any node holding its
    /// record may: the next generation is written here and followed by its owner. A node
    /// alone runs one replica of each workload, so only 1 is accepted there.
    pub async fn scale(
        &self,
        name: &str,
        replicas: u32,
    ) -> Result<crate::api::types::Scaled, NodeError> {
        let key = key(name);
        let Some(mesh) = &self.info.mesh else {
            if self.workloads.get(&key)?.is_none() {
                return Err(NodeError::NotFound {
                    name: name.to_owned(),
                });
            }
            if replicas != REPLICAS {
                return Err(NodeError::TooManyReplicas {
                    name: name.to_owned(),
                    replicas,
                });
            }
            return Ok(crate::api::types::Scaled {
                name: name.to_owned(),
                replicas,
                generation: 0,
            });
        };
        mesh.policy
            .check(&mesh.id, Action::Submit, DEFAULT_NAMESPACE)?;
        if !(1..=parley_negotiation::workload::MAX_REPLICAS).contains(&replicas) {
            return Err(NodeError::InvalidSpec(SpecError::InvalidReplicas {
                replicas,
            }));
        }
        let Some(record) = self.mesh_record(&key)?.filter(|r| !r.is_tombstone()) else {
            return Err(NodeError::NotFound {
                name: name.to_owned(),
            });
        };
        mesh.commands
            .send(Command::Scale {
                workload: key.clone(),
                replicas,
            })
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        let from = record.spec.map_or(0, |s| s.replicas);
        tracing::info!(workload = %name, from, to = replicas, "scaling");
        self.record_event(
            "workload-scaled",
            Some(&key),
            &format!("from {from} to {replicas} replica(s)"),
        );
        Ok(crate::api::types::Scaled {
            name: name.to_owned(),
            replicas,
            generation: record.generation + 1,
        })
    }

    /// Changes what workload `name`'s replicas run (image, environment, command; its
    /// replica count stays), from any node holding its record: the next generation is
    /// written here, and its owner rolls it out replica by replica as `request` says,
    /// rolling back if a replacement fails. Needs a mesh.
    pub async fn update(
        &self,
        name: &str,
        request: crate::api::types::UpdateRequest,
    ) -> Result<crate::api::types::Updated, NodeError> {
        let (mesh, record) = self.mesh_record_for_change(name)?;
        let Some(mut spec) = record.spec.clone() else {
            return Err(NodeError::NotFound {
                name: name.to_owned(),
            });
        };
        if !spec.consistency.is_eventual() {
            // A surge replacement would wait for ever behind the old replica's lease.
            return Err(NodeError::Unsupported {
                what: "rolling updates of strong workloads",
            });
        }
        if let Some(image) = request.image {
            spec.image = image;
        }
        if let Some(env) = request.env {
            spec.env = env;
        }
        if let Some(command) = request.command {
            spec.command = command;
        }
        spec.validate()?;
        let digest = parley_negotiation::records::spec_digest(&spec);
        if record
            .spec
            .as_ref()
            .is_some_and(|s| parley_negotiation::records::spec_digest(s) == digest)
        {
            return Err(NodeError::NothingChanged {
                name: name.to_owned(),
            });
        }
        let policy = parley_negotiation::messages::RolloutPolicy {
            max_surge: request.max_surge,
            max_unavailable: request.max_unavailable,
            ..Default::default()
        };
        let updated = crate::api::types::Updated {
            name: name.to_owned(),
            generation: record.generation + 1,
            spec_digest: digest,
            image: spec.image.clone(),
            replicas: spec.replicas,
        };
        mesh.commands
            .send(Command::Update {
                spec: Box::new(spec),
                policy,
            })
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        tracing::info!(workload = %name, image = %updated.image, "updating");
        self.record_event(
            "workload-updated",
            Some(&key(name)),
            &format!("generation {} runs {}", updated.generation, updated.image),
        );
        Ok(updated)
    }

    /// Goes back to the spec workload `name`'s newest generation replaced (`parley
    /// rollout undo`), as a new generation rolled out like an update.
    pub async fn undo(&self, name: &str) -> Result<crate::api::types::Updated, NodeError> {
        let (mesh, record) = self.mesh_record_for_change(name)?;
        let Some(mut previous) = record.rollout.as_ref().and_then(|r| r.previous.clone()) else {
            return Err(NodeError::NothingToUndo {
                name: name.to_owned(),
            });
        };
        previous.replicas = record
            .spec
            .as_ref()
            .map_or(previous.replicas, |s| s.replicas);
        mesh.commands
            .send(Command::Undo(key(name)))
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        tracing::info!(workload = %name, image = %previous.image, "rolling back");
        self.record_event(
            "workload-rolled-back",
            Some(&key(name)),
            &format!("back to {}", previous.image),
        );
        Ok(crate::api::types::Updated {
            name: name.to_owned(),
            generation: record.generation + 1,
            spec_digest: parley_negotiation::records::spec_digest(&previous),
            image: previous.image.clone(),
            replicas: previous.replicas,
        })
    }

    /// The mesh and the live record of a workload a user changes, once the policy
    /// allows this node to.
    fn mesh_record_for_change(&self, name: &str) -> Result<(&MeshHandle, MeshRecord), NodeError> {
        let Some(mesh) = &self.info.mesh else {
            return Err(NodeError::NeedsMesh {
                what: "rolling updates",
            });
        };
        mesh.policy
            .check(&mesh.id, Action::Submit, DEFAULT_NAMESPACE)?;
        let record = self
            .mesh_record(&key(name))?
            .filter(|r| !r.is_tombstone())
            .ok_or_else(|| NodeError::NotFound {
                name: name.to_owned(),
            })?;
        Ok((mesh, record))
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

    /// Why each replica of a workload is or is not placed: in a mesh, the answers of its
    /// last auctions; alone, where it runs.
    pub async fn explain(&self, name: &str) -> Result<WorkloadExplanation, NodeError> {
        let key = key(name);
        let local = self
            .workloads
            .get(&key)?
            .filter(|_| !self.is_unpersisted(&key));
        // Any node holds the replicated record: on one that does not own the workload,
        // the answer says what it knows (the guarantee, the leases it holds or
        // accepted) and who owns the placements.
        let mesh_record = self.mesh_record(&key)?;
        let owner = mesh_record.as_ref().map(|r| r.submitter.clone());
        let Some(spec) = local
            .map(|record| record.spec)
            .or_else(|| mesh_record.and_then(|record| record.spec))
        else {
            return Err(NodeError::NotFound {
                name: name.to_owned(),
            });
        };
        let replicas = spec.replicas;
        let strong = spec.consistency == parley_negotiation::Consistency::Strong;
        let (consistency, guarantee) = guarantee_of(&spec);
        let Some(mesh) = &self.info.mesh else {
            return Ok(WorkloadExplanation {
                name: name.to_owned(),
                replicas,
                consistency,
                guarantee,
                owner: None,
                placements: vec![ReplicaExplanation {
                    replica: 0,
                    node: Some(self.info.name.clone()),
                    epoch: Some(0),
                    answers: Vec::new(),
                    lease: None,
                }],
            });
        };
        let owner = owner.filter(|owner| *owner != mesh.id);
        let (reply, answer) = tokio::sync::oneshot::channel();
        mesh.commands
            .send(Command::Explain {
                workload: key,
                reply,
            })
            .await
            .map_err(|_| NodeError::MeshStopped)?;
        let (placements, explanations, leases) =
            answer.await.map_err(|_| NodeError::MeshStopped)?;
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
                let lease = strong.then(|| lease_explanation(leases.get(&replica)));
                ReplicaExplanation {
                    replica,
                    node: placed.map(|(node, _)| node.clone()),
                    epoch: placed.map(|(_, epoch)| *epoch),
                    answers,
                    lease,
                }
            })
            .collect();
        Ok(WorkloadExplanation {
            name: name.to_owned(),
            replicas,
            consistency,
            guarantee,
            owner,
            placements,
        })
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

/// A workload's consistency class, and what it promises, for `explain`.
fn guarantee_of(spec: &WorkloadSpec) -> (String, String) {
    match spec.consistency {
        parley_negotiation::Consistency::Eventual => (
            "eventual".to_owned(),
            "a replica whose node seems gone is placed again at once; during a partition it \
             may run on both sides for a while, and the newest placement wins after it"
                .to_owned(),
        ),
        parley_negotiation::Consistency::Strong => {
            let lease_ms = parley_negotiation::register::lease_ms(spec.stop_timeout_secs);
            (
                "strong".to_owned(),
                format!(
                    "each replica runs on one node at most, only while that node holds its \
                     lease ({} s, renewed every {} s) from a quorum of its acceptors; a lost \
                     holder's replica runs elsewhere once its lease is over, at a higher epoch",
                    lease_ms as f64 / 1000.0,
                    parley_negotiation::register::RENEW_INTERVAL_MS as f64 / 1000.0,
                ),
            )
        }
    }
}

/// A strong replica's lease as this node knows it.
fn lease_explanation(view: Option<&parley_negotiation::negotiator::LeaseView>) -> LeaseExplanation {
    use parley_negotiation::negotiator::LeaseView;
    let empty = |state: &str| LeaseExplanation {
        state: state.to_owned(),
        holder: None,
        epoch: None,
        left_ms: None,
        why: None,
        acceptors: Vec::new(),
    };
    match view {
        Some(LeaseView::Held {
            epoch,
            left_ms,
            acceptors,
        }) => LeaseExplanation {
            epoch: Some(*epoch),
            left_ms: Some(*left_ms),
            acceptors: acceptors.clone(),
            ..empty("held")
        },
        Some(LeaseView::Seeking { why, acceptors }) => LeaseExplanation {
            why: Some(why.clone()),
            acceptors: acceptors.clone(),
            ..empty("seeking")
        },
        Some(LeaseView::Accepted {
            holder,
            epoch,
            left_ms,
            acceptors,
        }) => LeaseExplanation {
            holder: holder.clone(),
            epoch: Some(*epoch),
            left_ms: Some(*left_ms),
            acceptors: acceptors.clone(),
            ..empty("accepted")
        },
        None => LeaseExplanation {
            why: Some(
                "this node neither holds nor seeks the lease, and is not one of its \
                 acceptors: ask the replica's node"
                    .to_owned(),
            ),
            ..empty("unknown")
        },
    }
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
            lease_watchdog: false,
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

    /// Class 9 of the zero-trust issue: with Podman wedged, `parley status` must answer,
    /// and say so, rather than hang on Podman's status.
    #[tokio::test]
    async fn status_answers_and_names_a_wedged_podman() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let socket = dir.path().join("podman.sock");
        let held = crate::runtime::podman::tests::wedged_podman(&socket);
        // Podman's own bound is longer than status waits.
        let runtime = crate::runtime::podman::PodmanRuntime::with_limits(
            &socket,
            crate::runtime::podman::CallLimits {
                quick: std::time::Duration::from_secs(60),
                container: std::time::Duration::from_secs(60),
                pull: std::time::Duration::from_secs(60),
            },
        );
        let node = Node::new(info(NodeMeta::default(), false), store, runtime).unwrap();
        let started = std::time::Instant::now();
        let status = node.status().await;
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let error = status.podman_error.expect("Podman's state is reported");
        assert!(error.contains("wedged"), "{error}");
        held.abort();
    }

    /// A node alone cannot lease a replica to itself: a strong workload is refused with
    /// what to do, before anything starts.
    #[tokio::test]
    async fn strong_workloads_need_a_mesh() {
        let (_dir, _store, runtime, node) = fixture();
        let mut workload = spec("db", IMAGE);
        workload.consistency = parley_negotiation::Consistency::Strong;
        let refused = node.run(workload.clone()).await.unwrap_err();
        assert!(
            matches!(refused, NodeError::NeedsMesh { .. }),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("--listen"), "{refused}");
        assert!(
            runtime.state_of("parley-db-0").is_none(),
            "nothing was started"
        );
    }

    /// Each replica mounts a named volume of its own per volume of the spec, labelled
    /// with its workload and replica.
    #[tokio::test]
    async fn each_replica_mounts_volumes_of_its_own() {
        let (_dir, _store, runtime, node) = fixture();
        let mut workload = spec("db", IMAGE);
        workload.volumes = vec![
            parley_negotiation::VolumeMount::parse("data:/var/lib/db").unwrap(),
            parley_negotiation::VolumeMount::parse("logs:/var/log/db").unwrap(),
        ];
        node.run(workload).await.unwrap();
        let started = runtime.spec_of("parley-db-0").expect("the replica runs");
        let volumes: Vec<(&str, &str)> = started
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.target.as_str()))
            .collect();
        assert_eq!(
            volumes,
            [
                ("parley-db-0-data", "/var/lib/db"),
                ("parley-db-0-logs", "/var/log/db")
            ]
        );
        assert_eq!(
            started.volumes[0]
                .labels
                .get(labels::WORKLOAD)
                .map(String::as_str),
            Some("db")
        );
        assert_eq!(
            started.volumes[0]
                .labels
                .get(labels::REPLICA)
                .map(String::as_str),
            Some("0")
        );
    }

    /// The host side of a lease: the container runs at the lease's epoch, with it in its
    /// environment and label; a renewal leaves it be; a newer epoch replaces it (never
    /// two); a fence stops it, and a late start of the fenced epoch does nothing.
    #[tokio::test]
    async fn a_strong_replica_runs_only_at_the_epoch_of_its_lease() {
        let (_dir, _store, runtime, node) = fixture();
        let mut workload = spec("db", IMAGE);
        workload.consistency = parley_negotiation::Consistency::Strong;
        let assignment = Assignment {
            spec: workload,
            replica: 0,
            epoch: 1,
            owner: "spiffe://test/node/owner".to_owned(),
            submitter: None,
            reservation: "r".to_owned(),
            failure_domain: None,
            assigned_at_ms: 0,
            grant: None,
        };
        node.commit(assignment).await.unwrap();
        let key = "default/db".to_owned();
        let lease = std::time::Duration::from_secs(5);
        node.run_leased(key.clone(), 0, 7, lease).await;
        let started = runtime
            .spec_of("parley-db-0")
            .expect("started under the lease");
        assert!(
            started
                .env
                .contains(&("PARLEY_EPOCH".to_owned(), "7".to_owned()))
        );
        assert_eq!(
            started.labels.get(labels::EPOCH).map(String::as_str),
            Some("7")
        );
        let creates = runtime.creates();
        node.run_leased(key.clone(), 0, 7, lease).await;
        assert_eq!(runtime.creates(), creates, "a renewal restarts nothing");
        node.run_leased(key.clone(), 0, 8, lease).await;
        assert_eq!(runtime.container_names(), ["parley-db-0"], "one container");
        let renewed = runtime.spec_of("parley-db-0").unwrap();
        assert_eq!(
            renewed.labels.get(labels::EPOCH).map(String::as_str),
            Some("8")
        );
        node.fence(key.clone(), 0, 8, "a test".to_owned()).await;
        assert!(runtime.container_names().is_empty(), "fenced: stopped");
        assert!(!node.holds_lease("db", 0, 8));
        node.start_at("db".to_owned(), 0, Some(8)).await;
        assert!(
            runtime.container_names().is_empty(),
            "no start without the lease"
        );
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
