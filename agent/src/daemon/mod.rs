//! The running agent's composition: how its tasks start and, above all, how they stop.

pub mod shutdown;
