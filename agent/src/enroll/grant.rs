//! Replica grants, and the check that binds a workload identity to an award.
//!
//! A node key alone can sign a certificate for any workload name. What tells a verifier
//! that the node was *awarded* the workload is the owner's [`Grant`]: a statement, signed
//! with the owner's node key, that this node runs replica R of `namespace/name`. The node
//! checks the grant before it issues an identity, and writes it beside the chain in the
//! workload's `svid.json`; [`verify_svid`] (and `parley identity verify-svid`) refuses a
//! workload identity without one, or with one that does not name the issuing node and the
//! workload, or that the owner did not sign.
//!
//! The owner's certificate is checked at the time of the grant, not now: node
//! certificates renew every few days, and a replica outlives many of them.

use parley_identity::cert::{CertKind, ImplicitCert, from_hex, to_hex};
use parley_identity::{IdentityError, SpiffeId, TrustBundle};
use parley_negotiation::membership::StatementKind;
use parley_negotiation::messages::{Grant, SignedStatement};
use serde::{Deserialize, Serialize};

use super::workload::SvidFile;

/// A grant as `svid.json` carries it, each part in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantFile {
    /// The CBOR encoding of the [`Grant`].
    pub statement: String,
    /// The owner's implicit certificate.
    pub credential: String,
    /// The owner's signature over `statement`.
    pub signature: String,
}

impl From<&SignedStatement> for GrantFile {
    fn from(signed: &SignedStatement) -> Self {
        Self {
            statement: to_hex(&signed.statement),
            credential: to_hex(&signed.credential),
            signature: to_hex(&signed.signature),
        }
    }
}

impl GrantFile {
    fn decode(&self) -> Result<SignedStatement, GrantError> {
        let hex = |value: &str| from_hex(value).ok_or(GrantError::Malformed("not hex"));
        Ok(SignedStatement {
            statement: hex(&self.statement)?,
            credential: hex(&self.credential)?,
            signature: hex(&self.signature)?,
        })
    }
}

/// Why a grant, or a workload identity, does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// No grant at all: anyone holding a node key could have made the identity.
    #[error(
        "the workload identity carries no grant: nothing shows its node was awarded the workload"
    )]
    Missing,
    /// The bytes are not a grant or a certificate.
    #[error("malformed grant: {0}")]
    Malformed(&'static str),
    /// The grant is of another node than the one that issued the identity.
    #[error("the grant is for {granted}, but {issuer} issued the workload identity")]
    OtherNode {
        /// The node the grant names.
        granted: String,
        /// The node that issued the identity.
        issuer: String,
    },
    /// The grant is of another workload, or another replica.
    #[error("the grant is of {granted}, not of {wanted}")]
    OtherWorkload {
        /// What the grant names.
        granted: String,
        /// What it should name.
        wanted: String,
    },
    /// The owner's certificate or signature does not check.
    #[error("the grant is not signed by its owner {owner}: {reason}")]
    NotSigned {
        /// The owner the grant names.
        owner: String,
        /// Why.
        reason: String,
    },
    /// The chain of the workload identity does not check.
    #[error("the workload identity's chain does not check: {0}")]
    Chain(#[from] IdentityError),
    /// The policy given does not let the owner place, or the node host, this workload.
    #[error("{0}")]
    Policy(String),
    /// The lease epoch claim does not check: not the issuing node's signature, or not of
    /// this identity.
    #[error("the lease epoch claim does not check: {0}")]
    Epoch(&'static str),
}

/// The signature context of a node's [`EpochClaim`].
pub const EPOCH_CONTEXT: &str = "lease-epoch";

/// What a node states when it starts a strong replica: that it runs this identity's
/// replica at this lease epoch. Storage and peers compare epochs to refuse a stale
/// writer: a replica that runs again elsewhere runs at a higher one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochClaim {
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The node that holds the lease (and issued the identity).
    pub node: String,
    /// The replica.
    pub replica: u32,
    /// The lease's epoch: the fencing token, as in `PARLEY_EPOCH`.
    pub epoch: u64,
}

/// An [`EpochClaim`] as `svid.json` carries it: its JSON (the bytes signed, so that any
/// client can read it), and the issuing node's signature over them in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochFile {
    /// The lease epoch, as the claim states it (for readers that do not verify).
    pub epoch: u64,
    /// The claim's JSON, exactly as signed.
    pub claim: String,
    /// The node's signature over `claim` for [`EPOCH_CONTEXT`] (hex).
    pub signature: String,
}

impl EpochFile {
    /// Signs `claim` with the node credential `node`.
    pub fn sign(node: &parley_identity::Credential, claim: &EpochClaim) -> Self {
        let json = serde_json::to_string(claim).expect("a claim is plain data");
        Self {
            epoch: claim.epoch,
            signature: to_hex(&node.sign(EPOCH_CONTEXT, json.as_bytes())),
            claim: json,
        }
    }
}

/// A grant that checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedGrant {
    /// The grant.
    pub grant: Grant,
}

/// Checks that `signed` is `grant.owner`'s grant, made while its certificate was valid,
/// of a replica of workload `workload` (`namespace/name`) to `node` (and of replica
/// `replica`, when given).
pub fn check_grant(
    bundle: &TrustBundle,
    signed: &SignedStatement,
    node: &str,
    workload: &str,
    replica: Option<u32>,
) -> Result<CheckedGrant, GrantError> {
    let grant = Grant::decode(&signed.statement).ok_or(GrantError::Malformed("not a grant"))?;
    if grant.node != node {
        return Err(GrantError::OtherNode {
            granted: grant.node,
            issuer: node.to_owned(),
        });
    }
    if grant.workload != workload || replica.is_some_and(|r| r != grant.replica) {
        return Err(GrantError::OtherWorkload {
            granted: format!("replica {} of {}", grant.replica, grant.workload),
            wanted: match replica {
                Some(r) => format!("replica {r} of {workload}"),
                None => workload.to_owned(),
            },
        });
    }
    let not_signed = |reason: String| GrantError::NotSigned {
        owner: grant.owner.clone(),
        reason,
    };
    let owner_cert = ImplicitCert::decode(&signed.credential)
        .map_err(|e| not_signed(format!("its certificate: {e}")))?;
    let signer = bundle
        .verify_signature(
            StatementKind::Grant.context(),
            &signed.statement,
            &signed.signature,
            std::slice::from_ref(&owner_cert),
            grant.granted_at_ms / 1_000,
        )
        .map_err(|e| not_signed(e.to_string()))?;
    if signer.kind != CertKind::Node || signer.id.as_str() != grant.owner {
        return Err(not_signed(format!("it was signed by {}", signer.id)));
    }
    Ok(CheckedGrant { grant })
}

/// A workload identity that checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedSvid {
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// The node that issued it (and runs the replica).
    pub node: String,
    /// The owner that awarded the replica to that node.
    pub owner: String,
    /// The replica.
    pub replica: u32,
    /// End of validity (unix seconds).
    pub not_after: u64,
    /// The lease epoch the issuing node claims for a strong replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Verifies a workload identity as `svid.json` holds it: the chain (root → node →
/// workload) at `now`, then the grant: the owner's, of a replica of this very workload,
/// to the node that issued it.
pub fn verify_svid(
    file: &SvidFile,
    bundle: &TrustBundle,
    now: u64,
) -> Result<VerifiedSvid, GrantError> {
    let chain = file
        .chain
        .iter()
        .map(|hex| {
            let bytes = from_hex(hex).ok_or(GrantError::Malformed("a certificate is not hex"))?;
            ImplicitCert::decode(&bytes).map_err(|e| GrantError::Chain(e.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identity = bundle.verify_chain(&chain, now)?;
    if identity.kind != CertKind::Workload {
        return Err(GrantError::Chain(IdentityError::BadChain(
            "a workload identity ends in a workload certificate",
        )));
    }
    let node = chain[0].subject.to_string();
    let workload = workload_key(&identity.id).ok_or(GrantError::Chain(IdentityError::BadChain(
        "not a workload ID",
    )))?;
    let signed = file.grant.as_ref().ok_or(GrantError::Missing)?.decode()?;
    let checked = check_grant(bundle, &signed, &node, &workload, None)?;
    let epoch = match &file.lease {
        None => None,
        Some(lease) => {
            let issuer = bundle.verify_chain(&chain[..1], now)?;
            let signature =
                from_hex(&lease.signature).ok_or(GrantError::Epoch("the signature is not hex"))?;
            issuer
                .verify(EPOCH_CONTEXT, lease.claim.as_bytes(), &signature)
                .map_err(|_| {
                    GrantError::Epoch("not signed by the node that issued the identity")
                })?;
            let claim: EpochClaim = serde_json::from_str(&lease.claim)
                .map_err(|_| GrantError::Epoch("the claim is not an epoch claim"))?;
            if claim.spiffe_id != identity.id.as_str()
                || claim.node != node
                || claim.replica != checked.grant.replica
            {
                return Err(GrantError::Epoch("the claim is of another replica or node"));
            }
            if claim.epoch != lease.epoch {
                return Err(GrantError::Epoch(
                    "the epoch beside the claim is not the claim's",
                ));
            }
            Some(claim.epoch)
        }
    };
    Ok(VerifiedSvid {
        spiffe_id: identity.id.to_string(),
        node,
        owner: checked.grant.owner,
        replica: checked.grant.replica,
        not_after: identity.not_after,
        epoch,
    })
}

/// `namespace/name` of a workload ID `spiffe://TD/ns/NAMESPACE/wl/NAME`.
pub fn workload_key(id: &SpiffeId) -> Option<String> {
    match id.segments().collect::<Vec<_>>()[..] {
        ["ns", namespace, "wl", name] => Some(format!("{namespace}/{name}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use parley_identity::Issuer;
    use parley_identity::files::IdentityDir;

    use super::*;
    use crate::enroll::workload::WorkloadIdentities;
    use crate::enroll::workload::tests::{enroll, grant};

    const NOW: u64 = 1_800_000_000;
    const B: &str = "spiffe://example.org/node/b";

    /// Owner `a` and host `b` of one trust domain, and `b`'s workload identities.
    fn mesh(dir: &Path) -> (TrustBundle, WorkloadIdentities) {
        let root = Issuer::generate_root("example.org").unwrap();
        enroll(&root, "a", &dir.join("a"), NOW - 10, 86_400);
        enroll(&root, "b", &dir.join("b"), NOW - 10, 86_400);
        let bundle = IdentityDir::new(dir.join("b")).load_bundle().unwrap();
        let identities = WorkloadIdentities::new(dir.join("wl"), dir.join("b"), 600);
        (bundle, identities)
    }

    fn svid(identities: &WorkloadIdentities, name: &str, replica: u32) -> SvidFile {
        let path = identities
            .dir(name, replica)
            .join(super::super::workload::SVID_FILE);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn an_identity_issued_for_a_granted_replica_verifies_with_its_grant() {
        let temp = tempfile::tempdir().unwrap();
        let (bundle, identities) = mesh(temp.path());
        let granted = grant(&temp.path().join("a"), B, "web", 1, NOW);
        identities
            .issue("default", "web", 1, NOW, &granted, None)
            .unwrap();
        let verified = verify_svid(&svid(&identities, "web", 1), &bundle, NOW + 1).unwrap();
        assert_eq!(verified.spiffe_id, "spiffe://example.org/ns/default/wl/web");
        assert_eq!(verified.node, B);
        assert_eq!(verified.owner, "spiffe://example.org/node/a");
        assert_eq!(verified.replica, 1);
    }

    /// Class 11 of the zero-trust issue: a node key was a CA for every workload ID. A node
    /// now issues only for a replica granted to it, and a verifier refuses an identity
    /// without the grant, or with another node's, workload's or owner's.
    #[test]
    fn a_node_key_alone_makes_no_workload_identity_that_verifies() {
        let temp = tempfile::tempdir().unwrap();
        let (bundle, identities) = mesh(temp.path());
        let a_dir = temp.path().join("a");
        let refused = |grant: SignedStatement| {
            identities
                .issue("default", "web", 0, NOW, &grant, None)
                .unwrap_err()
                .to_string()
        };
        // Granted to another node, of another workload, of another replica.
        let to_a = refused(grant(&a_dir, "spiffe://example.org/node/a", "web", 0, NOW));
        assert!(
            to_a.contains("but spiffe://example.org/node/b issued"),
            "{to_a}"
        );
        let other = refused(grant(&a_dir, B, "db", 0, NOW));
        assert!(other.contains("not of replica 0 of default/web"), "{other}");
        let replica = refused(grant(&a_dir, B, "web", 3, NOW));
        assert!(
            replica.contains("not of replica 0 of default/web"),
            "{replica}"
        );
        // A grant whose signature is not its owner's.
        let mut forged = grant(&a_dir, B, "web", 0, NOW);
        forged.signature[10] ^= 1;
        let unsigned = refused(forged);
        assert!(unsigned.contains("not signed by its owner"), "{unsigned}");

        // What a node holding only its key can make: an identity with no grant, or one
        // pasting another replica's grant. Neither verifies.
        let granted = grant(&a_dir, B, "web", 0, NOW);
        identities
            .issue("default", "web", 0, NOW, &granted, None)
            .unwrap();
        let mut file = svid(&identities, "web", 0);
        file.grant = None;
        assert_eq!(
            verify_svid(&file, &bundle, NOW + 1).unwrap_err(),
            GrantError::Missing
        );
        let db = grant(&a_dir, B, "db", 0, NOW);
        file.grant = Some(GrantFile::from(&db));
        let error = verify_svid(&file, &bundle, NOW + 1).unwrap_err();
        assert!(matches!(error, GrantError::OtherWorkload { .. }), "{error}");
    }

    /// A strong replica's identity states its lease epoch, signed by its node: it
    /// verifies, and is refused when the epoch is changed, the claim is of another
    /// replica, or another node signed it. A new epoch makes the identity due again.
    #[test]
    fn a_strong_replicas_identity_carries_its_lease_epoch_signed_by_its_node() {
        let temp = tempfile::tempdir().unwrap();
        let (bundle, identities) = mesh(temp.path());
        let a_dir = temp.path().join("a");
        let granted = grant(&a_dir, B, "db", 0, NOW);
        identities
            .issue("default", "db", 0, NOW, &granted, Some(7))
            .unwrap();
        let file = svid(&identities, "db", 0);
        let verified = verify_svid(&file, &bundle, NOW + 1).unwrap();
        assert_eq!(verified.epoch, Some(7));
        assert!(!identities.due("db", 0, NOW + 1, Some(7)));
        assert!(identities.due("db", 0, NOW + 1, Some(8)), "a new epoch");
        assert!(identities.due("db", 0, NOW + 1, None));

        let refused = |file: &SvidFile| match verify_svid(file, &bundle, NOW + 1) {
            Err(GrantError::Epoch(why)) => why,
            other => panic!("not refused for its epoch: {other:?}"),
        };
        let mut raised = file.clone();
        raised.lease.as_mut().unwrap().epoch = 8;
        assert!(refused(&raised).contains("not the claim's"));
        let mut rewritten = file.clone();
        let lease = rewritten.lease.as_mut().unwrap();
        lease.claim = lease.claim.replace("\"epoch\":7", "\"epoch\":8");
        lease.epoch = 8;
        assert!(refused(&rewritten).contains("not signed by the node"));
        let claim = |replica: u32, node: &str| EpochClaim {
            spiffe_id: "spiffe://example.org/ns/default/wl/db".to_owned(),
            node: node.to_owned(),
            replica,
            epoch: 9,
        };
        let b_node = IdentityDir::new(temp.path().join("b"))
            .load_credential()
            .unwrap();
        let mut other_replica = file.clone();
        other_replica.lease = Some(EpochFile::sign(&b_node, &claim(1, B)));
        assert!(refused(&other_replica).contains("another replica"));
        let a_node = IdentityDir::new(&a_dir).load_credential().unwrap();
        let mut by_a = file.clone();
        by_a.lease = Some(EpochFile::sign(
            &a_node,
            &claim(0, "spiffe://example.org/node/a"),
        ));
        assert!(refused(&by_a).contains("not signed by the node"));
        // Without a claim it is an eventual replica's identity: no epoch.
        let mut eventual = file;
        eventual.lease = None;
        assert_eq!(
            verify_svid(&eventual, &bundle, NOW + 1).unwrap().epoch,
            None
        );
    }
}
