//! Cheap stand-ins for signing, for the simulator and fast tests.
//!
//! [`KeyedChecksum`] is *not* cryptography: it is a 64-bit keyed FNV-1a, so that a
//! simulation of thousands of nodes runs fast while still exercising every verification
//! path (a wrong key, a changed byte or a changed context all fail). Real nodes sign with
//! their ECQV identities through the same traits.

use crate::codec::{Signer, Verifier};
use crate::membership::{Notary, StatementKind};
use crate::messages::SignedStatement;

/// A per-node secret checksum "signature".
#[derive(Debug, Clone)]
pub struct KeyedChecksum {
    id: String,
    key: u64,
}

impl KeyedChecksum {
    /// A signer for `id`; its key is derived from the id and a shared `seed`.
    pub fn new(id: impl Into<String>, seed: u64) -> Self {
        let id = id.into();
        let key = fnv(seed, id.as_bytes());
        Self { id, key }
    }
}

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    hash ^= 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn checksum(key: u64, context: &str, bytes: &[u8]) -> Vec<u8> {
    let hash = fnv(fnv(key, context.as_bytes()), bytes);
    hash.to_be_bytes().to_vec()
}

impl Signer for KeyedChecksum {
    fn id(&self) -> &str {
        &self.id
    }

    fn sign(&self, context: &str, bytes: &[u8]) -> Vec<u8> {
        checksum(self.key, context, bytes)
    }
}

/// Verifies [`KeyedChecksum`] signatures of any node sharing `seed`.
#[derive(Debug, Clone, Copy)]
pub struct ChecksumVerifier {
    /// The shared seed.
    pub seed: u64,
}

impl Verifier for ChecksumVerifier {
    fn verify(&self, sender: &str, context: &str, bytes: &[u8], signature: &[u8]) -> bool {
        checksum(fnv(self.seed, sender.as_bytes()), context, bytes) == signature
    }
}

/// Statements signed with [`KeyedChecksum`]s: node `id` signs its own, and checks
/// anyone's that shares the seed. The credential is left empty.
#[derive(Debug, Clone)]
pub struct ChecksumNotary {
    signer: KeyedChecksum,
    verifier: ChecksumVerifier,
}

impl ChecksumNotary {
    /// The notary of node `id` in a cluster sharing `seed`.
    pub fn new(id: impl Into<String>, seed: u64) -> Self {
        Self {
            signer: KeyedChecksum::new(id, seed),
            verifier: ChecksumVerifier { seed },
        }
    }
}

impl Notary for ChecksumNotary {
    fn sign(&self, kind: StatementKind, statement: Vec<u8>) -> SignedStatement {
        SignedStatement {
            signature: self.signer.sign(kind.context(), &statement),
            statement,
            credential: Vec::new(),
        }
    }

    fn verify(
        &self,
        kind: StatementKind,
        signer: &str,
        signed: &SignedStatement,
        _now_ms: u64,
    ) -> bool {
        self.verifier
            .verify(signer, kind.context(), &signed.statement, &signed.signature)
    }
}
