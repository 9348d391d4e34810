//! Parley's identities: SPIFFE IDs and ECQV implicit certificates (SEC 4) for nodes and
//! workloads.
//!
//! The crate is part of the workspace from the start so that its place in the layout is
//! fixed; its contents arrive with the identity work (see DESIGN.md, "Identity"). Nothing
//! in the agent depends on it yet.
