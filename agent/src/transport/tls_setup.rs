//! The endpoint's TLS: the QUIC server and client configurations presenting a node's
//! credential, verifying peers by their ECQV identity.

use super::*;

/// Why the endpoint's TLS configurations could not be built from a credential.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    /// rustls refused the certificate, key or verifier.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The rustls configuration has no cipher suite QUIC can start with.
    #[error(transparent)]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Why a connection's peer is not accepted after its handshake.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    /// It presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// Its certificate does not prove an identity of a trusted domain.
    #[error(transparent)]
    Identity(#[from] parley_identity::IdentityError),
}

/// The QUIC server and client configurations presenting `credentials`.
pub(super) fn tls_configs(
    credentials: &NodeCredentials,
    transport: &Arc<quinn::TransportConfig>,
    accepts_enrollment: bool,
    revoked: &RevocationList,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), SetupError> {
    let copy = || {
        TlsIdentity::from_der(
            credentials.tls.certificate().clone(),
            credentials.tls.key().clone_key(),
        )
    };
    let server_verifier = if accepts_enrollment {
        PeerVerifier::accepting_enrollment(credentials.bundle.clone(), revoked.clone())
    } else {
        PeerVerifier::with_revocations(credentials.bundle.clone(), revoked.clone())
    };
    let server_tls = tls::server_config(copy(), server_verifier)?;
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
    server.transport_config(transport.clone());
    let client_verifier =
        PeerVerifier::with_revocations(credentials.bundle.clone(), revoked.clone());
    let client_tls = tls::client_config(copy(), client_verifier)?;
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    client.transport_config(transport.clone());
    Ok((server, client))
}
