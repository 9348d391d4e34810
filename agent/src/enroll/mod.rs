//! Identities over their whole life: enrolling a node with a join token (`join`), the
//! issuer that answers it, renewing at half-life (`renew`), loading a node's credential
//! at start (`credentials`), and the workload identities a node issues to its replicas
//! (`workload`).

pub mod credentials;
pub mod grant;
pub mod join;
pub mod renew;
pub mod workload;
