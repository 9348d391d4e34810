//! Drives SWIM membership over the QUIC transport: feeds verified messages and timeouts
//! into the sans-IO [`Membership`], sends what it queues, joins through seed addresses,
//! and publishes the member list for the API.
//!
//! Membership addresses members by SPIFFE ID; the transport needs socket addresses. A
//! member's address comes from the metadata it announces (`NodeMeta::address`); a seed's,
//! from the address it was dialled at.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_identity::files::IdentityDir;
use parley_identity::tls::TlsIdentity;
use parley_negotiation::membership::{Member, Membership, MembershipConfig};
use parley_negotiation::messages::{Body, NodeMeta};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::MeshSettings;
use crate::transport::{Inbound, Limits, NodeCredentials, Transport};

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
    /// A `join` address does not resolve.
    #[error("cannot resolve join address {seed}: {reason}")]
    Resolve {
        /// The address as configured.
        seed: String,
        /// The resolver's error.
        reason: String,
    },
}

/// Loads the node identity, binds the QUIC endpoint and starts membership, joining through
/// `settings.join`. `meta` is what this node announces; its address is filled in here.
pub async fn start(
    settings: &MeshSettings,
    mut meta: NodeMeta,
    shutdown: CancellationToken,
) -> Result<MeshHandle, MeshStartError> {
    let credentials = load_credentials(&settings.identity_dir, unix_now())?;
    let (transport, inbox) = Transport::bind(settings.listen, credentials, Limits::default())?;
    let bound = transport.local_addr().map_err(|e| {
        MeshStartError::Transport(crate::transport::TransportError::Bind {
            addr: settings.listen,
            reason: e.to_string(),
        })
    })?;
    let address = settings.advertise.unwrap_or(bound);
    meta.address = Some(address.to_string());

    let mut seeds = Vec::new();
    for seed in &settings.join {
        let resolved =
            tokio::net::lookup_host(seed.as_str())
                .await
                .map_err(|e| MeshStartError::Resolve {
                    seed: seed.clone(),
                    reason: e.to_string(),
                })?;
        seeds.extend(resolved.filter(|addr| *addr != address && *addr != bound));
    }

    let id = transport.id().to_owned();
    let membership = Membership::new(&id, meta, MembershipConfig::default(), 0, random_seed());
    let (view_tx, view) = watch::channel(Vec::new());
    tracing::info!(id = %id, listen = %bound, advertise = %address, seeds = ?seeds, "mesh endpoint up");
    tokio::spawn(run(
        transport.clone(),
        inbox,
        membership,
        seeds,
        view_tx,
        shutdown,
    ));
    Ok(MeshHandle {
        id,
        address,
        view,
        transport,
    })
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
