//! The transport on real QUIC over loopback, with real ECQV identities.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parley_identity::tls::{self, PeerVerifier, TlsIdentity};
use parley_identity::{Credential, Issuer, PendingRequest, SpiffeId, TrustBundle, Validity};
use parley_negotiation::codec::{self, Signer};
use parley_negotiation::messages::{Body, Ping};
use quinn::crypto::rustls::QuicClientConfig;

use super::*;

pub(crate) const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

pub(crate) struct Domain {
    root: Issuer,
    bundle: Arc<TrustBundle>,
}

impl Domain {
    pub(crate) fn new(trust_domain: &str) -> Self {
        let root = Issuer::generate_root(trust_domain).unwrap();
        let mut bundle = TrustBundle::new();
        bundle.add(trust_domain, root.public_key());
        Self {
            root,
            bundle: Arc::new(bundle),
        }
    }

    fn enroll(&self, name: &str) -> Credential {
        let id = SpiffeId::from_segments(self.root.id().trust_domain(), &["node", name]).unwrap();
        let pending = PendingRequest::new(id);
        let validity = Validity::starting(unix_ms() / 1000 - 60, 3_600);
        let issued = self.root.issue(pending.request(), validity).unwrap();
        pending.accept(&issued, &self.root.public_key()).unwrap()
    }

    pub(crate) fn credentials(&self, name: &str) -> NodeCredentials {
        let credential = self.enroll(name);
        let tls = TlsIdentity::new(&credential, &[credential.cert().clone()]).unwrap();
        NodeCredentials {
            credential,
            tls,
            bundle: self.bundle.clone(),
        }
    }

    /// The trust domain's root public key.
    pub(crate) fn root_public_key(&self) -> &parley_identity::PublicKey {
        self.bundle
            .root(self.root.id().trust_domain())
            .expect("the bundle trusts its own root")
    }

    pub(crate) fn transport(&self, name: &str) -> (Transport, mpsc::Receiver<Inbound>) {
        Transport::bind(LOOPBACK, self.credentials(name), Limits::default()).unwrap()
    }
}

fn ping(seq: u64) -> Body {
    Body::Ping(Ping {
        seq,
        updates: Vec::new(),
    })
}

async fn next(receiver: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(Duration::from_secs(5), receiver.recv())
        .await
        .expect("a message within 5 s")
        .expect("transport still running")
}

/// Waits until `transport` counts `count` refusals of `kind`.
async fn refused(transport: &Transport, kind: Refusal, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while transport.refusals().get(&kind).copied().unwrap_or(0) < count {
        assert!(
            Instant::now() < deadline,
            "expected {count} {kind:?} refusals, have {:?}",
            transport.refusals()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn messages_arrive_attributed_to_the_proven_sender_both_ways_on_one_connection() {
    let domain = Domain::new("mesh.test");
    let (a, mut a_inbox) = domain.transport("a");
    let (b, mut b_inbox) = domain.transport("b");
    let b_addr = b.local_addr().unwrap();

    let b_id = a.connect(b_addr).await.unwrap();
    assert_eq!(b_id, "spiffe://mesh.test/node/b");
    a.send(&b_id, None, &ping(7)).await.unwrap();
    let got = next(&mut b_inbox).await;
    assert_eq!(got.received.sender, "spiffe://mesh.test/node/a");
    assert_eq!(got.received.body, ping(7));
    assert_eq!(got.remote, a.local_addr().unwrap());

    // B answers over the connection A opened: no address needed.
    b.send(a.id(), None, &ping(8)).await.unwrap();
    let back = next(&mut a_inbox).await;
    assert_eq!(back.received.sender, b_id);
    assert_eq!(back.received.body, ping(8));
    assert!(b.refusals().is_empty(), "{:?}", b.refusals());
}

#[tokio::test]
async fn a_peer_that_is_not_connected_and_has_no_address_is_unreachable() {
    let domain = Domain::new("mesh.test");
    let (a, _inbox) = domain.transport("a");
    let error = a
        .send("spiffe://mesh.test/node/nowhere", None, &ping(1))
        .await
        .unwrap_err();
    assert!(matches!(error, TransportError::Unreachable(_)), "{error}");
}

#[tokio::test]
async fn a_peer_from_a_foreign_trust_domain_is_refused_at_the_handshake() {
    let ours = Domain::new("mesh.test");
    let theirs = Domain::new("elsewhere.test");
    let (b, mut b_inbox) = ours.transport("b");
    // The stranger trusts our root too, so only our side can refuse.
    let mut both = TrustBundle::new();
    both.add("mesh.test", ours.root.public_key());
    both.add("elsewhere.test", theirs.root.public_key());
    let mut stranger = theirs.credentials("x");
    stranger.bundle = Arc::new(both);
    let (x, _x_inbox) = Transport::bind(LOOPBACK, stranger, Limits::default()).unwrap();

    let outcome = x.connect(b.local_addr().unwrap()).await;
    if let Ok(id) = outcome {
        // TLS 1.3: the client may finish before the server refuses; the send then fails
        // or is dropped, and nothing reaches B.
        let _ = x.send(&id, None, &ping(1)).await;
    }
    refused(&b, Refusal::Handshake, 1).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b_inbox.recv())
            .await
            .is_err(),
        "a message from a foreign domain got through"
    );
}

/// A hand-driven client: a valid member of the domain that writes raw frames.
struct RawClient {
    _endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    credential: Credential,
}

struct AsIf<'a> {
    claimed: &'a str,
    credential: &'a Credential,
}

impl Signer for AsIf<'_> {
    fn id(&self) -> &str {
        self.claimed
    }

    fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8> {
        self.credential.sign(context, bytes)
    }
}

impl RawClient {
    async fn connect(domain: &Domain, name: &str, to: SocketAddr) -> Self {
        let credentials = domain.credentials(name);
        let config =
            tls::client_config(credentials.tls, PeerVerifier::new(domain.bundle.clone())).unwrap();
        let mut endpoint = quinn::Endpoint::client(LOOPBACK).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(config).unwrap(),
        )));
        let connection = endpoint.connect(to, "parley").unwrap().await.unwrap();
        Self {
            _endpoint: endpoint,
            connection,
            credential: credentials.credential,
        }
    }

    fn frame(&self, claimed: &str, message_id: u64, at_ms: u64) -> Vec<u8> {
        let signer = AsIf {
            claimed,
            credential: &self.credential,
        };
        codec::encode(&ping(message_id), &signer, message_id, at_ms)
    }

    async fn write(&self, bytes: &[u8]) {
        let mut stream = self.connection.open_uni().await.unwrap();
        // The receiver may stop reading an oversized stream midway.
        let _ = stream.write_all(bytes).await;
        let _ = stream.finish();
    }
}

#[tokio::test]
async fn replayed_forged_stale_malformed_and_oversized_frames_are_refused() {
    let domain = Domain::new("mesh.test");
    let (b, mut b_inbox) = domain.transport("b");
    let client = RawClient::connect(&domain, "c", b.local_addr().unwrap()).await;
    let me = "spiffe://mesh.test/node/c";

    let genuine = client.frame(me, 1, unix_ms());
    client.write(&genuine).await;
    let got = next(&mut b_inbox).await;
    assert_eq!(got.received.sender, me);

    client.write(&genuine).await;
    refused(&b, Refusal::Replayed, 1).await;

    // Signed with c's key but claiming to be a: a peer speaks only for itself.
    client
        .write(&client.frame("spiffe://mesh.test/node/a", 2, unix_ms()))
        .await;
    refused(&b, Refusal::Forged, 1).await;

    let mut tampered = client.frame(me, 3, unix_ms());
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    client.write(&tampered).await;
    refused(&b, Refusal::Forged, 2).await;

    client
        .write(&client.frame(me, 4, unix_ms() - 10 * 60 * 1000))
        .await;
    refused(&b, Refusal::Stale, 1).await;

    client.write(b"\x00\x00\x00\x05hello").await;
    refused(&b, Refusal::Malformed, 1).await;

    client.write(&vec![0u8; codec::MAX_FRAME_LEN + 1024]).await;
    refused(&b, Refusal::TooLarge, 1).await;

    // Still usable afterwards, and nothing refused got through.
    client.write(&client.frame(me, 5, unix_ms())).await;
    let after = next(&mut b_inbox).await;
    assert_eq!(after.received.message_id, 5);
    assert!(b_inbox.try_recv().is_err());
}

/// A member that stops reading (it never accepts the streams this node opens to it) must
/// not make this node hold a task and a frame per message for ever: each send gives up
/// within its timeout, and beyond the per-peer limit a send is refused at once.
#[tokio::test]
async fn sends_to_a_peer_that_does_not_read_are_bounded_in_time_and_number() {
    let domain = Domain::new("mesh.test");
    let limits = Limits {
        send_timeout: Duration::from_millis(300),
        sends_in_flight_per_peer: 8,
        ..Limits::default()
    };
    let (b, _inbox) = Transport::bind(LOOPBACK, domain.credentials("b"), limits).unwrap();
    let deaf = RawClient::connect(&domain, "deaf", b.local_addr().unwrap()).await;
    let deaf_id = "spiffe://mesh.test/node/deaf";
    // Until b has registered the connection it cannot send on it.
    for _ in 0..50 {
        if b.connected_peers().iter().any(|p| p == deaf_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let sends: Vec<_> = (0..400)
        .map(|seq| {
            let b = b.clone();
            tokio::spawn(async move { b.send(deaf_id, None, &ping(seq)).await })
        })
        .collect();
    let (mut delivered, mut backlogged, mut timed_out) = (0, 0, 0);
    for send in sends {
        match send.await.unwrap() {
            Ok(()) => delivered += 1,
            Err(TransportError::Backlogged { in_flight, .. }) => {
                assert_eq!(in_flight, 8);
                backlogged += 1;
            }
            Err(TransportError::Send { reason, .. }) if reason.contains("not reading") => {
                timed_out += 1;
            }
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The peer's stream credit (100 streams it never accepts) runs out: later sends wait
    // until their timeout, and the rest are refused at once.
    assert!(delivered <= 100, "{delivered} delivered");
    assert!(timed_out > 0, "none timed out");
    assert!(backlogged > 0, "none refused as backlogged");
    drop(deaf);
}

#[tokio::test]
async fn a_peer_sending_faster_than_its_rate_is_cut_off_at_the_limit() {
    let domain = Domain::new("mesh.test");
    let limits = Limits {
        frames_per_second: 1,
        frame_burst: 5,
        ..Limits::default()
    };
    let (b, mut b_inbox) = Transport::bind(LOOPBACK, domain.credentials("b"), limits).unwrap();
    let client = RawClient::connect(&domain, "c", b.local_addr().unwrap()).await;
    for id in 1..=20 {
        client
            .write(&client.frame("spiffe://mesh.test/node/c", id, unix_ms()))
            .await;
    }
    refused(&b, Refusal::RateLimited, 10).await;
    let mut delivered = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), b_inbox.recv()).await {
        delivered += 1;
    }
    assert!(
        (5..=7).contains(&delivered),
        "{delivered} of 20 frames delivered with a burst of 5 at 1/s"
    );
}

#[tokio::test]
async fn an_issuer_hands_certificate_less_joiners_over_but_refuses_them_on_the_peer_protocol() {
    let domain = Domain::new("mesh.test");
    let (issuer, mut inbox, mut joining) = Transport::bind_accepting_enrollment(
        LOOPBACK,
        domain.credentials("root"),
        Limits::default(),
    )
    .unwrap();
    let addr = issuer.local_addr().unwrap();
    let client = quinn::Endpoint::client(LOOPBACK).unwrap();
    let no_identity = |alpn: &[u8]| {
        let mut config = tls::join_client_config(PeerVerifier::new(domain.bundle.clone())).unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(config).unwrap()))
    };

    // Enrollment: the connection goes to the enrollment service.
    let joiner = client
        .connect_with(no_identity(tls::JOIN_ALPN), addr, "parley")
        .unwrap()
        .await
        .unwrap();
    let handed = tokio::time::timeout(Duration::from_secs(5), joining.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handed.remote_address(), client.local_addr().unwrap());
    drop(joiner);

    // The peer protocol without a certificate: refused, nothing delivered.
    let sneaky = client
        .connect_with(no_identity(tls::ALPN), addr, "parley")
        .unwrap()
        .await
        .unwrap();
    refused(&issuer, Refusal::Handshake, 1).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), sneaky.closed())
        .await
        .unwrap();
    assert!(closed.to_string().contains("identity refused"), "{closed}");
    assert!(inbox.try_recv().is_err());
}

#[tokio::test]
async fn a_renewed_identity_is_used_for_new_handshakes_and_messages() {
    let domain = Domain::new("mesh.test");
    let (a, _a_inbox) = domain.transport("a");
    let (b, mut b_inbox) = domain.transport("b");
    let b_id = a.connect(b.local_addr().unwrap()).await.unwrap();
    a.send(&b_id, None, &ping(1)).await.unwrap();
    next(&mut b_inbox).await;

    // Same SPIFFE ID, new key and certificate.
    let renewed = domain.credentials("a");
    a.rotate(renewed).unwrap();
    assert!(a.connected_peers().is_empty(), "old connections stay open");
    a.send(&b_id, Some(b.local_addr().unwrap()), &ping(2))
        .await
        .unwrap();
    let got = next(&mut b_inbox).await;
    assert_eq!(got.received.body, ping(2));
    assert_eq!(got.received.sender, a.id());
    // b verified the message against the key a proved in the new handshake.
    assert!(b.refusals().is_empty(), "{:?}", b.refusals());

    // Another node's identity is not a renewal.
    let error = a.rotate(domain.credentials("c")).unwrap_err();
    assert!(error.to_string().contains("is not this node's"), "{error}");
}

/// Signs statements with a node's own credential, as the agent does, for a table built in
/// a test without a transport per member.
struct OwnKey(Credential);

impl std::fmt::Debug for OwnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnKey")
    }
}

impl parley_negotiation::membership::Notary for OwnKey {
    fn sign(
        &self,
        kind: parley_negotiation::membership::StatementKind,
        statement: Vec<u8>,
    ) -> parley_negotiation::messages::SignedStatement {
        parley_negotiation::messages::SignedStatement {
            signature: self.0.sign(kind.context(), &statement),
            credential: self.0.cert().as_bytes().to_vec(),
            statement,
        }
    }

    fn verify(
        &self,
        _: parley_negotiation::membership::StatementKind,
        _: &str,
        _: &parley_negotiation::messages::SignedStatement,
        _: u64,
    ) -> bool {
        false
    }
}

/// A full state exchange of a mesh of 300 members, every entry carrying the member's own
/// statement with its certificate and full metadata (labels, images, an address), leaves
/// in frames the transport accepts, and the receiving agent's notary checks every
/// statement: it learns all 300 members from a third party.
#[tokio::test]
async fn a_state_exchange_of_real_statements_fits_in_frames_and_checks() {
    use parley_negotiation::membership::{Membership, MembershipConfig};
    use parley_negotiation::messages::{MemberUpdate, NodeMeta, Sync};

    let domain = Domain::new("mesh.test");
    let (receiver, _inbox) = domain.transport("r");
    let meta = NodeMeta {
        agent_version: "0.1.0".to_owned(),
        arch: "amd64".to_owned(),
        labels: (0..8)
            .map(|i| (format!("example.org/label-{i}"), "a".repeat(40)))
            .collect(),
        images: (0..10)
            .map(|i| format!("registry.example.org/team/app-{i}:1.2.3"))
            .collect(),
        address: Some("192.0.2.10:7946".to_owned()),
        ..NodeMeta::default()
    };
    let now = crate::clock::unix_millis();
    let member = |name: &str| {
        let credential = domain.credentials(name).credential;
        Membership::new(
            credential.id().to_string(),
            meta.clone(),
            MembershipConfig::default(),
            now,
            1,
            Box::new(OwnKey(credential)),
        )
    };
    let everyone: Vec<MemberUpdate> = (0..300)
        .map(|i| member(&format!("m{i}")).announcement())
        .collect();
    let mut source = member("src");
    source.assume_known(now, &everyone);
    while source.poll_transmit().is_some() {}
    source.handle_sync(
        now,
        "spiffe://mesh.test/node/r",
        &Sync {
            updates: Vec::new(),
            reply: true,
        },
    );
    let signer = lock(&receiver.inner.signer).clone();
    let mut table = Membership::new(
        receiver.id(),
        NodeMeta::default(),
        MembershipConfig::default(),
        now,
        2,
        Box::new(receiver.notary()),
    );
    let (mut frames, mut bytes, mut bare_bytes) = (0, 0, 0);
    while let Some((to, body)) = source.poll_transmit() {
        assert_eq!(to, "spiffe://mesh.test/node/r");
        let frame = codec::encode(&body, signer.as_ref(), frames, now);
        assert!(frame.len() <= codec::MAX_FRAME_LEN, "{} bytes", frame.len());
        frames += 1;
        bytes += frame.len();
        let Body::Sync(sync) = body else {
            panic!("a state exchange is Sync frames")
        };
        // The same entries as they travelled before statements: metadata alone.
        let bare = Body::Sync(Sync {
            updates: sync
                .updates
                .iter()
                .map(|u| MemberUpdate {
                    meta: u
                        .statement
                        .as_ref()
                        .and_then(|s| parley_negotiation::messages::Statement::decode(&s.statement))
                        .map(|s| Arc::new(s.meta))
                        .or_else(|| u.meta.clone()),
                    statement: None,
                    ..u.clone()
                })
                .collect(),
            reply: sync.reply,
        });
        bare_bytes += codec::encode(&bare, signer.as_ref(), frames, now).len();
        table.handle_sync(now, "spiffe://mesh.test/node/src", &sync);
    }
    eprintln!(
        "301 members in {frames} frames, {bytes} bytes: {} bytes per member \
         (metadata alone: {} bytes per member)",
        bytes / 301,
        bare_bytes / 301
    );
    assert_eq!(table.refused_statements(), 0);
    assert_eq!(
        table.member_count(),
        301,
        "every member learned from the source"
    );
}
