//! A hand-made hostile peer: speaks Parley's wire protocol to a real agent with whatever
//! identity a test gives it (a node's, a container's SVID, none), and sends what an
//! honest agent never would — forged gossip, floods, crafted bodies. Tests use it to
//! prove that the agent refuses each attack on the wire, not only in unit tests.
//!
//! Its API is blocking (it owns a small Tokio runtime) because the end-to-end tests are
//! plain threads driving processes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_identity::cert::{ImplicitCert, from_hex};
use parley_identity::credential::decode_public_key;
use parley_identity::files::IdentityDir;
use parley_identity::tls::{self, PeerVerifier, TlsIdentity};
use parley_identity::{Credential, TrustBundle};
use parley_negotiation::codec::{self, Received, ReplayGuard, Signer, Verifier};
use parley_negotiation::membership::StatementKind;
use parley_negotiation::messages::{Body, Grant, SignedStatement, Statement, WorkloadRecord};
use quinn::crypto::rustls::QuicClientConfig;

/// Who the hostile peer claims to be, and the keys to prove it.
pub struct PeerIdentity {
    credential: Credential,
    chain: Vec<ImplicitCert>,
    bundle: TrustBundle,
}

impl PeerIdentity {
    /// A node's identity from its identity directory (as `parley identity accept` left
    /// it): a legitimate member's keys, in the hands of whoever holds the directory.
    pub fn node(dir: &Path) -> Self {
        let dir = IdentityDir::new(dir);
        let credential = dir.load_credential().expect("load the node's credential");
        let bundle = dir.load_bundle().expect("load the node's trust bundle");
        let chain = vec![credential.cert().clone()];
        Self {
            credential,
            chain,
            bundle,
        }
    }

    /// A workload's identity from the `svid.json` mounted into its container: what a
    /// process inside the container holds.
    pub fn workload(svid: &serde_json::Value) -> Self {
        let hex = |value: &serde_json::Value| {
            from_hex(value.as_str().expect("a hex string")).expect("valid hex")
        };
        let chain: Vec<ImplicitCert> = svid["chain"]
            .as_array()
            .expect("a chain")
            .iter()
            .map(|cert| ImplicitCert::decode(&hex(cert)).expect("a certificate"))
            .collect();
        let root = decode_public_key(svid["root_public_key"].as_str().expect("a root key"))
            .expect("a root public key");
        let trust_domain = svid["trust_domain"].as_str().expect("a trust domain");
        let mut bundle = TrustBundle::new();
        bundle.add(trust_domain, root);
        // The node's certificate is public; only the workload's key is the container's.
        // The workload's issuer key is reconstructed from the node certificate.
        let node_key = bundle
            .verify_chain(&chain[..1], unix_secs())
            .expect("the node certificate verifies")
            .public_key;
        let credential =
            Credential::from_parts(chain[1].as_bytes(), &hex(&svid["private_key"]), &node_key)
                .expect("the workload key matches its certificate");
        Self {
            credential,
            chain,
            bundle,
        }
    }

    /// The SPIFFE ID it presents.
    pub fn id(&self) -> String {
        self.credential.id().to_string()
    }

    /// The roots it trusts (to authenticate the agent it attacks).
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// A workload identity file (`svid.json`) for `workload_id`, issued with this node's
    /// key and carrying `grant` (what a node holding only its key can make).
    pub fn mint_svid(
        &self,
        workload_id: &str,
        grant: Option<&SignedStatement>,
    ) -> serde_json::Value {
        use parley_identity::cert::to_hex;
        use parley_identity::credential::{Validity, encode_public_key};

        let now = unix_secs();
        let subject = parley_identity::SpiffeId::parse(workload_id).expect("a workload ID");
        let pending = parley_identity::PendingRequest::new(subject);
        let issued = self
            .credential
            .workload_issuer()
            .expect("a node issues workload identities")
            .issue(pending.request(), Validity::starting(now, 600))
            .expect("issue");
        let workload = pending
            .accept(&issued, &self.credential.public_key())
            .expect("accept");
        let trust_domain = self.credential.id().trust_domain().to_owned();
        let hex = |bytes: &[u8]| to_hex(bytes);
        serde_json::json!({
            "spiffe_id": workload_id,
            "private_key": to_hex(&workload.secret_bytes()),
            "chain": [to_hex(self.credential.cert().as_bytes()), issued.certificate],
            "root_public_key": encode_public_key(self.bundle.root(&trust_domain).expect("a root")),
            "trust_domain": trust_domain,
            "not_before": now,
            "not_after": now + 600,
            "grant": grant.map(|g| serde_json::json!({
                "statement": hex(&g.statement),
                "credential": hex(&g.credential),
                "signature": hex(&g.signature),
            })),
        })
    }

    /// A grant, signed with this identity's key as its owner, of replica `replica` of
    /// `workload` (`namespace/name`) at `epoch` to `node`.
    pub fn sign_grant(
        &self,
        node: &str,
        workload: &str,
        replica: u32,
        epoch: u64,
    ) -> SignedStatement {
        let grant = Grant {
            owner: self.id(),
            node: node.to_owned(),
            workload: workload.to_owned(),
            replica,
            epoch,
            granted_at_ms: unix_secs() * 1_000,
        }
        .encode();
        SignedStatement {
            signature: self.credential.sign(StatementKind::Grant.context(), &grant),
            credential: self.credential.cert().as_bytes().to_vec(),
            statement: grant,
        }
    }

    /// A workload record signed with this identity's key, whatever author it names.
    pub fn sign_record(&self, record: &WorkloadRecord) -> SignedStatement {
        let bytes = record.encode();
        SignedStatement {
            signature: self
                .credential
                .sign(StatementKind::Record.context(), &bytes),
            credential: self.credential.cert().as_bytes().to_vec(),
            statement: bytes,
        }
    }

    /// `statement` signed with this identity's key and carrying its certificate, as an
    /// agent signs its own: what a member holding these keys can make up about others.
    pub fn sign_statement(&self, statement: &Statement) -> SignedStatement {
        let bytes = statement.encode();
        SignedStatement {
            signature: self
                .credential
                .sign(StatementKind::Member.context(), &bytes),
            credential: self.credential.cert().as_bytes().to_vec(),
            statement: bytes,
        }
    }
}

/// Signs as the identity it holds; a hostile peer can still only sign as itself.
struct CredentialSigner<'a>(&'a Credential, String);

impl Signer for CredentialSigner<'_> {
    fn id(&self) -> &str {
        &self.1
    }

    fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8> {
        self.0.sign(context, bytes)
    }
}

/// Accepts whatever the agent signs: the hostile peer reads answers, it does not judge
/// them.
struct TrustingVerifier;

impl Verifier for TrustingVerifier {
    fn verify(&self, _: &str, _: &str, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// A connection from the hostile peer to one agent.
pub struct HostilePeer {
    runtime: tokio::runtime::Runtime,
    identity: PeerIdentity,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    next_message_id: u64,
    replays: ReplayGuard,
}

/// Why the agent ended a connection, as the hostile peer saw it.
#[derive(Debug)]
pub struct Refused(pub String);

// The hostile peer is not the agent: it reads the clock itself, as a peer on another
// host would.
/// Milliseconds since the Unix epoch, by this host's clock.
#[allow(clippy::disallowed_methods)]
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

fn unix_secs() -> u64 {
    unix_millis() / 1000
}

impl HostilePeer {
    /// Dials `addr` presenting `identity`. The TLS handshake completing proves nothing
    /// yet: in TLS 1.3 the server refuses a client certificate after the client thinks
    /// it is connected, so see [`HostilePeer::refused_within`].
    pub fn connect(identity: PeerIdentity, addr: SocketAddr) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        let tls_identity =
            TlsIdentity::new(&identity.credential, &identity.chain).map_err(|e| e.to_string())?;
        let verifier = PeerVerifier::new(Arc::new(identity.bundle.clone()));
        let client = tls::client_config(tls_identity, verifier).map_err(|e| e.to_string())?;
        let (endpoint, connection) = runtime.block_on(async {
            let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                .map_err(|e| e.to_string())?;
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
                QuicClientConfig::try_from(client).map_err(|e| e.to_string())?,
            )));
            let connecting = endpoint
                .connect(addr, "parley")
                .map_err(|e| e.to_string())?;
            let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
                .await
                .map_err(|_| "the handshake timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((endpoint, connection))
        })?;
        Ok(Self {
            runtime,
            identity,
            endpoint,
            connection,
            next_message_id: unix_millis(),
            replays: ReplayGuard::default(),
        })
    }

    /// The SPIFFE ID this peer presents.
    pub fn id(&self) -> String {
        self.identity.id()
    }

    /// Waits up to `limit` for the agent to close the connection; the reason it gave,
    /// or `None` if the connection is still open.
    pub fn refused_within(&self, limit: Duration) -> Option<Refused> {
        let connection = self.connection.clone();
        self.runtime.block_on(async move {
            tokio::time::timeout(limit, connection.closed())
                .await
                .ok()
                .map(|reason| Refused(reason.to_string()))
        })
    }

    /// Signs `body` as this peer and sends it on a stream of its own, as agents do.
    pub fn send(&mut self, body: &Body) -> Result<(), String> {
        self.next_message_id += 1;
        let id = self.id();
        let frame = codec::encode(
            body,
            &CredentialSigner(&self.identity.credential, id),
            self.next_message_id,
            unix_millis(),
        );
        self.send_raw(&frame)
    }

    /// Sends `bytes` as one frame's stream, whatever they hold.
    pub fn send_raw(&self, bytes: &[u8]) -> Result<(), String> {
        let connection = self.connection.clone();
        let bytes = bytes.to_vec();
        self.runtime.block_on(async move {
            let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
            stream.finish().map_err(|e| e.to_string())?;
            // Wait until the agent has the bytes: the stream is done when it stops.
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.stopped()).await;
            Ok(())
        })
    }

    /// Reads the agent's messages until one satisfies `wanted` or `limit` passes.
    pub fn receive_until(
        &mut self,
        limit: Duration,
        mut wanted: impl FnMut(&Received) -> bool,
    ) -> Option<Received> {
        let deadline = Instant::now() + limit;
        let connection = self.connection.clone();
        let replays = &mut self.replays;
        self.runtime.block_on(async move {
            loop {
                let left = deadline.checked_duration_since(Instant::now())?;
                let mut stream = tokio::time::timeout(left, connection.accept_uni())
                    .await
                    .ok()?
                    .ok()?;
                let Ok(frame) = stream.read_to_end(codec::MAX_FRAME_LEN + 4).await else {
                    continue;
                };
                let Ok(received) = codec::decode_frame(
                    &frame,
                    &TrustingVerifier,
                    replays,
                    unix_millis(),
                    codec::DEFAULT_TIME_WINDOW_MS,
                ) else {
                    continue;
                };
                if wanted(&received) {
                    return Some(received);
                }
            }
        })
    }

    /// The raw QUIC connection and a runtime to drive it, for floods the methods above
    /// do not cover.
    pub fn raw(&self) -> (&tokio::runtime::Runtime, &quinn::Connection) {
        (&self.runtime, &self.connection)
    }
}

impl Drop for HostilePeer {
    fn drop(&mut self) {
        self.connection.close(0u32.into(), b"bye");
        let endpoint = self.endpoint.clone();
        self.runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        });
    }
}

/// What a flood managed to open before the agent pushed back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flood {
    /// Connections whose handshake completed.
    pub connections: usize,
    /// Streams opened on them.
    pub streams: usize,
    /// Bytes written into those streams.
    pub bytes: usize,
    /// Connections the agent had not closed when the flood ended.
    pub open_at_end: usize,
}

/// Writes `bytes` of filler into as many streams as `connection` will open, never
/// finishing any: what a peer does to make a node buffer for it. Returns streams and
/// bytes written before `until`.
async fn fill_streams(
    connection: &quinn::Connection,
    bidi: bool,
    until: Instant,
) -> (usize, usize) {
    let filler = vec![0xA5u8; 16 * 1024];
    let (mut streams, mut bytes) = (0, 0);
    while Instant::now() < until {
        // A stream the agent will not grant soon is one it will not grant: move on.
        let left = until
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(500));
        let opened = if bidi {
            tokio::time::timeout(left, connection.open_bi())
                .await
                .map(|r| r.map(|(send, _)| send))
        } else {
            tokio::time::timeout(left, connection.open_uni()).await
        };
        let Ok(Ok(mut send)) = opened else { break };
        streams += 1;
        // A frame's length prefix announcing the largest frame, then filler up to it.
        let _ = send.write_all(&(64u32 * 1024).to_be_bytes()).await;
        for _ in 0..4 {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, send.write_all(&filler)).await {
                Ok(Ok(())) => bytes += filler.len(),
                _ => break,
            }
        }
        // Left open on purpose: dropping `send` would reset it; keep it alive instead.
        std::mem::forget(send);
    }
    (streams, bytes)
}

/// Opens `connections` certificate-less enrollment connections to `addr` (anyone can)
/// and fills every stream they may open, for `duration`. The issuer is authenticated
/// with `bundle`, as a joining host would.
pub fn join_flood(
    addr: SocketAddr,
    bundle: &TrustBundle,
    connections: usize,
    duration: Duration,
) -> Flood {
    let verifier = PeerVerifier::new(Arc::new(bundle.clone()));
    let client = tls::join_client_config(verifier).expect("a join client config");
    flood(client, addr, connections, duration, true)
}

/// Opens up to `connections` connections to `addr` as `identity` (a real member) and
/// fills every stream each may open, for `duration`.
pub fn stream_flood(
    identity: &PeerIdentity,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
) -> Flood {
    let tls_identity =
        TlsIdentity::new(&identity.credential, &identity.chain).expect("a TLS identity");
    let verifier = PeerVerifier::new(Arc::new(identity.bundle.clone()));
    let client = tls::client_config(tls_identity, verifier).expect("a client config");
    flood(client, addr, connections, duration, false)
}

/// Opens `connections` connections with `client` and fills their streams (bidirectional
/// ones too when `bidi`) until `duration` has passed, then closes them.
fn flood(
    client: rustls::ClientConfig,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    bidi: bool,
) -> Flood {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client).expect("a QUIC client config"),
    ));
    runtime.block_on(async move {
        let until = Instant::now() + duration;
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let endpoint =
                    quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).ok()?;
                let connecting = endpoint.connect_with(client, addr, "parley").ok()?;
                let connection = tokio::time::timeout(Duration::from_secs(5), connecting)
                    .await
                    .ok()?
                    .ok()?;
                let (mut streams, mut bytes) = (0, 0);
                if bidi {
                    (streams, bytes) = fill_streams(&connection, true, until).await;
                }
                let (uni, uni_bytes) = fill_streams(&connection, false, until).await;
                tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
                Some((streams + uni, bytes + uni_bytes, endpoint, connection))
            }));
        }
        let mut flood = Flood::default();
        let mut keep = Vec::new();
        for task in tasks {
            if let Ok(Some((streams, bytes, endpoint, connection))) = task.await {
                flood.connections += 1;
                flood.streams += streams;
                flood.bytes += bytes;
                keep.push((endpoint, connection));
            }
        }
        flood.open_at_end = keep
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .count();
        for (_, connection) in &keep {
            connection.close(0u32.into(), b"done");
        }
        flood
    })
}
