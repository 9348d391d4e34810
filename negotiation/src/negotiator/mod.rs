//! The whole protocol of one node, as one sans-IO state machine: SWIM membership, the
//! announcer for the workloads it owns, the bidder for the replicas it may host, owner
//! succession, queries and log reads for its users, and the authorization gate in front
//! of them all.
//!
//! It is driven like `quinn-proto`'s `Endpoint`: inputs come through `handle_*(now, …)`,
//! outputs leave through [`Negotiator::poll_transmit`] (messages for peers),
//! [`Negotiator::poll_action`] (work for the host: store, container engine, answers) and
//! [`Negotiator::poll_event`] (notices for logs and metrics), and
//! [`Negotiator::poll_timeout`] says when to call [`Negotiator::handle_timeout`]. The
//! agent's mesh driver feeds it from QUIC and tokio timers; the simulator feeds
//! thousands of them from a virtual network and clock. Both run this very code.
//!
//! Messages a node sends itself (its announcer asking its own bidder) are delivered
//! inside the same call, through the gate like any other, and never reach the network.
//!
//! "Persist before acknowledge" is data here, not statement order: an award's Accept is
//! held until the host reports the award stored ([`Negotiator::handle_committed`]), and
//! dropped if storing failed.

mod action;
pub mod gate;
mod queries;
mod replication;
mod revocations;
mod strong;
pub mod succession;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

pub use action::{Assignment, Event, HostAction, HostError, Placements, Reply, Request};
pub use gate::{Action, AllowAll, Authorizer, Denial, MESH_WIDE};
use queries::{Finished, PendingList, PendingLogs, Queries};
pub use revocations::GOSSIP_INTERVAL_MS as REVOCATION_GOSSIP_MS;
pub use strong::LeaseView;
use succession::{Step, Succession};

use crate::auction::{
    Announced, Announcer, AnnouncerConfig, Bidder, BidderConfig, BidderEvent, Candidate, Committed,
    NodeProfile, PlacementRequest,
};
use crate::codec::PROTOCOL_VERSION;
use crate::membership::{
    Interner, Membership, MembershipConfig, MembershipEvent, Notary, StatementKind,
};
use crate::messages::{
    Accept, Bid, Body, Decline, DeclineReason, Grant, Handover, LogChunk, LogsFailure, LogsReply,
    LogsRequest, MAX_REPORTED_WORKLOADS, MemberState, MemberUpdate, NodeMeta, OwnedWorkload,
    Placement, Reject, RemoveWorkload, RevocationNotice, Revocations, Revoke, RunState,
    SignedStatement, WorkloadQuery, WorkloadReport,
};
use crate::workload::{WorkloadSpec, key_namespace};

/// How often this node reports the replicas it runs to their owners (and repeats
/// handovers a successor may have let pass).
pub const REPORT_INTERVAL_MS: u64 = 2_000;

/// How long a `ListMesh` waits for the members' reports.
pub const QUERY_TIMEOUT_MS: u64 = 2_000;

/// How long a log read waits for the node running the replica.
pub const LOGS_TIMEOUT_MS: u64 = 10_000;

/// How long an owner taking up a workload gathers reports of running replicas before it
/// places what is missing: time to rejoin through a seed, after which every replica still
/// running reports within one interval.
pub const ADOPT_GATHER_MS: u64 = 3 * REPORT_INTERVAL_MS;

/// How long after its start a node waits before it takes over a workload it knows only
/// from its record and whose submitter it has not met: time to join and learn the
/// members, so that a restarted node does not take over what live nodes own.
pub const VIEW_SETTLE_MS: u64 = 30_000;

/// A change of free disk smaller than this is not worth gossiping to every member.
const DISK_GOSSIP_STEP: u64 = 64 << 20;

/// Grants remembered as checked (one per replica this node owns, at most this many).
const MAX_CHECKED_GRANTS: usize = 65_536;

/// The namespaces a node hosts. The agent's store, container names and workload
/// identities carry the default namespace only so far; a message about a workload of
/// another namespace is refused at the gate, where it arrives, rather than acted on under
/// the default one (which let a node allowed only in `sandbox` overwrite `default/web`).
pub const HOSTED_NAMESPACES: &[&str] = &[crate::workload::DEFAULT_NAMESPACE];

/// Settings of the parts.
#[derive(Debug, Clone, Copy, Default)]
pub struct NegotiatorConfig {
    /// SWIM membership.
    pub membership: MembershipConfig,
    /// The announcer (auctions of owned workloads).
    pub announcer: AnnouncerConfig,
    /// The bidder (reservations).
    pub bidder: BidderConfig,
    /// Whether this node's host runs strong workloads (keeps lease registers, runs and
    /// fences leased containers). Off: it rejects awards of strong replicas and refuses
    /// to be an acceptor, with reasons its peers log.
    pub strong: bool,
}

/// What an award brought beside its reservation, kept until the bidder commits it.
#[derive(Debug)]
struct AwardedSpec {
    spec: WorkloadSpec,
    submitter: Option<String>,
    grant: Option<SignedStatement>,
}

/// An award being persisted by the host; its Accept waits here.
#[derive(Debug)]
struct PendingCommit {
    workload: String,
    replica: u32,
    epoch: u64,
    reservation: String,
    accept: Option<(String, Body)>,
    /// For a strong workload's replica: its stop timeout (it runs under a lease).
    strong_stop_secs: Option<u32>,
}

/// The negotiation state of one node.
pub struct Negotiator {
    id: String,
    meta: NodeMeta,
    membership: Membership,
    /// Set when membership does not run and every node is taken as alive for ever
    /// (benchmarks at sizes where N² membership records do not fit).
    static_members: bool,
    announcer: Announcer,
    bidder: Bidder,
    succession: Succession,
    authorizer: Box<dyn Authorizer>,
    /// Workloads this node owns: key → (image, replicas), for reports to other nodes.
    owned: BTreeMap<String, (String, u32)>,
    /// Specs of awards being committed, by (workload, replica), until the bidder decides.
    award_specs: HashMap<(String, u32), AwardedSpec>,
    /// The grants of the replicas this node holds, by (workload, replica), with the epoch
    /// granted: each instance report carries its own.
    grants: HashMap<(String, u32), (u64, SignedStatement)>,
    /// The grant last checked in a report of each replica this node owns: a holder
    /// repeats the same one in every report, and its signature is checked once.
    checked_grants: HashMap<(String, u32), SignedStatement>,
    commits: BTreeMap<u64, PendingCommit>,
    /// Reservations whose Accept must not leave (the award could not be honoured).
    refused_accepts: BTreeSet<String>,
    /// Workloads being stored by the host before this node takes them over.
    adoptions: BTreeMap<u64, PlacementRequest>,
    queries: Queries,
    /// Messages from this node to itself, delivered before the current call returns.
    inbox: VecDeque<(String, Body)>,
    transmits: VecDeque<(String, Body)>,
    actions: VecDeque<HostAction>,
    events: VecDeque<Event>,
    next_token: u64,
    next_report_ms: u64,
    /// Ownership may have moved: membership changed or a workload became known.
    ownership_stale: bool,
    /// The announcer's member list is out of date (rebuilt when it has work).
    members_stale: bool,
    /// Revocations held (verified by the host) and spread by gossip.
    revocations: revocations::Revocations,
    /// Every workload's newest record (desired state), replicated to every node.
    records: crate::records::RecordTable,
    /// When the next anti-entropy round of the records is due.
    next_record_sync_ms: u64,
    /// Picks the member of each anti-entropy round.
    record_rng: u64,
    /// When this node started (see [`VIEW_SETTLE_MS`]).
    started_ms: u64,
    /// What the host last saw of each replica this node runs (sent with its reports).
    replica_states: HashMap<(String, u32), RunState>,
    /// The spec digest of each replica this node runs (sent with its reports).
    held_digests: HashMap<(String, u32), String>,
    /// What the nodes running them last reported of the replicas of workloads this node
    /// owns: (node, epoch, state) by (workload, replica).
    observed: HashMap<(String, u32), (String, u64, RunState)>,
    /// This node as an acceptor of strong replicas' lease registers.
    acceptor: crate::register::Acceptor,
    /// The leases this node holds or seeks, for the strong replicas it holds.
    claims: crate::lease::Claims,
    /// Register answers waiting for their slot to be stored, by token.
    register_replies: BTreeMap<u64, (String, crate::register::RegisterMessage)>,
    /// The strong replicas this node holds (stored), with their stop timeouts.
    strong: BTreeMap<(String, u32), u32>,
    /// See [`NegotiatorConfig::strong`].
    strong_enabled: bool,
}

impl std::fmt::Debug for Negotiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Negotiator")
            .field("id", &self.id)
            .field("owned", &self.owned.len())
            .field("commits", &self.commits.len())
            .finish_non_exhaustive()
    }
}

impl Negotiator {
    /// The negotiator of node `id`, which announces `meta` and had committed `committed`
    /// before (its store). `seed` drives every random choice; `authorizer` says who may
    /// do what; `notary` signs this node's membership statements and checks others'.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: impl Into<String>,
        config: NegotiatorConfig,
        meta: NodeMeta,
        committed: Vec<Assignment>,
        now_ms: u64,
        seed: u64,
        authorizer: Box<dyn Authorizer>,
        notary: Box<dyn Notary>,
    ) -> Self {
        let id = id.into();
        let membership =
            Membership::new(&id, meta.clone(), config.membership, now_ms, seed, notary);
        let profile = NodeProfile {
            id: id.clone(),
            arch: meta.arch.clone(),
            labels: meta.labels.clone(),
            allocatable: meta.allocatable,
        };
        let mut succession = Succession::new(&id);
        for a in &committed {
            let key = crate::workload::default_key(a.spec.name.as_str());
            succession.learn(
                &key,
                a.submitter.as_deref().unwrap_or(&a.owner),
                &a.spec,
                None,
            );
        }
        let grants = committed
            .iter()
            .filter_map(|a| {
                let key = (
                    crate::workload::default_key(a.spec.name.as_str()),
                    a.replica,
                );
                Some((key, (a.epoch, a.grant.clone()?)))
            })
            .collect();
        let strong = committed
            .iter()
            .filter(|a| a.spec.consistency == crate::workload::Consistency::Strong)
            .map(|a| {
                let key = (
                    crate::workload::default_key(a.spec.name.as_str()),
                    a.replica,
                );
                (key, a.spec.stop_timeout_secs)
            })
            .collect();
        let held_digests = committed
            .iter()
            .map(|a| {
                let key = (
                    crate::workload::default_key(a.spec.name.as_str()),
                    a.replica,
                );
                (key, crate::records::spec_digest(&a.spec))
            })
            .collect();
        let committed = committed.into_iter().map(|a| Committed {
            workload: crate::workload::default_key(a.spec.name.as_str()),
            announcer: a.owner,
            replica: a.replica,
            epoch: a.epoch,
            resources: a.spec.resources,
            reservation: a.reservation,
            failure_domain: a.failure_domain,
        });
        // The boot number is the start time, which only moves forward between runs of one
        // node: each run's reservation ids differ from the last run's.
        let mut bidder = Bidder::restarted(profile, config.bidder, now_ms, committed);
        for image in &meta.images {
            bidder.add_image(image);
        }
        let announcer_seed = seed.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15;
        Self {
            announcer: Announcer::new(&id, config.announcer, announcer_seed),
            membership,
            static_members: false,
            bidder,
            succession,
            authorizer,
            owned: BTreeMap::new(),
            award_specs: HashMap::new(),
            commits: BTreeMap::new(),
            grants,
            checked_grants: HashMap::new(),
            refused_accepts: BTreeSet::new(),
            adoptions: BTreeMap::new(),
            queries: Queries::default(),
            inbox: VecDeque::new(),
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            next_token: 0,
            revocations: revocations::Revocations::new(seed ^ 0x5EC0_7E5D),
            records: crate::records::RecordTable::default(),
            next_record_sync_ms: now_ms + crate::records::SYNC_INTERVAL_MS,
            record_rng: (seed ^ 0x2EC0_4D5E_ED5A_17ED) | 1,
            started_ms: now_ms,
            replica_states: HashMap::new(),
            held_digests,
            observed: HashMap::new(),
            acceptor: crate::register::Acceptor::default(),
            claims: crate::lease::Claims::new(&id, seed ^ 0x1EA5_E5EE_D000_0001),
            register_replies: BTreeMap::new(),
            strong,
            strong_enabled: config.strong,
            next_report_ms: now_ms + REPORT_INTERVAL_MS,
            ownership_stale: true,
            members_stale: true,
            meta,
            id,
        }
    }

    /// What the host sees of a replica this node runs; it travels with the replica's
    /// next report to its owner (a replica not held here is ignored).
    pub fn set_replica_state(&mut self, workload: &str, replica: u32, state: RunState) {
        let held = self
            .bidder
            .committed()
            .any(|c| c.workload == workload && c.replica == replica);
        if held {
            self.replica_states
                .insert((workload.to_owned(), replica), state.bounded());
        }
    }

    /// The state the node running `replica` of `workload` (owned here) last reported for
    /// its current placement.
    pub fn reported_state(&self, workload: &str, replica: u32) -> Option<&RunState> {
        let (node, epoch) = self.announcer.placements(workload).remove(&replica)?;
        self.observed
            .get(&(workload.to_owned(), replica))
            .filter(|(on, at, _)| *on == node && *at == epoch)
            .map(|(_, _, state)| state)
    }

    /// This node's SPIFFE ID.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Announces this node's metadata again, newly signed: the agent calls it when its
    /// identity was renewed, so that members meeting it later can check its statement.
    pub fn restate_meta(&mut self) {
        self.membership.restate_meta();
    }

    /// The membership view (for the agent's `parley nodes`, addresses, and invariants).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The auctions of the workloads this node owns (for explanations and invariants).
    pub fn announcer(&self) -> &Announcer {
        &self.announcer
    }

    /// The replicas this node holds or reserves (for invariants).
    pub fn bidder(&self) -> &Bidder {
        &self.bidder
    }

    /// Whether this node knows `workload` (owns it, runs a replica, or was handed it).
    pub fn knows(&self, workload: &str) -> bool {
        self.succession.knows(workload)
    }

    /// Shares one table of member ids and metadata with other negotiators in this process
    /// (a simulated cluster), instead of one per node.
    pub fn share_interner(&mut self, interner: Interner) {
        self.membership.share_interner(interner);
    }

    /// Starts from a converged view, as after a completed join (large simulations).
    pub fn assume_known(&mut self, now_ms: u64, everyone: &[MemberUpdate]) {
        self.membership.assume_known(now_ms, everyone);
    }

    /// Runs without SWIM, every node alive for ever, and auctions asking `members` (none
    /// for a node that takes no submissions). Measures the auction alone at sizes where
    /// N² membership records do not fit in one process.
    pub fn use_static_members(&mut self, members: Vec<Candidate>) {
        self.static_members = true;
        self.announcer.set_members(members);
        self.members_stale = false;
    }

    /// Joins the mesh through `peer`, a seed that answered.
    pub fn handle_seed(&mut self, now_ms: u64, peer: &str) {
        self.membership.join(&[peer.to_owned()]);
        self.offer_digest(peer);
        self.settle(now_ms);
    }

    /// A verified message from `from` (the transport authenticated the sender).
    pub fn handle_message(&mut self, now_ms: u64, from: &str, body: Body) {
        self.inbox.push_back((from.to_owned(), body));
        self.settle(now_ms);
    }

    /// A request from this node's users; its answer, if it has one, comes back as
    /// [`HostAction::Answer`] with `token`.
    pub fn handle_request(&mut self, now_ms: u64, token: u64, request: Request) {
        match request {
            Request::Place(request) => {
                if let Some(spec) = &request.spec {
                    self.succession
                        .learn(&request.workload, &self.id, spec, None);
                    let id = self.id.clone();
                    self.write_record(now_ms, &request.workload, &id, Some(spec.clone()), None);
                }
                self.owned.insert(
                    request.workload.clone(),
                    (request.image.clone(), request.replicas),
                );
                self.refresh_members(true);
                self.announcer.place(now_ms, request);
            }
            Request::Adopt(mut request) => {
                if !self.adopt_newest(now_ms, &mut request) {
                    self.settle(now_ms);
                    return;
                }
                if let Some(spec) = &request.spec {
                    let submitter = request.submitter.as_deref().unwrap_or(&self.id);
                    self.succession
                        .learn(&request.workload, submitter, spec, None);
                    self.ownership_stale = true;
                }
                self.owned.insert(
                    request.workload.clone(),
                    (request.image.clone(), request.replicas),
                );
                self.refresh_members(true);
                let workload = request.workload.clone();
                self.announcer.adopt(now_ms + ADOPT_GATHER_MS, request);
                self.resume_rollout(now_ms, &workload);
            }
            Request::Remove(workload) => {
                self.write_tombstone(now_ms, &workload);
                self.owned.remove(&workload);
                self.succession.forget(&workload);
                self.announcer.remove(&workload);
                if self.cancel_adoption(&workload) {
                    // Its record may be written after the user's removal deleted it.
                    self.actions.push_back(HostAction::Forget {
                        workload: workload.clone(),
                        why: "removed while being taken over",
                    });
                }
                self.remove_here(&workload, "removed by this node's user");
            }
            Request::Explain(workload) => {
                let reply = Reply::Explain(
                    self.announcer.placements(&workload),
                    self.announcer.explain(&workload),
                    self.lease_views(now_ms, &workload),
                );
                self.actions.push_back(HostAction::Answer { token, reply });
            }
            Request::Placements(workload) => {
                let reply = Reply::Placements(self.announcer.placements(&workload));
                self.actions.push_back(HostAction::Answer { token, reply });
            }
            Request::ListMesh => self.list_mesh(now_ms, token),
            Request::Revoke(notice) => self.handle_revocation(now_ms, notice, true),
            Request::Scale { workload, replicas } => self.scale(now_ms, &workload, replicas),
            Request::Update { spec, policy } => {
                let workload = crate::workload::default_key(spec.name.as_str());
                self.update(now_ms, &workload, *spec, policy);
            }
            Request::Undo(workload) => self.undo(now_ms, &workload, None),
            Request::ReplicaStates(states) => {
                for (workload, replica, state) in states {
                    self.set_replica_state(&workload, replica, state);
                }
            }
            Request::RemoveRemote(workload) => {
                self.write_tombstone(now_ms, &workload);
                self.remove_here(&workload, "removed by this node's user");
                // Older owners know no records: they are asked directly as well.
                let members: Vec<String> = self.live_members().collect();
                for member in members {
                    self.send(
                        member,
                        Body::RemoveWorkload(RemoveWorkload {
                            workload: workload.clone(),
                        }),
                    );
                }
            }
            Request::Logs {
                node,
                workload,
                replica,
                window,
            } => {
                let request = self.queries.next_request();
                let pending = PendingLogs {
                    token,
                    node: node.clone(),
                    deadline_ms: now_ms + LOGS_TIMEOUT_MS,
                };
                if let Some(evicted) = self.queries.wait_logs(request, pending) {
                    self.finish(evicted);
                }
                self.send(
                    node,
                    Body::LogsRequest(LogsRequest {
                        request,
                        workload,
                        replica,
                        window,
                    }),
                );
            }
        }
        self.settle(now_ms);
    }

    /// Whether this node holds (has verified) a revocation of `public_key` of `subject`.
    pub fn holds_revocation(&self, subject: &str, public_key: &str) -> bool {
        self.revocations.holds(&RevocationNotice {
            subject: subject.to_owned(),
            public_key: public_key.to_owned(),
            revoked_at: 0,
            signature: String::new(),
        })
    }

    /// The revocations this node holds.
    pub fn revocations(&self) -> Vec<RevocationNotice> {
        self.revocations.chunks().concat()
    }

    /// The host's answer to [`HostAction::CheckRevocation`] (whether the root's signature
    /// verified), or a revocation this node's own issuer made (`true`): a verified one is
    /// kept and spread — to every member at once when it is new here.
    pub fn handle_revocation(&mut self, now_ms: u64, notice: RevocationNotice, verified: bool) {
        if !verified {
            self.revocations.refused(&notice);
            return;
        }
        if self.revocations.keep(notice.clone()) {
            self.events.push_back(Event::KeyRevoked {
                subject: notice.subject.clone(),
            });
            let members: Vec<String> = self
                .live_members()
                .filter(|m| *m != notice.subject)
                .collect();
            for member in members {
                self.send(
                    member,
                    Body::Revocations(Revocations {
                        notices: vec![notice.clone()],
                    }),
                );
            }
        }
        self.settle(now_ms);
    }

    /// The host's answer to [`HostAction::Commit`]: on `Ok` the held Accept leaves and the
    /// replica starts; on `Err` the award is dropped unacknowledged (the owner re-awards).
    pub fn handle_committed(&mut self, now_ms: u64, token: u64, result: Result<(), HostError>) {
        let Some(pending) = self.commits.remove(&token) else {
            return;
        };
        match result {
            Ok(()) => {
                let held = self
                    .bidder
                    .committed()
                    .find(|c| c.reservation == pending.reservation)
                    .map(|c| (c.epoch, c.announcer.clone()));
                let removed = self.removed_by_record(&pending.workload);
                if removed && let Some((epoch, _)) = held {
                    // Removed while it was being stored: stopped here, whoever awarded it.
                    self.bidder
                        .remove_instance(&pending.workload, pending.replica);
                    self.grants
                        .remove(&(pending.workload.clone(), pending.replica));
                    self.actions.push_back(HostAction::Revoke {
                        workload: pending.workload,
                        replica: pending.replica,
                        epoch,
                    });
                    self.settle(now_ms);
                    return;
                }
                match held {
                    Some((epoch, owner)) => {
                        if let Some((to, accept)) = pending.accept {
                            self.send(to, accept);
                        }
                        self.events.push_back(Event::Committed {
                            workload: pending.workload.clone(),
                            replica: pending.replica,
                            epoch,
                            owner,
                        });
                        match pending.strong_stop_secs {
                            // Runs once its lease is held (see `strong`).
                            Some(stop) => {
                                self.strong
                                    .insert((pending.workload, pending.replica), stop);
                            }
                            None => self.actions.push_back(HostAction::Start {
                                workload: pending.workload,
                                replica: pending.replica,
                            }),
                        }
                    }
                    // Revoked while it was being stored: the record just written goes
                    // too, and nothing starts.
                    None => self.actions.push_back(HostAction::Revoke {
                        workload: pending.workload,
                        replica: pending.replica,
                        epoch: pending.epoch,
                    }),
                }
            }
            Err(error) => {
                self.bidder
                    .remove_instance(&pending.workload, pending.replica);
                self.grants
                    .remove(&(pending.workload.clone(), pending.replica));
                // What the award taught of the workload goes too unless something else
                // holds it here: a node that runs none of its replicas is no successor's
                // source (found by the simulator, seed 8086).
                self.ownership_stale = true;
                self.events.push_back(Event::CommitFailed {
                    workload: pending.workload,
                    replica: pending.replica,
                    error,
                });
            }
        }
        self.settle(now_ms);
    }

    /// The host's answer to [`HostAction::Adopt`]: on `Ok` this node owns the workload and
    /// gathers its running replicas' reports before placing what is missing.
    pub fn handle_adopted(&mut self, now_ms: u64, token: u64, result: Result<(), HostError>) {
        let Some(request) = self.adoptions.remove(&token) else {
            return;
        };
        match result {
            Ok(()) => {
                self.events.push_back(Event::TakingOver {
                    workload: request.workload.clone(),
                    submitter: request.submitter.clone().unwrap_or_default(),
                });
                self.owned.insert(
                    request.workload.clone(),
                    (request.image.clone(), request.replicas),
                );
                self.refresh_members(true);
                // As after a restart: the running replicas report first, then what is
                // missing is placed.
                let workload = request.workload.clone();
                self.announcer.adopt(now_ms + ADOPT_GATHER_MS, request);
                self.resume_rollout(now_ms, &workload);
            }
            // Tried again when ownership is next looked at (at the latest on the next
            // report tick).
            Err(error) => self.events.push_back(Event::AdoptFailed {
                workload: request.workload,
                error,
            }),
        }
        self.settle(now_ms);
    }

    /// The host's answer to [`HostAction::ReadLogs`], sent back to the peer that asked.
    pub fn handle_logs_read(
        &mut self,
        now_ms: u64,
        request: u64,
        to: String,
        result: Result<LogChunk, HostError>,
    ) {
        let result = result.map_err(|error| LogsFailure {
            denied: false,
            message: error.to_string(),
        });
        self.send(to, Body::LogsReply(LogsReply { request, result }));
        self.settle(now_ms);
    }

    /// The space left on the container storage, measured by the host: below `reserve`
    /// the node declines new replicas, and large changes are announced.
    pub fn set_disk(&mut self, now_ms: u64, available: u64, reserve: u64) {
        self.bidder.set_disk(available, reserve);
        let free = available.saturating_sub(reserve);
        let announced = self.meta.disk_free_bytes.unwrap_or(u64::MAX);
        if free.abs_diff(announced) >= DISK_GOSSIP_STEP || (free == 0) != (announced == 0) {
            if free == 0 {
                self.events.push_back(Event::DiskLow { available, reserve });
            }
            self.meta.disk_free_bytes = Some(free);
            self.membership.set_meta(self.meta.clone());
        }
        self.settle(now_ms);
    }

    /// Lets time pass: probes, suspicion, bid windows, reservations, query deadlines and
    /// the report tick.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if !self.static_members && self.membership.poll_timeout().is_some_and(|t| t <= now_ms) {
            self.membership.handle_timeout(now_ms);
        }
        if self.announcer.poll_timeout().is_some_and(|t| t <= now_ms) {
            self.announcer.handle_timeout(now_ms);
        }
        if self.bidder.poll_timeout().is_some_and(|t| t <= now_ms) {
            self.bidder.handle_timeout(now_ms);
        }
        for finished in self.queries.expire(now_ms) {
            self.finish(finished);
        }
        // The member list is built only when a round is due (and something is held).
        let due = self
            .revocations
            .poll_timeout()
            .is_some_and(|at| at <= now_ms);
        let members: Vec<String> = if due {
            self.live_members().collect()
        } else {
            Vec::new()
        };
        if let Some((to, chunks)) = self.revocations.round(now_ms, &members) {
            for member in to {
                for notices in &chunks {
                    self.send(
                        member.clone(),
                        Body::Revocations(Revocations {
                            notices: notices.clone(),
                        }),
                    );
                }
            }
        }
        self.record_round(now_ms);
        if self.claims.poll_timeout().is_some_and(|t| t <= now_ms) {
            self.claims.handle_timeout(now_ms);
        }
        if now_ms >= self.next_report_ms {
            self.forget_registers(now_ms);
            self.next_report_ms = now_ms + REPORT_INTERVAL_MS;
            let (bidder, owned) = (&self.bidder, &self.owned);
            let holds = |workload: &String, replica: &u32| {
                bidder
                    .committed()
                    .any(|c| c.workload == *workload && c.replica == *replica)
            };
            self.replica_states.retain(|(w, r), _| holds(w, r));
            self.held_digests.retain(|(w, r), _| holds(w, r));
            self.observed
                .retain(|(workload, _), _| owned.contains_key(workload));
            self.bidder.report_instances();
            // Repeats handovers a successor may have let pass.
            self.ownership_stale = true;
        }
        self.settle(now_ms);
    }

    /// When [`Negotiator::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        let membership = if self.static_members {
            None
        } else {
            self.membership.poll_timeout()
        };
        [
            membership,
            self.announcer.poll_timeout(),
            self.bidder.poll_timeout(),
            self.queries.poll_timeout(),
            self.revocations.poll_timeout(),
            self.claims.poll_timeout(),
            Some(self.next_report_ms),
            Some(self.next_record_sync_ms),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next message for a peer: `(to, body)`.
    pub fn poll_transmit(&mut self) -> Option<(String, Body)> {
        self.transmits.pop_front()
    }

    /// The next piece of work for the host.
    pub fn poll_action(&mut self) -> Option<HostAction> {
        self.actions.pop_front()
    }

    /// The next notice for logs and metrics.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Delivers what this node sent itself and acts on what the parts reported, until
    /// nothing is left: the end of every `handle_*`.
    fn settle(&mut self, now_ms: u64) {
        loop {
            while let Some((from, body)) = self.inbox.pop_front() {
                self.receive(now_ms, &from, body);
            }
            self.membership_events(now_ms);
            if std::mem::take(&mut self.ownership_stale) {
                self.follow_ownership(now_ms);
            }
            self.bidder_events(now_ms);
            self.follow_claims(now_ms);
            self.lease_outputs();
            self.announce_free(now_ms);
            self.announcer_events(now_ms);
            self.collect_transmits(now_ms);
            if self.inbox.is_empty() {
                break;
            }
        }
    }

    /// Queues a message; one to this node itself is delivered without the network.
    fn send(&mut self, to: String, body: Body) {
        let decline = match &body {
            Body::Decline(decline) => Some(decline.reason.code()),
            _ => None,
        };
        if matches!(body, Body::Bid(_) | Body::Decline(_) | Body::Award(_)) {
            self.events.push_back(Event::Sent {
                kind: body.kind(),
                decline,
            });
        }
        if to == self.id {
            self.inbox.push_back((to, body));
        } else {
            self.transmits.push_back((to, body));
        }
    }

    /// Whether an award may reach the bidder: its grant, when it carries one, is its
    /// sender's of this very replica to this node; its spec, when it carries one, is valid
    /// like a local submission, is the workload the award names, and asks what the
    /// reservation it answers holds (an owner must not swap what runs after the bid).
    fn check_award(
        &self,
        now_ms: u64,
        from: &str,
        award: &crate::messages::Award,
    ) -> Result<(), String> {
        if let Some(signed) = &award.grant {
            let grant = Grant::decode(&signed.statement)
                .ok_or_else(|| "the award's grant is not a grant".to_owned())?;
            let names_this_award = grant.owner == from
                && grant.node == self.id
                && grant.workload == award.workload
                && grant.replica == award.replica
                && grant.epoch == award.epoch;
            if !names_this_award {
                return Err(format!(
                    "the award's grant is {grant:?}, not of this replica by its sender to                      this node"
                ));
            }
            if !self
                .membership
                .notary()
                .verify(StatementKind::Grant, from, signed, now_ms)
            {
                return Err("the award's grant is not signed by its sender".to_owned());
            }
        }
        let Some(spec) = &award.spec else {
            return Ok(());
        };
        check_spec(&award.workload, spec)?;
        if spec.consistency == crate::workload::Consistency::Strong && !self.strong_enabled {
            return Err(format!(
                "{} does not run strong workloads (its agent keeps no lease registers yet)",
                self.id
            ));
        }
        let reserved = self
            .bidder
            .reservations()
            .find(|r| r.id == award.reservation)
            .map(|r| r.resources);
        match reserved {
            Some(resources) if resources != spec.resources => Err(format!(
                "the award's spec asks {:?}, but the bid reserved {resources:?}",
                spec.resources
            )),
            _ => Ok(()),
        }
    }

    /// Whether an owner may take a report of a replica: it carries a grant of that very
    /// replica, at that epoch, to its sender, signed by the grant's owner, and that owner
    /// is not the reporter itself, unless it is this node or the workload's submitter.
    /// A member can then claim only what an owner gave it: a replica it granted itself
    /// (a takeover's highest epoch wins) would otherwise displace the real one.
    ///
    /// A refusal says whether to stop the replica: not when the report carries no grant
    /// at all (an older version's), since nothing then shows it is not the owner's.
    fn check_instance(
        &mut self,
        from: &str,
        instance: &crate::messages::Instance,
    ) -> Result<(), (String, bool)> {
        let Some(signed) = instance.grant.as_ref() else {
            // An older version's report: taken where it only confirms what is on record
            // (a running mesh being upgraded), never where it would place the replica.
            let on_record = self
                .announcer
                .placements(&instance.workload)
                .get(&instance.replica)
                .is_some_and(|(node, epoch)| node == from && *epoch == instance.epoch);
            if on_record {
                return Ok(());
            }
            return Err((
                "the report carries no grant of the replica".to_owned(),
                false,
            ));
        };
        let stop = |reason: String| (reason, true);
        let grant = Grant::decode(&signed.statement)
            .ok_or_else(|| stop("the report's grant is not a grant".to_owned()))?;
        if grant.node != from
            || grant.workload != instance.workload
            || grant.replica != instance.replica
            || grant.epoch != instance.epoch
        {
            return Err(stop(format!(
                "the report's grant is {grant:?}, not of this replica to its sender"
            )));
        }
        let submitter = self.succession.submitter(&instance.workload);
        if grant.owner == from && grant.owner != self.id && submitter != Some(from) {
            return Err(stop(format!("{from} granted the replica to itself")));
        }
        let key = (instance.workload.clone(), instance.replica);
        if self.checked_grants.get(&key) == Some(signed) {
            return Ok(());
        }
        // At the time of the grant: a replica outlives its owner's certificates.
        if !self.membership.notary().verify(
            StatementKind::Grant,
            &grant.owner,
            signed,
            grant.granted_at_ms,
        ) {
            return Err(stop(format!(
                "the report's grant is not signed by its owner {}",
                grant.owner
            )));
        }
        if self.checked_grants.len() >= MAX_CHECKED_GRANTS {
            // Bounded whatever a peer reports; the cost of a clear is one check each.
            self.checked_grants.clear();
        }
        self.checked_grants.insert(key, signed.clone());
        Ok(())
    }

    /// This node's signed grant, as `award`'s owner, of its replica to `node`.
    fn grant(&self, now_ms: u64, node: &str, award: &crate::messages::Award) -> SignedStatement {
        let grant = Grant {
            owner: self.id.clone(),
            node: node.to_owned(),
            workload: award.workload.clone(),
            replica: award.replica,
            epoch: award.epoch,
            granted_at_ms: now_ms,
        };
        self.membership
            .notary()
            .sign(StatementKind::Grant, grant.encode())
    }

    /// Drops a pending adoption of `workload`; whether there was one.
    fn cancel_adoption(&mut self, workload: &str) -> bool {
        let before = self.adoptions.len();
        self.adoptions.retain(|_, r| r.workload != workload);
        self.adoptions.len() != before
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn finish(&mut self, finished: Finished) {
        let (token, reply) = match finished {
            Finished::List(token, collected) => (token, Reply::ListMesh(collected)),
            Finished::Logs(token, result) => (token, Reply::Logs(result)),
        };
        self.actions.push_back(HostAction::Answer { token, reply });
    }

    /// One message, past the gate, to the part it is for.
    fn receive(&mut self, now_ms: u64, from: &str, body: Body) {
        let Some(body) = self.gate(from, body) else {
            return;
        };
        match body {
            Body::Ping(ping) => self.membership.handle_ping(now_ms, from, &ping),
            Body::PingReq(request) => self.membership.handle_ping_req(now_ms, from, &request),
            Body::Ack(ack) => self.membership.handle_ack(now_ms, from, &ack),
            Body::Sync(sync) => self.membership.handle_sync(now_ms, from, &sync),
            Body::Cfp(cfp) => self.bidder.handle_cfp(now_ms, from, &cfp),
            Body::Award(award) => {
                if let Err(reason) = self.check_award(now_ms, from, &award) {
                    self.events.push_back(Event::AwardRefused {
                        from: from.to_owned(),
                        workload: award.workload.clone(),
                        reason: reason.clone(),
                    });
                    self.send(
                        from.to_owned(),
                        Body::Reject(Reject {
                            auction: award.auction,
                            replica: award.replica,
                            reservation: award.reservation,
                            reason,
                        }),
                    );
                    return;
                }
                let key = (award.workload.clone(), award.replica);
                // A repeat of an award already committed commits nothing new.
                let repeat = self
                    .bidder
                    .committed()
                    .any(|c| c.reservation == award.reservation);
                if let Some(spec) = award.spec.as_ref().filter(|_| !repeat) {
                    self.award_specs.insert(
                        key.clone(),
                        AwardedSpec {
                            spec: spec.clone(),
                            submitter: award.submitter.clone(),
                            grant: award.grant.clone(),
                        },
                    );
                }
                self.bidder.handle_award(now_ms, from, &award);
                // An award that did not commit (rejected, or a repeat) leaves no spec behind.
                if !self.bidder.committed().any(|c| {
                    c.workload == award.workload
                        && c.replica == award.replica
                        && c.epoch == award.epoch
                }) {
                    self.award_specs.remove(&key);
                }
            }
            Body::Release(release) => self.bidder.handle_release(from, &release),
            Body::Revoke(revoke) => self.bidder.handle_revoke(from, &revoke),
            Body::Bid(bid) => self.announcer.handle_bid(now_ms, from, &bid),
            Body::Decline(decline) => self.announcer.handle_decline(from, &decline),
            Body::Accept(accept) => self.announcer.handle_accept(now_ms, from, &accept),
            Body::Reject(reject) => self.announcer.handle_reject(now_ms, from, &reject),
            Body::Instance(instance) => match self.check_instance(from, &instance) {
                Ok(()) => {
                    if let Some(state) = &instance.state
                        && self.owned.contains_key(&instance.workload)
                    {
                        // Bounded: one entry per replica of a workload this node owns.
                        self.observed.insert(
                            (instance.workload.clone(), instance.replica),
                            (from.to_owned(), instance.epoch, state.clone().bounded()),
                        );
                    }
                    self.announcer.handle_instance(now_ms, from, &instance);
                }
                Err((reason, stop)) => {
                    // A replica granted by no owner is not counted; one that has a grant,
                    // but not one this node takes, is stopped (a successor's own replica
                    // when ownership returns to the submitter: it is placed again).
                    if stop && self.announcer.owns(&instance.workload) {
                        self.send(
                            from.to_owned(),
                            Body::Revoke(Revoke {
                                workload: instance.workload.clone(),
                                replica: instance.replica,
                                epoch: instance.epoch,
                            }),
                        );
                    }
                    self.events.push_back(Event::InstanceRefused {
                        from: from.to_owned(),
                        workload: instance.workload,
                        replica: instance.replica,
                        reason,
                    });
                }
            },
            Body::WorkloadQuery(query) => {
                // A member sees the workloads of the namespaces it may list.
                let mut workloads: Vec<OwnedWorkload> = self
                    .owned_report()
                    .into_iter()
                    .filter(|w| {
                        self.authorizer
                            .check(from, Action::List, key_namespace(&w.workload))
                            .is_ok()
                    })
                    .collect();
                workloads.truncate(MAX_REPORTED_WORKLOADS);
                self.send(
                    from.to_owned(),
                    Body::WorkloadReport(WorkloadReport {
                        request: query.request,
                        workloads,
                    }),
                );
            }
            Body::WorkloadReport(report) => {
                if let Some(finished) = self.queries.report(from, report.request, report.workloads)
                {
                    self.finish(finished);
                }
            }
            Body::Handover(handover) => {
                if let Err(reason) = check_spec(&handover.workload, &handover.spec) {
                    self.events.push_back(Event::AwardRefused {
                        from: from.to_owned(),
                        workload: handover.workload,
                        reason,
                    });
                    return;
                }
                self.events.push_back(Event::HandedTo {
                    workload: handover.workload.clone(),
                    submitter: handover.submitter.clone(),
                    by: from.to_owned(),
                });
                self.succession.learn(
                    &handover.workload,
                    &handover.submitter,
                    &handover.spec,
                    Some(now_ms),
                );
                self.ownership_stale = true;
            }
            Body::LogsRequest(request) => self.actions.push_back(HostAction::ReadLogs {
                request: request.request,
                from: from.to_owned(),
                workload: request.workload,
                replica: request.replica,
                window: request.window,
            }),
            Body::LogsReply(reply) => {
                if let Some(finished) = self.queries.logs_reply(from, reply.request, reply.result) {
                    self.finish(finished);
                }
            }
            Body::Revocations(revocations) => {
                for notice in revocations
                    .notices
                    .into_iter()
                    .take(crate::messages::MAX_REVOCATIONS_PER_MESSAGE)
                {
                    if self.revocations.start_check(&notice) {
                        self.actions
                            .push_back(HostAction::CheckRevocation { notice });
                    }
                }
            }
            Body::Records(records) => self.handle_records(now_ms, from, records),
            Body::Register(message) => self.receive_register(now_ms, from, message),
            Body::RecordDigest(digest) => self.handle_record_digest(from, &digest),
            Body::RecordVersions(versions) => self.handle_record_versions(from, &versions),
            Body::RemoveWorkload(remove) => {
                let adopting = self.cancel_adoption(&remove.workload);
                if self.owned.contains_key(&remove.workload) || adopting {
                    // Written here too: the asker may be an older node that writes none.
                    self.write_tombstone(now_ms, &remove.workload);
                }
                if self.owned.remove(&remove.workload).is_some() || adopting {
                    self.succession.forget(&remove.workload);
                    self.events.push_back(Event::RemovedByPeer {
                        workload: remove.workload.clone(),
                        by: from.to_owned(),
                    });
                    self.announcer.remove(&remove.workload);
                    self.actions.push_back(HostAction::Forget {
                        workload: remove.workload,
                        why: "at another node's request; revoking its replicas",
                    });
                }
            }
        }
    }

    /// Applies the policy to every message before any part sees it, in the namespace the
    /// message acts on:
    /// - membership (probes, answers, gossip) needs `member`, mesh-wide;
    /// - what an owner does (call for proposals, award, release, revoke) needs `submit`;
    /// - what a host does (bid, decline, accept, reject, report an instance) needs `bid`;
    /// - a hand-over needs `bid` of its sender, who runs a replica, and `submit` of the
    ///   submitter it names, on whose behalf the receiver will own the workload;
    /// - removals need `remove`, log reads `logs`; a list query is answered with the
    ///   namespaces the asker may `list`; answers to this node's own questions pass
    ///   (their tables accept them only from whom was asked).
    ///
    /// A refused call for proposals is declined, a refused award rejected, a refused log
    /// read answered with the refusal, a refused bid counted as a policy decline; other
    /// refused messages are dropped. Returns the message when it may pass.
    fn gate(&mut self, from: &str, body: Body) -> Option<Body> {
        let auction = |this: &Self, id| this.announcer.auction_workload(id).map(str::to_owned);
        let (action, workload): (Action, String) = match &body {
            // Records are relayed by any member; each one's author is checked when taken.
            Body::Ping(_)
            | Body::PingReq(_)
            | Body::Ack(_)
            | Body::Sync(_)
            | Body::RecordDigest(_)
            | Body::RecordVersions(_)
            | Body::Records(_) => (Action::Member, String::new()),
            Body::Cfp(cfp) => (Action::Submit, cfp.workload.clone()),
            Body::Award(award) => (Action::Submit, award.workload.clone()),
            Body::Revoke(revoke) => (Action::Submit, revoke.workload.clone()),
            Body::Release(release) => match self
                .bidder
                .reservations()
                .find(|r| r.id == release.reservation)
            {
                Some(reservation) => (Action::Submit, reservation.workload.clone()),
                // No such reservation: the bidder ignores it anyway.
                None => return Some(body),
            },
            Body::Bid(Bid { auction: id, .. })
            | Body::Decline(Decline { auction: id, .. })
            | Body::Accept(Accept { auction: id, .. })
            | Body::Reject(Reject { auction: id, .. }) => match auction(self, *id) {
                Some(workload) => (Action::Bid, workload),
                // Not an auction in progress: the announcer ignores it anyway.
                None => return Some(body),
            },
            Body::Instance(instance) => (Action::Bid, instance.workload.clone()),
            // A proposer is a member that may host the workload's replicas; any member may
            // be an acceptor, and its answers count only in the rounds that asked it.
            Body::Register(message) => match message.step {
                crate::register::RegisterStep::Prepare { .. }
                | crate::register::RegisterStep::Propose { .. } => {
                    (Action::Bid, message.workload.clone())
                }
                _ => (Action::Member, String::new()),
            },
            Body::Handover(handover) => {
                // Only a dead owner's workloads are handed over: a submitter this node
                // does not know, or holds alive, is made up (a node that may only host
                // must not get a workload of its own placed by naming one).
                let submitter_gone = self.static_members
                    || handover.submitter == self.id
                    || self
                        .membership
                        .member(&handover.submitter)
                        .is_some_and(|m| m.state != MemberState::Alive);
                if !submitter_gone {
                    self.deny(
                        from,
                        &body,
                        &handover.workload,
                        Denial {
                            action: Action::Submit,
                            reason: format!(
                                "a hand-over names {} as the submitter, which this node does \
                                 not know as gone",
                                handover.submitter
                            ),
                        },
                    );
                    return None;
                }
                let namespace = key_namespace(&handover.workload);
                if let Err(denied) =
                    self.authorizer
                        .check(&handover.submitter, Action::Submit, namespace)
                {
                    self.deny(from, &body, &handover.workload, denied);
                    return None;
                }
                (Action::Bid, handover.workload.clone())
            }
            Body::RemoveWorkload(remove) => (Action::Remove, remove.workload.clone()),
            Body::LogsRequest(request) => (Action::Logs, request.workload.clone()),
            // Answers to this node's questions; revocations carry the root's signature,
            // which the host checks before anything is believed.
            Body::WorkloadQuery(_)
            | Body::WorkloadReport(_)
            | Body::LogsReply(_)
            | Body::Revocations(_) => {
                return Some(body);
            }
        };
        let namespace = if action.is_mesh_wide() {
            MESH_WIDE
        } else {
            key_namespace(&workload)
        };
        let checked = if action.is_mesh_wide() || HOSTED_NAMESPACES.contains(&namespace) {
            self.authorizer.check(from, action, namespace)
        } else {
            Err(Denial {
                action,
                reason: format!(
                    "this node hosts workloads of namespace {HOSTED_NAMESPACES:?} only, \
                     not {namespace:?}"
                ),
            })
        };
        let Err(denied) = checked else {
            return Some(body);
        };
        self.deny(from, &body, &workload, denied.clone());
        match body {
            Body::Cfp(cfp) => self.send(
                from.to_owned(),
                Body::Decline(Decline {
                    auction: cfp.auction,
                    replica: cfp.replica,
                    reason: DeclineReason::PolicyDenied,
                }),
            ),
            Body::Award(award) => self.send(
                from.to_owned(),
                Body::Reject(Reject {
                    auction: award.auction,
                    replica: award.replica,
                    reservation: award.reservation,
                    reason: denied.reason,
                }),
            ),
            Body::LogsRequest(request) => self.send(
                from.to_owned(),
                Body::LogsReply(LogsReply {
                    request: request.request,
                    result: Err(LogsFailure {
                        denied: true,
                        message: denied.reason,
                    }),
                }),
            ),
            Body::Bid(bid) => self.announcer.handle_decline(
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

    /// Records a refusal by the gate, for the host's logs and metrics.
    fn deny(&mut self, from: &str, body: &Body, workload: &str, denied: Denial) {
        self.events.push_back(Event::Denied {
            from: from.to_owned(),
            kind: body.kind(),
            workload: workload.to_owned(),
            action: denied.action,
            reason: denied.reason,
        });
    }

    fn list_mesh(&mut self, now_ms: u64, token: u64) {
        let collected: Vec<(String, OwnedWorkload)> = self
            .owned_report()
            .into_iter()
            .map(|w| (self.id.clone(), w))
            .collect();
        let waiting: BTreeSet<String> = self.live_members().collect();
        if waiting.is_empty() {
            self.actions.push_back(HostAction::Answer {
                token,
                reply: Reply::ListMesh(collected),
            });
            return;
        }
        let request = self.queries.next_request();
        for member in &waiting {
            self.send(
                member.clone(),
                Body::WorkloadQuery(WorkloadQuery { request }),
            );
        }
        let list = PendingList {
            token,
            waiting,
            collected,
            deadline_ms: now_ms + QUERY_TIMEOUT_MS,
        };
        if let Some(evicted) = self.queries.wait_list(request, list) {
            self.finish(evicted);
        }
    }

    /// Members worth asking: alive or suspected.
    fn live_members(&self) -> impl Iterator<Item = String> + '_ {
        self.membership.live_members().map(|m| m.id.to_string())
    }

    /// The workloads this node owns, with their placements, as reported to other nodes.
    fn owned_report(&self) -> Vec<OwnedWorkload> {
        self.owned
            .iter()
            .map(|(workload, (image, replicas))| OwnedWorkload {
                workload: workload.clone(),
                image: image.clone(),
                replicas: *replicas,
                placements: self
                    .announcer
                    .placements(workload)
                    .into_iter()
                    .map(|(replica, (node, epoch))| Placement {
                        spec_digest: self
                            .announcer
                            .digests(workload)
                            .and_then(|(_, mut d)| d.remove(&replica)),
                        state: self
                            .observed
                            .get(&(workload.clone(), replica))
                            .filter(|(on, at, _)| *on == node && *at == epoch)
                            .map(|(_, _, state)| state.clone()),
                        replica,
                        node,
                        epoch,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Acts on membership changes: liveness changes move ownership and the set of
    /// candidates, and replicas of owned workloads on a node declared dead are placed
    /// again; a metadata change only updates that one candidate (a full refresh costs a
    /// pass over every member, after every placement, in every announcer).
    fn membership_events(&mut self, now_ms: u64) {
        let mut liveness_changed = false;
        let mut meta_changed = Vec::new();
        let mut died = Vec::new();
        let mut joined = Vec::new();
        while let Some(event) = self.membership.poll_event() {
            match &event {
                MembershipEvent::MetaChanged(node) => meta_changed.push(node.clone()),
                MembershipEvent::Joined(node) => {
                    joined.push(node.clone());
                    liveness_changed = true;
                }
                MembershipEvent::Died(node) => {
                    died.push(node.clone());
                    liveness_changed = true;
                }
                _ => liveness_changed = true,
            }
            self.events.push_back(Event::Membership(event));
        }
        if liveness_changed {
            self.members_stale = true;
            self.ownership_stale = true;
        } else if !self.members_stale {
            for node in &meta_changed {
                if let Some(member) = self.membership.member(node)
                    && member.state == MemberState::Alive
                {
                    self.announcer.update_member(candidate(member));
                }
            }
        }
        self.refresh_members(false);
        // A member new here, or back, may have missed records: one exchange catches up.
        if !self.records.is_empty() {
            for node in joined {
                self.offer_digest(&node);
            }
        }
        for node in died {
            let owned: Vec<String> = self.owned.keys().cloned().collect();
            for workload in owned {
                let lost: Vec<u32> = self
                    .announcer
                    .placements(&workload)
                    .into_iter()
                    .filter(|(_, (on, _))| *on == node)
                    .map(|(replica, _)| replica)
                    .collect();
                for replica in lost {
                    self.events.push_back(Event::ReplicaLost {
                        workload: workload.clone(),
                        replica,
                        node: node.clone(),
                    });
                    self.announcer.replica_lost(now_ms, &workload, replica);
                }
            }
        }
    }

    /// Gives the announcer the current candidates if they changed and it has workloads
    /// (or `force`, before it gets one): building the list costs a pass over every member.
    fn refresh_members(&mut self, force: bool) {
        if self.members_stale && (force || self.announcer.workload_count() > 0) {
            let members = self.candidates();
            self.announcer.set_members(members);
            self.members_stale = false;
        }
    }

    /// The members an announcer may ask: this node and every alive member, compatible
    /// when their announced protocol range includes ours.
    fn candidates(&self) -> Vec<Candidate> {
        std::iter::once(Candidate {
            announced: Some(Announced::from_meta(&self.meta)),
            ..Candidate::new(&self.id)
        })
        .chain(
            self.membership
                .members()
                .filter(|m| m.state == MemberState::Alive)
                .map(candidate),
        )
        .collect()
    }

    /// Brings this node in line with its view of who owns what ([`Succession`]): points
    /// replicas' reports at their owner, takes over the workloads of a dead submitter
    /// whose successor it is, gives them back when the submitter returns, and hands them
    /// to the successor.
    fn follow_ownership(&mut self, now_ms: u64) {
        if self.succession.is_empty() {
            return;
        }
        let held: BTreeSet<String> = self
            .bidder
            .committed()
            .map(|c| c.workload.clone())
            .collect();
        let adopting: BTreeSet<String> = self
            .adoptions
            .values()
            .map(|r| r.workload.clone())
            .collect();
        let (id, membership, statics, announcer, records) = (
            self.id.as_str(),
            &self.membership,
            self.static_members,
            &self.announcer,
            &self.records,
        );
        let is_alive = |node: &str| -> bool {
            node == id
                || statics
                || membership
                    .member(node)
                    .is_some_and(|m| m.state != MemberState::Dead)
        };
        let alive = || -> Vec<String> {
            std::iter::once(id.to_owned())
                .chain(
                    membership
                        .members()
                        .filter(|m| m.state != MemberState::Dead)
                        .map(|m| m.id.to_string()),
                )
                .collect()
        };
        let authorizer = &self.authorizer;
        let may_own = |member: &str, workload: &str| {
            authorizer
                .check(member, Action::Submit, key_namespace(workload))
                .is_ok()
        };
        let steps = self.succession.decide_with(
            now_ms,
            is_alive,
            alive,
            may_own,
            |w| announcer.owns(w) || adopting.contains(w),
            |w| held.contains(w),
            |w| records.get(w).is_some_and(|h| !h.record.is_tombstone()),
        );
        for step in steps {
            match step {
                Step::SetOwner { workload, owner } => self.bidder.set_owner(&workload, &owner),
                Step::Adopt {
                    workload,
                    submitter,
                    spec,
                } => {
                    // Known only from its record, with a submitter this node has not met
                    // (yet): a node just started knows nobody, and would otherwise take
                    // over every workload of the mesh until its view fills in.
                    let submitter_known_dead = self
                        .membership
                        .member(&submitter)
                        .is_some_and(|m| m.state == MemberState::Dead);
                    let settling = now_ms < self.started_ms.saturating_add(VIEW_SETTLE_MS);
                    if settling && !submitter_known_dead && !held.contains(&workload) {
                        // Decided again with the next change of the view, or report round.
                        continue;
                    }
                    let token = self.token();
                    let request = PlacementRequest {
                        submitter: Some(submitter.clone()),
                        ..PlacementRequest::for_spec(&workload, &spec)
                    };
                    self.adoptions.insert(token, request);
                    self.actions.push_back(HostAction::Adopt {
                        token,
                        spec: *spec,
                        submitter,
                    });
                }
                Step::Relinquish { workload } => {
                    self.events.push_back(Event::GivenBack {
                        workload: workload.clone(),
                    });
                    self.announcer.relinquish(&workload);
                    self.owned.remove(&workload);
                    self.adoptions.retain(|_, r| r.workload != workload);
                    self.actions.push_back(HostAction::Forget {
                        workload,
                        why: "its submitter is back and owns it again",
                    });
                }
                Step::Handover {
                    to,
                    workload,
                    submitter,
                    spec,
                } => {
                    self.events.push_back(Event::HandedOver {
                        workload: workload.clone(),
                        to: to.clone(),
                    });
                    self.send(
                        to,
                        Body::Handover(Handover {
                            workload,
                            submitter,
                            spec: *spec,
                        }),
                    );
                }
            }
        }
    }

    /// The bidder's events come before its messages: an award goes to the host to be
    /// persisted, and its Accept is held until that succeeds.
    fn bidder_events(&mut self, now_ms: u64) {
        while let Some(event) = self.bidder.poll_event() {
            match event {
                BidderEvent::Committed(c) => {
                    let Some(AwardedSpec {
                        spec,
                        submitter,
                        grant,
                    }) = self.award_specs.remove(&(c.workload.clone(), c.replica))
                    else {
                        self.events.push_back(Event::AwardWithoutSpec {
                            workload: c.workload.clone(),
                            replica: c.replica,
                        });
                        self.bidder.remove_instance(&c.workload, c.replica);
                        self.refused_accepts.insert(c.reservation.clone());
                        continue;
                    };
                    self.succession.learn(
                        &c.workload,
                        submitter.as_deref().unwrap_or(&c.announcer),
                        &spec,
                        None,
                    );
                    self.held_digests.insert(
                        (c.workload.clone(), c.replica),
                        crate::records::spec_digest(&spec),
                    );
                    self.ownership_stale = true;
                    let token = self.token();
                    self.commits.insert(
                        token,
                        PendingCommit {
                            workload: c.workload.clone(),
                            replica: c.replica,
                            epoch: c.epoch,
                            reservation: c.reservation.clone(),
                            accept: None,
                            strong_stop_secs: (spec.consistency
                                == crate::workload::Consistency::Strong)
                                .then_some(spec.stop_timeout_secs),
                        },
                    );
                    if let Some(grant) = &grant {
                        self.grants
                            .insert((c.workload.clone(), c.replica), (c.epoch, grant.clone()));
                    }
                    self.actions.push_back(HostAction::Commit {
                        token,
                        assignment: Assignment {
                            spec,
                            replica: c.replica,
                            epoch: c.epoch,
                            owner: c.announcer,
                            submitter,
                            reservation: c.reservation,
                            failure_domain: c.failure_domain,
                            assigned_at_ms: now_ms,
                            grant,
                        },
                    });
                }
                BidderEvent::Revoked(c) => {
                    self.grants.remove(&(c.workload.clone(), c.replica));
                    self.events.push_back(Event::Revoked {
                        workload: c.workload.clone(),
                        replica: c.replica,
                        epoch: c.epoch,
                    });
                    self.actions.push_back(HostAction::Revoke {
                        workload: c.workload,
                        replica: c.replica,
                        epoch: c.epoch,
                    });
                }
                BidderEvent::Expired(_) => {}
            }
        }
    }

    /// Free capacity travels in membership metadata, so that announcers ask the members
    /// that look able to host first. Committed replicas only: reservations come and go
    /// with every call for proposals. Paced: in a large mesh placing fast, announcing
    /// every change would fill every member's gossip with capacity updates.
    fn announce_free(&mut self, now_ms: u64) {
        let free = self
            .meta
            .allocatable
            .minus(&self.bidder.committed_resources());
        if free != self.meta.free {
            self.meta.free = free;
            if !self.static_members {
                self.membership.set_meta_paced(now_ms, self.meta.clone());
            }
            if !self.members_stale {
                // This node is its own candidate, and knows its capacity at once.
                self.announcer.update_member(Candidate {
                    announced: Some(Announced::from_meta(&self.meta)),
                    ..Candidate::new(&self.id)
                });
            }
        }
    }

    fn announcer_events(&mut self, now_ms: u64) {
        while let Some(event) = self.announcer.poll_event() {
            if let crate::auction::AnnouncerEvent::RolloutFailed {
                workload, reason, ..
            } = &event
            {
                let (workload, reason) = (workload.clone(), reason.clone());
                self.events.push_back(Event::Auction(event));
                self.rollout_failed(now_ms, &workload, reason);
                continue;
            }
            self.events.push_back(Event::Auction(event));
        }
    }

    /// Moves what the parts queued to the outgoing queue (or this node's own inbox),
    /// holding each Accept whose award is still being persisted.
    fn collect_transmits(&mut self, now_ms: u64) {
        loop {
            let next = self
                .membership
                .poll_transmit()
                .or_else(|| self.announcer.poll_transmit())
                .or_else(|| self.bidder.poll_transmit());
            let Some((to, mut body)) = next else { break };
            if let Body::Award(award) = &mut body
                && award.grant.is_none()
            {
                award.grant = Some(self.grant(now_ms, &to, award));
            }
            if let Body::Instance(instance) = &mut body
                && let Some((epoch, grant)) = self
                    .grants
                    .get(&(instance.workload.clone(), instance.replica))
                && *epoch == instance.epoch
            {
                instance.grant = Some(grant.clone());
            }
            if let Body::Instance(instance) = &mut body {
                let key = (instance.workload.clone(), instance.replica);
                instance.state = self.replica_states.get(&key).cloned();
                instance.spec_digest = self.held_digests.get(&key).cloned();
            }
            // An owner takes a report naming the awarded reservation as its Accept: none
            // leaves while the award is still being stored.
            if let Body::Instance(instance) = &body
                && self
                    .commits
                    .values()
                    .any(|p| p.reservation == instance.reservation)
            {
                continue;
            }
            if let Body::Accept(accept) = &body {
                if self.refused_accepts.contains(&accept.reservation) {
                    continue;
                }
                if let Some(pending) = self
                    .commits
                    .values_mut()
                    .find(|p| p.reservation == accept.reservation)
                {
                    // A repeated award while the first is being stored: one Accept leaves.
                    pending.accept.get_or_insert((to, body));
                    continue;
                }
            }
            self.send(to, body);
        }
        self.refused_accepts.clear();
    }
}

/// A spec a peer sent for `workload`: valid like a local submission, and that workload
/// (stored by name, it must not overwrite another).
fn check_spec(workload: &str, spec: &WorkloadSpec) -> Result<(), String> {
    spec.validate().map_err(|e| format!("invalid spec: {e}"))?;
    let named = crate::workload::default_key(spec.name.as_str());
    if named != workload {
        return Err(format!("the spec is {named}, not {workload}"));
    }
    Ok(())
}

/// A member as an announcer's candidate.
fn candidate(member: &crate::membership::Member) -> Candidate {
    Candidate {
        node: member.id.to_string(),
        compatible: member.meta.as_ref().is_some_and(|meta| {
            (meta.protocol_min..=meta.protocol_max).contains(&PROTOCOL_VERSION)
        }),
        announced: member.meta.as_deref().map(Announced::from_meta),
    }
}
