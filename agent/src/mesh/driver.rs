//! The negotiation loop: the agent's driver of the sans-IO [`Negotiator`], as quinn's
//! `ConnectionDriver` drives `quinn-proto`. It feeds the negotiator verified messages,
//! seeds, commands from the node, the host's results and timeouts, then carries out what
//! it asks: messages to the transport, work to the [`Host`], answers to the node, and
//! notices to the log and the metrics. The protocol itself lives in the negotiator, where
//! the simulator runs the same code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley_identity::revocation::Revocation;
use parley_negotiation::messages::RevocationNotice;
use parley_negotiation::messages::{LogChunk, LogsFailure, OwnedWorkload};
use parley_negotiation::negotiator::{Event, HostAction, HostError, Negotiator, Reply, Request};
use parley_negotiation::workload::key_name;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::{
    Checks, Command, DISK_CHECK_INTERVAL, Host, Negotiation, Placements, dial_seed, random_seed,
};
use crate::clock::negotiation_millis;
use crate::metrics::Metrics;
use crate::transport::{Inbound, Transport};
use parley_negotiation::auction::AnnouncerEvent;
use parley_negotiation::membership::Member;

/// Where the answer to a command goes, by the token it was given to the negotiator with.
enum Waiting {
    Explain(oneshot::Sender<super::ExplainAnswer>),
    Placements(oneshot::Sender<Placements>),
    ListMesh(oneshot::Sender<Vec<(String, OwnedWorkload)>>),
    Logs(oneshot::Sender<Result<LogChunk, LogsFailure>>),
}

/// What the host reports back to the loop.
enum Done {
    Committed(u64, Result<(), HostError>),
    Adopted(u64, Result<(), HostError>),
    LogsRead {
        request: u64,
        to: String,
        result: Result<LogChunk, HostError>,
    },
    RegisterStored(u64, Result<(), HostError>),
}

/// Runs the negotiator until `shutdown`. `view` receives the member list after every
/// change; every task started is tracked by `tasks`, so that shutdown can wait for them
/// (an award being persisted, above all).
#[allow(clippy::too_many_arguments)]
pub async fn run<H: Host>(
    transport: Transport,
    inbox: mpsc::Receiver<Inbound>,
    negotiation: Negotiation,
    seeds: Vec<SocketAddr>,
    view: watch::Sender<Vec<Member>>,
    host: Arc<H>,
    commands: mpsc::Receiver<Command>,
    checks: Checks,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let span = tracing::info_span!("mesh", node = %transport.id());
    drive(
        transport,
        inbox,
        negotiation,
        seeds,
        view,
        host,
        commands,
        checks,
        shutdown,
        tasks,
    )
    .instrument(span)
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn drive<H: Host>(
    transport: Transport,
    mut inbox: mpsc::Receiver<Inbound>,
    negotiation: Negotiation,
    seeds: Vec<SocketAddr>,
    view: watch::Sender<Vec<Member>>,
    host: Arc<H>,
    mut commands: mpsc::Receiver<Command>,
    checks: Checks,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let Checks {
        metrics,
        policy,
        heartbeat,
    } = checks;
    let Negotiation {
        config,
        meta,
        committed,
        records,
        disk,
    } = negotiation;
    let mut negotiator = Negotiator::new(
        transport.id(),
        config,
        meta,
        committed,
        negotiation_millis(),
        random_seed(),
        Box::new(policy),
        Box::new(transport.notary()),
    );
    if !records.is_empty() {
        tracing::info!(
            records = records.len(),
            "taking back the workload records stored before the restart"
        );
    }
    negotiator.restore_records(negotiation_millis(), records);
    let registers = host.stored_registers();
    if !registers.is_empty() {
        tracing::info!(
            registers = registers.len(),
            "taking back the lease registers stored before the restart; each lease counts from now"
        );
    }
    negotiator.restore_registers(negotiation_millis(), registers);
    let (done_tx, mut done) = mpsc::unbounded_channel::<Done>();
    // Store work runs in order, one at a time, as it did inline: an adoption and the
    // forgetting that undoes it must not overtake each other.
    let (store_tx, store_rx) = mpsc::unbounded_channel::<HostAction>();
    tasks.spawn(store_work(Arc::clone(&host), store_rx, done_tx.clone()));
    let (seed_found, mut seeds_found) = mpsc::channel(seeds.len().max(1));
    for seed in seeds {
        tasks.spawn(dial_seed(
            transport.clone(),
            seed,
            seed_found.clone(),
            shutdown.clone(),
        ));
    }
    drop(seed_found);
    let mut disk_check = tokio::time::interval(DISK_CHECK_INTERVAL);
    let mut addresses: HashMap<String, SocketAddr> = HashMap::new();
    let mut waiting: HashMap<u64, Waiting> = HashMap::new();
    let mut next_token: u64 = 0;
    let mut statements_signed_for = transport.renewals();

    loop {
        heartbeat.beat();
        let deadline = negotiator.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => {
                    let wait = at.saturating_sub(negotiation_millis());
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((peer, addr)) = seeds_found.recv() => {
                addresses.insert(peer.clone(), addr);
                negotiator.handle_seed(negotiation_millis(), &peer);
            }
            message = inbox.recv() => {
                let Some(Inbound { received, remote }) = message else { break };
                addresses.entry(received.sender.clone()).or_insert(remote);
                let refused = negotiator.membership().refused_statements();
                negotiator.handle_message(negotiation_millis(), &received.sender, received.body);
                let newly_refused = negotiator.membership().refused_statements() - refused;
                if newly_refused > 0 {
                    metrics.statements_refused.fetch_add(newly_refused, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        peer = %received.sender,
                        "refused a member's statement that does not check (forged, replayed, or signed with an identity not valid here); the rest of the message's unproven gossip was dropped"
                    );
                }
            }
            Some(command) = commands.recv() => {
                next_token += 1;
                let request = command_request(command, next_token, &mut waiting);
                negotiator.handle_request(negotiation_millis(), next_token, request);
            }
            Some(result) = done.recv() => match result {
                Done::Committed(token, result) => negotiator.handle_committed(negotiation_millis(), token, result),
                Done::Adopted(token, result) => negotiator.handle_adopted(negotiation_millis(), token, result),
                Done::LogsRead { request, to, result } => {
                    negotiator.handle_logs_read(negotiation_millis(), request, to, result);
                }
                Done::RegisterStored(token, result) => {
                    negotiator.handle_register_stored(negotiation_millis(), token, result);
                }
            },
            _ = disk_check.tick(), if disk.is_some() => {
                if let Some(watch) = &disk
                    && let Some(available) = crate::capacity::disk_available(&watch.path)
                {
                    negotiator.set_disk(negotiation_millis(), available, watch.reserve_bytes);
                }
            }
            () = sleep => negotiator.handle_timeout(negotiation_millis()),
        }

        if transport.renewals() != statements_signed_for {
            // The statement members relay carries the certificate it was signed with;
            // one signed with the new identity keeps it checkable after the old expires.
            statements_signed_for = transport.renewals();
            negotiator.restate_meta();
            tracing::info!("membership statement signed again, with the renewed key");
        }
        let mut view_changed = false;
        while let Some(event) = negotiator.poll_event() {
            view_changed |= matches!(event, Event::Membership(_));
            observe(&event, &metrics, disk.as_ref().map(|d| d.path.as_path()));
        }
        if view_changed {
            view.send_replace(negotiator.membership().members().cloned().collect());
        }
        while let Some(action) = negotiator.poll_action() {
            match action {
                HostAction::Answer { token, reply } => answer(&mut waiting, token, reply),
                HostAction::CheckRevocation { notice } => {
                    let verified = match transport.revoke(revocation_of(&notice)) {
                        Ok(_) => true,
                        Err(error) => {
                            tracing::warn!(subject = %notice.subject, %error, "refused a revocation that does not verify");
                            false
                        }
                    };
                    negotiator.handle_revocation(negotiation_millis(), notice, verified);
                }
                // Register slots are small flushed writes of their own, beside the store
                // queue: a renewal every 1.5 s cannot wait behind a container start.
                HostAction::StoreRegister {
                    token,
                    workload,
                    replica,
                    slot,
                } => {
                    let host = Arc::clone(&host);
                    let done = done_tx.clone();
                    tasks.spawn(async move {
                        let result = host.store_register(workload, replica, slot).await;
                        let _ = done.send(Done::RegisterStored(token, result));
                    });
                }
                HostAction::DropRegister { workload, replica } => {
                    let host = Arc::clone(&host);
                    tasks.spawn(async move { host.drop_register(workload, replica).await });
                }
                HostAction::RunLeased {
                    workload,
                    replica,
                    epoch,
                    fence_at_ms,
                } => {
                    let fence_in =
                        Duration::from_millis(fence_at_ms.saturating_sub(negotiation_millis()));
                    let host = Arc::clone(&host);
                    tasks.spawn(async move {
                        host.run_leased(workload, replica, epoch, fence_in).await
                    });
                }
                HostAction::Fence {
                    workload,
                    replica,
                    epoch,
                    why,
                } => {
                    let host = Arc::clone(&host);
                    tasks.spawn(async move { host.fence(workload, replica, epoch, why).await });
                }
                HostAction::Start { workload, replica } => {
                    let host = Arc::clone(&host);
                    let name = key_name(&workload).to_owned();
                    tasks.spawn(async move { host.start(name, replica).await });
                }
                HostAction::ReadLogs {
                    request,
                    from,
                    workload,
                    replica,
                    window,
                } => {
                    let host = Arc::clone(&host);
                    let done = done_tx.clone();
                    tasks.spawn(async move {
                        let name = key_name(&workload).to_owned();
                        let result = host.logs(name, replica, window).await;
                        let _ = done.send(Done::LogsRead {
                            request,
                            to: from,
                            result,
                        });
                    });
                }
                // A revocation goes in line with the commits: one overtaking the commit of
                // the replica it revokes would find nothing to stop.
                store @ (HostAction::Commit { .. }
                | HostAction::Adopt { .. }
                | HostAction::Forget { .. }
                | HostAction::Revoke { .. }
                | HostAction::StoreRecord { .. }
                | HostAction::DropRecord { .. }) => {
                    let _ = store_tx.send(store);
                }
            }
        }
        while let Some((to, body)) = negotiator.poll_transmit() {
            let addr = negotiator
                .membership()
                .member(&to)
                .and_then(|m| m.meta.as_ref())
                .and_then(|meta| meta.address.as_deref())
                .and_then(|a| a.parse().ok())
                .or_else(|| addresses.get(&to).copied());
            let transport = transport.clone();
            // Sends run beside the loop: a slow peer must not stall the others. The
            // protocol survives lost messages (probes time out, awards are resent).
            tasks.spawn(async move {
                if let Err(error) = transport.send(&to, addr, &body).await {
                    tracing::debug!(%error, kind = body.kind(), "message not sent");
                }
            });
        }
    }
    tracing::debug!("negotiation loop stopped");
}

/// A revocation as the negotiation protocol carries it.
fn notice_of(revocation: &Revocation) -> RevocationNotice {
    RevocationNotice {
        subject: revocation.subject.clone(),
        public_key: revocation.public_key.clone(),
        revoked_at: revocation.revoked_at,
        signature: revocation.signature.clone(),
    }
}

/// A revocation off the wire, to be verified.
fn revocation_of(notice: &RevocationNotice) -> Revocation {
    Revocation {
        subject: notice.subject.clone(),
        public_key: notice.public_key.clone(),
        revoked_at: notice.revoked_at,
        signature: notice.signature.clone(),
    }
}

/// Carries out store work in order until the loop stops, then finishes what was queued:
/// shutdown waits for an award being persisted rather than closing the store under it.
async fn store_work<H: Host>(
    host: Arc<H>,
    mut work: mpsc::UnboundedReceiver<HostAction>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(action) = work.recv().await {
        match action {
            HostAction::Commit { token, assignment } => {
                let result = host.commit(assignment).await;
                let _ = done.send(Done::Committed(token, result));
            }
            HostAction::Adopt {
                token,
                spec,
                submitter,
            } => {
                let result = host.adopt(spec, submitter).await;
                let _ = done.send(Done::Adopted(token, result));
            }
            HostAction::Forget { workload, why } => {
                host.forget(key_name(&workload).to_owned(), why).await;
            }
            HostAction::Revoke {
                workload,
                replica,
                epoch,
            } => {
                host.revoke(key_name(&workload).to_owned(), replica, epoch)
                    .await
            }
            HostAction::StoreRecord { workload, record } => {
                host.store_record(workload, record).await;
            }
            HostAction::DropRecord { workload } => host.drop_record(workload).await,
            _ => {}
        }
    }
}

/// The negotiator's request for a node command, remembering where its answer goes.
fn command_request(command: Command, token: u64, waiting: &mut HashMap<u64, Waiting>) -> Request {
    match command {
        Command::Revoke(revocation) => Request::Revoke(notice_of(&revocation)),
        Command::Place(request) => {
            tracing::info!(workload = %request.workload, replicas = request.replicas, "placing");
            Request::Place(*request)
        }
        Command::Adopt(request) => {
            tracing::info!(workload = %request.workload, replicas = request.replicas, "taking up a workload owned before the restart");
            Request::Adopt(*request)
        }
        Command::Remove(workload) => Request::Remove(workload),
        Command::ReplicaStates(states) => Request::ReplicaStates(states),
        Command::Scale { workload, replicas } => Request::Scale { workload, replicas },
        Command::Update { spec, policy } => Request::Update { spec, policy },
        Command::Undo(workload) => Request::Undo(workload),
        Command::Explain { workload, reply } => {
            waiting.insert(token, Waiting::Explain(reply));
            Request::Explain(workload)
        }
        Command::Placements { workload, reply } => {
            waiting.insert(token, Waiting::Placements(reply));
            Request::Placements(workload)
        }
        Command::ListMesh { reply } => {
            waiting.insert(token, Waiting::ListMesh(reply));
            Request::ListMesh
        }
        Command::RemoveRemote { workload } => Request::RemoveRemote(workload),
        Command::Logs {
            node,
            workload,
            replica,
            window,
            reply,
        } => {
            waiting.insert(token, Waiting::Logs(reply));
            Request::Logs {
                node,
                workload,
                replica,
                window,
            }
        }
    }
}

/// Sends an answer to whoever waits for it (who may have given up).
fn answer(waiting: &mut HashMap<u64, Waiting>, token: u64, reply: Reply) {
    let Some(to) = waiting.remove(&token) else {
        return;
    };
    match (to, reply) {
        (Waiting::Explain(to), Reply::Explain(placements, explanations, leases)) => {
            let _ = to.send((placements, explanations, leases));
        }
        (Waiting::Placements(to), Reply::Placements(placements)) => {
            let _ = to.send(placements);
        }
        (Waiting::ListMesh(to), Reply::ListMesh(workloads)) => {
            let _ = to.send(workloads);
        }
        (Waiting::Logs(to), Reply::Logs(result)) => {
            let _ = to.send(result);
        }
        _ => tracing::error!(token, "an answer of the wrong kind; dropped"),
    }
}

/// Logs what happened and counts it.
pub(super) fn observe(event: &Event, metrics: &Metrics, disk: Option<&std::path::Path>) {
    match event {
        Event::Membership(event) => tracing::info!(?event, "membership"),
        Event::LeaseWaiting {
            workload,
            replica,
            holder,
            epoch,
            lease_left_ms,
        } => {
            tracing::info!(%workload, replica, %holder, epoch, lease_left_ms, "waiting for another node's lease");
        }
        Event::AcceptorsChanged {
            workload,
            replica,
            set,
        } => {
            let (generation, acceptors) = (set.generation, set.acceptors.join(","));
            match &set.leaving {
                Some(leaving) => tracing::info!(
                    %workload, replica, generation, %acceptors, leaving = %leaving.join(","),
                    "replacing a gone acceptor: both sets keep the lease register until the change is chosen"
                ),
                None => tracing::info!(
                    %workload, replica, generation, %acceptors,
                    "replaced a gone acceptor: these acceptors keep the lease register now"
                ),
            }
        }
        Event::RegisterRefused { from, reason } => {
            tracing::warn!(%from, %reason, "refused a lease register message");
        }
        Event::KeyRevoked { subject } => {
            tracing::warn!(%subject, "a node key was revoked by the root; refusing it from now on");
        }
        Event::Auction(AnnouncerEvent::Placed {
            workload,
            replica,
            node,
            epoch,
        }) => {
            Metrics::inc(&metrics.placements);
            tracing::info!(%workload, replica, %node, epoch, "replica placed");
        }
        Event::Auction(AnnouncerEvent::NotPlaced {
            workload,
            replica,
            explanation,
            retry_at_ms,
        }) => {
            Metrics::inc(&metrics.failed_auctions);
            let retry_in_ms = retry_at_ms.saturating_sub(negotiation_millis());
            tracing::warn!(%workload, replica, reasons = ?explanation.counts(), retry_in_ms, "replica not placed; retrying");
        }
        Event::Auction(AnnouncerEvent::Struck { node, strikes }) => {
            tracing::warn!(%node, strikes, "an award to this node did not become a running replica; its bids rank lower for a while");
        }
        Event::Auction(AnnouncerEvent::RolloutStalled { workload, reason }) => {
            tracing::warn!(%workload, %reason, "the rolling update waits");
        }
        Event::Auction(AnnouncerEvent::RolledOut { workload }) => {
            tracing::info!(%workload, "rolled out: every replica runs the newest spec");
        }
        Event::Auction(AnnouncerEvent::RolloutFailed {
            workload,
            replica,
            node,
            reason,
        }) => {
            tracing::warn!(%workload, replica, %node, %reason, "a replacement failed; the update stops and is rolled back");
        }
        Event::RollingOut { workload, image } => {
            tracing::info!(%workload, %image, "rolling out a new spec, one replica at a time");
        }
        Event::ReplicaLost {
            workload,
            replica,
            node,
        } => {
            Metrics::inc(&metrics.reauctions);
            tracing::warn!(%workload, replica, %node, "replica lost with its node; placing it again");
        }
        Event::Denied {
            kind,
            workload,
            action,
            reason,
            ..
        } => {
            metrics.denial(action.name());
            tracing::warn!(kind, %workload, "refused by policy: {reason}");
        }
        Event::AwardRefused {
            from,
            workload,
            reason,
        } => {
            tracing::warn!(%from, %workload, %reason, "refused a peer's award or hand-over");
        }
        Event::InstanceRefused {
            from,
            workload,
            replica,
            reason,
        } => {
            tracing::warn!(%from, %workload, replica, %reason, "refused a peer's report of a replica it runs");
        }
        Event::RecordTaken {
            workload,
            generation,
            removed,
            author,
        } => {
            if *removed {
                tracing::info!(%workload, generation, %author, "workload record: removed");
            } else {
                tracing::info!(%workload, generation, %author, "workload record: new generation");
            }
        }
        Event::Rescaled { workload, replicas } => {
            tracing::info!(%workload, replicas, "scaled: placing or stopping replicas to match");
        }
        Event::RecordRefused { from, reason } => {
            Metrics::inc(&metrics.records_refused);
            tracing::warn!(%from, %reason, "refused a workload record");
        }
        Event::AwardWithoutSpec { workload, replica } => {
            tracing::warn!(%workload, replica, "award without a spec; refusing it");
        }
        Event::CommitFailed {
            workload,
            replica,
            error,
        } => {
            // Not acknowledged: the owner re-awards elsewhere.
            tracing::error!(%workload, replica, %error, "could not persist an award; not acknowledging it");
        }
        Event::Committed {
            workload,
            replica,
            epoch,
            owner,
        } => {
            tracing::info!(%workload, replica, epoch, %owner, "replica awarded; starting it");
        }
        Event::Revoked {
            workload,
            replica,
            epoch,
        } => {
            tracing::info!(%workload, replica, epoch, "replica revoked by its owner; stopping it");
        }
        Event::TakingOver {
            workload,
            submitter,
        } => {
            tracing::warn!(%workload, %submitter, "its owner is dead and this node is the successor: taking the workload over");
        }
        Event::AdoptFailed { workload, error } => {
            tracing::error!(%workload, %error, "cannot store a workload to take over; leaving it");
        }
        Event::GivenBack { workload } => {
            tracing::info!(%workload, "its submitter is back: giving the workload back");
        }
        Event::HandedOver { workload, to } => {
            tracing::info!(%workload, successor = %to, "owner dead: handing the workload to its successor");
        }
        Event::HandedTo {
            workload,
            submitter,
            by,
        } => {
            tracing::info!(%workload, %submitter, %by, "handed a workload whose owner died");
        }
        Event::RemovedByPeer { workload, by } => {
            tracing::info!(%workload, %by, "removing a workload at another node's request; revoking its replicas");
        }
        Event::DiskLow { available, reserve } => {
            let path = disk.map(|p| p.display().to_string()).unwrap_or_default();
            tracing::warn!(available_mib = available >> 20, reserve_mib = reserve >> 20, %path, "the container storage is below its reserve: declining new replicas");
        }
        Event::Sent { kind, decline } => match (*kind, decline) {
            ("bid", _) => Metrics::inc(&metrics.bids),
            ("award", _) => Metrics::inc(&metrics.awards),
            (_, Some(code)) => metrics.decline(code),
            _ => {}
        },
    }
}
