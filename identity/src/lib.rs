//! Parley's identities: SPIFFE IDs and certificateless-style keys (ECQV implicit
//! certificates, SEC 4, on P-256) for nodes and workloads.
//!
//! See DESIGN.md, "Identity". This crate grows in steps: [`spiffe`] is complete; ECQV
//! issuance, chains, message signing and the rustls verifiers follow.

pub mod cert;
pub mod credential;
pub mod ecqv;
pub mod keyfile;
pub mod spiffe;
pub mod tls;

pub use credential::{
    CertRequest, Credential, IdentityError, IssuedCert, Issuer, PendingRequest, TrustBundle,
    Validity, VerifiedIdentity,
};
pub use spiffe::{SpiffeId, SpiffeIdError};
