//! Keeps this node's identity valid: at half its lifetime, a new key and certificate are
//! requested from an issuer (a member that announces the root key, else a `join`
//! address), stored as a pair, and put in use by the transport.
//!
//! A node whose certificate lapsed (it was off, or no issuer answered) is refused by its
//! peers; it says so in its log at every attempt and recovers as soon as an issuer
//! answers, for up to [`join::RENEW_GRACE_SECS`] after the lapse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parley_identity::files::IdentityDir;
use parley_identity::tls::TlsIdentity;
use parley_identity::{Credential, PendingRequest};
use parley_negotiation::membership::Member;
use parley_negotiation::messages::MemberState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::enroll::join::{self, Enrollment};
use crate::transport::{NodeCredentials, Transport};

/// Longest wait between two attempts when renewal fails.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Why a renewal did not give this node a new identity.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The identity directory could not be read.
    #[error("{0}")]
    Files(#[from] parley_identity::files::FilesError),
    /// This node's own root refused (it holds the root key).
    #[error("{0}")]
    Refused(#[from] crate::enroll::join::Refusal),
    /// No issuer is known to ask.
    #[error(
        "no issuer is known: no member announces the root key and no `join` address is configured"
    )]
    NoIssuer,
    /// Every issuer asked failed; why, for each.
    #[error("{}", .0.join("; "))]
    Issuers(Vec<String>),
    /// The issuer's answer does not give a usable identity.
    #[error("the issuer's answer cannot be used: {0}")]
    Unusable(String),
}

/// Where renewals come from and go to.
pub struct Renewal {
    /// The node's identity directory.
    pub identity_dir: PathBuf,
    /// The issuer on this very node, if it holds the root key.
    pub enrollment: Option<Arc<Enrollment>>,
    /// The `join` addresses, tried after the members that announce the root key.
    pub seeds: Vec<SocketAddr>,
}

impl Renewal {
    /// Asks for a new certificate for `credential`'s SPIFFE ID, with a new key, from the
    /// issuers in `candidates` in turn (or from this node's own root), and stores it.
    pub async fn renew_once(
        &self,
        credential: &Credential,
        candidates: &[SocketAddr],
    ) -> Result<NodeCredentials, RenewError> {
        let dir = IdentityDir::new(&self.identity_dir);
        let bundle = dir.load_bundle()?;
        let pending = PendingRequest::new(credential.id().clone());
        let response = match &self.enrollment {
            Some(enrollment) => enrollment.renew_locally(credential, pending.request())?,
            None => {
                let mut failures = Vec::new();
                let mut answer = None;
                for addr in candidates {
                    match join::renew(*addr, bundle.clone(), credential, pending.request()).await {
                        Ok(response) => {
                            answer = Some(response);
                            break;
                        }
                        Err(error) => failures.push(error.to_string()),
                    }
                }
                answer.ok_or(if failures.is_empty() {
                    RenewError::NoIssuer
                } else {
                    RenewError::Issuers(failures)
                })?
            }
        };
        let renewed = dir
            .accept_pending(
                pending,
                &response,
                crate::clock::unix_secs(),
                parley_identity::credential::DEFAULT_CLOCK_SKEW_SECS,
            )
            .map_err(|e| RenewError::Unusable(e.to_string()))?;
        let tls = TlsIdentity::new(&renewed, std::slice::from_ref(renewed.cert()))
            .map_err(|e| RenewError::Unusable(e.to_string()))?;
        Ok(NodeCredentials {
            credential: renewed,
            tls,
            bundle: Arc::new(bundle),
        })
    }

    /// Members announcing the root key (alive ones first), then the seeds.
    fn candidates(&self, view: &watch::Receiver<Vec<Member>>) -> Vec<SocketAddr> {
        let mut members: Vec<(bool, SocketAddr)> = view
            .borrow()
            .iter()
            .filter(|m| m.state != MemberState::Dead)
            .filter_map(|m| {
                let meta = m.meta.as_ref().filter(|meta| meta.issuer)?;
                let addr = meta.address.as_deref()?.parse().ok()?;
                Some((m.state != MemberState::Alive, addr))
            })
            .collect();
        members.sort();
        let mut candidates: Vec<SocketAddr> = members.into_iter().map(|(_, a)| a).collect();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(*seed);
            }
        }
        candidates
    }
}

/// Renews the identity at half its lifetime, and again on failure, until `shutdown`.
pub async fn keep_renewed(
    renewal: Renewal,
    transport: Transport,
    view: watch::Receiver<Vec<Member>>,
    shutdown: CancellationToken,
) {
    let dir = IdentityDir::new(&renewal.identity_dir);
    loop {
        // Read from disk each time: a renewal by hand (`parley identity accept`) counts.
        let wait = match dir.load_credential() {
            Err(error) => {
                tracing::error!(%error, "cannot read this node's identity to renew it");
                MAX_RETRY
            }
            Ok(credential) => {
                let cert = credential.cert();
                let lifetime = cert.not_after.saturating_sub(cert.not_before);
                let renew_at = cert.not_before + lifetime / 2;
                let now = crate::clock::unix_secs();
                if now < renew_at {
                    Duration::from_secs(renew_at - now)
                } else {
                    let retry = Duration::from_secs((lifetime / 10).max(1)).min(MAX_RETRY);
                    match renewal
                        .renew_once(&credential, &renewal.candidates(&view))
                        .await
                    {
                        Ok(renewed) => {
                            let until = renewed.credential.cert().not_after;
                            match transport.rotate(renewed) {
                                Ok(()) => tracing::info!(
                                    id = %credential.id(),
                                    valid_until = until,
                                    "identity renewed"
                                ),
                                Err(error) => {
                                    tracing::error!(%error, "identity renewed but not in use")
                                }
                            }
                            continue;
                        }
                        Err(reason) if now > cert.not_after => {
                            tracing::error!(
                                id = %credential.id(),
                                expired_at = cert.not_after,
                                %reason,
                                retry_in = ?retry,
                                "this node's identity has EXPIRED and its peers refuse it; renewal failed"
                            );
                            retry
                        }
                        Err(reason) => {
                            tracing::warn!(
                                id = %credential.id(),
                                expires_at = cert.not_after,
                                %reason,
                                retry_in = ?retry,
                                "could not renew this node's identity yet"
                            );
                            retry
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
