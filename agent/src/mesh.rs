//! Drives SWIM membership over the QUIC transport: feeds verified messages and timeouts
//! into the sans-IO [`Membership`], sends what it queues, joins through seed addresses,
//! and publishes the member list for the API.
//!
//! Membership addresses members by SPIFFE ID; the transport needs socket addresses. A
//! member's address comes from the metadata it announces (`NodeMeta::address`); a seed's,
//! from the address it was dialled at.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parley_negotiation::membership::{Member, Membership};
use parley_negotiation::messages::Body;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::transport::{Inbound, Transport};

/// How often an unreachable seed is dialled again.
const SEED_RETRY: Duration = Duration::from_secs(1);

/// Runs membership until `shutdown`. `view` receives the member list after every change.
pub async fn run(
    transport: Transport,
    mut inbox: mpsc::Receiver<Inbound>,
    mut membership: Membership,
    seeds: Vec<SocketAddr>,
    view: watch::Sender<Vec<Member>>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let now_ms = move || started.elapsed().as_millis() as u64;
    let mut addresses: HashMap<String, SocketAddr> = HashMap::new();

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

    loop {
        let deadline = membership
            .poll_timeout()
            .map(|at| started + Duration::from_millis(at));
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some((id, addr)) = seeds_found.recv() => {
                addresses.insert(id.clone(), addr);
                membership.join(&[id]);
            }
            message = inbox.recv() => {
                let Some(Inbound { received, remote }) = message else { break };
                let from = received.sender.as_str();
                addresses.entry(from.to_owned()).or_insert(remote);
                let now = now_ms();
                match &received.body {
                    Body::Ping(ping) => membership.handle_ping(now, from, ping),
                    Body::PingReq(request) => membership.handle_ping_req(now, from, request),
                    Body::Ack(ack) => membership.handle_ack(now, from, ack),
                    Body::Sync(sync) => membership.handle_sync(now, from, sync),
                    other => tracing::debug!(kind = other.kind(), %from, "message for the auction, which this agent does not run yet"),
                }
            }
            () = sleep => membership.handle_timeout(now_ms()),
        }
        let mut changed = false;
        while let Some(event) = membership.poll_event() {
            tracing::info!(?event, "membership");
            changed = true;
        }
        if changed {
            view.send_replace(membership.members().cloned().collect());
        }
        while let Some((to, body)) = membership.poll_transmit() {
            let addr = membership
                .member(&to)
                .and_then(|m| m.meta.as_ref())
                .and_then(|meta| meta.address.as_deref())
                .and_then(|a| a.parse().ok())
                .or_else(|| addresses.get(&to).copied());
            let transport = transport.clone();
            // Sends run beside the loop: a slow peer must not stall probes of the others.
            // A lost message is what SWIM is built to survive.
            tokio::spawn(async move {
                if let Err(error) = transport.send(&to, addr, &body).await {
                    tracing::debug!(%error, "membership message not sent");
                }
            });
        }
    }
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

#[cfg(test)]
mod tests;
