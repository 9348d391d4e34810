//! Parley's identities: SPIFFE IDs and certificateless-style keys (ECQV implicit
//! certificates, SEC 4, on P-256) for nodes and workloads.
//!
//! See DESIGN.md, "Identity":
//! - [`spiffe`]: SPIFFE IDs, validated per the specification;
//! - [`ecqv`]: the SEC 4 scheme on P-256; [`cert`]: Parley's implicit certificate;
//! - [`credential`]: issuing, accepting and verifying root → node → workload chains, and
//!   domain-separated message signatures;
//! - [`keyfile`], [`files`]: secret files (0600, zeroized) and the identity directory;
//! - [`tls`]: rustls verifiers that authenticate QUIC peers by their ECQV identity.

pub mod cert;
pub mod credential;
pub mod ecqv;
pub mod files;
pub mod keyfile;
pub mod revocation;
pub mod spiffe;
pub mod tls;

pub use credential::{
    CertRequest, Credential, IdentityError, IssuedCert, Issuer, PendingRequest, TrustBundle,
    Validity, VerifiedIdentity,
};
/// The P-256 public key type every identity uses.
pub use p256::PublicKey;
pub use spiffe::{SpiffeId, SpiffeIdError};
