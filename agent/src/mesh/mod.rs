//! Drives SWIM membership over the QUIC transport: feeds verified messages and timeouts
//! into the sans-IO [`Membership`], sends what it queues, joins through seed addresses,
//! and publishes the member list for the API.
//!
//! Membership addresses members by SPIFFE ID; the transport needs socket addresses. A
//! member's address comes from the metadata it announces (`NodeMeta::address`); a seed's,
//! from the address it was dialled at.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parley_identity::files::IdentityDir;
use parley_identity::tls::TlsIdentity;
use parley_negotiation::WorkloadSpec;
use parley_negotiation::auction::{
    Announced, Announcer, AnnouncerConfig, AnnouncerEvent, Bidder, BidderConfig, BidderEvent,
    Candidate, Committed, Explanation, NodeProfile, PlacementRequest,
};
use parley_negotiation::codec::PROTOCOL_VERSION;
use parley_negotiation::membership::{Member, Membership, MembershipConfig, MembershipEvent};
use parley_negotiation::messages::{
    Body, Decline, DeclineReason, Handover, LogChunk, LogWindow, LogsFailure, LogsReply,
    LogsRequest, MAX_REPORTED_WORKLOADS, MemberState, NodeMeta, OwnedWorkload, Placement, Reject,
    RemoveWorkload, Scoring, WorkloadQuery, WorkloadReport,
};
use tokio::sync::oneshot;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::types::Assignment;
use crate::config::MeshSettings;
use crate::join::Enrollment;
use crate::metrics::Metrics;
use crate::policy::{Action, Policy, PolicyError, PolicyHandle};
use crate::renew::Renewal;
use crate::transport::{Inbound, Limits, NodeCredentials, Transport};
use succession::{Step, Succession};

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
    /// No usable identity in the identity directory.
    #[error(
        "cannot load this node's identity from {dir}: {reason}\n\
         hint: enrol the node first: `parley identity request --id spiffe://TRUST_DOMAIN/node/NAME`, \
         `parley identity issue` where the root key is, then `parley identity accept` here \
         (docs/three-hosts.md); or point --identity-dir at it"
    )]
    Identity {
        /// The identity directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The node's certificate is outside its validity period.
    #[error(
        "this node's identity {id} is {when} (valid {not_before} to {not_after}, seconds since \
         1970, now {now}); renew it with `parley identity request`, `issue` and `accept`, or \
         check this host's clock"
    )]
    Expired {
        /// The node's SPIFFE ID.
        id: String,
        /// "expired" or "not yet valid".
        when: &'static str,
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
        /// This host's clock.
        now: u64,
    },
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
    membership: Membership,
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

/// A change of free disk smaller than this is not worth gossiping to every member.
const DISK_GOSSIP_STEP: u64 = 64 << 20;

impl Prepared {
    /// Starts the negotiation loop for `host`, which already committed `committed`.
    pub fn spawn<H: Host>(
        self,
        host: Arc<H>,
        committed: Vec<Assignment>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(crate::renew::keep_renewed(
            self.renewal,
            self.handle.transport.clone(),
            self.handle.view.clone(),
            shutdown.clone(),
        ));
        if let (Some(joining), Some(enrollment)) = (self.joining, &self.handle.enrollment) {
            tokio::spawn(crate::join::serve(
                joining,
                Arc::clone(enrollment),
                shutdown.clone(),
            ));
        }
        tokio::spawn(run(
            self.handle.transport.clone(),
            self.inbox,
            Negotiation {
                membership: self.membership,
                meta: self.meta,
                committed,
                disk: self.disk,
            },
            self.seeds,
            self.view,
            host,
            self.commands,
            Checks {
                metrics: self.handle.metrics.clone(),
                policy: self.handle.policy.clone(),
            },
            shutdown,
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
            .map_err(|e| MeshStartError::Identity {
                dir: settings.identity_dir.clone(),
                reason: format!("it holds a root key, which cannot be used: {e}"),
            })?;
        let enrollment = Enrollment::new(issuer, store).map_err(|e| MeshStartError::Identity {
            dir: settings.identity_dir.clone(),
            reason: format!("cannot keep join tokens: {e}"),
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
    let credentials = match load_credentials(&settings.identity_dir, unix_now()) {
        Err(MeshStartError::Expired {
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
    let membership = Membership::new(
        &id,
        meta.clone(),
        MembershipConfig::default(),
        unix_millis(),
        random_seed(),
    );
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
        },
        inbox,
        membership,
        meta,
        seeds,
        view: view_tx,
        commands,
        joining,
        renewal,
        disk,
    })
}

/// How often a node whose identity lapsed asks an issuer again.
const LAPSED_RETRY: Duration = Duration::from_secs(5);

/// Renews an identity that lapsed while the agent was down, through the `join` addresses
/// (or this node's own root), trying until it succeeds: peers refuse a lapsed identity, so
/// there is nothing else to do, and each failure is logged with its reason.
async fn renew_lapsed(
    renewal: &Renewal,
    dir: &IdentityDir,
    id: &str,
    expired_at: u64,
) -> NodeCredentials {
    loop {
        let attempt = match dir.load_credential() {
            Ok(credential) => renewal.renew_once(&credential, &renewal.seeds).await,
            Err(error) => Err(error.to_string()),
        };
        match attempt {
            Ok(renewed) => {
                tracing::info!(%id, valid_until = renewed.credential.cert().not_after, "lapsed identity renewed");
                return renewed;
            }
            Err(reason) => tracing::error!(
                %id,
                expired_at,
                %reason,
                retry_in = ?LAPSED_RETRY,
                "this node's identity has EXPIRED: peers refuse it until an issuer renews it"
            ),
        }
        tokio::time::sleep(LAPSED_RETRY).await;
    }
}

/// Reads the node's credential and trust bundle and checks the certificate is valid now.
fn load_credentials(dir: &Path, now: u64) -> Result<NodeCredentials, MeshStartError> {
    let identity_error = |reason: String| MeshStartError::Identity {
        dir: dir.to_path_buf(),
        reason,
    };
    let files = IdentityDir::new(dir);
    let credential = files
        .load_credential()
        .map_err(|e| identity_error(e.to_string()))?;
    let bundle = files
        .load_bundle()
        .map_err(|e| identity_error(e.to_string()))?;
    let cert = credential.cert();
    let when = if now > cert.not_after {
        Some("expired")
    } else if now < cert.not_before {
        Some("not yet valid")
    } else {
        None
    };
    if let Some(when) = when {
        return Err(MeshStartError::Expired {
            id: cert.subject.to_string(),
            when,
            not_before: cert.not_before,
            not_after: cert.not_after,
            now,
        });
    }
    let tls = TlsIdentity::new(&credential, std::slice::from_ref(cert))
        .map_err(|e| identity_error(e.to_string()))?;
    Ok(NodeCredentials {
        credential,
        tls,
        bundle: Arc::new(bundle),
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    fn commit(&self, assignment: Assignment) -> impl Future<Output = Result<(), String>> + Send;
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
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Stops and forgets a replica its owner revoked.
    fn revoke(&self, workload: String, replica: u32, epoch: u64)
    -> impl Future<Output = ()> + Send;
    /// The output of a replica this node runs.
    fn logs(
        &self,
        workload: String,
        replica: u32,
        window: LogWindow,
    ) -> impl Future<Output = Result<LogChunk, String>> + Send;
}

/// Where a workload's replicas run: replica → (node, epoch).
pub type Placements = BTreeMap<u32, (String, u64)>;

/// Requests from the node (the local API) to the mesh.
#[derive(Debug)]
pub enum Command {
    /// Place a workload this node now owns.
    Place(Box<PlacementRequest>),
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
        /// Where the answer goes: placements, and each replica's last auction.
        reply: oneshot::Sender<(Placements, BTreeMap<u32, Explanation>)>,
    },
    /// Every workload any alive member owns (this node included), as their owners report
    /// them; members that do not answer within [`QUERY_TIMEOUT`] are left out.
    ListMesh {
        /// Where the answer goes: (owner, workload) pairs.
        reply: oneshot::Sender<Vec<(String, OwnedWorkload)>>,
    },
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
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A `ListMesh` waiting for members' reports.
struct PendingQuery {
    waiting: BTreeSet<String>,
    collected: Vec<(String, OwnedWorkload)>,
    reply: oneshot::Sender<Vec<(String, OwnedWorkload)>>,
    deadline_ms: u64,
}

/// How often this node reports the replicas it runs to their owners.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// The negotiation state of one node: membership, the announcer for the workloads it
/// owns and the bidder for the replicas it may host, driven together by [`run`].
pub struct Negotiation {
    /// SWIM membership, started by [`start`].
    pub membership: Membership,
    /// This node's self-description (bidder profile, candidate entry).
    pub meta: NodeMeta,
    /// Replicas this node committed to before a restart.
    pub committed: Vec<Assignment>,
    /// The container storage to watch for space, if known.
    pub disk: Option<DiskWatch>,
}

/// Wall-clock milliseconds: the auction compares times across nodes (reservation expiry),
/// so each node's clock must mean the same instant; NTP keeps them within the skew the
/// codec already tolerates.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the negotiation loop checks messages against and counts them in.
pub struct Checks {
    /// Counters for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// Who may do what.
    pub policy: PolicyHandle,
}

/// Runs membership, the announcer and the bidder until `shutdown`. `view` receives the
/// member list after every change.
#[allow(clippy::too_many_arguments)]
pub async fn run<H: Host>(
    transport: Transport,
    mut inbox: mpsc::Receiver<Inbound>,
    negotiation: Negotiation,
    seeds: Vec<SocketAddr>,
    view: watch::Sender<Vec<Member>>,
    host: Arc<H>,
    mut commands: mpsc::Receiver<Command>,
    checks: Checks,
    shutdown: CancellationToken,
) {
    let Checks { metrics, policy } = checks;
    let Negotiation {
        mut membership,
        mut meta,
        committed,
        disk,
    } = negotiation;
    let mut disk_check = tokio::time::interval(DISK_CHECK_INTERVAL);
    let id = transport.id().to_owned();
    let profile = NodeProfile {
        id: id.clone(),
        arch: meta.arch.clone(),
        labels: meta.labels.clone(),
        allocatable: meta.allocatable,
    };
    // Each run's reservation ids differ from the last run's: the boot number is the start
    // time, which only moves forward between runs of one node.
    let mut succession = Succession::new(&id);
    for a in &committed {
        let key = workload_key(a.spec.name.as_str());
        succession.learn(
            &key,
            a.submitter.as_deref().unwrap_or(&a.owner),
            &a.spec,
            None,
        );
    }
    let committed = committed.into_iter().map(|a| Committed {
        announcer: a.owner,
        workload: workload_key(a.spec.name.as_str()),
        replica: a.replica,
        epoch: a.epoch,
        resources: a.spec.resources,
        reservation: a.reservation,
        failure_domain: a.failure_domain,
    });
    let mut bidder = Bidder::restarted(profile, BidderConfig::default(), unix_millis(), committed);
    let mut announcer = Announcer::new(&id, AnnouncerConfig::default(), random_seed());
    // Workloads this node owns: key → (image, replicas), for reports to other nodes.
    let mut owned: BTreeMap<String, (String, u32)> = BTreeMap::new();
    let mut queries: BTreeMap<u64, PendingQuery> = BTreeMap::new();
    // Logs asked of other nodes: request → (node, where the answer goes). An asker that
    // gave up (its receiver is closed) is forgotten at the next request.
    type LogsAnswer = oneshot::Sender<Result<LogChunk, LogsFailure>>;
    let mut log_requests: HashMap<u64, (String, LogsAnswer)> = HashMap::new();
    // Logs read for other nodes, read beside the loop, come back here to be sent.
    let (logs_read, mut logs_ready) = mpsc::channel::<(String, Body)>(16);
    let mut next_query: u64 = 0;
    // Messages this loop sends of its own accord (answers to queries, query fan-out).
    let mut outbox: Vec<(String, Body)> = Vec::new();
    // Specs of awards being committed, by (workload, replica), until the bidder decides.
    let mut award_specs: HashMap<(String, u32), (WorkloadSpec, Option<String>)> = HashMap::new();
    // Set when ownership may have moved: membership changed or a workload became known.
    let mut ownership_stale = true;
    let mut local: VecDeque<(String, Body)> = VecDeque::new();
    let mut addresses: HashMap<String, SocketAddr> = HashMap::new();
    let mut report = tokio::time::interval(REPORT_INTERVAL);

    let (seed_found, mut seeds_found) = mpsc::channel(seeds.len().max(1));
    for seed in seeds {
        tokio::spawn(dial_seed(
            transport.clone(),
            seed,
            seed_found.clone(),
            shutdown.clone(),
        ));
    }
    drop(seed_found);
    announcer.set_members(candidates(&id, &meta, &membership));

    loop {
        let deadline = [
            membership.poll_timeout(),
            announcer.poll_timeout(),
            bidder.poll_timeout(),
            queries.values().map(|q| q.deadline_ms).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match deadline {
                Some(at) => {
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(unix_millis())))
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((peer, addr)) = seeds_found.recv() => {
                addresses.insert(peer.clone(), addr);
                membership.join(&[peer]);
            }
            message = inbox.recv() => {
                let Some(Inbound { received, remote }) = message else { break };
                addresses.entry(received.sender.clone()).or_insert(remote);
                local.push_back((received.sender, received.body));
            }
            Some(command) = commands.recv() => match command {
                Command::Place(request) => {
                    tracing::info!(workload = %request.workload, replicas = request.replicas, "placing");
                    if let Some(spec) = &request.spec {
                        succession.learn(&request.workload, &id, spec, None);
                    }
                    owned.insert(request.workload.clone(), (request.image.clone(), request.replicas));
                    announcer.set_members(candidates(&id, &meta, &membership));
                    announcer.place(unix_millis(), *request);
                }
                Command::Adopt(request) => {
                    tracing::info!(workload = %request.workload, replicas = request.replicas, "taking up a workload owned before the restart");
                    if let Some(spec) = &request.spec {
                        let submitter = request.submitter.as_deref().unwrap_or(&id);
                        succession.learn(&request.workload, submitter, spec, None);
                        ownership_stale = true;
                    }
                    owned.insert(request.workload.clone(), (request.image.clone(), request.replicas));
                    announcer.set_members(candidates(&id, &meta, &membership));
                    // Three report intervals: time to rejoin through a seed, after which every
                    // replica still running reports within one interval.
                    let gather_until = unix_millis() + 3 * REPORT_INTERVAL.as_millis() as u64;
                    announcer.adopt(gather_until, *request);
                }
                Command::Remove(workload) => {
                    owned.remove(&workload);
                    succession.forget(&workload);
                    announcer.remove(&workload);
                }
                Command::Explain { workload, reply } => {
                    let _ = reply.send((announcer.placements(&workload), announcer.explain(&workload)));
                }
                Command::Placements { workload, reply } => {
                    let _ = reply.send(announcer.placements(&workload));
                }
                Command::Logs { node, workload, replica, window, reply } => {
                    log_requests.retain(|_, (_, waiting)| !waiting.is_closed());
                    next_query += 1;
                    log_requests.insert(next_query, (node.clone(), reply));
                    outbox.push((
                        node,
                        Body::LogsRequest(LogsRequest { request: next_query, workload, replica, window }),
                    ));
                }
                Command::ListMesh { reply } => {
                    next_query += 1;
                    let collected = owned_report(&owned, &announcer)
                        .into_iter()
                        .map(|w| (id.clone(), w))
                        .collect();
                    let waiting: BTreeSet<String> =
                        membership.live_members().map(|m| m.id.to_string()).collect();
                    for member in &waiting {
                        outbox.push((
                            member.clone(),
                            Body::WorkloadQuery(WorkloadQuery { request: next_query }),
                        ));
                    }
                    let query = PendingQuery {
                        waiting,
                        collected,
                        reply,
                        deadline_ms: unix_millis() + QUERY_TIMEOUT.as_millis() as u64,
                    };
                    if query.waiting.is_empty() {
                        let _ = query.reply.send(query.collected);
                    } else {
                        queries.insert(next_query, query);
                    }
                }
                Command::RemoveRemote { workload } => {
                    for member in membership.live_members() {
                        outbox.push((
                            member.id.to_string(),
                            Body::RemoveWorkload(RemoveWorkload {
                                workload: workload.clone(),
                            }),
                        ));
                    }
                }
            },
            Some(reply) = logs_ready.recv() => outbox.push(reply),
            _ = disk_check.tick(), if disk.is_some() => {
                if let Some(watch) = &disk
                    && let Some(available) = crate::capacity::disk_available(&watch.path)
                {
                    bidder.set_disk(available, watch.reserve_bytes);
                    let free = available.saturating_sub(watch.reserve_bytes);
                    let announced = meta.disk_free_bytes.unwrap_or(u64::MAX);
                    if free.abs_diff(announced) >= DISK_GOSSIP_STEP || (free == 0) != (announced == 0) {
                        if free == 0 {
                            tracing::warn!(available_mib = available >> 20, reserve_mib = watch.reserve_bytes >> 20, path = %watch.path.display(), "the container storage is below its reserve: declining new replicas");
                        }
                        meta.disk_free_bytes = Some(free);
                        membership.set_meta(meta.clone());
                    }
                }
            }
            _ = report.tick() => {
                bidder.report_instances();
                // Repeats handovers a successor may have let pass.
                ownership_stale = true;
            }
            () = sleep => {
                let now = unix_millis();
                membership.handle_timeout(now);
                announcer.handle_timeout(now);
                bidder.handle_timeout(now);
                let expired: Vec<u64> = queries
                    .iter()
                    .filter(|(_, q)| q.deadline_ms <= now)
                    .map(|(request, _)| *request)
                    .collect();
                for request in expired {
                    if let Some(query) = queries.remove(&request) {
                        tracing::debug!(unanswered = ?query.waiting, "workload query timed out");
                        let _ = query.reply.send(query.collected);
                    }
                }
            }
        }

        // Deliver messages (from peers, and from this node to itself) until none is left.
        loop {
            while let Some((from, body)) = local.pop_front() {
                let Some(body) = authorize(
                    &from,
                    body,
                    &policy.current(),
                    &mut announcer,
                    &mut outbox,
                    &metrics,
                ) else {
                    continue;
                };
                let body = match body {
                    Body::WorkloadQuery(query) => {
                        // A member sees the workloads of the namespaces it may list.
                        let policy = policy.current();
                        let mut workloads: Vec<OwnedWorkload> = owned_report(&owned, &announcer)
                            .into_iter()
                            .filter(|w| {
                                policy
                                    .check(&from, Action::List, workload_namespace(&w.workload))
                                    .is_ok()
                            })
                            .collect();
                        workloads.truncate(MAX_REPORTED_WORKLOADS);
                        outbox.push((
                            from,
                            Body::WorkloadReport(WorkloadReport {
                                request: query.request,
                                workloads,
                            }),
                        ));
                        continue;
                    }
                    Body::WorkloadReport(report) => {
                        if let Some(query) = queries.get_mut(&report.request)
                            && query.waiting.remove(&from)
                        {
                            query
                                .collected
                                .extend(report.workloads.into_iter().map(|w| (from.clone(), w)));
                            if query.waiting.is_empty()
                                && let Some(query) = queries.remove(&report.request)
                            {
                                let _ = query.reply.send(query.collected);
                            }
                        }
                        continue;
                    }
                    Body::Handover(handover) => {
                        tracing::info!(workload = %handover.workload, submitter = %handover.submitter, by = %from, "handed a workload whose owner died");
                        succession.learn(
                            &handover.workload,
                            &handover.submitter,
                            &handover.spec,
                            Some(unix_millis()),
                        );
                        ownership_stale = true;
                        continue;
                    }
                    Body::LogsRequest(request) => {
                        let host = Arc::clone(&host);
                        let done = logs_read.clone();
                        tokio::spawn(async move {
                            let name = workload_name(&request.workload).to_owned();
                            let result = host
                                .logs(name, request.replica, request.window)
                                .await
                                .map_err(|message| LogsFailure {
                                    denied: false,
                                    message,
                                });
                            let reply = LogsReply {
                                request: request.request,
                                result,
                            };
                            let _ = done.send((from, Body::LogsReply(reply))).await;
                        });
                        continue;
                    }
                    Body::LogsReply(reply) => {
                        if log_requests
                            .get(&reply.request)
                            .is_some_and(|(node, _)| *node == from)
                            && let Some((_, waiting)) = log_requests.remove(&reply.request)
                        {
                            let _ = waiting.send(reply.result);
                        }
                        continue;
                    }
                    Body::RemoveWorkload(remove) => {
                        if owned.remove(&remove.workload).is_some() {
                            succession.forget(&remove.workload);
                            tracing::info!(workload = %remove.workload, by = %from, "removing a workload at another node's request; revoking its replicas");
                            announcer.remove(&remove.workload);
                            host.forget(
                                workload_name(&remove.workload).to_owned(),
                                "at another node's request; revoking its replicas",
                            )
                            .await;
                        }
                        continue;
                    }
                    other => other,
                };
                dispatch(
                    &from,
                    body,
                    &mut membership,
                    &mut announcer,
                    &mut bidder,
                    &mut award_specs,
                );
            }
            ownership_stale |= membership_events(
                &id,
                &meta,
                &mut membership,
                &mut announcer,
                &owned,
                &view,
                &metrics,
            );
            if std::mem::take(&mut ownership_stale) {
                follow_ownership(
                    &id,
                    &membership,
                    &mut succession,
                    &mut announcer,
                    &mut bidder,
                    &mut owned,
                    &mut outbox,
                    host.as_ref(),
                )
                .await;
            }
            // The bidder's events come before its messages: an award is persisted before
            // the Accept that acknowledges it leaves.
            let mut withheld = BTreeSet::new();
            while let Some(event) = bidder.poll_event() {
                match event {
                    BidderEvent::Committed(c) => {
                        let name = workload_name(&c.workload).to_owned();
                        let Some((spec, submitter)) =
                            award_specs.remove(&(c.workload.clone(), c.replica))
                        else {
                            tracing::warn!(workload = %c.workload, replica = c.replica, "award without a spec; refusing it");
                            bidder.remove_instance(&c.workload, c.replica);
                            withheld.insert(c.reservation.clone());
                            continue;
                        };
                        succession.learn(
                            &c.workload,
                            submitter.as_deref().unwrap_or(&c.announcer),
                            &spec,
                            None,
                        );
                        ownership_stale = true;
                        let assignment = Assignment {
                            spec,
                            replica: c.replica,
                            epoch: c.epoch,
                            owner: c.announcer.clone(),
                            submitter,
                            reservation: c.reservation.clone(),
                            failure_domain: c.failure_domain.clone(),
                            assigned_at_ms: unix_millis(),
                        };
                        match host.commit(assignment).await {
                            Ok(()) => {
                                tracing::info!(workload = %c.workload, replica = c.replica, epoch = c.epoch, owner = %c.announcer, "replica awarded; starting it");
                                let host = Arc::clone(&host);
                                tokio::spawn(async move { host.start(name, c.replica).await });
                            }
                            Err(error) => {
                                // Not acknowledged: the owner re-awards elsewhere.
                                tracing::error!(workload = %c.workload, replica = c.replica, %error, "could not persist an award; not acknowledging it");
                                bidder.remove_instance(&c.workload, c.replica);
                                withheld.insert(c.reservation.clone());
                            }
                        }
                    }
                    BidderEvent::Revoked(c) => {
                        tracing::info!(workload = %c.workload, replica = c.replica, epoch = c.epoch, "replica revoked by its owner; stopping it");
                        let host = Arc::clone(&host);
                        let name = workload_name(&c.workload).to_owned();
                        tokio::spawn(async move { host.revoke(name, c.replica, c.epoch).await });
                    }
                    BidderEvent::Expired(r) => {
                        tracing::debug!(reservation = %r.id, workload = %r.workload, "reservation lapsed");
                    }
                }
            }
            // Free capacity travels in membership metadata, so that announcers ask the
            // members that look able to host first.
            // (Committed replicas only: reservations come and go with every call for
            // proposals, and each change of metadata is gossiped to every member.)
            let free = meta.allocatable.minus(&bidder.committed_resources());
            if free != meta.free {
                meta.free = free;
                // Paced: in a large mesh placing fast, announcing every change would
                // fill every member's gossip with capacity updates.
                membership.set_meta_paced(unix_millis(), meta.clone());
            }
            while let Some(event) = announcer.poll_event() {
                match event {
                    AnnouncerEvent::Placed {
                        workload,
                        replica,
                        node,
                        epoch,
                    } => {
                        Metrics::inc(&metrics.placements);
                        tracing::info!(%workload, replica, %node, epoch, "replica placed");
                    }
                    AnnouncerEvent::NotPlaced {
                        workload,
                        replica,
                        explanation,
                        retry_at_ms,
                    } => {
                        Metrics::inc(&metrics.failed_auctions);
                        tracing::warn!(%workload, replica, reasons = ?explanation.counts(), retry_in_ms = retry_at_ms.saturating_sub(unix_millis()), "replica not placed; retrying");
                    }
                }
            }
            let outgoing: Vec<(String, Body)> = outbox
                .drain(..)
                .chain(std::iter::from_fn(|| membership.poll_transmit()))
                .chain(std::iter::from_fn(|| announcer.poll_transmit()))
                .chain(std::iter::from_fn(|| bidder.poll_transmit()))
                .collect();
            for (to, body) in outgoing {
                if let Body::Accept(accept) = &body
                    && withheld.contains(&accept.reservation)
                {
                    continue;
                }
                match &body {
                    Body::Bid(_) => Metrics::inc(&metrics.bids),
                    Body::Decline(decline) => metrics.decline(decline.reason.code()),
                    Body::Award(_) => Metrics::inc(&metrics.awards),
                    _ => {}
                }
                if to == id {
                    local.push_back((id.clone(), body));
                    continue;
                }
                let addr = membership
                    .member(&to)
                    .and_then(|m| m.meta.as_ref())
                    .and_then(|meta| meta.address.as_deref())
                    .and_then(|a| a.parse().ok())
                    .or_else(|| addresses.get(&to).copied());
                let transport = transport.clone();
                // Sends run beside the loop: a slow peer must not stall the others. The
                // protocol survives lost messages (probes time out, awards are resent).
                tokio::spawn(async move {
                    if let Err(error) = transport.send(&to, addr, &body).await {
                        tracing::debug!(%error, kind = body.kind(), "message not sent");
                    }
                });
            }
            if local.is_empty() {
                break;
            }
        }
    }
}

/// Applies the policy to a message before any state machine sees it: a call for proposals
/// or an award from an owner that may not submit to the workload's namespace is declined
/// or rejected; a bid from a node that may not host there counts as a policy decline; a
/// removal the sender may not ask for is dropped. Returns the message when it may pass.
fn authorize(
    from: &str,
    body: Body,
    policy: &Policy,
    announcer: &mut Announcer,
    outbox: &mut Vec<(String, Body)>,
    metrics: &Metrics,
) -> Option<Body> {
    let (action, workload) = match &body {
        Body::Cfp(cfp) => (Action::Submit, cfp.workload.as_str()),
        Body::Award(award) => (Action::Submit, award.workload.as_str()),
        Body::Bid(bid) => match announcer.auction_workload(bid.auction) {
            Some(workload) => (Action::Bid, workload),
            // Not an auction in progress: the announcer ignores it anyway.
            None => return Some(body),
        },
        Body::RemoveWorkload(remove) => (Action::Remove, remove.workload.as_str()),
        Body::LogsRequest(request) => (Action::Logs, request.workload.as_str()),
        // Handing a workload over makes its receiver place it: a submission.
        Body::Handover(handover) => (Action::Submit, handover.workload.as_str()),
        _ => return Some(body),
    };
    let Err(denied) = policy.check(from, action, workload_namespace(workload)) else {
        return Some(body);
    };
    tracing::warn!(kind = body.kind(), %workload, "refused by policy: {denied}");
    metrics.denial(action.name());
    match body {
        Body::Cfp(cfp) => outbox.push((
            from.to_owned(),
            Body::Decline(Decline {
                auction: cfp.auction,
                replica: cfp.replica,
                reason: DeclineReason::PolicyDenied,
            }),
        )),
        Body::Award(award) => outbox.push((
            from.to_owned(),
            Body::Reject(Reject {
                auction: award.auction,
                replica: award.replica,
                reservation: award.reservation,
                reason: denied.to_string(),
            }),
        )),
        Body::LogsRequest(request) => outbox.push((
            from.to_owned(),
            Body::LogsReply(LogsReply {
                request: request.request,
                result: Err(LogsFailure {
                    denied: true,
                    message: denied.to_string(),
                }),
            }),
        )),
        Body::Bid(bid) => announcer.handle_decline(
            from,
            &Decline {
                auction: bid.auction,
                replica: bid.replica,
                reason: DeclineReason::PolicyDenied,
            },
        ),
        _ => {}
    }
    None
}

/// Hands one message to the state machine it is for.
fn dispatch(
    from: &str,
    body: Body,
    membership: &mut Membership,
    announcer: &mut Announcer,
    bidder: &mut Bidder,
    award_specs: &mut HashMap<(String, u32), (WorkloadSpec, Option<String>)>,
) {
    let now = unix_millis();
    match body {
        Body::Ping(ping) => membership.handle_ping(now, from, &ping),
        Body::PingReq(request) => membership.handle_ping_req(now, from, &request),
        Body::Ack(ack) => membership.handle_ack(now, from, &ack),
        Body::Sync(sync) => membership.handle_sync(now, from, &sync),
        Body::Cfp(cfp) => bidder.handle_cfp(now, from, &cfp),
        Body::Award(award) => {
            if let Some(spec) = &award.spec {
                award_specs.insert(
                    (award.workload.clone(), award.replica),
                    (spec.clone(), award.submitter.clone()),
                );
            }
            bidder.handle_award(now, from, &award);
            // An award that did not commit (rejected, or a repeat) leaves no spec behind.
            if !bidder.committed().any(|c| {
                c.workload == award.workload && c.replica == award.replica && c.epoch == award.epoch
            }) {
                award_specs.remove(&(award.workload.clone(), award.replica));
            }
        }
        Body::Release(release) => bidder.handle_release(from, &release),
        Body::Revoke(revoke) => bidder.handle_revoke(from, &revoke),
        Body::Bid(bid) => announcer.handle_bid(now, from, &bid),
        Body::Decline(decline) => announcer.handle_decline(from, &decline),
        Body::Accept(accept) => announcer.handle_accept(now, from, &accept),
        Body::Reject(reject) => announcer.handle_reject(now, from, &reject),
        Body::Instance(instance) => announcer.handle_instance(now, from, &instance),
        // Answered by the loop itself, which holds what they need.
        Body::WorkloadQuery(_)
        | Body::WorkloadReport(_)
        | Body::RemoveWorkload(_)
        | Body::LogsRequest(_)
        | Body::LogsReply(_)
        | Body::Handover(_) => {}
    }
}

/// Brings this node in line with its view of who owns what ([`Succession`]): reports
/// replicas to their owner, takes over the workloads of a dead submitter whose successor
/// it is, gives them back when the submitter returns, and hands them to the successor.
#[allow(clippy::too_many_arguments)]
async fn follow_ownership<H: Host>(
    id: &str,
    membership: &Membership,
    succession: &mut Succession,
    announcer: &mut Announcer,
    bidder: &mut Bidder,
    owned: &mut BTreeMap<String, (String, u32)>,
    outbox: &mut Vec<(String, Body)>,
    host: &H,
) {
    let alive: Vec<&str> = std::iter::once(id)
        .chain(
            membership
                .members()
                .filter(|m| m.state != MemberState::Dead)
                .map(|m| &*m.id),
        )
        .collect();
    let held: BTreeSet<String> = bidder.committed().map(|c| c.workload.clone()).collect();
    let now = unix_millis();
    let steps = succession.decide(now, &alive, |w| announcer.owns(w), |w| held.contains(w));
    for step in steps {
        match step {
            Step::SetOwner { workload, owner } => bidder.set_owner(&workload, &owner),
            Step::Adopt {
                workload,
                submitter,
                spec,
            } => {
                if let Err(error) = host.adopt((*spec).clone(), submitter.clone()).await {
                    tracing::error!(%workload, %error, "cannot store a workload to take over; leaving it");
                    continue;
                }
                tracing::warn!(%workload, %submitter, "its owner is dead and this node is the successor: taking the workload over");
                let request = PlacementRequest {
                    submitter: Some(submitter),
                    ..placement_request(&workload, &spec)
                };
                owned.insert(workload, (request.image.clone(), request.replicas));
                // As after a restart: the running replicas report first, then what is
                // missing is placed.
                announcer.adopt(now + 3 * REPORT_INTERVAL.as_millis() as u64, request);
            }
            Step::Relinquish { workload } => {
                tracing::info!(%workload, "its submitter is back: giving the workload back");
                announcer.relinquish(&workload);
                owned.remove(&workload);
                host.forget(
                    workload_name(&workload).to_owned(),
                    "its submitter is back and owns it again",
                )
                .await;
            }
            Step::Handover {
                to,
                workload,
                submitter,
                spec,
            } => {
                tracing::info!(%workload, successor = %to, "owner dead: handing the workload to its successor");
                outbox.push((
                    to,
                    Body::Handover(Handover {
                        workload,
                        submitter,
                        spec: *spec,
                    }),
                ));
            }
        }
    }
}

/// What the announcer needs to place `spec`, stored under `key`.
pub fn placement_request(key: &str, spec: &WorkloadSpec) -> PlacementRequest {
    PlacementRequest {
        workload: key.to_owned(),
        image: spec.image.clone(),
        replicas: spec.replicas,
        resources: spec.resources,
        constraints: spec.constraints.clone(),
        arch: None,
        spread_label: None,
        scoring: Scoring::Spread,
        spec: Some(spec.clone()),
        submitter: None,
    }
}

/// Acts on membership changes: publishes the view, refreshes the announcer's candidates,
/// and re-places replicas of owned workloads that were on a node declared dead. Returns
/// whether anything changed.
fn membership_events(
    id: &str,
    meta: &NodeMeta,
    membership: &mut Membership,
    announcer: &mut Announcer,
    owned: &BTreeMap<String, (String, u32)>,
    view: &watch::Sender<Vec<Member>>,
    metrics: &Metrics,
) -> bool {
    let mut changed = false;
    let mut died = Vec::new();
    while let Some(event) = membership.poll_event() {
        tracing::info!(?event, "membership");
        if let MembershipEvent::Died(node) = &event {
            died.push(node.clone());
        }
        changed = true;
    }
    if !changed {
        return false;
    }
    view.send_replace(membership.members().cloned().collect());
    announcer.set_members(candidates(id, meta, membership));
    let now = unix_millis();
    for node in died {
        for workload in owned.keys() {
            let lost: Vec<u32> = announcer
                .placements(workload)
                .into_iter()
                .filter(|(_, (on, _))| *on == node)
                .map(|(replica, _)| replica)
                .collect();
            for replica in lost {
                tracing::warn!(%workload, replica, %node, "replica lost with its node; placing it again");
                announcer.replica_lost(now, workload, replica);
                Metrics::inc(&metrics.reauctions);
            }
        }
    }
    true
}

/// The workloads this node owns, with their placements, as reported to other nodes.
fn owned_report(
    owned: &BTreeMap<String, (String, u32)>,
    announcer: &Announcer,
) -> Vec<OwnedWorkload> {
    owned
        .iter()
        .map(|(workload, (image, replicas))| OwnedWorkload {
            workload: workload.clone(),
            image: image.clone(),
            replicas: *replicas,
            placements: announcer
                .placements(workload)
                .into_iter()
                .map(|(replica, (node, epoch))| Placement {
                    replica,
                    node,
                    epoch,
                })
                .collect(),
        })
        .collect()
}

/// The members an announcer may ask: this node and every alive member.
fn candidates(id: &str, meta: &NodeMeta, membership: &Membership) -> Vec<Candidate> {
    let announced = |meta: &NodeMeta| Announced {
        arch: meta.arch.clone(),
        labels: meta.labels.clone(),
        free: Some(meta.free),
    };
    std::iter::once(Candidate {
        announced: Some(announced(meta)),
        ..Candidate::new(id)
    })
    .chain(
        membership
            .members()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| Candidate {
                node: m.id.to_string(),
                compatible: m.meta.as_ref().is_some_and(|meta| {
                    (meta.protocol_min..=meta.protocol_max).contains(&PROTOCOL_VERSION)
                }),
                announced: m.meta.as_deref().map(announced),
            }),
    )
    .collect()
}

/// `default/NAME` for a workload name.
pub fn workload_key(name: &str) -> String {
    format!("{}/{name}", parley_store::DEFAULT_NAMESPACE)
}

/// The namespace in a `namespace/name` key.
fn workload_namespace(key: &str) -> &str {
    key.split_once('/')
        .map_or(parley_store::DEFAULT_NAMESPACE, |(namespace, _)| namespace)
}

/// The name in a `namespace/name` key.
fn workload_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

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

mod succession;
#[cfg(test)]
mod tests;
