//! Revocations: the root's signed statement that one node key may no longer be used,
//! checked at every handshake (and by the issuer at renewal), so that a stolen key stops
//! working before its certificate lapses.
//!
//! A revocation names the node and the key (a re-enrolled host keeps its name with a new
//! key), is signed by the trust domain's root, and needs no other authority: anyone may
//! pass it on, and every receiver checks the signature against its trust bundle. It is
//! kept until the certificates it could concern have lapsed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use p256::PublicKey;
use serde::{Deserialize, Serialize};

use crate::SpiffeId;
use crate::cert::{from_hex, to_hex};
use crate::credential::{
    IdentityError, Issuer, TrustBundle, encode_public_key, verify_signature_by,
};

/// The signature context of revocations.
const CONTEXT: &str = "parley-revocation/1";

/// Revocations a node keeps at most; beyond, the oldest go first (they are also the ones
/// whose certificates lapse first).
pub const MAX_REVOCATIONS: usize = 4096;

/// How long a revocation is kept: longer than any node certificate lives.
pub const KEEP_SECS: u64 = 31 * 24 * 3600;

/// "The key `public_key` of `subject` is revoked", signed by the subject's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The node, `spiffe://TD/node/NAME`.
    pub subject: String,
    /// Its revoked public key (compressed SEC1, hex).
    pub public_key: String,
    /// When it was revoked (unix seconds).
    pub revoked_at: u64,
    /// The root's signature over the three fields above (hex).
    pub signature: String,
}

impl Revocation {
    fn signed_bytes(subject: &str, public_key: &str, revoked_at: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(subject.len() + public_key.len() + 16);
        for field in [subject.as_bytes(), public_key.as_bytes()] {
            bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
            bytes.extend_from_slice(field);
        }
        bytes.extend_from_slice(&revoked_at.to_be_bytes());
        bytes
    }

    /// The root `root` revokes `key` of `subject` at `now`.
    pub fn sign(root: &Issuer, subject: &SpiffeId, key: &PublicKey, now: u64) -> Self {
        let public_key = encode_public_key(key);
        let bytes = Self::signed_bytes(subject.as_str(), &public_key, now);
        Self {
            subject: subject.to_string(),
            public_key,
            revoked_at: now,
            signature: to_hex(&root.sign(CONTEXT, &bytes)),
        }
    }

    /// Checks the signature against the root `bundle` holds for the subject's trust
    /// domain.
    pub fn verify(&self, bundle: &TrustBundle) -> Result<(), IdentityError> {
        let subject =
            SpiffeId::parse(&self.subject).map_err(|_| IdentityError::MalformedValue("subject"))?;
        let root = bundle
            .root(subject.trust_domain())
            .ok_or_else(|| IdentityError::UnknownTrustDomain(subject.trust_domain().to_owned()))?;
        let signature =
            from_hex(&self.signature).ok_or(IdentityError::MalformedValue("signature"))?;
        let bytes = Self::signed_bytes(&self.subject, &self.public_key, self.revoked_at);
        verify_signature_by(root, CONTEXT, &bytes, &signature)
    }
}

/// The revocations a node holds, shared by its TLS verifiers and its negotiation loop.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    inner: Arc<RwLock<BTreeMap<(String, String), Revocation>>>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a revocation already verified; `false` if it was held. Drops those older than
    /// [`KEEP_SECS`] at `now`, then the oldest beyond [`MAX_REVOCATIONS`].
    pub fn insert(&self, revocation: Revocation, now: u64) -> bool {
        let Ok(mut held) = self.inner.write() else {
            return false;
        };
        held.retain(|_, r| r.revoked_at.saturating_add(KEEP_SECS) > now);
        if revocation.revoked_at.saturating_add(KEEP_SECS) <= now {
            // Concerns certificates that have all lapsed: nothing to refuse.
            return false;
        }
        let key = (revocation.subject.clone(), revocation.public_key.clone());
        if held.contains_key(&key) {
            return false;
        }
        held.insert(key, revocation);
        while held.len() > MAX_REVOCATIONS {
            let Some(oldest) = held
                .iter()
                .min_by_key(|(_, r)| r.revoked_at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            held.remove(&oldest);
        }
        true
    }

    /// Whether `key` of `subject` is revoked.
    pub fn is_revoked(&self, subject: &str, key: &PublicKey) -> bool {
        self.is_revoked_encoded(subject, &encode_public_key(key))
    }

    /// [`RevocationList::is_revoked`] for a key already encoded (compressed SEC1, hex),
    /// for callers that check one key many times.
    pub fn is_revoked_encoded(&self, subject: &str, key: &str) -> bool {
        self.inner
            .read()
            .is_ok_and(|held| held.contains_key(&(subject.to_owned(), key.to_owned())))
    }

    /// Every revocation held, oldest first.
    pub fn all(&self) -> Vec<Revocation> {
        let mut all: Vec<Revocation> = self
            .inner
            .read()
            .map(|held| held.values().cloned().collect())
            .unwrap_or_default();
        all.sort_by_key(|r| r.revoked_at);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{PendingRequest, Validity};

    #[test]
    fn a_revocation_verifies_only_with_its_root_and_unchanged() {
        let root = Issuer::generate_root("example.org").unwrap();
        let id = SpiffeId::parse("spiffe://example.org/node/a").unwrap();
        let pending = PendingRequest::new(id.clone());
        let issued = root
            .issue(pending.request(), Validity::starting(0, 60))
            .unwrap();
        let node = pending.accept(&issued, &root.public_key()).unwrap();
        let revocation = Revocation::sign(&root, &id, &node.public_key(), 1_000);
        let mut bundle = TrustBundle::new();
        bundle.add("example.org", root.public_key());
        assert_eq!(revocation.verify(&bundle), Ok(()));

        let moved = Revocation {
            subject: "spiffe://example.org/node/b".to_owned(),
            ..revocation.clone()
        };
        assert_eq!(moved.verify(&bundle), Err(IdentityError::BadSignature));
        let mut other = TrustBundle::new();
        other.add(
            "example.org",
            Issuer::generate_root("example.org").unwrap().public_key(),
        );
        assert_eq!(revocation.verify(&other), Err(IdentityError::BadSignature));

        let list = RevocationList::new();
        assert!(!list.is_revoked(id.as_str(), &node.public_key()));
        assert!(list.insert(revocation.clone(), 1_000));
        assert!(!list.insert(revocation.clone(), 1_000), "held twice");
        assert!(list.is_revoked(id.as_str(), &node.public_key()));
        // Kept as long as a certificate could live, then dropped.
        list.insert(
            Revocation::sign(&root, &id, &root.public_key(), 1_000 + KEEP_SECS),
            1_000 + KEEP_SECS,
        );
        assert!(!list.is_revoked(id.as_str(), &node.public_key()));
    }
}
