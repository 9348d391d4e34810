//! Issuing, accepting and verifying identities: root → node → workload.
//!
//! - A trust domain's **root** ([`Issuer::root`]) issues node certificates for
//!   `spiffe://TD/node/NAME` only.
//! - A **node** ([`Credential::workload_issuer`]) issues workload certificates for
//!   `spiffe://TD/ns/NS/wl/NAME` in its own trust domain only, never node or issuer
//!   identities, and never past its own expiry.
//! - Anyone holding the [`TrustBundle`] reconstructs and checks a chain
//!   ([`TrustBundle::verify_chain`]) and verifies signatures made with its key
//!   ([`TrustBundle::verify_signature`]).
//!
//! Signatures are ECDSA P-256 with SHA-256 over `"parley-sig/1 " || context || 0 ||
//! message`, so a signature made for one message type can never pass as another.

use std::collections::BTreeMap;

use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::{AffinePoint, PublicKey, SecretKey};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};

use crate::cert::{CertKind, ImplicitCert, MalformedCert, from_hex, to_hex};
use crate::ecqv;
use crate::spiffe::SpiffeId;

/// Default clock-skew tolerance when checking validity periods, in seconds.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;

/// Domain-separation prefix of every signature.
const SIGNATURE_DOMAIN: &[u8] = b"parley-sig/1 ";

/// Why an identity operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Bytes that should be a certificate are not.
    #[error(transparent)]
    Malformed(#[from] MalformedCert),
    /// A value that should be a point, scalar or signature does not decode.
    #[error("malformed {0}")]
    MalformedValue(&'static str),
    /// The trust bundle holds no root for this trust domain.
    #[error("unknown trust domain {0}: it is not in the trust bundle")]
    UnknownTrustDomain(String),
    /// A certificate names a different issuer than the one checking it.
    #[error("{subject} was issued by {found}, expected {expected}")]
    WrongIssuer {
        /// The certificate's subject.
        subject: String,
        /// The issuer expected from the chain.
        expected: String,
        /// The issuer named in the certificate.
        found: String,
    },
    /// The issuer may not issue this identity.
    #[error("{issuer} may not issue {subject}: {reason}")]
    NotAllowed {
        /// The issuer.
        issuer: String,
        /// The identity asked for.
        subject: String,
        /// Which rule refuses it.
        reason: &'static str,
    },
    /// The certificate is not valid yet.
    #[error("the certificate of {subject} is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// The subject.
        subject: String,
        /// Start of validity.
        not_before: u64,
        /// The time checked.
        now: u64,
    },
    /// The certificate has expired.
    #[error("the certificate of {subject} expired at {not_after} (now {now}); renew it")]
    Expired {
        /// The subject.
        subject: String,
        /// End of validity.
        not_after: u64,
        /// The time checked.
        now: u64,
    },
    /// The key does not match the certificate: the issuer's response was altered or is
    /// for someone else, or a peer proved a key other than its certificate's.
    #[error("the key does not match the certificate of {0}")]
    KeyMismatch(String),
    /// A signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// A chain has the wrong shape.
    #[error("invalid certificate chain: {0}")]
    BadChain(&'static str),
    /// A valid workload identity presented where only a node may speak: the mesh's peers
    /// are nodes, and a container holding its SVID must not be able to join it.
    #[error("{0} is a workload identity; only node identities (/node/NAME) are mesh peers")]
    NotANode(String),
    /// The root revoked this key of the identity.
    #[error("the key of {0} was revoked by its trust domain's root")]
    Revoked(String),
}

/// Validity period of a certificate to issue, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start.
    pub not_before: u64,
    /// End.
    pub not_after: u64,
}

impl Validity {
    /// From `now` for `ttl_secs`.
    pub fn starting(now: u64, ttl_secs: u64) -> Self {
        Self {
            not_before: now,
            not_after: now.saturating_add(ttl_secs),
        }
    }
}

/// The public half of a certificate request: what travels to the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    /// The identity asked for.
    pub subject: SpiffeId,
    /// `R_U = k_U·G`, compressed SEC1, hex.
    pub point: String,
}

impl CertRequest {
    fn point(&self) -> Result<AffinePoint, IdentityError> {
        decode_point(&self.point).ok_or(IdentityError::MalformedValue("request point"))
    }
}

/// A request in progress, holding the secret `k_U` until the issuer answers. The secret
/// is zeroized when this is dropped.
pub struct PendingRequest {
    request: CertRequest,
    /// `k_U`; `SecretKey` zeroizes itself on drop.
    secret: SecretKey,
}

impl std::fmt::Debug for PendingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRequest")
            .field("request", &self.request)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl PendingRequest {
    /// A fresh request for `subject`.
    pub fn new(subject: SpiffeId) -> Self {
        let secret = SecretKey::random(&mut OsRng);
        let point = *secret.public_key().as_affine();
        Self {
            request: CertRequest {
                subject,
                point: encode_point(&point),
            },
            secret,
        }
    }

    /// Rebuilds a pending request from its stored secret (see [`PendingRequest::secret_bytes`]).
    pub fn from_secret(subject: SpiffeId, secret: &[u8]) -> Result<Self, IdentityError> {
        let secret = SecretKey::from_slice(secret)
            .map_err(|_| IdentityError::MalformedValue("request secret"))?;
        let point = *secret.public_key().as_affine();
        Ok(Self {
            request: CertRequest {
                subject,
                point: encode_point(&point),
            },
            secret,
        })
    }

    /// The public request to send to the issuer.
    pub fn request(&self) -> &CertRequest {
        &self.request
    }

    /// The secret `k_U`, for storing in a 0600 file between request and accept.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.secret.to_bytes().to_vec())
    }

    /// Derives the private key from the issuer's answer and checks it against the
    /// certificate (SEC 4 section 3.6) before returning anything.
    pub fn accept(
        self,
        issued: &IssuedCert,
        issuer_public: &PublicKey,
    ) -> Result<Credential, IdentityError> {
        let cert = ImplicitCert::decode(
            &from_hex(&issued.certificate)
                .ok_or(IdentityError::MalformedValue("certificate hex"))?,
        )?;
        if cert.subject != self.request.subject {
            return Err(IdentityError::KeyMismatch(cert.subject.to_string()));
        }
        let r = decode_scalar(&issued.reconstruction)?;
        let d_u =
            ecqv::requester_private_key(cert.as_bytes(), &self.secret.to_nonzero_scalar(), &r);
        let expected = ecqv::reconstruct_public_key(
            cert.as_bytes(),
            &cert.reconstruction_point,
            issuer_public.as_affine(),
        );
        if ecqv::public_from_secret(&d_u) != expected {
            return Err(IdentityError::KeyMismatch(cert.subject.to_string()));
        }
        let secret = SecretKey::from_bytes(&d_u.to_bytes())
            .map_err(|_| IdentityError::KeyMismatch(cert.subject.to_string()))?;
        let signing_key = SigningKey::from(&secret);
        Ok(Credential {
            cert,
            secret,
            signing_key,
        })
    }
}

/// The issuer's answer: the certificate and the private-key reconstruction value `r`.
/// `r` alone reveals nothing: only the holder of `k_U` can turn it into a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// The encoded certificate, hex.
    pub certificate: String,
    /// `r`, hex.
    pub reconstruction: String,
}

/// Something that issues certificates: a trust domain's root, or a node for workloads.
pub struct Issuer {
    id: SpiffeId,
    kind: IssuerKind,
    secret: SecretKey,
    /// A node may not issue beyond its own certificate's expiry.
    not_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IssuerKind {
    Root,
    Node,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Issuer {
    /// A trust domain's root issuer with the given key. Its SPIFFE ID is the trust
    /// domain's own (`spiffe://TD`).
    pub fn root(trust_domain: &str, secret: SecretKey) -> Result<Self, crate::SpiffeIdError> {
        Ok(Self {
            id: SpiffeId::for_trust_domain(trust_domain)?,
            kind: IssuerKind::Root,
            secret,
            not_after: None,
        })
    }

    /// A new root with a fresh random key.
    pub fn generate_root(trust_domain: &str) -> Result<Self, crate::SpiffeIdError> {
        Self::root(trust_domain, SecretKey::random(&mut OsRng))
    }

    /// This issuer's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The public key relying parties need (the trust anchor, for a root).
    pub fn public_key(&self) -> PublicKey {
        self.secret.public_key()
    }

    /// The secret key, for storing in a 0600 file.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.secret.to_bytes().to_vec())
    }

    /// Signs `message` for `context` with the issuer's own key: how a root proves, to a
    /// host that knows only the root's public key, that it is talking to the root's
    /// holder (enrollment and renewal). Verify with [`verify_signature_by`].
    pub fn sign(&self, context: &str, message: &[u8]) -> Vec<u8> {
        let key = SigningKey::from(&self.secret);
        let signature: Signature = key.sign(&signed_bytes(context, message));
        signature.to_bytes().to_vec()
    }

    fn check_allowed(
        &self,
        subject: &SpiffeId,
        validity: Validity,
    ) -> Result<CertKind, IdentityError> {
        let refuse = |reason| IdentityError::NotAllowed {
            issuer: self.id.to_string(),
            subject: subject.to_string(),
            reason,
        };
        if subject.trust_domain() != self.id.trust_domain() {
            return Err(refuse("it is in another trust domain"));
        }
        if validity.not_after < validity.not_before {
            return Err(refuse("the validity ends before it starts"));
        }
        let kind = match self.kind {
            IssuerKind::Root if is_node_id(subject) => CertKind::Node,
            IssuerKind::Root => {
                return Err(refuse("a root issues node identities (/node/NAME) only"));
            }
            IssuerKind::Node if is_workload_id(subject) => CertKind::Workload,
            IssuerKind::Node => {
                return Err(refuse(
                    "a node issues workload identities (/ns/NS/wl/NAME) only",
                ));
            }
        };
        if self
            .not_after
            .is_some_and(|limit| validity.not_after > limit)
        {
            return Err(refuse("the validity would outlast the issuing node's own"));
        }
        Ok(kind)
    }

    /// Issues a certificate for `request`. The issuer learns `R_U` only, never `k_U`, so
    /// it cannot compute the requester's private key.
    pub fn issue(
        &self,
        request: &CertRequest,
        validity: Validity,
    ) -> Result<IssuedCert, IdentityError> {
        let kind = self.check_allowed(&request.subject, validity)?;
        let r_u = request.point()?;
        // The per-certificate nonce: anyone who learned it could compute d_CA from r, so
        // it lives in a SecretKey, which zeroizes itself on drop.
        let k = SecretKey::random(&mut OsRng);
        let mut serial = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut serial);
        let cert = ImplicitCert::new(
            kind,
            serial,
            validity.not_before,
            validity.not_after,
            self.id.clone(),
            request.subject.clone(),
            ecqv::reconstruction_point(&r_u, &k.to_nonzero_scalar()),
        );
        let r = ecqv::private_reconstruction_value(
            cert.as_bytes(),
            &k.to_nonzero_scalar(),
            &self.secret.to_nonzero_scalar(),
        );
        Ok(IssuedCert {
            certificate: to_hex(cert.as_bytes()),
            reconstruction: to_hex(&r.to_bytes()),
        })
    }
}

/// An identity and its private key: a node's or a workload's credential.
pub struct Credential {
    cert: ImplicitCert,
    secret: SecretKey,
    /// Kept to sign without recomputing the public key each time; zeroized on drop too.
    signing_key: SigningKey,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("cert", &self.cert)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Credential {
    /// A credential from a stored certificate and secret, checked against the issuer.
    pub fn from_parts(
        cert_bytes: &[u8],
        secret: &[u8],
        issuer_public: &PublicKey,
    ) -> Result<Self, IdentityError> {
        let cert = ImplicitCert::decode(cert_bytes)?;
        let secret = SecretKey::from_slice(secret)
            .map_err(|_| IdentityError::MalformedValue("secret key"))?;
        let expected = ecqv::reconstruct_public_key(
            cert.as_bytes(),
            &cert.reconstruction_point,
            issuer_public.as_affine(),
        );
        if *secret.public_key().as_affine() != expected {
            return Err(IdentityError::KeyMismatch(cert.subject.to_string()));
        }
        let signing_key = SigningKey::from(&secret);
        Ok(Self {
            cert,
            secret,
            signing_key,
        })
    }

    /// The certificate.
    pub fn cert(&self) -> &ImplicitCert {
        &self.cert
    }

    /// The holder's SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.cert.subject
    }

    /// The public key (equal to what anyone reconstructs from the certificate).
    pub fn public_key(&self) -> PublicKey {
        self.secret.public_key()
    }

    /// The secret key, for storing in a 0600 file.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.secret.to_bytes().to_vec())
    }

    /// The secret key in PKCS#8 DER, for a TLS stack that proves possession of it.
    pub fn secret_pkcs8_der(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, IdentityError> {
        use p256::pkcs8::EncodePrivateKey;
        self.secret
            .to_pkcs8_der()
            .map(|doc| zeroize::Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|_| IdentityError::MalformedValue("secret key"))
    }

    /// This node as an issuer of workload identities, bounded by its own validity.
    pub fn workload_issuer(&self) -> Result<Issuer, IdentityError> {
        if self.cert.kind != CertKind::Node {
            return Err(IdentityError::NotAllowed {
                issuer: self.cert.subject.to_string(),
                subject: "workload identities".to_owned(),
                reason: "only nodes issue workload identities",
            });
        }
        Ok(Issuer {
            id: self.cert.subject.clone(),
            kind: IssuerKind::Node,
            secret: self.secret.clone(),
            not_after: Some(self.cert.not_after),
        })
    }

    /// Signs `message` for the message type `context` (for example `"bid"`).
    pub fn sign(&self, context: &str, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.signing_key.sign(&signed_bytes(context, message));
        signature.to_bytes().to_vec()
    }
}

/// `spiffe://TD/node/NAME`: the only identities a root issues.
fn is_node_id(id: &SpiffeId) -> bool {
    matches!(id.segments().collect::<Vec<_>>().as_slice(), ["node", _])
}

/// `spiffe://TD/ns/NS/wl/NAME`: the only identities a node issues.
fn is_workload_id(id: &SpiffeId) -> bool {
    matches!(
        id.segments().collect::<Vec<_>>().as_slice(),
        ["ns", _, "wl", _]
    )
}

fn signed_bytes(context: &str, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNATURE_DOMAIN.len() + context.len() + 1 + message.len());
    bytes.extend_from_slice(SIGNATURE_DOMAIN);
    bytes.extend_from_slice(context.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// An identity whose chain checked out: its ID, kind and (reconstructed) public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The leaf's SPIFFE ID.
    pub id: SpiffeId,
    /// The leaf's kind.
    pub kind: CertKind,
    /// The leaf's public key, reconstructed through the chain. ECQV proves it only when a
    /// signature or handshake made with it verifies.
    pub public_key: PublicKey,
    /// The earliest expiry along the chain.
    pub not_after: u64,
}

impl VerifiedIdentity {
    /// Verifies a signature made by this identity over `message` for `context`. A peer
    /// whose chain was checked once (at the handshake) is verified this way afterwards,
    /// at the price of a plain ECDSA verification.
    pub fn verify(
        &self,
        context: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError> {
        let signature =
            Signature::from_slice(signature).map_err(|_| IdentityError::BadSignature)?;
        VerifyingKey::from(&self.public_key)
            .verify(&signed_bytes(context, message), &signature)
            .map_err(|_| IdentityError::BadSignature)
    }
}

/// Verifies a signature made by the holder of `key` (an [`Issuer::sign`], say) over
/// `message` for `context`.
pub fn verify_signature_by(
    key: &PublicKey,
    context: &str,
    message: &[u8],
    signature: &[u8],
) -> Result<(), IdentityError> {
    let signature = Signature::from_slice(signature).map_err(|_| IdentityError::BadSignature)?;
    VerifyingKey::from(key)
        .verify(&signed_bytes(context, message), &signature)
        .map_err(|_| IdentityError::BadSignature)
}

/// The roots a node trusts: one public key per trust domain (several for federation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: BTreeMap<String, PublicKey>,
    /// Tolerated clock skew when checking validity periods.
    pub clock_skew_secs: u64,
}

impl TrustBundle {
    /// An empty bundle with the default clock skew.
    pub fn new() -> Self {
        Self {
            roots: BTreeMap::new(),
            clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
        }
    }

    /// Trusts `root` for `trust_domain`.
    pub fn add(&mut self, trust_domain: &str, root: PublicKey) {
        self.roots.insert(trust_domain.to_owned(), root);
    }

    /// The root of `trust_domain`, if trusted.
    pub fn root(&self, trust_domain: &str) -> Option<&PublicKey> {
        self.roots.get(trust_domain)
    }

    /// The trusted trust domains.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    fn check_time(&self, cert: &ImplicitCert, now: u64) -> Result<(), IdentityError> {
        if now.saturating_add(self.clock_skew_secs) < cert.not_before {
            return Err(IdentityError::NotYetValid {
                subject: cert.subject.to_string(),
                not_before: cert.not_before,
                now,
            });
        }
        if now > cert.not_after.saturating_add(self.clock_skew_secs) {
            return Err(IdentityError::Expired {
                subject: cert.subject.to_string(),
                not_after: cert.not_after,
                now,
            });
        }
        Ok(())
    }

    /// Checks a chain — a node certificate, optionally followed by a workload certificate
    /// it issued — at time `now`, and reconstructs the leaf's public key.
    pub fn verify_chain(
        &self,
        chain: &[ImplicitCert],
        now: u64,
    ) -> Result<VerifiedIdentity, IdentityError> {
        let (node, workload) = match chain {
            [node] => (node, None),
            [node, workload] => (node, Some(workload)),
            _ => {
                return Err(IdentityError::BadChain(
                    "expected a node certificate and at most one workload certificate",
                ));
            }
        };
        if node.kind != CertKind::Node || !is_node_id(&node.subject) {
            return Err(IdentityError::BadChain(
                "the first certificate is not a node's",
            ));
        }
        let domain = node.subject.trust_domain();
        let root = self
            .roots
            .get(domain)
            .ok_or_else(|| IdentityError::UnknownTrustDomain(domain.to_owned()))?;
        let root_id = SpiffeId::for_trust_domain(domain)
            .map_err(|_| IdentityError::BadChain("bad trust domain"))?;
        if node.issuer != root_id {
            return Err(IdentityError::WrongIssuer {
                subject: node.subject.to_string(),
                expected: root_id.to_string(),
                found: node.issuer.to_string(),
            });
        }
        self.check_time(node, now)?;
        let node_key = reconstruct(node, root)?;
        let Some(workload) = workload else {
            return Ok(VerifiedIdentity {
                id: node.subject.clone(),
                kind: CertKind::Node,
                public_key: node_key,
                not_after: node.not_after,
            });
        };
        if workload.kind != CertKind::Workload
            || workload.subject.trust_domain() != domain
            || !is_workload_id(&workload.subject)
        {
            return Err(IdentityError::NotAllowed {
                issuer: node.subject.to_string(),
                subject: workload.subject.to_string(),
                reason: "a node issues workload identities (/ns/NS/wl/NAME) in its trust domain only",
            });
        }
        if workload.issuer != node.subject {
            return Err(IdentityError::WrongIssuer {
                subject: workload.subject.to_string(),
                expected: node.subject.to_string(),
                found: workload.issuer.to_string(),
            });
        }
        self.check_time(workload, now)?;
        Ok(VerifiedIdentity {
            id: workload.subject.clone(),
            kind: CertKind::Workload,
            public_key: reconstruct(workload, &node_key)?,
            not_after: node.not_after.min(workload.not_after),
        })
    }

    /// Verifies a signature made by the leaf of `chain` over `message` for `context`, and
    /// returns who signed. This is what turns a reconstructed key into a proven one.
    pub fn verify_signature(
        &self,
        context: &str,
        message: &[u8],
        signature: &[u8],
        chain: &[ImplicitCert],
        now: u64,
    ) -> Result<VerifiedIdentity, IdentityError> {
        let identity = self.verify_chain(chain, now)?;
        identity.verify(context, message, signature)?;
        Ok(identity)
    }
}

fn reconstruct(cert: &ImplicitCert, issuer: &PublicKey) -> Result<PublicKey, IdentityError> {
    let point = ecqv::reconstruct_public_key(
        cert.as_bytes(),
        &cert.reconstruction_point,
        issuer.as_affine(),
    );
    PublicKey::from_affine(point).map_err(|_| IdentityError::KeyMismatch(cert.subject.to_string()))
}

/// A point as compressed SEC1 hex.
pub fn encode_point(point: &AffinePoint) -> String {
    to_hex(point.to_encoded_point(true).as_bytes())
}

fn decode_point(hex: &str) -> Option<AffinePoint> {
    let bytes = from_hex(hex)?;
    let encoded = p256::EncodedPoint::from_bytes(bytes).ok()?;
    Option::from(AffinePoint::from_encoded_point(&encoded))
}

fn decode_scalar(hex: &str) -> Result<p256::Scalar, IdentityError> {
    let bytes: [u8; 32] = from_hex(hex)
        .and_then(|b| b.try_into().ok())
        .ok_or(IdentityError::MalformedValue("reconstruction value"))?;
    Option::from(<p256::Scalar as p256::elliptic_curve::PrimeField>::from_repr(bytes.into()))
        .ok_or(IdentityError::MalformedValue("reconstruction value"))
}

/// A public key as compressed SEC1 hex (trust bundles, `parley identity show`).
pub fn encode_public_key(key: &PublicKey) -> String {
    encode_point(key.as_affine())
}

/// Parses a public key written by [`encode_public_key`].
pub fn decode_public_key(hex: &str) -> Result<PublicKey, IdentityError> {
    decode_point(hex)
        .and_then(|p| PublicKey::from_affine(p).ok())
        .ok_or(IdentityError::MalformedValue("public key"))
}

#[cfg(test)]
mod tests;
