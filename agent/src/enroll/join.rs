//! Enrollment over QUIC with a one-time join token.
//!
//! An agent whose identity directory also holds the trust domain's root key is an
//! *issuer*. `parley identity token` asks it for a join token; `parley join ADDR --token T`
//! on a new host then:
//!
//! 1. reads the trust domain and root public key from the token, and so can authenticate
//!    the issuer (the server) without knowing anything else;
//! 2. makes an ECQV certificate request for `spiffe://TD/node/NAME` — the private key
//!    never leaves the new host;
//! 3. connects to the issuer with ALPN [`tls::JOIN_ALPN`] (no client certificate: it has
//!    none yet) and first asks it to sign the connection's TLS exporter value with the
//!    root key — any member of the trust domain passes the TLS handshake, only the
//!    root's holder passes this — then sends the token's id and secret with the request
//!    on a second stream, and gets the implicit certificate back (renewals take the same
//!    two steps);
//! 4. derives and checks its key, and stores its identity.
//!
//! The issuer keeps only a SHA-256 digest of each token's secret, deletes a token when it
//! is used (so it works once) and refuses expired ones. The secret travels inside TLS to
//! the authenticated issuer only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley_identity::credential::{Validity, decode_public_key, encode_public_key};
use parley_identity::files::IssueResponse;
use parley_identity::tls::{self, PeerVerifier};
use parley_identity::{CertRequest, Issuer, SpiffeId, TrustBundle};
use parley_store::{Store, Tree};
use quinn::crypto::rustls::QuicClientConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// Largest enrollment message either side reads: a request or answer is well under 1 KiB.
pub const MAX_JOIN_MESSAGE: usize = 16 * 1024;

/// Enrollment exchanges an issuer answers at once; more connections are closed as busy.
const MAX_CONCURRENT_EXCHANGES: usize = 16;

/// How long one enrollment exchange may take, end to end.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a join token may live: tokens are for joining now, not for keeping.
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// How long the certificates issued to joining nodes are valid.
pub const NODE_CERT_TTL_SECS: u64 = 30 * 24 * 3600;

const TOKEN_PREFIX: &str = "parley1";

/// A join token as printed by `parley identity token`:
/// `parley1:TRUST_DOMAIN:ROOT_PUBLIC_KEY:ID:SECRET`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The trust domain the new node joins.
    pub trust_domain: String,
    /// Its root public key (compressed SEC1, hex), which authenticates the issuer.
    pub root_public_key: String,
    /// Names the token at the issuer (hex).
    pub id: String,
    /// Proves the holder was given the token (hex); zeroized when dropped.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("trust_domain", &self.trust_domain)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}:{}:{}:{}:{}",
            self.trust_domain,
            self.root_public_key,
            self.id,
            self.secret.as_str()
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = JoinError;

    fn from_str(text: &str) -> Result<Self, JoinError> {
        let malformed = |why: &str| {
            JoinError::Token(format!(
                "{why}; a join token looks like {TOKEN_PREFIX}:TRUST_DOMAIN:ROOT_KEY:ID:SECRET \
                 (print one with `parley identity token` on an issuing agent)"
            ))
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [prefix, trust_domain, root, id, secret] = parts.as_slice() else {
            return Err(malformed("not five ':'-separated fields"));
        };
        if *prefix != TOKEN_PREFIX {
            return Err(malformed(&format!("unknown token version {prefix:?}")));
        }
        SpiffeId::for_trust_domain(trust_domain)
            .map_err(|e| malformed(&format!("invalid trust domain: {e}")))?;
        decode_public_key(root).map_err(|_| malformed("the root key is not a P-256 point"))?;
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(id, 16) || !hex(secret, 32) {
            return Err(malformed("the id or secret is not of the right length"));
        }
        Ok(Self {
            trust_domain: (*trust_domain).to_owned(),
            root_public_key: (*root).to_owned(),
            id: (*id).to_owned(),
            secret: Zeroizing::new((*secret).to_owned()),
        })
    }
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is malformed.
    #[error("invalid join token: {0}")]
    Token(String),
    /// The issuer could not be reached or the exchange broke down.
    #[error("cannot enroll through {addr}: {reason}")]
    Exchange {
        /// The issuer's address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The issuer refused.
    #[error("{addr} refused to enroll this node: {reason}")]
    Refused {
        /// The issuer's address.
        addr: SocketAddr,
        /// Its reason.
        reason: String,
    },
}

/// What a node sends an issuer.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Request {
    /// A new node, with a join token.
    Enroll(JoinRequest),
    /// An enrolled node, before (or shortly after) its certificate expires.
    Renew(RenewRequest),
}

/// A joining node's request.
#[derive(Serialize, Deserialize)]
struct JoinRequest {
    token_id: String,
    secret: Zeroizing<String>,
    request: CertRequest,
}

/// A renewal: the new request, signed with the key of the certificate it replaces, which
/// proves the sender holds that identity even when the certificate has lapsed.
#[derive(Serialize, Deserialize)]
struct RenewRequest {
    /// The current certificate, hex.
    certificate: String,
    /// The request for the same SPIFFE ID, with a new key.
    request: CertRequest,
    /// When it was signed (unix seconds); old signatures are refused.
    signed_at: u64,
    /// The current key's signature over the request and `signed_at`, hex.
    signature: String,
}

/// The signature context of renewal requests.
const RENEW_CONTEXT: &str = "parley-renew/1";

/// How long after its certificate lapsed a node may still renew with it.
pub const RENEW_GRACE_SECS: u64 = 30 * 24 * 3600;

/// How far a renewal's signing time may be from the issuer's clock.
const RENEW_WINDOW_SECS: u64 = 300;

fn renew_signed_bytes(request: &CertRequest, signed_at: u64) -> Result<Vec<u8>, Refusal> {
    serde_json::to_vec(&(request, signed_at)).map_err(|e| Refusal::Encode(e.to_string()))
}

/// Why an issuer refused an enrollment or a renewal; the text travels back to the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The token is not one this issuer holds (never made, spent, or expired).
    #[error("unknown, used or expired join token; ask for a new one with `parley identity token`")]
    UnknownToken,
    /// A token asked for an identity that is not a node of this trust domain.
    #[error("a join token enrolls a node (spiffe://{trust_domain}/node/NAME), not {subject}")]
    NotANode {
        /// The issuer's trust domain.
        trust_domain: String,
        /// What was asked for.
        subject: String,
    },
    /// The issuer's store could not spend the token.
    #[error("the issuer's store failed: {0}")]
    Store(String),
    /// A renewal's certificate does not decode.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// A hex field does not decode.
    #[error("the {0} is not hex")]
    NotHex(&'static str),
    /// The certificate lapsed beyond the grace period.
    #[error(
        "the certificate lapsed more than {days} days ago; enroll the node again with a join token"
    )]
    LapsedTooLong {
        /// The grace period, in days.
        days: u64,
    },
    /// The certificate does not chain to this issuer's root.
    #[error("the certificate is not this trust domain's: {0}")]
    ForeignCertificate(String),
    /// A node asked to renew another identity.
    #[error("{current} may renew only itself, not {asked}")]
    OtherSubject {
        /// The identity the certificate proves.
        current: String,
        /// The identity asked for.
        asked: String,
    },
    /// The renewal was signed too far from the issuer's clock.
    #[error("the request was signed at {signed_at} but it is {now} here; check the clocks")]
    Stale {
        /// When the node says it signed it.
        signed_at: u64,
        /// The issuer's clock.
        now: u64,
    },
    /// The renewal's signature does not verify.
    #[error(
        "the signature does not verify with the key this root gives the certificate \
         (a forged request, or a certificate of another root)"
    )]
    BadSignature,
    /// The root could not issue the certificate.
    #[error("cannot issue: {0}")]
    Issue(String),
    /// The token was made for another node name.
    #[error(
        "this token enrolls node {token_for:?}, not {asked}; join with that name \
         (`node_name` in the config, or --node-name) or ask for a token for this one"
    )]
    WrongName {
        /// The name the token was made for (empty: a token older than named tokens).
        token_for: String,
        /// The identity asked for.
        asked: String,
    },
    /// The name is held by another key already.
    #[error(
        "{0} is enrolled already; ask the issuer for a token made with --replace to \
         re-enroll a rebuilt host"
    )]
    AlreadyEnrolled(String),
    /// The root revoked this key.
    #[error("the key of {0} was revoked; enroll this host again with a new token")]
    Revoked(String),
    /// The registry holds another key for this name: it was re-enrolled, and the key
    /// asking is the old one.
    #[error(
        "{0} was re-enrolled with another key; this key may no longer renew (enroll this \
         host again with a new token)"
    )]
    Superseded(String),
    /// A request could not be encoded for signing.
    #[error("cannot encode the request: {0}")]
    Encode(String),
}

/// What an issuer answers.
#[derive(Serialize, Deserialize)]
enum JoinReply {
    Issued(IssueResponse),
    Refused(String),
}

/// Enrolls through the issuer at `addr`: sends the token and `request`, returns the
/// issuer's answer (to pass to `IdentityDir::accept_pending`).
pub async fn enroll(
    addr: SocketAddr,
    token: &JoinToken,
    request: &CertRequest,
) -> Result<IssueResponse, JoinError> {
    let mut bundle = TrustBundle::new();
    bundle.add(
        &token.trust_domain,
        decode_public_key(&token.root_public_key).map_err(|e| JoinError::Token(e.to_string()))?,
    );
    let request = Request::Enroll(JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        request: request.clone(),
    });
    exchange(addr, bundle, &token.trust_domain, &request).await
}

/// Renews `credential` through the issuer at `addr` (authenticated with `bundle`):
/// sends `request` (same SPIFFE ID, new key) signed with the current key.
pub async fn renew(
    addr: SocketAddr,
    bundle: TrustBundle,
    credential: &parley_identity::Credential,
    request: &CertRequest,
) -> Result<IssueResponse, JoinError> {
    let signed_at = crate::clock::unix_secs();
    let bytes = renew_signed_bytes(request, signed_at).map_err(|refusal| JoinError::Exchange {
        addr,
        reason: refusal.to_string(),
    })?;
    let renewal = Request::Renew(RenewRequest {
        certificate: parley_identity::cert::to_hex(credential.cert().as_bytes()),
        request: request.clone(),
        signed_at,
        signature: parley_identity::cert::to_hex(&credential.sign(RENEW_CONTEXT, &bytes)),
    });
    let trust_domain = credential.id().trust_domain().to_owned();
    exchange(addr, bundle, &trust_domain, &renewal).await
}

/// One request to an issuer and its answer.
async fn exchange(
    addr: SocketAddr,
    bundle: TrustBundle,
    trust_domain: &str,
    request: &Request,
) -> Result<IssueResponse, JoinError> {
    let exchange = |reason: String| JoinError::Exchange { addr, reason };
    let root = *bundle
        .root(trust_domain)
        .ok_or_else(|| exchange(format!("no root key for trust domain {trust_domain}")))?;
    let verifier = PeerVerifier::new(Arc::new(bundle));
    let tls = tls::join_client_config(verifier).map_err(|e| exchange(e.to_string()))?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| exchange(e.to_string()))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(local).map_err(|e| exchange(e.to_string()))?;
    let message = serde_json::to_vec(request).map_err(|e| exchange(e.to_string()))?;
    let conversation = async {
        let connection = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "parley")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| match e {
                // TLS alert 120, no_application_protocol: the node does not offer enrollment.
                quinn::ConnectionError::ConnectionClosed(closed)
                    if closed.error_code == quinn::TransportErrorCode::crypto(120) =>
                {
                    format!(
                        "the node at {addr} does not enroll nodes (only an agent whose identity \
                         directory holds the root key does; use the address `parley identity \
                         token` printed)"
                    )
                }
                quinn::ConnectionError::TransportError(t) if t.to_string().contains("certificate") => format!(
                    "{t}; the node at {addr} is not an issuer of trust domain {trust_domain} (check the address and the token)"
                ),
                other => other.to_string(),
            })?;
        prove_root_holder(&connection, &root, addr, trust_domain).await?;
        let (mut send, mut receive) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&message).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = receive
            .read_to_end(MAX_JOIN_MESSAGE)
            .await
            .map_err(|e| e.to_string())?;
        connection.close(0u32.into(), b"done");
        serde_json::from_slice::<JoinReply>(&answer).map_err(|e| format!("malformed answer: {e}"))
    };
    let reply = tokio::time::timeout(EXCHANGE_TIMEOUT, conversation)
        .await
        .map_err(|_| exchange(format!("no answer within {EXCHANGE_TIMEOUT:?}")))?
        .map_err(exchange)?;
    endpoint.wait_idle().await;
    match reply {
        JoinReply::Issued(response) => Ok(response),
        JoinReply::Refused(reason) => Err(JoinError::Refused { addr, reason }),
    }
}

/// The label of the TLS exporter value the issuer signs to prove it holds the root key:
/// bound to this very connection, so a proof cannot be replayed on another.
const ROOT_PROOF_LABEL: &[u8] = b"EXPORTER-parley-root-holder";

/// The signature context of that proof.
const ROOT_PROOF_CONTEXT: &str = "parley-root-holder/1";

/// Largest proof read: a P-256 signature is 64 bytes.
const MAX_ROOT_PROOF: usize = 256;

/// This connection's exporter value, the same on both ends.
fn channel_binding(connection: &quinn::Connection) -> Result<[u8; 32], String> {
    let mut binding = [0u8; 32];
    connection
        .export_keying_material(&mut binding, ROOT_PROOF_LABEL, b"")
        .map_err(|_| "cannot derive the channel binding".to_owned())?;
    Ok(binding)
}

/// Asks the server to sign this connection's channel binding with the root key, and
/// checks it against `root`, before any token or request is sent. Any member of the trust
/// domain passes the TLS handshake (it holds a node identity); only the root's holder
/// passes this, so a token never reaches a member that would spend it itself.
async fn prove_root_holder(
    connection: &quinn::Connection,
    root: &parley_identity::PublicKey,
    addr: SocketAddr,
    trust_domain: &str,
) -> Result<(), String> {
    let (mut send, mut receive) = connection.open_bi().await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let proof = receive
        .read_to_end(MAX_ROOT_PROOF)
        .await
        .map_err(|e| e.to_string())?;
    parley_identity::credential::verify_signature_by(
        root,
        ROOT_PROOF_CONTEXT,
        &channel_binding(connection)?,
        &proof,
    )
    .map_err(|_| {
        format!(
            "the node at {addr} does not hold the root key of trust domain {trust_domain}: \
             it may be a member, but it is not the issuer; nothing was sent to it"
        )
    })
}

/// The issuer's side of [`prove_root_holder`].
async fn answer_proof(
    connection: &quinn::Connection,
    issuer: &Issuer,
) -> Result<(), ExchangeError> {
    let stream = |e: &dyn std::fmt::Display| ExchangeError::Stream(e.to_string());
    let (mut send, mut receive) = connection.accept_bi().await.map_err(|e| stream(&e))?;
    // The ask is empty; anything longer is not a client of this protocol.
    receive.read_to_end(0).await.map_err(|e| stream(&e))?;
    let binding = channel_binding(connection).map_err(|e| stream(&e))?;
    let proof = issuer.sign(ROOT_PROOF_CONTEXT, &binding);
    send.write_all(&proof).await.map_err(|e| stream(&e))?;
    send.finish().map_err(|e| stream(&e))?;
    Ok(())
}

/// A token as the issuer keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct TokenRecord {
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    /// Unix seconds after which it is refused.
    expires_at: u64,
    /// The node name it enrolls: the only `spiffe://TD/node/NAME` it may be used for.
    /// Empty in tokens made before tokens named their node; those are refused.
    #[serde(default)]
    node: String,
    /// Whether it may enroll a name already enrolled, replacing that holder's key (a
    /// host rebuilt, a key lost or stolen).
    #[serde(default)]
    replace: bool,
}

/// A node name in the enrollment registry: the key that holds it now.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnrolledNode {
    /// The holder's public key (compressed SEC1, hex).
    public_key: String,
    /// When it was enrolled or last renewed (unix seconds).
    since: u64,
    /// Its key was revoked: no key renews under this name until it is enrolled again.
    #[serde(default)]
    revoked: bool,
}

/// Why an issuer could not make a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The lifetime asked for is out of range.
    #[error("a join token lives 1 second to {MAX_TOKEN_TTL_SECS} seconds (7 days), not {0}")]
    Ttl(u64),
    /// The node name does not make a SPIFFE ID.
    #[error("{name:?} cannot name a node: {reason}")]
    BadName {
        /// The name asked for.
        name: String,
        /// Why.
        reason: String,
    },
    /// The name is enrolled already and the token was not asked to replace it.
    #[error(
        "spiffe://{trust_domain}/node/{name} is enrolled already; a second holder of one name \
         would split the mesh. Pick another name, or pass --replace to re-enroll a rebuilt host \
         (its old key can then no longer renew)"
    )]
    AlreadyEnrolled {
        /// The trust domain.
        trust_domain: String,
        /// The name.
        name: String,
    },
    /// The name is the issuer's own.
    #[error("{0} is this issuer's own name; a token cannot enroll another holder of it")]
    OwnName(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] parley_store::StoreError),
}

/// Why a node's key could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The name does not make a SPIFFE ID.
    #[error("{name:?} cannot name a node: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The issuer's own name.
    #[error("{0} is this issuer's own identity; revoking it would cut the issuer off")]
    OwnName(String),
    /// No key known for the name.
    #[error(
        "no key is known for {0}: it is not in the enrollment registry (enrolled offline and \
         never renewed) and not connected to this agent now; check the name with `parley \
         nodes`, or revoke it while it is connected"
    )]
    UnknownKey(String),
    /// The registry holds something that is not a key.
    #[error("the enrollment registry is damaged: {0}")]
    Registry(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] parley_store::StoreError),
}

/// The issuing side: the trust domain's root key, the tokens it handed out, and the
/// enrollment registry (node name → the key holding it).
///
/// The registry is what binds names: a token enrolls the one name it was made for, a
/// name is enrolled once (unless a token says to replace its holder), and a renewal is
/// granted only to the key the registry holds for its name. Nodes enrolled offline
/// (`parley identity issue`) are registered at their first renewal.
pub struct Enrollment {
    issuer: Issuer,
    /// This issuer's own node ID, which no token may enroll.
    own_id: Option<SpiffeId>,
    tokens: Tree<TokenRecord>,
    enrolled: Tree<EnrolledNode>,
    revoked: Tree<parley_identity::revocation::Revocation>,
    /// Held from a name's check to its registration, so that two joins (or renewals) at
    /// once cannot both find it free.
    registry: std::sync::Mutex<()>,
    /// Revocations made here that the mesh has not been told of yet: those of keys that
    /// a `--replace` enrollment superseded ([`Enrollment::take_unspread`]).
    unspread: std::sync::Mutex<Vec<parley_identity::revocation::Revocation>>,
    store: Store,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("trust_domain", &self.issuer.id().trust_domain())
            .finish_non_exhaustive()
    }
}

fn sha256_hex(text: &str) -> String {
    parley_identity::cert::to_hex(&Sha256::digest(text.as_bytes()))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = Zeroizing::new([0u8; N]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
    parley_identity::cert::to_hex(bytes.as_ref())
}

impl Enrollment {
    /// Issues with `issuer` (the root), keeping tokens and the registry in `store`.
    /// `own` is this issuer's own node credential, if it has one: its name is registered
    /// to its key, so that no token enrolls a second holder of it.
    pub fn new(
        issuer: Issuer,
        own: Option<&parley_identity::Credential>,
        store: &Store,
    ) -> Result<Self, parley_store::StoreError> {
        let enrollment = Self {
            issuer,
            own_id: own.map(|c| c.id().clone()),
            tokens: store.join_tokens()?,
            enrolled: store.enrolled_nodes()?,
            revoked: store.revoked_keys()?,
            registry: std::sync::Mutex::new(()),
            unspread: std::sync::Mutex::new(Vec::new()),
            store: store.clone(),
        };
        if let Some(own) = own {
            enrollment.register(own.id(), &own.public_key())?;
        }
        Ok(enrollment)
    }

    /// The node name of `id`, when it is a node of this trust domain.
    fn node_name<'a>(&self, id: &'a SpiffeId) -> Option<&'a str> {
        match id.segments().collect::<Vec<_>>().as_slice() {
            ["node", name] if id.trust_domain() == self.trust_domain() => Some(name),
            _ => None,
        }
    }

    /// Records `key` as the holder of node `id`.
    fn register(
        &self,
        id: &SpiffeId,
        key: &parley_identity::PublicKey,
    ) -> Result<(), parley_store::StoreError> {
        if let Some(name) = self.node_name(id) {
            self.enrolled.put(
                name,
                &EnrolledNode {
                    public_key: encode_public_key(key),
                    since: crate::clock::unix_secs(),
                    revoked: false,
                },
            )?;
        }
        Ok(())
    }

    /// The key a certificate this root issued gives its holder.
    fn key_of(&self, certificate_hex: &str) -> Result<parley_identity::PublicKey, Refusal> {
        let bytes = parley_identity::cert::from_hex(certificate_hex)
            .ok_or(Refusal::NotHex("certificate"))?;
        let cert = parley_identity::cert::ImplicitCert::decode(&bytes)
            .map_err(|e| Refusal::MalformedCertificate(e.to_string()))?;
        let mut bundle = TrustBundle::new();
        bundle.add(self.trust_domain(), self.issuer.public_key());
        bundle
            .verify_chain(std::slice::from_ref(&cert), cert.not_before)
            .map(|identity| identity.public_key)
            .map_err(|e| Refusal::Issue(e.to_string()))
    }

    /// The trust domain this issuer enrolls nodes into.
    pub fn trust_domain(&self) -> &str {
        self.issuer.id().trust_domain()
    }

    /// Makes a one-time token that enrolls node `node`, valid for `ttl_secs`, stored
    /// (flushed) before it is returned. A name enrolled already is refused unless
    /// `replace`; this issuer's own name always is.
    pub async fn create_token(
        &self,
        ttl_secs: u64,
        node: &str,
        replace: bool,
    ) -> Result<JoinToken, TokenError> {
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
            return Err(TokenError::Ttl(ttl_secs));
        }
        let id = SpiffeId::from_segments(self.trust_domain(), &["node", node]).map_err(|e| {
            TokenError::BadName {
                name: node.to_owned(),
                reason: e.to_string(),
            }
        })?;
        if self.own_id.as_ref() == Some(&id) {
            return Err(TokenError::OwnName(id.to_string()));
        }
        if !replace
            && self
                .enrolled
                .get(node)?
                .is_some_and(|holder| !holder.revoked)
        {
            return Err(TokenError::AlreadyEnrolled {
                trust_domain: self.trust_domain().to_owned(),
                name: node.to_owned(),
            });
        }
        let now = crate::clock::unix_secs();
        // Expired tokens are of no use to anyone; drop them as new ones are made.
        for (id, record) in self.tokens.list()? {
            if record.expires_at < now {
                self.tokens.remove(&id)?;
            }
        }
        let token = JoinToken {
            trust_domain: self.trust_domain().to_owned(),
            root_public_key: encode_public_key(&self.issuer.public_key()),
            id: random_hex::<8>(),
            secret: Zeroizing::new(random_hex::<16>()),
        };
        self.tokens.put(
            &token.id,
            &TokenRecord {
                secret_sha256: sha256_hex(&token.secret),
                expires_at: now.saturating_add(ttl_secs),
                node: node.to_owned(),
                replace,
            },
        )?;
        self.store.flush().await?;
        Ok(token)
    }

    /// Answers a renewal: the current certificate must chain to this root and be valid or
    /// lapsed for less than [`RENEW_GRACE_SECS`], the new request must be for the same
    /// SPIFFE ID, and its signature by the current key must verify and be recent. The
    /// new certificate lives as long as the old one did (at most [`NODE_CERT_TTL_SECS`]).
    fn renew(&self, renewal: &RenewRequest) -> Result<IssueResponse, Refusal> {
        let now = crate::clock::unix_secs();
        let cert_bytes = parley_identity::cert::from_hex(&renewal.certificate)
            .ok_or(Refusal::NotHex("certificate"))?;
        let cert = parley_identity::cert::ImplicitCert::decode(&cert_bytes)
            .map_err(|e| Refusal::MalformedCertificate(e.to_string()))?;
        if now > cert.not_after.saturating_add(RENEW_GRACE_SECS) {
            return Err(Refusal::LapsedTooLong {
                days: RENEW_GRACE_SECS / 86_400,
            });
        }
        let mut bundle = TrustBundle::new();
        bundle.add(self.trust_domain(), self.issuer.public_key());
        // Checked as of a moment it was valid: the grace period above bounds lapses.
        let at = now.clamp(cert.not_before, cert.not_after);
        let current = bundle
            .verify_chain(std::slice::from_ref(&cert), at)
            .map_err(|e| Refusal::ForeignCertificate(e.to_string()))?;
        if renewal.request.subject != current.id {
            return Err(Refusal::OtherSubject {
                current: current.id.to_string(),
                asked: renewal.request.subject.to_string(),
            });
        }
        if now.abs_diff(renewal.signed_at) > RENEW_WINDOW_SECS {
            return Err(Refusal::Stale {
                signed_at: renewal.signed_at,
                now,
            });
        }
        let signature = parley_identity::cert::from_hex(&renewal.signature)
            .ok_or(Refusal::NotHex("signature"))?;
        current
            .verify(
                RENEW_CONTEXT,
                &renew_signed_bytes(&renewal.request, renewal.signed_at)?,
                &signature,
            )
            // ECQV: a certificate of another root yields a key nobody holds, so this one
            // check refuses both a forged request and a foreign certificate.
            .map_err(|_| Refusal::BadSignature)?;
        let store_failed = |e: parley_store::StoreError| Refusal::Store(e.to_string());
        let revoked_key = format!("{}/{}", current.id, encode_public_key(&current.public_key));
        if self
            .revoked
            .get(&revoked_key)
            .map_err(store_failed)?
            .is_some()
        {
            return Err(Refusal::Revoked(current.id.to_string()));
        }
        let _registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(name) = self.node_name(&current.id) {
            match self.enrolled.get(name).map_err(store_failed)? {
                Some(holder) if holder.revoked => {
                    return Err(Refusal::Revoked(current.id.to_string()));
                }
                Some(holder) if holder.public_key != encode_public_key(&current.public_key) => {
                    return Err(Refusal::Superseded(current.id.to_string()));
                }
                _ => {}
            }
        }
        let lifetime = cert
            .not_after
            .saturating_sub(cert.not_before)
            .clamp(60, NODE_CERT_TTL_SECS);
        let issued = self
            .issuer
            .issue(&renewal.request, Validity::starting(now, lifetime))
            .map_err(|e| Refusal::Issue(e.to_string()))?;
        let key = self.key_of(&issued.certificate)?;
        self.register(&current.id, &key).map_err(store_failed)?;
        // Stored before the node has it: a crash must not leave the old key registered
        // and the node's next renewal refused as superseded.
        self.store.flush_blocking().map_err(store_failed)?;
        Ok(IssueResponse {
            issued,
            trust_domain: self.trust_domain().to_owned(),
            root_public_key: encode_public_key(&self.issuer.public_key()),
        })
    }

    /// Revokes the key of node `name`: the registry's, or `connected` (the key a live
    /// connection of that node proved) for a node enrolled offline and never renewed.
    /// The revocation is stored (renewals with the key are refused from now on, and it is
    /// spread again after a restart) and returned, signed, for the mesh. The name may be
    /// enrolled again with a new token.
    pub async fn revoke(
        &self,
        name: &str,
        connected: Option<parley_identity::PublicKey>,
    ) -> Result<parley_identity::revocation::Revocation, RevokeError> {
        let id = SpiffeId::from_segments(self.trust_domain(), &["node", name]).map_err(|e| {
            RevokeError::BadName {
                name: name.to_owned(),
                reason: e.to_string(),
            }
        })?;
        if self.own_id.as_ref() == Some(&id) {
            return Err(RevokeError::OwnName(id.to_string()));
        }
        let registered = match self.enrolled.get(name)?.filter(|h| !h.revoked) {
            Some(holder) => Some(
                decode_public_key(&holder.public_key)
                    .map_err(|e| RevokeError::Registry(e.to_string()))?,
            ),
            None => None,
        };
        let key = registered
            .or(connected)
            .ok_or_else(|| RevokeError::UnknownKey(id.to_string()))?;
        let revocation = parley_identity::revocation::Revocation::sign(
            &self.issuer,
            &id,
            &key,
            crate::clock::unix_secs(),
        );
        self.revoked
            .put(&format!("{id}/{}", revocation.public_key), &revocation)?;
        // A marker, not a removal: with no holder on record, an older key of the name
        // would pass the renewal's check and register itself again.
        self.enrolled.put(
            name,
            &EnrolledNode {
                public_key: revocation.public_key.clone(),
                since: revocation.revoked_at,
                revoked: true,
            },
        )?;
        self.store.flush().await?;
        Ok(revocation)
    }

    /// Revocations made here since the last call that the mesh must be told of (keys
    /// superseded by `--replace` enrollments).
    pub fn take_unspread(&self) -> Vec<parley_identity::revocation::Revocation> {
        std::mem::take(
            &mut *self
                .unspread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Every revocation this issuer made, to spread again after a restart.
    pub fn revocations(
        &self,
    ) -> Result<Vec<parley_identity::revocation::Revocation>, parley_store::StoreError> {
        Ok(self.revoked.list()?.into_iter().map(|(_, r)| r).collect())
    }

    /// Renews this issuer's own node identity without the network.
    pub fn renew_locally(
        &self,
        credential: &parley_identity::Credential,
        request: &CertRequest,
    ) -> Result<IssueResponse, Refusal> {
        let signed_at = crate::clock::unix_secs();
        let bytes = renew_signed_bytes(request, signed_at)?;
        self.renew(&RenewRequest {
            certificate: parley_identity::cert::to_hex(credential.cert().as_bytes()),
            request: request.clone(),
            signed_at,
            signature: parley_identity::cert::to_hex(&credential.sign(RENEW_CONTEXT, &bytes)),
        })
    }

    /// Answers one enrollment request: the token must exist, match and be unexpired, and
    /// its name be free (or the token replace its holder); the token is spent and the name
    /// registered, and both flushed, before the certificate is sent.
    async fn answer(&self, request: JoinRequest) -> Result<IssueResponse, Refusal> {
        let store_failed = |e: parley_store::StoreError| Refusal::Store(e.to_string());
        let record = self
            .tokens
            .get(&request.token_id)
            .map_err(store_failed)?
            .ok_or(Refusal::UnknownToken)?;
        if record.secret_sha256 != sha256_hex(&request.secret) {
            return Err(Refusal::UnknownToken);
        }
        let subject = &request.request.subject;
        let is_node = subject.trust_domain() == self.trust_domain()
            && subject.segments().count() == 2
            && subject.segments().next() == Some("node");
        if !is_node {
            return Err(Refusal::NotANode {
                trust_domain: self.trust_domain().to_owned(),
                subject: subject.to_string(),
            });
        }
        if self.node_name(subject) != Some(record.node.as_str()) {
            return Err(Refusal::WrongName {
                token_for: record.node,
                asked: subject.to_string(),
            });
        }
        let now = crate::clock::unix_secs();
        if record.expires_at < now {
            let _ = self.tokens.remove(&request.token_id);
            return Err(Refusal::UnknownToken);
        }
        // From the name's check to its registration under one lock and with no await, so
        // that two joins for one name at once cannot both find it free.
        let issued = {
            let _registry = self
                .registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let holder = self.enrolled.get(&record.node).map_err(store_failed)?;
            if !record.replace && holder.as_ref().is_some_and(|h| !h.revoked) {
                return Err(Refusal::AlreadyEnrolled(subject.to_string()));
            }
            // Spent first: a crash after this refuses a retry rather than issuing twice.
            if !self
                .tokens
                .remove(&request.token_id)
                .map_err(store_failed)?
            {
                return Err(Refusal::UnknownToken);
            }
            let issued = self
                .issuer
                .issue(
                    &request.request,
                    Validity::starting(now, NODE_CERT_TTL_SECS),
                )
                .map_err(|e| Refusal::Issue(e.to_string()))?;
            let key = self.key_of(&issued.certificate)?;
            // A replaced holder's key is revoked, not merely unregistered: it would
            // otherwise stay a member until its certificate lapses (up to 30 days).
            if let Some(old) =
                holder.filter(|h| !h.revoked && h.public_key != encode_public_key(&key))
            {
                let old_key = decode_public_key(&old.public_key)
                    .map_err(|e| Refusal::Store(format!("the registry's key of {subject}: {e}")))?;
                let revocation = parley_identity::revocation::Revocation::sign(
                    &self.issuer,
                    subject,
                    &old_key,
                    now,
                );
                self.revoked
                    .put(&format!("{subject}/{}", revocation.public_key), &revocation)
                    .map_err(store_failed)?;
                self.unspread
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(revocation);
            }
            self.register(subject, &key).map_err(store_failed)?;
            issued
        };
        self.store.flush().await.map_err(store_failed)?;
        Ok(IssueResponse {
            issued,
            trust_domain: self.trust_domain().to_owned(),
            root_public_key: encode_public_key(&self.issuer.public_key()),
        })
    }
}

/// Decodes an enrollment or renewal request as the issuer does, for the fuzzer.
pub(crate) fn fuzz_request(bytes: &[u8]) {
    if let Ok(Request::Renew(renewal)) = serde_json::from_slice::<Request>(bytes) {
        // The renewal's fields are decoded again by the issuer before anything is signed.
        let _ = parley_identity::cert::from_hex(&renewal.certificate)
            .map(|cert| parley_identity::cert::ImplicitCert::decode(&cert));
        let _ = parley_identity::cert::from_hex(&renewal.signature);
    }
}

/// Decodes an issuer's answer as a joining node does, for the fuzzer.
pub(crate) fn fuzz_reply(bytes: &[u8]) {
    let _ = serde_json::from_slice::<JoinReply>(bytes);
}

/// Tells the mesh of a revocation made here (the transport refuses the key, members are
/// sent it).
pub type Spread = Arc<dyn Fn(parley_identity::revocation::Revocation) + Send + Sync>;

/// Answers enrollment connections (handed over by the transport) until `shutdown`;
/// `spread` takes the revocations of keys that `--replace` enrollments superseded.
pub async fn serve(
    mut connections: mpsc::Receiver<quinn::Connection>,
    enrollment: Arc<Enrollment>,
    spread: Spread,
    shutdown: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
) {
    let exchanges = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_EXCHANGES));
    loop {
        let connection = tokio::select! {
            () = shutdown.cancelled() => return,
            next = connections.recv() => match next {
                Some(connection) => connection,
                None => return,
            },
        };
        // Exchanges at once are capped: each holds a connection for up to
        // EXCHANGE_TIMEOUT, and anyone may open one (they carry no certificate).
        let Ok(permit) = exchanges.clone().try_acquire_owned() else {
            tracing::warn!(remote = %connection.remote_address(), "refused an enrollment: too many at once");
            connection.close(2u32.into(), b"busy");
            continue;
        };
        let enrollment = Arc::clone(&enrollment);
        let spread = Arc::clone(&spread);
        // On the tracker: an exchange spends a token in the store, which shutdown closes
        // only after it.
        tasks.spawn(async move {
            let _permit = permit;
            let remote = connection.remote_address();
            match tokio::time::timeout(EXCHANGE_TIMEOUT, answer_one(&connection, &enrollment)).await
            {
                Ok(Ok(subject)) => {
                    tracing::info!(%remote, node = %subject, "enrolled a node with a join token");
                }
                Ok(Err(reason)) => {
                    tracing::warn!(%remote, %reason, "refused an enrollment");
                }
                Err(_) => tracing::warn!(%remote, "enrollment timed out"),
            }
            // Whatever became of the answer: once the new key is registered, the old one
            // is revoked, and the mesh must hear of it.
            for revocation in enrollment.take_unspread() {
                tracing::warn!(
                    subject = %revocation.subject,
                    key = %revocation.public_key,
                    "revoked the key a re-enrollment replaced"
                );
                spread(revocation);
            }
            connection.close(0u32.into(), b"done");
        });
    }
}

/// Why one enrollment exchange ended without a certificate issued.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The connection or stream failed.
    #[error("the exchange failed: {0}")]
    Stream(String),
    /// The request did not parse.
    #[error("malformed enrollment request: {0}")]
    Malformed(String),
    /// The issuer refused it.
    #[error("{subject}: {refusal}")]
    Refused {
        /// Who asked.
        subject: String,
        /// Why not.
        refusal: Refusal,
    },
}

/// Reads one request, answers it; returns the enrolled subject or why not.
async fn answer_one(
    connection: &quinn::Connection,
    enrollment: &Enrollment,
) -> Result<String, ExchangeError> {
    let stream = |e: &dyn std::fmt::Display| ExchangeError::Stream(e.to_string());
    answer_proof(connection, &enrollment.issuer).await?;
    let (mut send, mut receive) = connection.accept_bi().await.map_err(|e| stream(&e))?;
    let bytes = receive
        .read_to_end(MAX_JOIN_MESSAGE)
        .await
        .map_err(|e| stream(&e))?;
    let (reply, outcome) = match serde_json::from_slice::<Request>(&bytes) {
        Err(e) => {
            let error = ExchangeError::Malformed(e.to_string());
            (JoinReply::Refused(error.to_string()), Err(error))
        }
        Ok(request) => {
            let (subject, answered) = match request {
                Request::Enroll(join) => {
                    let subject = join.request.subject.to_string();
                    (subject, enrollment.answer(join).await)
                }
                Request::Renew(renewal) => {
                    let subject = renewal.request.subject.to_string();
                    (format!("{subject} (renewal)"), enrollment.renew(&renewal))
                }
            };
            match answered {
                Ok(response) => (JoinReply::Issued(response), Ok(subject)),
                Err(refusal) => (
                    JoinReply::Refused(refusal.to_string()),
                    Err(ExchangeError::Refused { subject, refusal }),
                ),
            }
        }
    };
    let answer = serde_json::to_vec(&reply).map_err(|e| stream(&e))?;
    send.write_all(&answer).await.map_err(|e| stream(&e))?;
    send.finish().map_err(|e| stream(&e))?;
    // Let the answer reach the peer before the connection closes.
    let _ = send.stopped().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_say_what_is_wrong() {
        let root = Issuer::generate_root("example.org").unwrap();
        let token = JoinToken {
            trust_domain: "example.org".to_owned(),
            root_public_key: encode_public_key(&root.public_key()),
            id: random_hex::<8>(),
            secret: Zeroizing::new(random_hex::<16>()),
        };
        let text = token.to_string();
        assert!(text.starts_with("parley1:example.org:"), "{text}");
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        // The secret never shows in debug output (logs).
        assert!(!format!("{token:?}").contains(token.secret.as_str()));

        for (bad, why) in [
            ("parley1:example.org", "five"),
            (
                &text.replacen("parley1", "parley9", 1),
                "unknown token version",
            ),
            (
                &text.replacen("example.org", "Bad Domain", 1),
                "invalid trust domain",
            ),
            (&text[..text.len() - 1], "right length"),
        ] {
            let error = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(error.to_string().contains(why), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn a_token_works_once_and_only_for_a_node_of_its_domain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let enrollment =
            Enrollment::new(Issuer::generate_root("example.org").unwrap(), None, &store).unwrap();
        assert!(matches!(
            enrollment.create_token(0, "a", false).await,
            Err(TokenError::Ttl(0))
        ));
        assert!(matches!(
            enrollment.create_token(60, "a/b", false).await,
            Err(TokenError::BadName { .. })
        ));
        let request = |token: &JoinToken, id: &str, secret: &str| JoinRequest {
            token_id: token.id.clone(),
            secret: Zeroizing::new(secret.to_owned()),
            request: parley_identity::PendingRequest::new(SpiffeId::parse(id).unwrap())
                .request()
                .clone(),
        };
        let token = enrollment.create_token(60, "a", false).await.unwrap();
        let other_name = enrollment
            .answer(request(
                &token,
                "spiffe://example.org/node/b",
                &token.secret,
            ))
            .await;
        assert!(
            matches!(&other_name, Err(Refusal::WrongName { token_for, .. }) if token_for == "a"),
            "{:?}",
            other_name.map(|_| ())
        );
        let wrong = enrollment
            .answer(request(
                &token,
                "spiffe://example.org/node/a",
                &"0".repeat(32),
            ))
            .await;
        assert!(
            wrong
                .unwrap_err()
                .to_string()
                .contains("unknown, used or expired")
        );
        let workload = enrollment
            .answer(request(
                &token,
                "spiffe://example.org/ns/x/wl/y",
                &token.secret,
            ))
            .await;
        assert!(workload.unwrap_err().to_string().contains("enrolls a node"));
        let issued = enrollment
            .answer(request(
                &token,
                "spiffe://example.org/node/a",
                &token.secret,
            ))
            .await
            .unwrap();
        assert_eq!(issued.trust_domain, "example.org");
        let again = enrollment
            .answer(request(
                &token,
                "spiffe://example.org/node/b",
                &token.secret,
            ))
            .await;
        assert!(
            again
                .unwrap_err()
                .to_string()
                .contains("unknown, used or expired")
        );
    }

    /// The credential `pending` becomes with the certificate an issuer answered.
    fn accepted(
        enrollment: &Enrollment,
        pending: parley_identity::PendingRequest,
        response: &IssueResponse,
    ) -> parley_identity::Credential {
        pending
            .accept(&response.issued, &enrollment.issuer.public_key())
            .unwrap()
    }

    #[tokio::test]
    async fn a_name_has_one_holder_the_issuer_keeps_its_own_and_a_replacement_ends_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = Issuer::generate_root("example.org").unwrap();
        let own = node(&root, "issuer", crate::clock::unix_secs() - 100, 3_600);
        let enrollment = Enrollment::new(root, Some(&own), &store).unwrap();
        assert!(matches!(
            enrollment.create_token(60, "issuer", true).await,
            Err(TokenError::OwnName(_))
        ));

        let enroll = |name: &str, token: JoinToken| {
            let pending = parley_identity::PendingRequest::new(
                SpiffeId::from_segments("example.org", &["node", name]).unwrap(),
            );
            let request = JoinRequest {
                token_id: token.id.clone(),
                secret: token.secret.clone(),
                request: pending.request().clone(),
            };
            (pending, request)
        };
        let (pending, request) = enroll(
            "edge",
            enrollment.create_token(60, "edge", false).await.unwrap(),
        );
        let response = enrollment.answer(request).await.unwrap();
        let first = accepted(&enrollment, pending, &response);

        // A second token for the name is refused, unless it replaces the holder.
        assert!(matches!(
            enrollment.create_token(60, "edge", false).await,
            Err(TokenError::AlreadyEnrolled { .. })
        ));
        // The first holder renews, and the registry follows its new key.
        let next = parley_identity::PendingRequest::new(first.id().clone());
        let renewed = enrollment.renew_locally(&first, next.request()).unwrap();
        let first = accepted(&enrollment, next, &renewed);

        // The host is rebuilt: a replacing token enrolls a new key; the old one is done.
        let (pending, request) = enroll(
            "edge",
            enrollment.create_token(60, "edge", true).await.unwrap(),
        );
        assert!(
            enrollment.take_unspread().is_empty(),
            "nothing replaced yet"
        );
        let response = enrollment.answer(request).await.unwrap();
        let second = accepted(&enrollment, pending, &response);
        // The replaced key is revoked (not merely superseded), for the mesh to refuse now
        // and after a restart.
        let error = enrollment
            .renew_locally(&first, &new_request(&first))
            .unwrap_err();
        assert!(matches!(error, Refusal::Revoked(_)), "{error}");
        let superseded = enrollment.take_unspread();
        assert_eq!(superseded.len(), 1, "{superseded:?}");
        assert_eq!(
            superseded[0].public_key,
            encode_public_key(&first.public_key())
        );
        assert!(enrollment.revocations().unwrap().contains(&superseded[0]));
        assert!(enrollment.take_unspread().is_empty(), "told once");
        let next = parley_identity::PendingRequest::new(second.id().clone());
        let renewed = enrollment.renew_locally(&second, next.request()).unwrap();
        let second = accepted(&enrollment, next, &renewed);

        // Revoked: its renewals are refused, and the revocation is kept for a restart.
        assert!(matches!(
            enrollment.revoke("issuer", None).await,
            Err(RevokeError::OwnName(_))
        ));
        assert!(matches!(
            enrollment.revoke("nobody", None).await,
            Err(RevokeError::UnknownKey(_))
        ));
        let revocation = enrollment.revoke("edge", None).await.unwrap();
        assert_eq!(
            revocation.public_key,
            encode_public_key(&second.public_key())
        );
        let error = enrollment
            .renew_locally(&second, &new_request(&second))
            .unwrap_err();
        assert!(matches!(error, Refusal::Revoked(_)), "{error}");
        // An older key of the name does not take the freed place either.
        let error = enrollment
            .renew_locally(&first, &new_request(&first))
            .unwrap_err();
        assert!(matches!(error, Refusal::Revoked(_)), "{error}");
        // Both keys the name had are revoked: the replaced one, and this one.
        let held = enrollment.revocations().unwrap();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held.contains(&revocation) && held.contains(&superseded[0]));
        // The name may be enrolled again with a new token.
        enrollment.create_token(60, "edge", false).await.unwrap();

        // Kept across restarts: the registry is in the store.
        drop(enrollment);
        let root = Issuer::generate_root("example.org").unwrap();
        let again = Enrollment::new(root, None, &store).unwrap();
        assert_eq!(again.revocations().unwrap().len(), 2);
    }

    /// Class 12 of the zero-trust issue: joining authenticated the server as any member
    /// of the trust domain, so a member answering a join learned the token's secret and
    /// could spend it itself. Now the server must first sign this connection's channel
    /// binding with the root key; a member cannot, and receives nothing.
    #[tokio::test]
    async fn a_member_posing_as_the_issuer_never_sees_the_token() {
        use crate::transport::tests::{Domain, LOOPBACK};
        use crate::transport::{Limits, Transport};
        let domain = Domain::new("example.org");
        let (member, _inbox, mut joining) = Transport::bind_accepting_enrollment(
            LOOPBACK,
            domain.credentials("member"),
            Limits::default(),
        )
        .unwrap();
        let addr = member.local_addr().unwrap();
        // The impostor answers the proof with its own node key, then listens for more.
        let impostor = tokio::spawn(async move {
            let connection = joining.recv().await.unwrap();
            let (mut send, mut receive) = connection.accept_bi().await.unwrap();
            let first = receive
                .read_to_end(MAX_JOIN_MESSAGE)
                .await
                .unwrap_or_default();
            if !first.is_empty() {
                return Some(first);
            }
            send.write_all(&[7u8; 64]).await.unwrap();
            send.finish().unwrap();
            // Whatever the client sends next would carry the secret.
            match tokio::time::timeout(Duration::from_secs(3), connection.accept_bi()).await {
                Ok(Ok((_, mut receive))) => receive.read_to_end(MAX_JOIN_MESSAGE).await.ok(),
                _ => None,
            }
        });
        let token = JoinToken {
            trust_domain: "example.org".to_owned(),
            root_public_key: encode_public_key(domain.root_public_key()),
            id: random_hex::<8>(),
            secret: Zeroizing::new(random_hex::<16>()),
        };
        let pending = parley_identity::PendingRequest::new(
            SpiffeId::parse("spiffe://example.org/node/new").unwrap(),
        );
        let error = enroll(addr, &token, pending.request()).await.unwrap_err();
        assert!(
            error.to_string().contains("does not hold the root key"),
            "{error}"
        );
        let leaked = impostor.await.unwrap();
        assert!(leaked.is_none(), "the impostor received {leaked:?}");
    }

    /// A node credential issued by `root`, valid from `start` for `ttl` seconds.
    fn node(root: &Issuer, name: &str, start: u64, ttl: u64) -> parley_identity::Credential {
        let id = SpiffeId::from_segments(root.id().trust_domain(), &["node", name]).unwrap();
        let pending = parley_identity::PendingRequest::new(id);
        let issued = root
            .issue(pending.request(), Validity::starting(start, ttl))
            .unwrap();
        pending.accept(&issued, &root.public_key()).unwrap()
    }

    fn new_request(credential: &parley_identity::Credential) -> CertRequest {
        parley_identity::PendingRequest::new(credential.id().clone())
            .request()
            .clone()
    }

    #[tokio::test]
    async fn a_node_renews_itself_only_with_its_own_key_and_within_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = Issuer::generate_root("example.org").unwrap();
        let a = node(&root, "a", crate::clock::unix_secs() - 100, 3_600);
        let b = node(&root, "b", crate::clock::unix_secs() - 100, 3_600);
        let enrollment = Enrollment::new(root, None, &store).unwrap();

        let renewed = enrollment.renew_locally(&a, &new_request(&a)).unwrap();
        let cert = parley_identity::cert::ImplicitCert::decode(
            &parley_identity::cert::from_hex(&renewed.issued.certificate).unwrap(),
        )
        .unwrap();
        assert_eq!(&cert.subject, a.id());
        assert_eq!(cert.not_after - cert.not_before, 3_600);

        // Another node's SPIFFE ID.
        let error = enrollment.renew_locally(&a, &new_request(&b)).unwrap_err();
        assert!(
            error.to_string().contains("may renew only itself"),
            "{error}"
        );
        // Signed by someone else.
        let request = new_request(&a);
        let signed_at = crate::clock::unix_secs();
        let forged = RenewRequest {
            certificate: parley_identity::cert::to_hex(a.cert().as_bytes()),
            request: request.clone(),
            signed_at,
            signature: parley_identity::cert::to_hex(&b.sign(
                RENEW_CONTEXT,
                &renew_signed_bytes(&request, signed_at).unwrap(),
            )),
        };
        let error = enrollment.renew(&forged).unwrap_err();
        assert!(error.to_string().contains("a forged request"), "{error}");
        // An old signature.
        let stale = RenewRequest {
            signed_at: signed_at - 3_600,
            signature: parley_identity::cert::to_hex(&a.sign(
                RENEW_CONTEXT,
                &renew_signed_bytes(&request, signed_at - 3_600).unwrap(),
            )),
            ..forged
        };
        let error = enrollment.renew(&stale).unwrap_err();
        assert!(error.to_string().contains("check the clocks"), "{error}");

        // Lapsed two days ago: still renewable. Forty days ago: enroll again.
        let day = 86_400;
        let lapsed = node(
            &enrollment.issuer,
            "c",
            crate::clock::unix_secs() - 3 * day,
            day,
        );
        assert!(
            enrollment
                .renew_locally(&lapsed, &new_request(&lapsed))
                .is_ok()
        );
        let gone = node(
            &enrollment.issuer,
            "d",
            crate::clock::unix_secs() - 41 * day,
            day,
        );
        let error = enrollment
            .renew_locally(&gone, &new_request(&gone))
            .unwrap_err();
        assert!(
            error.to_string().contains("enroll the node again"),
            "{error}"
        );

        // A certificate of another root.
        let stranger_root = Issuer::generate_root("example.org").unwrap();
        let stranger = node(&stranger_root, "a", crate::clock::unix_secs() - 100, 3_600);
        let error = enrollment
            .renew_locally(&stranger, &new_request(&stranger))
            .unwrap_err();
        assert!(error.to_string().contains("another root"), "{error}");
    }
}
