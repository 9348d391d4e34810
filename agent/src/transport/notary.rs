//! Statements (members' about themselves, owners' grants of replicas) signed with this
//! node's identity, and checked against the trust bundle: the agent's [`Notary`].
//!
//! A statement carries its signer's implicit certificate, so that a node can check the
//! statement of a node it has never connected to: the certificate must chain to the
//! trust domain's root, name a node, be valid now, name the signer expected, not be
//! revoked, and its key must verify the signature.

use std::sync::Arc;

use parley_identity::cert::{CertKind, ImplicitCert};
use parley_negotiation::membership::{Notary, StatementKind};
use parley_negotiation::messages::SignedStatement;

use super::{Inner, lock};

/// Signs with the transport's current identity (renewal replaces it) and checks with its
/// trust bundle and revocations.
pub struct TransportNotary {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for TransportNotary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportNotary")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Notary for TransportNotary {
    fn sign(&self, kind: StatementKind, statement: Vec<u8>) -> SignedStatement {
        let signer = lock(&self.inner.signer).clone();
        SignedStatement {
            signature: signer.credential.sign(kind.context(), &statement),
            credential: signer.credential.cert().as_bytes().to_vec(),
            statement,
        }
    }

    fn verify(
        &self,
        kind: StatementKind,
        node: &str,
        signed: &SignedStatement,
        now_ms: u64,
    ) -> bool {
        let Ok(cert) = ImplicitCert::decode(&signed.credential) else {
            return false;
        };
        let checked = self.inner.bundle.verify_signature(
            kind.context(),
            &signed.statement,
            &signed.signature,
            std::slice::from_ref(&cert),
            now_ms / 1_000,
        );
        match checked {
            Ok(identity) => {
                identity.kind == CertKind::Node
                    && identity.id.as_str() == node
                    && !self.inner.revoked.is_revoked(node, &identity.public_key)
            }
            Err(error) => {
                tracing::debug!(signer = node, %error, "a signed statement does not check");
                false
            }
        }
    }
}
