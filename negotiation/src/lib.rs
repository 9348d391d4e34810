//! Parley's negotiation protocol, free of IO.
//!
//! This crate holds what agents agree on: the workload specification that a user submits
//! and, as the protocol grows, the messages, membership and auction state machines. It never
//! reads a clock or touches a socket, a store or a container runtime, so that everything in
//! it can be tested as plain data and, later, in a deterministic simulator.

pub mod auction;
pub mod codec;
pub mod lease;
pub mod membership;
pub mod messages;
pub mod negotiator;
pub mod ownership;
pub mod records;
pub mod register;
pub mod sim;
pub mod testing;
pub mod workload;

pub use workload::{
    Consistency, EnvVar, RestartPolicy, SpecError, VolumeMount, WorkloadName, WorkloadSpec,
};
