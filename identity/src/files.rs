//! The on-disk layout of a node's identity directory, shared by the CLI and the agent.
//!
//! ```text
//! root.key            the trust domain's issuing key (only where the root lives), 0600
//! trust-bundle.json   trusted roots: {"trust_domains": {"TD": "<public key hex>"}}
//! pending.key         k_U of a request awaiting its answer, 0600
//! pending.json        the public request
//! node.key            this node's private key, 0600
//! node.cert           this node's implicit certificate, hex
//! ```
//!
//! Every write goes to a temporary file first and is renamed into place, so a failed
//! command leaves the directory as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use p256::SecretKey;
use serde::{Deserialize, Serialize};

use crate::cert::{ImplicitCert, from_hex, to_hex};
use crate::credential::{
    CertRequest, Credential, IdentityError, IssuedCert, Issuer, PendingRequest, TrustBundle,
    decode_public_key, encode_public_key,
};
use crate::keyfile::{self, KeyFileError};
use crate::spiffe::SpiffeId;

/// Largest JSON file read from a user (request, response, bundle).
pub const MAX_JSON_FILE_LEN: u64 = 256 * 1024;

/// Refuses `path` if its group or other users may write it (the key files are checked
/// stricter still, by [`keyfile`]: readable by their owner only).
fn not_writable_by_others(path: &Path) -> Result<(), FilesError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)
        .map_err(|source| FilesError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FilesError::WritableByOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Why an identity-directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A secret file problem (permissions, format).
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// An identity problem (bad certificate, wrong key, …).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A file is missing; the message says which command creates it.
    #[error("{path} does not exist: {hint}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What to run first.
        hint: &'static str,
    },
    /// A JSON file does not parse or is too large.
    #[error("{path} is not a valid {what}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// Why it is not.
        reason: String,
    },
    /// The operation conflicts with what the directory holds.
    #[error("{0}")]
    Conflict(String),
    /// A file or directory others may write: whoever can rewrite the trust bundle
    /// chooses which roots this node trusts.
    #[error(
        "{path} is writable by other users (mode {mode:o}); refusing to trust it: \
         `chmod go-w {path}`"
    )]
    WritableByOthers {
        /// The file or directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The answer file `parley identity issue` writes: the issued certificate plus the root
/// the new node must trust.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueResponse {
    /// The issued certificate and reconstruction value.
    #[serde(flatten)]
    pub issued: IssuedCert,
    /// The issuing trust domain.
    pub trust_domain: String,
    /// Its root public key, hex.
    pub root_public_key: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct BundleFile {
    trust_domains: BTreeMap<String, String>,
}

/// A node's identity directory.
#[derive(Debug, Clone)]
pub struct IdentityDir {
    dir: PathBuf,
}

impl IdentityDir {
    /// The directory at `dir` (created on first write, mode 0700).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a trust domain's root key here and trusts it. Refuses if a root key exists.
    pub fn init_root(&self, trust_domain: &str) -> Result<Issuer, FilesError> {
        let root = Issuer::generate_root(trust_domain).map_err(|e| {
            FilesError::Conflict(format!("invalid trust domain {trust_domain:?}: {e}"))
        })?;
        let mut bundle = self.load_bundle_file()?;
        if bundle.trust_domains.contains_key(trust_domain) {
            return Err(FilesError::Conflict(format!(
                "{} already trusts a root for {trust_domain}; use another directory for a new trust domain",
                self.file("trust-bundle.json").display()
            )));
        }
        keyfile::write_secret(&self.file("root.key"), &root.secret_bytes(), false)?;
        bundle.trust_domains.insert(
            trust_domain.to_owned(),
            encode_public_key(&root.public_key()),
        );
        self.write_json("trust-bundle.json", &bundle)?;
        self.write_text("root.domain", trust_domain)?;
        Ok(root)
    }

    /// The root issuer kept here.
    pub fn load_root(&self) -> Result<Issuer, FilesError> {
        let key_path = self.file("root.key");
        if !key_path.exists() {
            return Err(FilesError::Missing {
                path: key_path,
                hint: "issue where the root key lives, or create one with `parley identity init --trust-domain TD`",
            });
        }
        let secret = keyfile::read_secret(&key_path)?;
        let secret = SecretKey::from_slice(&secret).map_err(|_| KeyFileError::Malformed {
            path: key_path.clone(),
            reason: "not a P-256 key",
        })?;
        let domain = self.read_text("root.domain", "the root's trust domain")?;
        Issuer::root(domain.trim(), secret).map_err(|e| FilesError::Invalid {
            path: self.file("root.domain"),
            what: "trust domain",
            reason: e.to_string(),
        })
    }

    /// Starts a request for `subject`, keeping its secret here.
    pub fn start_request(&self, subject: SpiffeId) -> Result<CertRequest, FilesError> {
        let pending = PendingRequest::new(subject);
        keyfile::write_secret(&self.file("pending.key"), &pending.secret_bytes(), true)?;
        self.write_json("pending.json", pending.request())?;
        Ok(pending.request().clone())
    }

    /// Finishes the pending request with the issuer's answer: derives and checks the key,
    /// checks validity at `now`, stores the credential and trusts the issuing root.
    pub fn accept(
        &self,
        response: &IssueResponse,
        now: u64,
        clock_skew_secs: u64,
    ) -> Result<Credential, FilesError> {
        let request: CertRequest = self.read_json(
            "pending.json",
            "pending request",
            "run `parley identity request --id SPIFFE_ID` first",
        )?;
        let secret = keyfile::read_secret(&self.file("pending.key"))?;
        let pending = PendingRequest::from_secret(request.subject.clone(), &secret)?;
        if pending.request() != &request {
            return Err(FilesError::Conflict(
                "pending.key does not belong to pending.json".to_owned(),
            ));
        }
        let credential = self.accept_pending(pending, response, now, clock_skew_secs)?;
        for leftover in ["pending.key", "pending.json"] {
            let _ = std::fs::remove_file(self.file(leftover));
        }
        Ok(credential)
    }

    /// Whether a trust domain's root key is kept here (this is an issuer's directory).
    pub fn has_root(&self) -> bool {
        self.file("root.key").exists()
    }

    /// Whether a node credential is stored here (valid or not).
    pub fn has_credential(&self) -> bool {
        self.file("node.cert").exists()
    }

    /// Finishes a request held in memory (enrollment over the network, where the request
    /// and its answer travel in one exchange) with the issuer's answer: derives and checks
    /// the key, checks validity at `now`, stores the credential and trusts the root.
    pub fn accept_pending(
        &self,
        pending: PendingRequest,
        response: &IssueResponse,
        now: u64,
        clock_skew_secs: u64,
    ) -> Result<Credential, FilesError> {
        let request = pending.request().clone();
        let root_key = decode_public_key(&response.root_public_key)?;
        let mut bundle_file = self.load_bundle_file()?;
        if let Some(existing) = bundle_file.trust_domains.get(&response.trust_domain)
            && existing != &response.root_public_key
        {
            return Err(FilesError::Conflict(format!(
                "this node already trusts a different root for {}; refusing an answer from another",
                response.trust_domain
            )));
        }
        if request.subject.trust_domain() != response.trust_domain {
            return Err(FilesError::Conflict(format!(
                "the answer comes from trust domain {} but the request was for {}",
                response.trust_domain, request.subject
            )));
        }
        let credential = pending.accept(&response.issued, &root_key)?;
        let mut bundle = TrustBundle::new();
        bundle.clock_skew_secs = clock_skew_secs;
        bundle.add(&response.trust_domain, root_key);
        bundle.verify_chain(std::slice::from_ref(credential.cert()), now)?;

        // Key and certificate are a pair, replaced together even across a crash: both are
        // written beside the old ones (the certificate last, which commits the swap), then
        // renamed over them; `finish_swap` completes a swap a crash interrupted.
        keyfile::write_secret(
            &self.file("node.key.next"),
            &credential.secret_bytes(),
            true,
        )?;
        self.write_text("node.cert.next", &to_hex(credential.cert().as_bytes()))?;
        self.finish_swap()?;
        bundle_file.trust_domains.insert(
            response.trust_domain.clone(),
            response.root_public_key.clone(),
        );
        self.write_json("trust-bundle.json", &bundle_file)?;
        Ok(credential)
    }

    /// The trust bundle kept here (empty if none).
    pub fn load_bundle(&self) -> Result<TrustBundle, FilesError> {
        let file = self.load_bundle_file()?;
        let mut bundle = TrustBundle::new();
        for (domain, key) in &file.trust_domains {
            bundle.add(domain, decode_public_key(key)?);
        }
        Ok(bundle)
    }

    /// This node's credential, checked against the trust bundle's root.
    pub fn load_credential(&self) -> Result<Credential, FilesError> {
        self.finish_swap()?;
        let cert_hex = self.read_text("node.cert", "node certificate")?;
        let cert_bytes = from_hex(&cert_hex).ok_or_else(|| FilesError::Invalid {
            path: self.file("node.cert"),
            what: "node certificate",
            reason: "not hex".to_owned(),
        })?;
        let cert = ImplicitCert::decode(&cert_bytes).map_err(IdentityError::from)?;
        let bundle = self.load_bundle()?;
        let root = bundle.root(cert.subject.trust_domain()).ok_or_else(|| {
            IdentityError::UnknownTrustDomain(cert.subject.trust_domain().to_owned())
        })?;
        let secret = keyfile::read_secret(&self.file("node.key"))?;
        Ok(Credential::from_parts(&cert_bytes, &secret, root)?)
    }

    /// Completes a replacement of the key and certificate that [`Self::accept_pending`]
    /// committed (`node.cert.next` written), or drops one it did not (`node.key.next`
    /// alone).
    fn finish_swap(&self) -> Result<(), FilesError> {
        let io = |path: PathBuf| move |source| FilesError::Io { path, source };
        let (key_next, cert_next) = (self.file("node.key.next"), self.file("node.cert.next"));
        if cert_next.exists() {
            if key_next.exists() {
                std::fs::rename(&key_next, self.file("node.key")).map_err(io(key_next))?;
            }
            std::fs::rename(&cert_next, self.file("node.cert")).map_err(io(cert_next))?;
        } else if key_next.exists() {
            std::fs::remove_file(&key_next).map_err(io(key_next))?;
        }
        Ok(())
    }

    fn load_bundle_file(&self) -> Result<BundleFile, FilesError> {
        if !self.file("trust-bundle.json").exists() {
            return Ok(BundleFile::default());
        }
        not_writable_by_others(&self.dir)?;
        not_writable_by_others(&self.file("trust-bundle.json"))?;
        self.read_json("trust-bundle.json", "trust bundle", "")
    }

    fn read_text(&self, name: &str, what: &'static str) -> Result<String, FilesError> {
        let path = self.file(name);
        let bytes = read_bounded(&path).map_err(|e| match e {
            FilesError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => FilesError::Missing {
                path: path.clone(),
                hint: "this node has no identity yet: enroll it with `parley identity request` and `parley identity accept`",
            },
            other => other,
        })?;
        String::from_utf8(bytes).map_err(|_| FilesError::Invalid {
            path,
            what,
            reason: "not UTF-8".to_owned(),
        })
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        what: &'static str,
        hint: &'static str,
    ) -> Result<T, FilesError> {
        let path = self.file(name);
        if !path.exists() {
            return Err(FilesError::Missing { path, hint });
        }
        read_json_file(&path, what)
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), FilesError> {
        let text =
            serde_json::to_string_pretty(value).map_err(|e| FilesError::Conflict(e.to_string()))?;
        self.write_text(name, &text)
    }

    fn write_text(&self, name: &str, text: &str) -> Result<(), FilesError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FilesError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(&self.dir))?;
        let path = self.file(name);
        let partial = self.file(&format!("{name}.partial"));
        std::fs::write(&partial, format!("{}\n", text.trim_end())).map_err(io(&partial))?;
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        Ok(())
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, FilesError> {
    use std::io::Read;
    let io = |source| FilesError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len > MAX_JSON_FILE_LEN {
        return Err(FilesError::Invalid {
            path: path.to_path_buf(),
            what: "Parley identity file",
            reason: format!("{len} bytes is too large"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_JSON_FILE_LEN)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

/// Reads a JSON file (a request, a response) of at most [`MAX_JSON_FILE_LEN`] bytes.
pub fn read_json_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, FilesError> {
    let bytes = read_bounded(path)?;
    serde_json::from_slice(&bytes).map_err(|e| FilesError::Invalid {
        path: path.to_path_buf(),
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Validity;

    /// Enrols `node` of `root` into `dir` through an in-memory request.
    fn enroll(root: &Issuer, dir: &IdentityDir, node: &str) -> Credential {
        let subject = SpiffeId::from_segments(root.id().trust_domain(), &["node", node]).unwrap();
        let pending = PendingRequest::new(subject);
        let response = IssueResponse {
            issued: root
                .issue(pending.request(), Validity::starting(1_000, 3_600))
                .unwrap(),
            trust_domain: root.id().trust_domain().to_owned(),
            root_public_key: encode_public_key(&root.public_key()),
        };
        dir.accept_pending(pending, &response, 1_100, 60).unwrap()
    }

    /// Class 13 of the zero-trust issue: the bundle's and the directory's modes were
    /// not checked, so any user who could write them chose this node's roots.
    #[test]
    fn a_trust_bundle_or_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = Issuer::generate_root("example.org").unwrap();
        let temp = tempfile::tempdir().unwrap();
        let dir = IdentityDir::new(temp.path().join("node"));
        enroll(&root, &dir, "a");
        assert!(dir.load_credential().is_ok());
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let bundle = dir.path().join("trust-bundle.json");
        let original = std::fs::metadata(&bundle).unwrap().permissions().mode() & 0o777;
        for (path, mode, restore) in [
            (bundle.clone(), 0o666, original),
            (dir.path().to_path_buf(), 0o777, 0o700),
        ] {
            chmod(&path, mode);
            let error = dir.load_bundle().unwrap_err();
            assert!(
                matches!(&error, FilesError::WritableByOthers { path: p, .. } if *p == path),
                "{error}"
            );
            assert!(error.to_string().contains("chmod go-w"), "{error}");
            chmod(&path, restore);
        }
        assert!(dir.load_credential().is_ok());
    }

    #[test]
    fn a_replaced_key_and_certificate_stay_a_pair_across_a_crash() {
        let root = Issuer::generate_root("example.org").unwrap();
        let temp = tempfile::tempdir().unwrap();
        let dir = IdentityDir::new(temp.path().join("node"));
        let old = enroll(&root, &dir, "a");
        let other = IdentityDir::new(temp.path().join("renewed"));
        let new = enroll(&root, &other, "a");
        let file = |d: &IdentityDir, name: &str| d.path().join(name);
        let copy = |name: &str, to: &str| {
            std::fs::copy(file(&other, name), file(&dir, to)).unwrap();
        };
        let loaded_key = || dir.load_credential().unwrap().public_key();

        // Crash before the commit: only the new key was written; the old pair stays.
        copy("node.key", "node.key.next");
        assert_eq!(loaded_key(), old.public_key());
        assert!(!file(&dir, "node.key.next").exists());

        // Crash after the commit, before the renames: the swap is completed.
        copy("node.key", "node.key.next");
        copy("node.cert", "node.cert.next");
        assert_eq!(loaded_key(), new.public_key());

        // Crash between the two renames: the certificate follows the key.
        let third = IdentityDir::new(temp.path().join("third"));
        let newest = enroll(&root, &third, "a");
        std::fs::copy(file(&third, "node.key"), file(&dir, "node.key")).unwrap();
        std::fs::copy(file(&third, "node.cert"), file(&dir, "node.cert.next")).unwrap();
        assert_eq!(loaded_key(), newest.public_key());
        for leftover in ["node.key.next", "node.cert.next"] {
            assert!(!file(&dir, leftover).exists(), "{leftover} left behind");
        }
    }
}
