//! Real QUIC connections on loopback between enrolled nodes: both sides authenticate,
//! each learns the other's SPIFFE ID, and every kind of bad identity is refused with its
//! own error. Data is exchanged in every case: in TLS 1.3 a client whose certificate the
//! server refuses still sees `connect()` succeed, and learns of the refusal on first read.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parley_identity::cert::ImplicitCert;
use parley_identity::tls::{self, PeerVerifier, TlsIdentity};
use parley_identity::{
    Credential, IdentityError, Issuer, PendingRequest, SpiffeId, TrustBundle, Validity,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;

const DAY: u64 = 86_400;

// Tests read the clock directly; the agent reads it only through its clock module.
#[allow(clippy::disallowed_methods)]
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Enrolled {
    credential: Credential,
    chain: Vec<ImplicitCert>,
}

fn enroll(root: &Issuer, name: &str, validity: Validity) -> Enrolled {
    let id = SpiffeId::from_segments(root.id().trust_domain(), &["node", name]).unwrap();
    let pending = PendingRequest::new(id);
    let issued = root.issue(pending.request(), validity).unwrap();
    let credential = pending.accept(&issued, &root.public_key()).unwrap();
    let chain = vec![credential.cert().clone()];
    Enrolled { credential, chain }
}

fn bundle_of(roots: &[&Issuer]) -> Arc<TrustBundle> {
    let mut bundle = TrustBundle::new();
    for root in roots {
        bundle.add(root.id().trust_domain(), root.public_key());
    }
    Arc::new(bundle)
}

fn identity(node: &Enrolled) -> TlsIdentity {
    TlsIdentity::new(&node.credential, &node.chain).unwrap()
}

fn server(identity: TlsIdentity, bundle: Arc<TrustBundle>) -> (quinn::Endpoint, Arc<PeerVerifier>) {
    let verifier = PeerVerifier::new(bundle);
    let config = tls::server_config(identity, verifier.clone()).unwrap();
    let config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(config).unwrap()));
    let endpoint =
        quinn::Endpoint::server(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    (endpoint, verifier)
}

fn client(identity: TlsIdentity, bundle: Arc<TrustBundle>) -> (quinn::Endpoint, Arc<PeerVerifier>) {
    let verifier = PeerVerifier::new(bundle);
    let config = tls::client_config(identity, verifier.clone()).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(config).unwrap(),
    )));
    (endpoint, verifier)
}

/// The SPIFFE ID a connection's peer proved, re-verified from its certificate.
fn peer_id(connection: &quinn::Connection, bundle: &TrustBundle) -> SpiffeId {
    let certs = connection
        .peer_identity()
        .expect("peer presented no certificate")
        .downcast::<Vec<CertificateDer<'static>>>()
        .expect("rustls certificates");
    tls::verify_peer_certificate(certs[0].as_ref(), bundle, now())
        .unwrap()
        .id
}

/// Connects, sends a ping on a bidirectional stream and reads the pong. Returns the IDs
/// each side learned, or a description of where it failed.
async fn exchange(
    client: &quinn::Endpoint,
    client_bundle: &TrustBundle,
    server: &quinn::Endpoint,
    server_bundle: Arc<TrustBundle>,
) -> Result<(SpiffeId, SpiffeId), String> {
    let server_addr = server.local_addr().unwrap();
    let accepting = server.clone();
    let server_task = tokio::spawn(async move {
        let incoming = accepting.accept().await.ok_or("endpoint closed")?;
        let connection = incoming
            .await
            .map_err(|e| format!("server handshake: {e}"))?;
        let (mut send, mut recv) = connection
            .accept_bi()
            .await
            .map_err(|e| format!("server accept_bi: {e}"))?;
        let ping = recv
            .read_to_end(64)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        assert_eq!(ping, b"ping");
        send.write_all(b"pong")
            .await
            .map_err(|e| format!("server write: {e}"))?;
        send.finish().map_err(|e| format!("server finish: {e}"))?;
        let seen = peer_id(&connection, &server_bundle);
        // Wait for the client to read before the connection goes away.
        connection.closed().await;
        Ok::<SpiffeId, String>(seen)
    });

    let client_side = async {
        let connection = client
            .connect(server_addr, "parley")
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("client handshake: {e}"))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| format!("client open_bi: {e}"))?;
        send.write_all(b"ping")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        send.finish().map_err(|e| format!("client finish: {e}"))?;
        let pong = recv
            .read_to_end(64)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        assert_eq!(pong, b"pong");
        let seen = peer_id(&connection, client_bundle);
        connection.close(0u32.into(), b"done");
        Ok::<SpiffeId, String>(seen)
    };
    let client_result = tokio::time::timeout(Duration::from_secs(10), client_side)
        .await
        .map_err(|_| "client timed out".to_owned())?;
    match client_result {
        Ok(client_saw) => {
            let server_saw = tokio::time::timeout(Duration::from_secs(10), server_task)
                .await
                .map_err(|_| "server timed out".to_owned())?
                .map_err(|e| e.to_string())??;
            Ok((client_saw, server_saw))
        }
        Err(e) => {
            server_task.abort();
            Err(e)
        }
    }
}

#[tokio::test]
async fn two_enrolled_nodes_authenticate_each_other_and_exchange_data() {
    let root = Issuer::generate_root("example.org").unwrap();
    let a = enroll(&root, "a", Validity::starting(now(), DAY));
    let b = enroll(&root, "b", Validity::starting(now(), DAY));
    let bundle = bundle_of(&[&root]);
    let (server_ep, server_verifier) = server(identity(&a), bundle.clone());
    let (client_ep, client_verifier) = client(identity(&b), bundle.clone());
    let (client_saw, server_saw) = exchange(&client_ep, &bundle, &server_ep, bundle.clone())
        .await
        .unwrap();
    assert_eq!(client_saw.as_str(), "spiffe://example.org/node/a");
    assert_eq!(server_saw.as_str(), "spiffe://example.org/node/b");
    assert!(server_verifier.rejections().is_empty());
    assert!(client_verifier.rejections().is_empty());
}

/// Runs one client with a bad identity against a good server and returns what the server
/// refused it for. The exchange itself must fail.
async fn refused_client(bad: TlsIdentity, root: &Issuer) -> IdentityError {
    let good = enroll(root, "server", Validity::starting(now(), DAY));
    let server_bundle = bundle_of(&[root]);
    let (server_ep, server_verifier) = server(identity(&good), server_bundle.clone());
    let (client_ep, _) = client(bad, server_bundle.clone());
    let result = exchange(
        &client_ep,
        &server_bundle,
        &server_ep,
        server_bundle.clone(),
    )
    .await;
    assert!(result.is_err(), "a bad client exchanged data: {result:?}");
    let rejections = server_verifier.rejections();
    assert_eq!(rejections.len(), 1, "{rejections:?} ({result:?})");
    rejections[0].clone()
}

#[tokio::test]
async fn a_foreign_trust_domain_is_refused() {
    let root = Issuer::generate_root("example.org").unwrap();
    let foreign_root = Issuer::generate_root("other.org").unwrap();
    let foreign = enroll(&foreign_root, "x", Validity::starting(now(), DAY));
    let error = refused_client(identity(&foreign), &root).await;
    assert_eq!(
        error,
        IdentityError::UnknownTrustDomain("other.org".to_owned())
    );
}

/// A container holds its workload SVID, private key included: it verifies against the
/// trust domain's root, but a workload is not a node and must not join the mesh.
#[tokio::test]
async fn a_workload_identity_is_refused_as_a_peer() {
    let root = Issuer::generate_root("example.org").unwrap();
    let node = enroll(&root, "host", Validity::starting(now(), DAY));
    let id = SpiffeId::parse("spiffe://example.org/ns/default/wl/web").unwrap();
    let pending = PendingRequest::new(id);
    let issued = node
        .credential
        .workload_issuer()
        .unwrap()
        .issue(pending.request(), Validity::starting(now(), DAY))
        .unwrap();
    let workload = pending
        .accept(&issued, &node.credential.public_key())
        .unwrap();
    let chain = vec![node.credential.cert().clone(), workload.cert().clone()];
    let svid = TlsIdentity::new(&workload, &chain).unwrap();
    assert_eq!(
        refused_client(svid, &root).await,
        IdentityError::NotANode("spiffe://example.org/ns/default/wl/web".to_owned())
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_identities_are_refused() {
    let root = Issuer::generate_root("example.org").unwrap();
    let expired = enroll(
        &root,
        "old",
        Validity {
            not_before: now() - 2 * DAY,
            not_after: now() - DAY,
        },
    );
    assert!(matches!(
        refused_client(identity(&expired), &root).await,
        IdentityError::Expired { .. }
    ));
    let early = enroll(
        &root,
        "early",
        Validity {
            not_before: now() + DAY,
            not_after: now() + 2 * DAY,
        },
    );
    assert!(matches!(
        refused_client(identity(&early), &root).await,
        IdentityError::NotYetValid { .. }
    ));
}

/// Replaces every occurrence of `from` in `der` with `to` (same length).
fn patch(der: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = der.to_vec();
    let mut found = false;
    let mut at = 0;
    while let Some(offset) = out[at..].windows(from.len()).position(|w| w == from) {
        out[at + offset..at + offset + to.len()].copy_from_slice(to);
        at += offset + to.len();
        found = true;
    }
    assert!(found, "pattern not in the certificate");
    out
}

#[tokio::test]
async fn a_tampered_certificate_is_refused() {
    let root = Issuer::generate_root("example.org").unwrap();
    let node = enroll(&root, "a", Validity::starting(now(), DAY));
    let good = identity(&node);
    // Change the implicit certificate's version byte inside the X.509 extension.
    let tampered = patch(good.certificate(), b"PRLY\x01", b"PRLY\x07");
    let bad = TlsIdentity::from_der(CertificateDer::from(tampered), good.key().clone_key());
    assert!(matches!(
        refused_client(bad, &root).await,
        IdentityError::Malformed(_)
    ));

    // Claiming another node's name in an otherwise intact certificate changes the
    // reconstructed key, so the proven key no longer matches.
    let renamed = patch(good.certificate(), b"node/a", b"node/b");
    let bad = TlsIdentity::from_der(CertificateDer::from(renamed), good.key().clone_key());
    assert!(matches!(
        refused_client(bad, &root).await,
        IdentityError::KeyMismatch(_)
    ));
}

#[tokio::test]
async fn a_stolen_certificate_without_its_key_is_refused() {
    let root = Issuer::generate_root("example.org").unwrap();
    let victim = enroll(&root, "victim", Validity::starting(now(), DAY));
    let thief = enroll(&root, "thief", Validity::starting(now(), DAY));
    // The thief presents the victim's implicit certificate, proving its own key.
    let bad = TlsIdentity::new(&thief.credential, &victim.chain).unwrap();
    assert!(matches!(
        refused_client(bad, &root).await,
        IdentityError::KeyMismatch(_)
    ));
}

#[tokio::test]
async fn an_unknown_issuer_is_refused() {
    let root = Issuer::generate_root("example.org").unwrap();
    let node = enroll(&root, "a", Validity::starting(now(), DAY));
    let good = identity(&node);
    // The implicit certificate names an issuer other than the trust domain's root. The
    // issuer is followed by the subject's length prefix, which starts with a zero byte.
    let rewired = patch(
        good.certificate(),
        b"spiffe://example.org\x00",
        b"spiffe://exbmple.org\x00",
    );
    let bad = TlsIdentity::from_der(CertificateDer::from(rewired), good.key().clone_key());
    assert!(matches!(
        refused_client(bad, &root).await,
        IdentityError::WrongIssuer { .. }
    ));
}

#[tokio::test]
async fn a_client_refuses_a_server_it_cannot_verify() {
    let root = Issuer::generate_root("example.org").unwrap();
    let impostor_root = Issuer::generate_root("example.org").unwrap();
    let impostor = enroll(&impostor_root, "a", Validity::starting(now(), DAY));
    let honest = enroll(&root, "b", Validity::starting(now(), DAY));
    let bundle = bundle_of(&[&root]);
    let (server_ep, _) = server(identity(&impostor), bundle_of(&[&impostor_root]));
    let (client_ep, client_verifier) = client(identity(&honest), bundle.clone());
    let result = exchange(&client_ep, &bundle, &server_ep, bundle.clone()).await;
    assert!(
        result
            .as_ref()
            .is_err_and(|e| e.contains("client handshake")),
        "{result:?}"
    );
    assert!(matches!(
        client_verifier.rejections().as_slice(),
        [IdentityError::KeyMismatch(_)]
    ));
}
