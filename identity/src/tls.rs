//! Mutually authenticated TLS 1.3 (for QUIC) with ECQV identities.
//!
//! Each side presents a self-signed X.509 certificate made with its ECQV-derived key; the
//! certificate carries the implicit certificate chain in a private extension and the
//! SPIFFE ID as a URI SAN. The verifiers below ignore X.509 trust entirely: they decode the
//! implicit chain, check it against the [`TrustBundle`] (issuers, path rules, validity),
//! reconstruct the expected public key and require it to be the key in the X.509
//! certificate, whose possession the TLS handshake signature then proves. rustls's own
//! verifiers cannot be used: they check DNS names and X.509 chains, and SPIFFE peers have
//! neither.
//!
//! Only TLS 1.3 with ECDSA P-256 is offered, and the provider is ring (the only one in
//! the build). No early data is enabled on either side.

use std::sync::{Arc, Mutex};

use p256::elliptic_curve::sec1::ToEncodedPoint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::cert::{CertKind, ImplicitCert, MAX_CERT_LEN};
use crate::credential::{Credential, IdentityError, TrustBundle, VerifiedIdentity};
use crate::revocation::RevocationList;

/// ALPN protocol of Parley's peer protocol.
pub const ALPN: &[u8] = b"parley/1";

/// ALPN protocol of enrollment: a node without an identity yet asks an issuer for one.
/// Only the server is authenticated; the request carries its own proof (a join token).
/// Version 2: the server proves it holds the root key before the client sends its token.
pub const JOIN_ALPN: &[u8] = b"parley-join/2";

/// OID of the X.509 extension carrying the implicit certificate chain. It sits under a
/// private-enterprise arc chosen for Parley; nothing outside Parley interprets it.
pub const CHAIN_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 61_000, 1, 1];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The X.509 wrapper could not be made.
    #[error("cannot build the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The key could not be exported.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The crypto provider used everywhere: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node presents in handshakes: the X.509 wrapper and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    certificate: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Wraps `credential` (the leaf) and its chain (node certificate first, the leaf last)
    /// in a self-signed X.509 certificate made with the leaf's own key.
    pub fn new(credential: &Credential, chain: &[ImplicitCert]) -> Result<Self, TlsError> {
        let pkcs8 = credential.secret_pkcs8_der()?;
        let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(
            credential.id().as_str(),
        )?)];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, credential.id().as_str());
        params.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            CHAIN_EXTENSION_OID,
            encode_chain(chain),
        )];
        let certificate = params.self_signed(&key_pair)?;
        Ok(Self {
            certificate: certificate.der().clone(),
            key: PrivateKeyDer::Pkcs8(der),
        })
    }

    /// An identity from a stored X.509 wrapper and its PKCS#8 key.
    pub fn from_der(certificate: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Self {
        Self { certificate, key }
    }

    /// The X.509 wrapper, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The private key, DER.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

fn encode_chain(chain: &[ImplicitCert]) -> Vec<u8> {
    let mut out = Vec::new();
    for cert in chain {
        // Certificates are at most MAX_CERT_LEN (< 65536) bytes.
        out.extend_from_slice(&(cert.as_bytes().len() as u16).to_be_bytes());
        out.extend_from_slice(cert.as_bytes());
    }
    out
}

fn decode_chain(mut bytes: &[u8]) -> Result<Vec<ImplicitCert>, IdentityError> {
    let mut chain = Vec::new();
    while !bytes.is_empty() {
        if chain.len() == 2 || bytes.len() < 2 {
            return Err(IdentityError::BadChain("malformed chain extension"));
        }
        let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        if len > MAX_CERT_LEN || bytes.len() < 2 + len {
            return Err(IdentityError::BadChain("malformed chain extension"));
        }
        chain.push(ImplicitCert::decode(&bytes[2..2 + len])?);
        bytes = &bytes[2 + len..];
    }
    Ok(chain)
}

/// Checks a mesh peer's X.509 wrapper: as [`verify_certificate`], and the identity must
/// be a node's. Workload identities verify against the same roots (their chain runs
/// through the node that issued them) but are never peers.
pub fn verify_peer_certificate(
    certificate: &[u8],
    bundle: &TrustBundle,
    now: u64,
) -> Result<VerifiedIdentity, IdentityError> {
    let identity = verify_certificate(certificate, bundle, now)?;
    if identity.kind != CertKind::Node {
        return Err(IdentityError::NotANode(identity.id.to_string()));
    }
    Ok(identity)
}

/// Checks an X.509 wrapper of either kind: decodes the implicit chain, verifies it
/// against the bundle at `now`, and requires the wrapper's key to be the reconstructed
/// key.
pub fn verify_certificate(
    certificate: &[u8],
    bundle: &TrustBundle,
    now: u64,
) -> Result<VerifiedIdentity, IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|_| IdentityError::MalformedValue("X.509 certificate"))?;
    let oid = x509_parser::oid_registry::Oid::from(CHAIN_EXTENSION_OID)
        .map_err(|_| IdentityError::MalformedValue("extension OID"))?;
    let extension =
        x509.extensions()
            .iter()
            .find(|e| e.oid == oid)
            .ok_or(IdentityError::BadChain(
                "the certificate carries no Parley identity",
            ))?;
    let chain = decode_chain(extension.value)?;
    let identity = bundle.verify_chain(&chain, now)?;
    let presented = x509.public_key().subject_public_key.data.as_ref();
    let expected = identity.public_key.to_encoded_point(false);
    if presented != expected.as_bytes() {
        return Err(IdentityError::KeyMismatch(identity.id.to_string()));
    }
    Ok(identity)
}

/// Only TLS 1.3 is configured; a TLS 1.2 signature means a misconfigured peer.
const TLS12_REFUSED: rustls::Error =
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic);

/// The only signature scheme ECQV keys (P-256) produce.
const SCHEMES: &[SignatureScheme] = &[SignatureScheme::ECDSA_NISTP256_SHA256];

/// The rustls verifier for both sides of a Parley connection: the peer must prove a node
/// identity of a trusted domain ([`verify_peer_certificate`]).
#[derive(Debug)]
pub struct PeerVerifier {
    bundle: Arc<TrustBundle>,
    revoked: RevocationList,
    provider: Arc<CryptoProvider>,
    rejections: Mutex<Vec<IdentityError>>,
    /// Whether a client may connect without a certificate (to enroll).
    anonymous_clients: bool,
}

impl PeerVerifier {
    /// A verifier trusting `bundle`.
    pub fn new(bundle: Arc<TrustBundle>) -> Arc<Self> {
        Self::with_revocations(bundle, RevocationList::new())
    }

    /// As [`PeerVerifier::new`], also refusing the keys `revoked` holds (checked at every
    /// handshake, so a revocation added later applies to the next one).
    pub fn with_revocations(bundle: Arc<TrustBundle>, revoked: RevocationList) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            revoked,
            provider: provider(),
            rejections: Mutex::new(Vec::new()),
            anonymous_clients: false,
        })
    }

    /// A server-side verifier for an issuer: as [`PeerVerifier::new`], but a client may
    /// also connect without a certificate, to enroll over [`JOIN_ALPN`]. A certificate
    /// that is presented is verified all the same, and the caller must refuse
    /// certificate-less connections on any other protocol.
    pub fn accepting_enrollment(bundle: Arc<TrustBundle>, revoked: RevocationList) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            revoked,
            provider: provider(),
            rejections: Mutex::new(Vec::new()),
            anonymous_clients: true,
        })
    }

    /// Peers refused so far, with the reason (most recent last); for logs, metrics and
    /// tests. Bounded to the newest 64.
    pub fn rejections(&self) -> Vec<IdentityError> {
        self.rejections
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    fn verify(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        verify_peer_certificate(end_entity.as_ref(), &self.bundle, now.as_secs())
            .and_then(|identity| {
                if self
                    .revoked
                    .is_revoked(identity.id.as_str(), &identity.public_key)
                {
                    Err(IdentityError::Revoked(identity.id.to_string()))
                } else {
                    Ok(())
                }
            })
            .map_err(|error| {
                // rustls reports a custom refusal by its Debug form; say it in words here.
                tracing::warn!(%error, "refused a peer's identity");
                if let Ok(mut rejections) = self.rejections.lock() {
                    if rejections.len() == 64 {
                        rejections.remove(0);
                    }
                    rejections.push(error.clone());
                }
                let certificate_error = match &error {
                    IdentityError::Expired { .. } => CertificateError::Expired,
                    IdentityError::NotYetValid { .. } => CertificateError::NotValidYet,
                    IdentityError::UnknownTrustDomain(_) | IdentityError::WrongIssuer { .. } => {
                        CertificateError::UnknownIssuer
                    }
                    _ => CertificateError::Other(OtherError(Arc::new(error))),
                };
                rustls::Error::InvalidCertificate(certificate_error)
            })
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The server name is not checked: peers are named by SPIFFE ID, which the caller
        // reads from the verified connection and authorizes itself.
        self.verify(end_entity, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_REFUSED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.anonymous_clients
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, now)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_REFUSED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// A server configuration that verifies client identities: required, unless `verifier`
/// accepts enrollment, in which case [`JOIN_ALPN`] is offered too.
pub fn server_config(
    identity: TlsIdentity,
    verifier: Arc<PeerVerifier>,
) -> Result<rustls::ServerConfig, TlsError> {
    let enrollment = verifier.anonymous_clients;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.certificate], identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    if enrollment {
        config.alpn_protocols.push(JOIN_ALPN.to_vec());
    }
    config.max_early_data_size = 0;
    Ok(config)
}

/// A client configuration that presents `identity` and verifies the server's.
pub fn client_config(
    identity: TlsIdentity,
    verifier: Arc<PeerVerifier>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate], identity.key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// A client configuration for enrolling: no client identity (there is none yet), the
/// server verified against `verifier`'s bundle (built from the join token), ALPN
/// [`JOIN_ALPN`].
pub fn join_client_config(verifier: Arc<PeerVerifier>) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}
