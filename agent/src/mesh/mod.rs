//! The mesh as the rest of the agent sees it: [`start`] loads the node's identity, binds
//! the QUIC endpoint and resolves the seeds; [`Prepared::spawn`] starts the negotiation
//! loop ([`driver`]), which feeds the sans-IO [`parley_negotiation::negotiator`] from the
//! transport and timers and carries out what it asks of the node through [`Host`]. The
//! node talks to the loop through [`MeshHandle::commands`].
//!
//! Membership addresses members by SPIFFE ID; the transport needs socket addresses. A
//! member's address comes from the metadata it announces (`NodeMeta::address`); a seed's,
//! from the address it was dialled at.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parley_identity::files::IdentityDir;
use parley_negotiation::WorkloadSpec;
use parley_negotiation::auction::{Explanation, PlacementRequest};
use parley_negotiation::membership::Member;
use parley_negotiation::messages::{
    LogChunk, LogWindow, LogsFailure, NodeMeta, OwnedWorkload, SignedStatement,
};
pub use parley_negotiation::negotiator::{Assignment, HostError, Placements};
use parley_negotiation::negotiator::{NegotiatorConfig, QUERY_TIMEOUT_MS};
use parley_negotiation::register::SlotState;
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MeshSettings;
use crate::enroll::credentials::{CredentialError, load_credentials, renew_lapsed};
use crate::enroll::join::Enrollment;
use crate::enroll::renew::Renewal;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyError, PolicyHandle};
use crate::transport::{Inbound, Limits, Transport};

/// How often an unreachable seed is dialled again.
const SEED_RETRY: Duration = Duration::from_secs(1);

/// The running mesh, as the rest of the agent sees it.
#[derive(Clone)]
pub struct MeshHandle {
    /// This node's SPIFFE ID, its name in the mesh.
    pub id: String,
    /// The address announced to peers.
    pub address: SocketAddr,
    /// The member list, updated on every change (this node not included).
    pub view: watch::Receiver<Vec<Member>>,
    /// The QUIC endpoint.
    pub transport: Transport,
    /// Requests to the negotiation loop.
    pub commands: mpsc::Sender<Command>,
    /// What the negotiation loop counts, for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Who may do what; checked on every request from a peer and from the local API.
    pub policy: PolicyHandle,
    /// The enrollment service, on a node that holds its trust domain's root key.
    pub enrollment: Option<Arc<Enrollment>>,
    /// Beats on every pass of the negotiation loop, for the watchdog.
    pub heartbeat: Arc<crate::systemd::Heartbeat>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle")
            .field("id", &self.id)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Why the agent could not join the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshStartError {
    /// The node's credential is missing, unusable or outside its validity.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The QUIC endpoint could not be set up.
    #[error("cannot start the mesh endpoint: {0}")]
    Transport(#[from] crate::transport::TransportError),
    /// The policy file is unusable.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// A `join` address does not resolve.
    #[error("cannot resolve join address {seed}: {reason}")]
    Resolve {
        /// The address as configured.
        seed: String,
        /// The resolver's error.
        reason: String,
    },
}

/// A mesh endpoint that is bound but whose negotiation loop has not started: the node
/// it serves must exist first ([`Prepared::spawn`]).
pub struct Prepared {
    /// What the rest of the agent holds.
    pub handle: MeshHandle,
    inbox: mpsc::Receiver<Inbound>,
    meta: NodeMeta,
    seeds: Vec<SocketAddr>,
    view: watch::Sender<Vec<Member>>,
    commands: mpsc::Receiver<Command>,
    joining: Option<mpsc::Receiver<quinn::Connection>>,
    renewal: Renewal,
    disk: Option<DiskWatch>,
}

/// Where the container storage lives and how much space the node keeps free on it.
#[derive(Debug, Clone)]
pub struct DiskWatch {
    /// A path on the container storage's filesystem (Podman's graph root).
    pub path: PathBuf,
    /// Space kept free: below it, the node declines new replicas.
    pub reserve_bytes: u64,
}

/// How often the space left on the container storage is measured.
const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(30);

impl Prepared {
    /// Starts the negotiation loop for `host`, which already committed `committed` and
    /// stored `records`. Every task it starts is tracked by `tasks` and stops on
    /// `shutdown`.
    pub fn spawn<H: Host>(
        self,
        host: Arc<H>,
        committed: Vec<Assignment>,
        records: Vec<SignedStatement>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) {
        tasks.spawn(crate::enroll::renew::keep_renewed(
            self.renewal,
            self.handle.transport.clone(),
            self.handle.view.clone(),
            shutdown.clone(),
        ));
        if let (Some(joining), Some(enrollment)) = (self.joining, &self.handle.enrollment) {
            let (transport, commands) =
                (self.handle.transport.clone(), self.handle.commands.clone());
            let spread: crate::enroll::join::Spread = Arc::new(move |revocation| {
                if let Err(error) = transport.revoke(revocation.clone()) {
                    // Signed with this node's root a moment ago: cannot fail to verify.
                    tracing::error!(%error, "a revocation made here does not verify");
                }
                if commands.try_send(Command::Revoke(revocation)).is_err() {
                    tracing::warn!(
                        "the negotiation loop is busy: the revocation reaches the members \
                         with the next restart of this issuer"
                    );
                }
            });
            tasks.spawn(crate::enroll::join::serve(
                joining,
                Arc::clone(enrollment),
                spread,
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        tasks.spawn(run(
            self.handle.transport.clone(),
            self.inbox,
            Negotiation {
                config: NegotiatorConfig {
                    // This agent keeps lease registers and fences strong replicas.
                    strong: true,
                    ..NegotiatorConfig::default()
                },
                meta: self.meta,
                committed,
                records,
                disk: self.disk,
            },
            self.seeds,
            self.view,
            host,
            self.commands,
            Checks {
                metrics: self.handle.metrics.clone(),
                policy: self.handle.policy.clone(),
                heartbeat: self.handle.heartbeat.clone(),
            },
            shutdown,
            tasks.clone(),
        ));
    }
}

/// Loads the node identity, binds the QUIC endpoint and sets up membership, to join
/// through `settings.join`. `meta` is what this node announces; its address is filled in
/// here. A node whose identity directory holds the root key also enrolls new nodes, with
/// join tokens kept in `store`.
pub async fn start(
    settings: &MeshSettings,
    mut meta: NodeMeta,
    store: &parley_store::Store,
    disk: Option<DiskWatch>,
) -> Result<Prepared, MeshStartError> {
    let identity_dir = IdentityDir::new(&settings.identity_dir);
    let enrollment = if identity_dir.has_root() {
        let issuer = identity_dir
            .load_root()
            .map_err(|e| CredentialError::Identity {
                dir: settings.identity_dir.clone(),
                reason: format!("it holds a root key, which cannot be used: {e}"),
            })?;
        // Its own node credential, when there is one yet, so that no token enrolls its name.
        let own = identity_dir.load_credential().ok();
        let enrollment = Enrollment::new(issuer, own.as_ref(), store).map_err(|e| {
            CredentialError::Identity {
                dir: settings.identity_dir.clone(),
                reason: format!("cannot keep join tokens: {e}"),
            }
        })?;
        tracing::info!(
            trust_domain = enrollment.trust_domain(),
            "this node holds the root key: it enrolls new nodes with join tokens (`parley identity token`)"
        );
        Some(Arc::new(enrollment))
    } else {
        None
    };
    meta.issuer = enrollment.is_some();
    let mut joins = Vec::new();
    for seed in &settings.join {
        let resolved =
            tokio::net::lookup_host(seed.as_str())
                .await
                .map_err(|e| MeshStartError::Resolve {
                    seed: seed.clone(),
                    reason: e.to_string(),
                })?;
        joins.extend(resolved);
    }
    let renewal = Renewal {
        identity_dir: settings.identity_dir.clone(),
        enrollment: enrollment.clone(),
        seeds: joins.clone(),
    };
    let credentials = match load_credentials(&settings.identity_dir, crate::clock::unix_secs()) {
        Err(CredentialError::Expired {
            id,
            when: "expired",
            not_after,
            ..
        }) if renewal.enrollment.is_some() || !joins.is_empty() => {
            renew_lapsed(&renewal, &identity_dir, &id, not_after).await
        }
        other => other?,
    };
    let policy = match &settings.policy {
        Some(file) => PolicyHandle::new(Policy::load(file)?, Some(file.clone())),
        None => PolicyHandle::new(
            Policy::trust_domain_nodes(credentials.credential.cert().subject.trust_domain()),
            None,
        ),
    };
    tracing::info!(
        policy = policy.current().source(),
        grants = policy.current().grants(),
        "authorization policy"
    );
    policy.current().warn_if_crippling();
    let (transport, inbox, joining) = if enrollment.is_some() {
        let (transport, inbox, joining) =
            Transport::bind_accepting_enrollment(settings.listen, credentials, Limits::default())?;
        (transport, inbox, Some(joining))
    } else {
        let (transport, inbox) = Transport::bind(settings.listen, credentials, Limits::default())?;
        (transport, inbox, None)
    };
    let bound = transport.local_addr().map_err(|e| {
        MeshStartError::Transport(crate::transport::TransportError::Bind {
            addr: settings.listen,
            reason: e.to_string(),
        })
    })?;
    let address = settings.advertise.unwrap_or(bound);
    meta.address = Some(address.to_string());

    let seeds: Vec<SocketAddr> = joins
        .into_iter()
        .filter(|addr| *addr != address && *addr != bound)
        .collect();

    let id = transport.id().to_owned();
    let (view_tx, view) = watch::channel(Vec::new());
    let (commands_tx, commands) = mpsc::channel(64);
    tracing::info!(id = %id, listen = %bound, advertise = %address, seeds = ?seeds, "mesh endpoint up");
    Ok(Prepared {
        handle: MeshHandle {
            id,
            address,
            view,
            transport,
            commands: commands_tx,
            metrics: Arc::new(Metrics::default()),
            policy,
            enrollment,
            heartbeat: crate::systemd::Heartbeat::new("negotiation", NEGOTIATION_ALLOWANCE),
        },
        inbox,
        meta,
        seeds,
        view: view_tx,
        commands,
        joining,
        renewal,
        disk,
    })
}

/// A seed for membership's probe order: it need not be secret, only differ between nodes
/// (std's hasher keys are random per process).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// What the mesh needs from the node it runs on: somewhere to keep the replicas it is
/// awarded, and a container engine to run them.
pub trait Host: Send + Sync + 'static {
    /// Persists (flushed) a replica awarded to this node; the award is acknowledged only
    /// once this returns `Ok`.
    fn commit(&self, assignment: Assignment) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Starts the container of a committed replica (pulling its image if needed).
    fn start(&self, workload: String, replica: u32) -> impl Future<Output = ()> + Send;
    /// Forgets a workload this node owns: removed at another node's request, or given
    /// back to its submitter; `why` goes into the audit log.
    fn forget(&self, workload: String, why: &'static str) -> impl Future<Output = ()> + Send;
    /// Stores (flushed) a workload this node now owns as the successor of `submitter`,
    /// which died.
    fn adopt(
        &self,
        spec: WorkloadSpec,
        submitter: String,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Stores (replaces) this node's copy of a workload's record.
    fn store_record(
        &self,
        workload: String,
        record: SignedStatement,
    ) -> impl Future<Output = ()> + Send;
    /// Deletes the stored record of a workload whose tombstone expired.
    fn drop_record(&self, workload: String) -> impl Future<Output = ()> + Send;
    /// Stops and forgets a replica its owner revoked.
    fn revoke(&self, workload: String, replica: u32, epoch: u64)
    -> impl Future<Output = ()> + Send;
    /// The lease register slots this node stored as an acceptor before a restart.
    fn stored_registers(&self) -> Vec<((String, u32), SlotState)>;
    /// Stores (flushed) this node's acceptor state of a replica's lease register; the
    /// answer it backs leaves only once this returns `Ok`.
    fn store_register(
        &self,
        workload: String,
        replica: u32,
        slot: SlotState,
    ) -> impl Future<Output = Result<(), HostError>> + Send;
    /// Deletes the register slot of a removed workload's replica.
    fn drop_register(&self, workload: String, replica: u32) -> impl Future<Output = ()> + Send;
    /// This node holds the lease of a strong replica at `epoch` for `fence_in` more:
    /// run its container at that epoch, stopped when the time is up unless renewed.
    fn run_leased(
        &self,
        workload: String,
        replica: u32,
        epoch: u64,
        fence_in: Duration,
    ) -> impl Future<Output = ()> + Send;
    /// Stops a strong replica's container now: its lease could not be renewed.
    fn fence(
        &self,
        workload: String,
        replica: u32,
        epoch: u64,
        why: String,
    ) -> impl Future<Output = ()> + Send;
    /// The output of a replica this node runs.
    fn logs(
        &self,
        workload: String,
        replica: u32,
        window: LogWindow,
    ) -> impl Future<Output = Result<LogChunk, HostError>> + Send;
}

/// What [`Command::Explain`] answers: placements, each replica's last auction, and what
/// this node knows of each strong replica's lease.
pub type ExplainAnswer = (
    Placements,
    BTreeMap<u32, Explanation>,
    BTreeMap<u32, parley_negotiation::negotiator::LeaseView>,
);

/// Requests from the node (the local API) to the mesh.
#[derive(Debug)]
pub enum Command {
    /// Place a workload this node now owns.
    Place(Box<PlacementRequest>),
    /// A revocation this node's issuer made (and its transport already applies): kept and
    /// sent to every member.
    Revoke(parley_identity::revocation::Revocation),
    /// Take up a workload this node owned before a restart: its running replicas report
    /// themselves first, then what is missing is placed (never a duplicate of a replica
    /// that still runs).
    Adopt(Box<PlacementRequest>),
    /// Forget a workload this node owns and stop its replicas everywhere.
    Remove(String),
    /// Why each replica of a workload this node owns is or is not placed.
    Explain {
        /// Workload key (`namespace/name`).
        workload: String,
        /// Where the answer goes.
        reply: oneshot::Sender<ExplainAnswer>,
    },
    /// Every workload any alive member owns (this node included), as their owners report
    /// them; members that do not answer within [`QUERY_TIMEOUT`] are left out.
    ListMesh {
        /// Where the answer goes: (owner, workload) pairs.
        reply: oneshot::Sender<Vec<(String, OwnedWorkload)>>,
    },
    /// Write the next generation of a workload with another replica count.
    Scale {
        /// Workload key (`namespace/name`).
        workload: String,
        /// Replicas wanted.
        replicas: u32,
    },
    /// Write the next generation of a workload with another spec, rolled out as `policy`
    /// says.
    Update {
        /// The new spec.
        spec: Box<WorkloadSpec>,
        /// How to roll it out.
        policy: parley_negotiation::messages::RolloutPolicy,
    },
    /// Go back to the spec a workload's newest generation replaced.
    Undo(String),
    /// What the node saw of the replicas it runs: (workload key, replica, state).
    ReplicaStates(Vec<(String, u32, parley_negotiation::messages::RunState)>),
    /// Asks every alive member to remove a workload; its owner does.
    RemoveRemote {
        /// Workload key (`namespace/name`).
        workload: String,
    },
    /// Reads a replica's output from the node that runs it.
    Logs {
        /// The node running the replica.
        node: String,
        /// Workload key (`namespace/name`).
        workload: String,
        /// Replica index.
        replica: u32,
        /// Which lines.
        window: LogWindow,
        /// Where the answer goes (dropped if the node never answers).
        reply: oneshot::Sender<Result<LogChunk, LogsFailure>>,
    },
    /// Where a workload this node owns has replicas: replica → (node, epoch).
    Placements {
        /// Workload key (`namespace/name`).
        workload: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Placements>,
    },
}

/// How long `parley ps` waits for the members' reports.
pub const QUERY_TIMEOUT: Duration = Duration::from_millis(QUERY_TIMEOUT_MS);

/// The negotiation state of one node before its loop starts.
pub struct Negotiation {
    /// Settings of membership, the announcer and the bidder.
    pub config: NegotiatorConfig,
    /// This node's self-description (bidder profile, candidate entry).
    pub meta: NodeMeta,
    /// Replicas this node committed to before a restart.
    pub committed: Vec<Assignment>,
    /// The workload records this node stored before a restart.
    pub records: Vec<SignedStatement>,
    /// The container storage to watch for space, if known.
    pub disk: Option<DiskWatch>,
}

/// What the negotiation loop checks messages against and counts them in.
pub struct Checks {
    /// Counters for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Who may do what.
    pub policy: PolicyHandle,
    /// Beats on every pass of the loop.
    pub heartbeat: Arc<crate::systemd::Heartbeat>,
}

/// Longest the negotiation loop may go without a pass: it wakes at least for every probe
/// (each second), so half a minute without one means it is stuck.
const NEGOTIATION_ALLOWANCE: Duration = Duration::from_secs(30);

pub use driver::run;

async fn dial_seed(
    transport: Transport,
    seed: SocketAddr,
    found: mpsc::Sender<(String, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let mut logged = false;
    loop {
        match transport.connect(seed).await {
            Ok(id) => {
                tracing::info!(%seed, peer = %id, "joined through seed");
                let _ = found.send((id, seed)).await;
                return;
            }
            Err(error) => {
                if !logged {
                    tracing::warn!(%error, "seed unreachable; retrying every {SEED_RETRY:?}");
                    logged = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SEED_RETRY) => {}
        }
    }
}

mod driver;
#[cfg(test)]
mod tests;
