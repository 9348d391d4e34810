//! The QUIC transport between agents: mutual authentication with the identity crate's
//! verifiers, one protocol message per unidirectional stream, framed and signed by the
//! negotiation codec, one connection reused per peer.
//!
//! The transport checks, for every frame, that it fits the size cap (before reading
//! more), that the envelope's sender is the SPIFFE ID the connection proved at the
//! handshake, that the sender's signature verifies against the key reconstructed from
//! its chain, that the timestamp is inside the window and that the message id was not
//! seen before. What passes reaches the agent as a [`Received`]; nothing in here decides
//! what a message means. Per peer it bounds concurrent streams and the rate of frames.
//! 0-RTT is disabled in the TLS configurations, so no message can be replayed that way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_identity::revocation::{Revocation, RevocationList};
use parley_identity::tls::{self, PeerVerifier, TlsIdentity};
use parley_identity::{Credential, TrustBundle, VerifiedIdentity};
use parley_negotiation::codec::{self, DecodeError, Received, ReplayGuard, Signer, Verifier};
use parley_negotiation::messages::Body;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tracing::Instrument as _;

mod inbound;
mod notary;
mod tls_setup;

pub use notary::TransportNotary;

use inbound::{accept_loop, read_loop};
use tls_setup::{PeerError, tls_configs};

#[cfg(test)]
pub(crate) mod tests;

/// Limits applied to every peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent unidirectional streams a peer may open (each carries one message).
    pub streams_per_peer: u32,
    /// Frames a peer may send per second, on average.
    pub frames_per_second: u32,
    /// Frames a peer may send in a burst above the average.
    pub frame_burst: u32,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a silent connection lives.
    pub idle_timeout: Duration,
    /// How long a peer may take to deliver one frame once its stream opened.
    pub frame_timeout: Duration,
    /// Handshakes in progress at once; more incoming connections are refused before
    /// any state is kept for them.
    pub handshakes_in_flight: usize,
    /// Live connections of one peer (by SPIFFE ID); a further one is closed at once.
    pub connections_per_peer: usize,
    /// Live authenticated connections in all.
    pub connections_total: usize,
    /// How long sending one message may take, dialling included.
    pub send_timeout: Duration,
    /// Messages to one peer in flight at once; more are dropped at once. A peer that
    /// stops reading (never accepts a stream, never opens its window) must not make this
    /// node hold a task and a frame per message for ever; the protocol resends.
    pub sends_in_flight_per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_peer: 64,
            frames_per_second: 500,
            frame_burst: 1_000,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(5),
            handshakes_in_flight: 64,
            connections_per_peer: 4,
            connections_total: 1_024,
            send_timeout: Duration::from_secs(10),
            // A full state exchange of a large mesh leaves as dozens of frames at once.
            sends_in_flight_per_peer: 128,
        }
    }
}

/// Bytes a peer may have in flight on one stream: one frame and its length prefix. A
/// stream carries one message, so a larger window only buffers what would be refused.
const STREAM_WINDOW: u32 = codec::MAX_FRAME_LEN as u32 + 4;

/// Bytes a peer may have in flight on one connection, all streams together: 16 frames.
/// Without it, a peer opening its 64 streams could make this node buffer 64 full
/// default windows (80 MiB) per connection.
const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// Why the transport could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A renewed identity could not be put in use.
    #[error("cannot use the renewed identity: {0}")]
    Rotate(String),
    /// The endpoint could not be set up.
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// A peer is not connected and no address is known for it.
    #[error("no connection to {0} and no address to reach it")]
    Unreachable(String),
    /// A connected peer's stream failed.
    #[error("sending to {peer}: {reason}")]
    Send {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// As many messages to the peer as allowed are in flight already: this one is
    /// dropped.
    #[error(
        "{peer} has {in_flight} messages in flight already (it is not reading); this one is dropped"
    )]
    Backlogged {
        /// The peer.
        peer: String,
        /// The limit reached.
        in_flight: usize,
    },
}

/// Why an incoming frame or connection was refused, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The handshake failed (identity refused, or not a Parley peer).
    Handshake,
    /// A frame exceeded the size cap.
    TooLarge,
    /// Bytes that are not a valid envelope.
    Malformed,
    /// The signature did not verify, or the envelope named someone other than the peer.
    Forged,
    /// A message id seen before.
    Replayed,
    /// A timestamp outside the window.
    Stale,
    /// A protocol version this node does not speak.
    Version,
    /// The peer exceeded its frame rate.
    RateLimited,
    /// The peer took too long to deliver a frame.
    Slow,
    /// Too many handshakes at once, or too many connections (of this peer, or in all).
    Busy,
}

impl Refusal {
    /// A short stable name (for metrics labels and JSON).
    pub fn code(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::TooLarge => "too-large",
            Self::Malformed => "malformed",
            Self::Forged => "forged",
            Self::Replayed => "replayed",
            Self::Stale => "stale",
            Self::Version => "version",
            Self::RateLimited => "rate-limited",
            Self::Slow => "slow",
            Self::Busy => "busy",
        }
    }

    fn of(error: &DecodeError) -> Self {
        match error {
            DecodeError::TooLarge(_) => Self::TooLarge,
            DecodeError::BadSignature(_) => Self::Forged,
            DecodeError::Replay { .. } => Self::Replayed,
            DecodeError::OutsideWindow { .. } => Self::Stale,
            DecodeError::UnsupportedVersion { .. } => Self::Version,
            _ => Self::Malformed,
        }
    }
}

/// A verified message from a peer.
#[derive(Debug)]
pub struct Inbound {
    /// The message; `received.sender` is the peer's proven SPIFFE ID.
    pub received: Received,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// This node's credentials, as the transport needs them.
pub struct NodeCredentials {
    /// The node's ECQV credential (signs every message).
    pub credential: Credential,
    /// Its X.509 wrapper for the TLS handshake.
    pub tls: TlsIdentity,
    /// The trust domains whose nodes are accepted.
    pub bundle: Arc<TrustBundle>,
}

/// The agent's QUIC endpoint. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    /// This node's SPIFFE ID; renewal keeps it.
    id: String,
    /// Signs outgoing messages; replaced when the identity is renewed.
    signer: Mutex<Arc<CredentialSigner>>,
    /// Identities taken into use by [`Transport::rotate`] so far.
    renewals: AtomicU64,
    /// Presents this node's identity when dialling; replaced when it is renewed.
    client_config: Mutex<quinn::ClientConfig>,
    transport_config: Arc<quinn::TransportConfig>,
    accepts_enrollment: bool,
    bundle: Arc<TrustBundle>,
    limits: Limits,
    /// The connection used to send to each peer (the newest).
    peers: Mutex<HashMap<String, quinn::Connection>>,
    /// Node keys the root revoked: refused at every handshake.
    revoked: RevocationList,
    /// The key each connected peer proved last.
    keys: Mutex<HashMap<String, parley_identity::PublicKey>>,
    /// Live authenticated connections by peer, for the caps in [`Limits`].
    live: Mutex<HashMap<String, usize>>,
    /// Messages in flight to each peer (permits of [`Limits::sends_in_flight_per_peer`]).
    sending: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Handshakes in progress.
    handshakes: Arc<tokio::sync::Semaphore>,
    replays: Mutex<ReplayGuard>,
    next_message_id: AtomicU64,
    refusals: Mutex<HashMap<Refusal, u64>>,
    inbound: mpsc::Sender<Inbound>,
    /// Where enrollment connections go, on an issuer.
    enrollment: Option<mpsc::Sender<quinn::Connection>>,
}

/// How long closing the endpoint waits for its connections to drain.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Peers with a send-queue entry kept; past it, idle entries are dropped.
const MAX_TRACKED_SEND_PEERS: usize = 4_096;

/// Enrollment connections waiting for the enrollment service; more are refused as busy.
const MAX_PENDING_ENROLLMENTS: usize = 16;

struct CredentialSigner {
    id: String,
    credential: Credential,
}

impl Signer for CredentialSigner {
    fn id(&self) -> &str {
        &self.id
    }

    fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8> {
        self.credential.sign(context, bytes)
    }
}

/// Verifies a frame against the identity its connection proved: a peer can only speak
/// for itself.
struct ConnectionPeer<'a>(&'a VerifiedIdentity);

impl Verifier for ConnectionPeer<'_> {
    fn verify(&self, sender: &str, context: &str, bytes: &[u8], signature: &[u8]) -> bool {
        sender == self.0.id.as_str() && self.0.verify(context, bytes, signature).is_ok()
    }
}

fn unix_ms() -> u64 {
    crate::clock::unix_millis()
}

impl Transport {
    /// Listens on `listen` and returns the transport and the stream of verified messages.
    pub fn bind(
        listen: SocketAddr,
        credentials: NodeCredentials,
        limits: Limits,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), TransportError> {
        Self::bind_with(listen, credentials, limits, None)
    }

    /// As [`Transport::bind`], for an issuer: clients without a certificate may also
    /// connect over [`tls::JOIN_ALPN`], and those connections (authenticated on the
    /// server's side only) come out of the third value for the enrollment service. A
    /// certificate-less connection on the peer protocol is refused as before.
    pub fn bind_accepting_enrollment(
        listen: SocketAddr,
        credentials: NodeCredentials,
        limits: Limits,
    ) -> Result<
        (
            Self,
            mpsc::Receiver<Inbound>,
            mpsc::Receiver<quinn::Connection>,
        ),
        TransportError,
    > {
        let (joins, joining) = mpsc::channel(MAX_PENDING_ENROLLMENTS);
        let (transport, inbox) = Self::bind_with(listen, credentials, limits, Some(joins))?;
        Ok((transport, inbox, joining))
    }

    fn bind_with(
        listen: SocketAddr,
        credentials: NodeCredentials,
        limits: Limits,
        enrollment: Option<mpsc::Sender<quinn::Connection>>,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), TransportError> {
        let bind_error = |reason: String| TransportError::Bind {
            addr: listen,
            reason,
        };
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_uni_streams(limits.streams_per_peer.into())
            // One bidirectional stream: an enrollment's request and answer. Peers use
            // unidirectional streams only.
            .max_concurrent_bidi_streams(1u32.into())
            .stream_receive_window(STREAM_WINDOW.into())
            .receive_window(CONNECTION_WINDOW.into())
            .send_window(u64::from(CONNECTION_WINDOW))
            .max_idle_timeout(Some(
                limits
                    .idle_timeout
                    .try_into()
                    .map_err(|_| bind_error("idle timeout out of range".into()))?,
            ))
            .keep_alive_interval(Some(limits.idle_timeout / 3));
        let transport = Arc::new(transport);
        let accepts_enrollment = enrollment.is_some();
        let revoked = RevocationList::new();
        let (server, client) = tls_configs(&credentials, &transport, accepts_enrollment, &revoked)
            .map_err(|e| bind_error(e.to_string()))?;

        // One endpoint serves and connects, so a peer's remote address is its listening
        // address and either side can reuse the connection.
        let endpoint =
            quinn::Endpoint::server(server, listen).map_err(|e| bind_error(e.to_string()))?;

        let (inbound, receiver) = mpsc::channel(1_024);
        let mut first_id = [0u8; 8];
        // Message ids start at a random point so that a restarted node's ids are not
        // replays of its previous run's.
        rand_start(&mut first_id);
        let inner = Arc::new(Inner {
            endpoint,
            id: credentials.credential.id().to_string(),
            signer: Mutex::new(Arc::new(CredentialSigner {
                id: credentials.credential.id().to_string(),
                credential: credentials.credential,
            })),
            renewals: AtomicU64::new(0),
            client_config: Mutex::new(client),
            transport_config: transport,
            accepts_enrollment,
            bundle: credentials.bundle,
            limits,
            peers: Mutex::new(HashMap::new()),
            revoked,
            keys: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashMap::new()),
            handshakes: Arc::new(tokio::sync::Semaphore::new(limits.handshakes_in_flight)),
            replays: Mutex::new(ReplayGuard::default()),
            next_message_id: AtomicU64::new(u64::from_be_bytes(first_id) >> 1),
            refusals: Mutex::new(HashMap::new()),
            inbound,
            enrollment,
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok((Self { inner }, receiver))
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This node's SPIFFE ID.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Applies a revocation (verified against this node's trust bundle first): the key
    /// is refused at every handshake from now on, and the peer's connections made with it
    /// are closed. `Ok(false)` if it was held already.
    pub fn revoke(&self, revocation: Revocation) -> Result<bool, parley_identity::IdentityError> {
        revocation.verify(&self.inner.bundle)?;
        let subject = revocation.subject.clone();
        if !self.inner.revoked.insert(revocation, unix_ms() / 1000) {
            return Ok(false);
        }
        if let Some(connection) = lock(&self.inner.peers).remove(&subject) {
            connection.close(4u32.into(), b"identity revoked");
        }
        Ok(true)
    }

    /// The key the newest connection of `peer` proved, if it is connected.
    pub fn peer_key(&self, peer: &str) -> Option<parley_identity::PublicKey> {
        lock(&self.inner.keys).get(peer).copied()
    }

    /// The revocations this node holds.
    pub fn revocations(&self) -> Vec<Revocation> {
        self.inner.revoked.all()
    }

    /// Starts using a renewed identity (same SPIFFE ID, new key and certificate): new
    /// handshakes present it and new messages are signed with it. Open connections are
    /// closed, because their peers verify messages against the key proven when they were
    /// made; they are dialled again on the next message.
    pub fn rotate(&self, credentials: NodeCredentials) -> Result<(), TransportError> {
        let renewed = credentials.credential.id().to_string();
        if renewed != self.inner.id {
            return Err(TransportError::Rotate(format!(
                "the renewed identity {renewed} is not this node's ({})",
                self.inner.id
            )));
        }
        let (server, client) = tls_configs(
            &credentials,
            &self.inner.transport_config,
            self.inner.accepts_enrollment,
            &self.inner.revoked,
        )
        .map_err(|e| TransportError::Rotate(e.to_string()))?;
        self.inner.endpoint.set_server_config(Some(server));
        *lock(&self.inner.client_config) = client;
        *lock(&self.inner.signer) = Arc::new(CredentialSigner {
            id: renewed,
            credential: credentials.credential,
        });
        for (_, connection) in lock(&self.inner.peers).drain() {
            connection.close(0u32.into(), b"identity renewed");
        }
        self.inner.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many renewed identities this transport has taken into use: when it moves,
    /// this node's membership statement must be signed again with the new key.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    /// Signs this node's membership statements with its current identity and checks
    /// other members' against the trust bundle and the revocations.
    pub fn notary(&self) -> TransportNotary {
        TransportNotary {
            inner: self.inner.clone(),
        }
    }

    /// Connects to `addr` (or reuses a connection to it) and returns the SPIFFE ID the
    /// peer proved.
    pub async fn connect(&self, addr: SocketAddr) -> Result<String, TransportError> {
        let existing = lock(&self.inner.peers)
            .iter()
            .find(|(_, c)| c.remote_address() == addr && c.close_reason().is_none())
            .map(|(id, _)| id.clone());
        if let Some(id) = existing {
            return Ok(id);
        }
        let (id, _) = self.inner.clone().dial(addr).await?;
        Ok(id)
    }

    /// Signs and sends `body` to peer `to`, over its connection or, when there is none,
    /// a new one to `addr`.
    pub async fn send(
        &self,
        to: &str,
        addr: Option<SocketAddr>,
        body: &Body,
    ) -> Result<(), TransportError> {
        let limit = self.inner.limits.sends_in_flight_per_peer;
        let permit = {
            let mut sending = lock(&self.inner.sending);
            if sending.len() >= MAX_TRACKED_SEND_PEERS && !sending.contains_key(to) {
                // Peers with nothing in flight need no entry.
                sending.retain(|_, in_flight| in_flight.available_permits() < limit);
            }
            let in_flight = sending
                .entry(to.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(limit)));
            Arc::clone(in_flight).try_acquire_owned()
        };
        let Ok(_permit) = permit else {
            return Err(TransportError::Backlogged {
                peer: to.to_owned(),
                in_flight: limit,
            });
        };
        let timeout = self.inner.limits.send_timeout;
        tokio::time::timeout(timeout, self.send_now(to, addr, body))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Send {
                    peer: to.to_owned(),
                    reason: format!(
                        "not delivered within {} ms: the peer is not reading",
                        timeout.as_millis()
                    ),
                })
            })
    }

    /// [`Transport::send`] once a place in the peer's queue is held.
    async fn send_now(
        &self,
        to: &str,
        addr: Option<SocketAddr>,
        body: &Body,
    ) -> Result<(), TransportError> {
        let connection = match self.connection_to(to) {
            Some(connection) => connection,
            None => {
                let addr = addr.ok_or_else(|| TransportError::Unreachable(to.to_owned()))?;
                let (id, connection) = self.inner.clone().dial(addr).await?;
                if id != to {
                    return Err(TransportError::Send {
                        peer: to.to_owned(),
                        reason: format!("{addr} is {id}"),
                    });
                }
                connection
            }
        };
        let message_id = self.inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let signer = Arc::clone(&lock(&self.inner.signer));
        let frame = codec::encode(body, signer.as_ref(), message_id, unix_ms());
        let send_error = |reason: String| TransportError::Send {
            peer: to.to_owned(),
            reason,
        };
        let mut stream = connection
            .open_uni()
            .await
            .map_err(|e| send_error(e.to_string()))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| send_error(e.to_string()))?;
        stream.finish().map_err(|e| send_error(e.to_string()))?;
        Ok(())
    }

    /// Frames and connections refused so far, by reason.
    pub fn refusals(&self) -> HashMap<Refusal, u64> {
        lock(&self.inner.refusals).clone()
    }

    /// Peers with an open connection.
    pub fn connected_peers(&self) -> Vec<String> {
        lock(&self.inner.peers)
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Closes every connection and the endpoint.
    pub async fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"shutting down");
        // Closing connections drain for a few round trips; a peer that never answers
        // must not keep the agent from stopping.
        if tokio::time::timeout(CLOSE_GRACE, self.inner.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?CLOSE_GRACE, "connections still draining at shutdown; closed anyway");
        }
    }

    fn connection_to(&self, peer: &str) -> Option<quinn::Connection> {
        lock(&self.inner.peers)
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rand_start(bytes: &mut [u8; 8]) {
    // The clock's nanoseconds mixed with the process id: unique enough for a starting
    // point, and message ids need uniqueness, not secrecy.
    let nanos = crate::clock::unix_nanos();
    let mixed = nanos ^ (u64::from(std::process::id()) << 40);
    *bytes = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
}

impl Inner {
    fn refuse(&self, refusal: Refusal) {
        *lock(&self.refusals).entry(refusal).or_insert(0) += 1;
    }

    async fn dial(
        self: Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(String, quinn::Connection), TransportError> {
        let connect_error = |reason: String| TransportError::Connect { addr, reason };
        let connecting = self
            .endpoint
            .connect_with(lock(&self.client_config).clone(), addr, "parley")
            .map_err(|e| connect_error(e.to_string()))?;
        let connection = tokio::time::timeout(self.limits.connect_timeout, connecting)
            .await
            .map_err(|_| connect_error("timed out".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let peer = self
            .peer_of(&connection)
            .map_err(|e| connect_error(e.to_string()))?;
        let id = peer.id.to_string();
        if !self.register(peer, connection.clone()) {
            return Err(connect_error(
                "this node holds as many connections as its limits allow".into(),
            ));
        }
        Ok((id, connection))
    }

    /// The identity a connection's peer proved in the handshake, checked again here to
    /// obtain its reconstructed key.
    fn peer_of(&self, connection: &quinn::Connection) -> Result<VerifiedIdentity, PeerError> {
        let certificates = connection
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(PeerError::NoCertificate)?;
        let first = certificates.first().ok_or(PeerError::NoCertificate)?;
        Ok(tls::verify_peer_certificate(
            first.as_ref(),
            &self.bundle,
            unix_ms() / 1000,
        )?)
    }

    /// Takes a connection `peer` proved its identity on, unless the peer (or everyone
    /// together) holds as many as the limits allow: then it is closed as busy, and
    /// `false` returned.
    fn register(self: &Arc<Self>, peer: VerifiedIdentity, connection: quinn::Connection) -> bool {
        let id = peer.id.to_string();
        {
            let mut live = lock(&self.live);
            let total: usize = live.values().sum();
            let mine = live.get(&id).copied().unwrap_or(0);
            if mine >= self.limits.connections_per_peer || total >= self.limits.connections_total {
                drop(live);
                self.refuse(Refusal::Busy);
                tracing::warn!(peer = %id, mine, total, "refused a connection: too many");
                connection.close(3u32.into(), b"too many connections");
                return false;
            }
            live.insert(id.clone(), mine + 1);
        }
        lock(&self.keys).insert(id.clone(), peer.public_key);
        lock(&self.peers).insert(id, connection.clone());
        // One span per connection: every line logged while reading it names the peer.
        let span = tracing::debug_span!(
            "connection",
            peer = %peer.id,
            remote = %connection.remote_address()
        );
        tokio::spawn(read_loop(self.clone(), peer, connection).instrument(span));
        true
    }
}
