//! Workload identities: each replica this node runs in a mesh gets an ECQV credential for
//! `spiffe://TD/ns/NAMESPACE/wl/NAME`, issued by this node (chain: root → node →
//! workload), short-lived, renewed at half its lifetime, and mounted read-only into the
//! container at [`MOUNT_TARGET`].
//!
//! The credential is one file, `svid.json` (mode 0600: the container's root is the
//! agent's user in a rootless container), replaced atomically so a reader never sees half
//! of one. Its `chain` verifies against the trust domain's root key like a node's, the
//! workload signs with `private_key` (a P-256 scalar, hex), and its `grant` is the
//! owner's signed award of the replica to this node, which binds the identity to the
//! award ([`super::grant`]). A node issues an identity only for a replica whose grant
//! checks.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use parley_identity::cert::to_hex;
use parley_identity::credential::{Validity, encode_public_key};
use parley_identity::files::IdentityDir;
use parley_identity::{PendingRequest, SpiffeId};
use parley_negotiation::messages::SignedStatement;

use super::grant::{EpochClaim, EpochFile, GrantError, GrantFile, check_grant};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Where the identity directory appears inside a container.
pub const MOUNT_TARGET: &str = "/run/parley/identity";

/// The credential file in that directory.
pub const SVID_FILE: &str = "svid.json";

/// Default lifetime of a workload credential.
pub const DEFAULT_TTL_SECS: u64 = 3_600;

/// A workload credential as written for the container.
#[derive(Clone, Serialize, Deserialize)]
pub struct SvidFile {
    /// The workload's SPIFFE ID.
    pub spiffe_id: String,
    /// Its private key, a P-256 scalar (hex).
    pub private_key: Zeroizing<String>,
    /// The implicit certificates, node first, then the workload's (hex).
    pub chain: Vec<String>,
    /// The trust domain.
    pub trust_domain: String,
    /// The trust domain's root public key (hex), to verify the chain.
    pub root_public_key: String,
    /// Start of validity (unix seconds).
    pub not_before: u64,
    /// End of validity (unix seconds).
    pub not_after: u64,
    /// The owner's grant of the replica to the issuing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantFile>,
    /// For a replica of a strong workload: the lease epoch it runs at, signed by the
    /// issuing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<EpochFile>,
}

/// Issues, renews and removes the workload credentials of this node's replicas.
#[derive(Debug, Clone)]
pub struct WorkloadIdentities {
    root: PathBuf,
    node_identity: PathBuf,
    ttl_secs: u64,
}

/// Why a workload identity could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// This node's own identity or trust bundle could not be read.
    #[error("cannot read this node's identity: {0}")]
    NodeIdentity(#[from] parley_identity::files::FilesError),
    /// The trust bundle has no root for the node's trust domain.
    #[error("this node does not trust a root for {0}")]
    NoRoot(String),
    /// The workload's name does not make a SPIFFE ID.
    #[error("{name} cannot be a SPIFFE ID: {reason}")]
    BadName {
        /// The workload's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The node's own certificate has expired.
    #[error("this node's own identity has expired; workload identities wait for its renewal")]
    NodeExpired,
    /// Issuing or deriving the key failed.
    #[error("cannot issue the workload identity: {0}")]
    Issue(String),
    /// The replica's grant does not check: this node was not shown to be awarded it.
    #[error("no workload identity for {name}: {reason}")]
    Grant {
        /// The workload's name.
        name: String,
        /// Why the grant does not check.
        reason: GrantError,
    },
    /// The file could not be written.
    #[error("cannot write the workload identity of {name}: {reason}")]
    Write {
        /// The workload's name.
        name: String,
        /// The OS error.
        reason: String,
    },
}

impl WorkloadIdentities {
    /// Credentials kept under `root` (one directory per replica), issued with the node
    /// identity in `node_identity`, valid `ttl_secs` (less if the node's own ends sooner).
    pub fn new(root: PathBuf, node_identity: PathBuf, ttl_secs: u64) -> Self {
        Self {
            root,
            node_identity,
            ttl_secs,
        }
    }

    /// The directory mounted into replica `replica` of `name`.
    pub fn dir(&self, name: &str, replica: u32) -> PathBuf {
        self.root.join(format!("{name}-{replica}"))
    }

    /// Issues (or replaces) the credential of replica `replica` of `name`, in namespace
    /// `namespace`, valid from `now`, for the owner's `grant` of it to this node (checked
    /// first), stating `lease_epoch` for a strong replica. Returns its end of validity.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        replica: u32,
        now: u64,
        grant: &SignedStatement,
        lease_epoch: Option<u64>,
    ) -> Result<u64, IssueError> {
        let node_dir = IdentityDir::new(&self.node_identity);
        let node = node_dir.load_credential()?;
        let bundle = node_dir.load_bundle()?;
        check_grant(
            &bundle,
            grant,
            node.id().as_str(),
            &format!("{namespace}/{name}"),
            Some(replica),
        )
        .map_err(|reason| IssueError::Grant {
            name: name.to_owned(),
            reason,
        })?;
        let trust_domain = node.id().trust_domain().to_owned();
        let root = bundle
            .root(&trust_domain)
            .ok_or_else(|| IssueError::NoRoot(trust_domain.clone()))?;
        let subject = SpiffeId::from_segments(&trust_domain, &["ns", namespace, "wl", name])
            .map_err(|e| IssueError::BadName {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let not_after = now.saturating_add(self.ttl_secs).min(node.cert().not_after);
        if not_after <= now {
            return Err(IssueError::NodeExpired);
        }
        let failed = |e: &dyn std::fmt::Display| IssueError::Issue(e.to_string());
        let issuer = node.workload_issuer().map_err(|e| failed(&e))?;
        let pending = PendingRequest::new(subject.clone());
        let issued = issuer
            .issue(
                pending.request(),
                Validity {
                    not_before: now,
                    not_after,
                },
            )
            .map_err(|e| failed(&e))?;
        let workload = pending
            .accept(&issued, &node.public_key())
            .map_err(|e| failed(&e))?;
        let file = SvidFile {
            spiffe_id: subject.to_string(),
            private_key: Zeroizing::new(to_hex(&workload.secret_bytes())),
            chain: vec![to_hex(node.cert().as_bytes()), issued.certificate],
            trust_domain,
            root_public_key: encode_public_key(root),
            not_before: now,
            not_after,
            grant: Some(GrantFile::from(grant)),
            lease: lease_epoch.map(|epoch| {
                EpochFile::sign(
                    &node,
                    &EpochClaim {
                        spiffe_id: subject.to_string(),
                        node: node.id().to_string(),
                        replica,
                        epoch,
                    },
                )
            }),
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| failed(&e))?);
        write_private(&self.dir(name, replica), SVID_FILE, &json).map_err(|e| {
            IssueError::Write {
                name: name.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(not_after)
    }

    /// Leaves replica `replica` of `name` an empty credential directory (the mount needs
    /// one): for a replica whose owner sent no grant, which runs without an identity.
    pub fn withhold(&self, name: &str, replica: u32) -> std::io::Result<()> {
        let dir = self.dir(name, replica);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        match std::fs::remove_file(dir.join(SVID_FILE)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Whether replica `replica` of `name` needs a credential now: none yet, unreadable,
    /// past half its lifetime, or stating another lease epoch than `lease_epoch`.
    pub fn due(&self, name: &str, replica: u32, now: u64, lease_epoch: Option<u64>) -> bool {
        let path = self.dir(name, replica).join(SVID_FILE);
        let Ok(text) = std::fs::read(&path) else {
            return true;
        };
        let Ok(file) = serde_json::from_slice::<SvidFile>(&text) else {
            return true;
        };
        let half = file.not_before + file.not_after.saturating_sub(file.not_before) / 2;
        now >= half || file.lease.as_ref().map(|l| l.epoch) != lease_epoch
    }

    /// The replicas that have a credential directory, as (name, replica).
    pub fn present(&self) -> Vec<(String, u32)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let (workload, replica) = name.rsplit_once('-')?;
                Some((workload.to_owned(), replica.parse().ok()?))
            })
            .collect()
    }

    /// Deletes the credential of a replica this node no longer runs.
    pub fn remove(&self, name: &str, replica: u32) {
        let dir = self.dir(name, replica);
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), %error, "could not remove a workload identity");
        }
    }
}

/// Writes `dir/name` with mode 0600 through a temporary file and a rename, creating `dir`
/// (0700) if needed.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let partial = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&partial, dir.join(name))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use parley_identity::cert::{ImplicitCert, from_hex};
    use parley_identity::files::IssueResponse;
    use parley_identity::{Issuer, TrustBundle};

    use super::*;

    /// A node identity directory of trust domain `example.org`, valid from `start` for
    /// `ttl` seconds.
    fn node_identity(dir: &Path, start: u64, ttl: u64) -> Issuer {
        let root = Issuer::generate_root("example.org").unwrap();
        enroll(&root, "a", dir, start, ttl);
        root
    }

    /// Enrolls node `name` of `example.org` with `root` into the identity directory `dir`.
    pub(crate) fn enroll(root: &Issuer, name: &str, dir: &Path, start: u64, ttl: u64) {
        let id = SpiffeId::parse(&format!("spiffe://example.org/node/{name}")).unwrap();
        let pending = PendingRequest::new(id);
        let response = IssueResponse {
            issued: root
                .issue(pending.request(), Validity::starting(start, ttl))
                .unwrap(),
            trust_domain: "example.org".to_owned(),
            root_public_key: encode_public_key(&root.public_key()),
        };
        IdentityDir::new(dir)
            .accept_pending(pending, &response, start, 60)
            .unwrap();
    }

    /// The grant, signed by the node whose identity is in `owner_dir`, of replica
    /// `replica` of `default/NAME` to node `node`.
    pub(crate) fn grant(
        owner_dir: &Path,
        node: &str,
        name: &str,
        replica: u32,
        at: u64,
    ) -> SignedStatement {
        let owner = IdentityDir::new(owner_dir).load_credential().unwrap();
        let grant = parley_negotiation::messages::Grant {
            owner: owner.id().to_string(),
            node: node.to_owned(),
            workload: format!("default/{name}"),
            replica,
            epoch: 1,
            granted_at_ms: at * 1_000,
        }
        .encode();
        SignedStatement {
            signature: owner.sign(
                parley_negotiation::membership::StatementKind::Grant.context(),
                &grant,
            ),
            credential: owner.cert().as_bytes().to_vec(),
            statement: grant,
        }
    }

    const A: &str = "spiffe://example.org/node/a";

    #[test]
    fn a_replica_gets_a_chain_from_the_root_through_this_node_renewed_at_half_life() {
        let temp = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let root = node_identity(&temp.path().join("node"), now - 10, 86_400);
        let identities =
            WorkloadIdentities::new(temp.path().join("wl"), temp.path().join("node"), 600);
        assert!(identities.due("web", 2, now, None));
        let granted = grant(&temp.path().join("node"), A, "web", 2, now);
        let not_after = identities
            .issue("default", "web", 2, now, &granted, None)
            .unwrap();
        assert_eq!(not_after, now + 600);

        let path = identities.dir("web", 2).join(SVID_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let file: SvidFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(file.spiffe_id, "spiffe://example.org/ns/default/wl/web");
        let chain: Vec<ImplicitCert> = file
            .chain
            .iter()
            .map(|hex| ImplicitCert::decode(&from_hex(hex).unwrap()).unwrap())
            .collect();
        let mut bundle = TrustBundle::new();
        bundle.add("example.org", root.public_key());
        let verified = bundle.verify_chain(&chain, now + 1).unwrap();
        assert_eq!(verified.id.as_str(), file.spiffe_id);
        assert_eq!(file.root_public_key, encode_public_key(&root.public_key()));
        // The private key is the one the chain yields.
        let node = IdentityDir::new(temp.path().join("node"))
            .load_credential()
            .unwrap();
        let workload = parley_identity::Credential::from_parts(
            &from_hex(&file.chain[1]).unwrap(),
            &from_hex(&file.private_key).unwrap(),
            &node.public_key(),
        )
        .unwrap();
        assert_eq!(workload.public_key(), verified.public_key);

        assert!(!identities.due("web", 2, now + 299, None));
        assert!(identities.due("web", 2, now + 300, None));
        assert_eq!(identities.present(), [("web".to_owned(), 2)]);
        identities.remove("web", 2);
        assert!(identities.present().is_empty());
    }

    #[test]
    fn a_workload_identity_never_outlives_the_node_and_waits_for_its_renewal() {
        let temp = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        node_identity(&temp.path().join("node"), now - 10, 110);
        let identities =
            WorkloadIdentities::new(temp.path().join("wl"), temp.path().join("node"), 600);
        let granted = grant(&temp.path().join("node"), A, "web", 0, now);
        assert_eq!(
            identities
                .issue("default", "web", 0, now, &granted, None)
                .unwrap(),
            now + 100
        );
        let error = identities
            .issue("default", "web", 0, now + 100, &granted, None)
            .unwrap_err();
        assert!(matches!(error, IssueError::NodeExpired), "{error}");
    }
}
