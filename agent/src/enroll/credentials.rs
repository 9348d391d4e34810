//! A node's credential at start: loaded and checked, and renewed first if it lapsed while
//! the agent was down.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parley_identity::files::IdentityDir;
use parley_identity::tls::TlsIdentity;

use super::renew::Renewal;
use crate::transport::NodeCredentials;

/// Why this node's credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
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
}

/// How often a node whose identity lapsed asks an issuer again.
const LAPSED_RETRY: Duration = Duration::from_secs(5);

/// Renews an identity that lapsed while the agent was down, through the `join` addresses
/// (or this node's own root), trying until it succeeds: peers refuse a lapsed identity, so
/// there is nothing else to do, and each failure is logged with its reason.
pub async fn renew_lapsed(
    renewal: &Renewal,
    dir: &IdentityDir,
    id: &str,
    expired_at: u64,
) -> NodeCredentials {
    loop {
        let attempt = match dir.load_credential() {
            Ok(credential) => renewal.renew_once(&credential, &renewal.seeds).await,
            Err(error) => Err(error.into()),
        };
        match attempt {
            Ok(renewed) => {
                tracing::info!(%id, valid_until = renewed.credential.cert().not_after, "lapsed identity renewed");
                return renewed;
            }
            Err(reason) => tracing::error!(
                %id,
                expired_at,
                %reason,
                retry_in = ?LAPSED_RETRY,
                "this node's identity has EXPIRED: peers refuse it until an issuer renews it"
            ),
        }
        tokio::time::sleep(LAPSED_RETRY).await;
    }
}

/// Reads the node's credential and trust bundle and checks the certificate is valid now.
pub fn load_credentials(dir: &Path, now: u64) -> Result<NodeCredentials, CredentialError> {
    let identity_error = |reason: String| CredentialError::Identity {
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
        return Err(CredentialError::Expired {
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
