//! The wall clock, read in one place.
//!
//! The agent compares times across nodes (reservation expiry, message time windows,
//! certificate validity), so every reading must mean the same instant on every node: the
//! system clock, kept close by NTP. Reading it only here keeps the rest of the agent
//! testable and lets clippy (`disallowed-methods` in `clippy.toml`) refuse a stray
//! `SystemTime::now` elsewhere.

#![allow(clippy::disallowed_methods)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero for a clock set before 1970.
fn since_epoch() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    since_epoch().as_millis() as u64
}

/// Microseconds since the Unix epoch (log windows are in microseconds).
pub fn unix_micros() -> u64 {
    since_epoch().as_micros() as u64
}

/// Nanoseconds since the Unix epoch, for seeding non-secret counters.
pub fn unix_nanos() -> u64 {
    since_epoch().as_nanos() as u64
}
