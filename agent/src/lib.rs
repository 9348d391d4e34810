//! The Parley agent and CLI.
//!
//! The `parley` binary is a thin wrapper over [`cli::Cli`]. The daemon (`parley agent`)
//! serves the local API ([`api`]), keeps workloads in the store, and drives Podman through
//! the [`runtime::ContainerRuntime`] trait; [`node`] holds the logic tying these together
//! and [`reconcile`] keeps Podman in line with the store.

pub mod api;
pub mod capacity;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod enroll;
pub mod fence_watch;
#[doc(hidden)]
pub mod fuzz;
pub mod hostcheck;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod reconcile;
pub mod runtime;
pub mod systemd;
pub mod transport;
