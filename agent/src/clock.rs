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

/// Milliseconds since the Unix epoch as the negotiation protocol reads them: the wall
/// clock when first read, then moved on by the monotonic clock only. It never jumps
/// (an NTP step, a clock set by hand), which the leases of strong workloads need: each
/// node measures them on its own clock, and one that jumped forward or back would end a
/// lease early or keep it too long. It strays from the wall clock only by the drift NTP
/// would have corrected, far inside what the protocol allows across nodes.
pub fn negotiation_millis() -> u64 {
    static START: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (at, wall) = START.get_or_init(|| (std::time::Instant::now(), unix_millis()));
    wall + at.elapsed().as_millis() as u64
}

/// Nanoseconds since the Unix epoch, for seeding non-secret counters.
pub fn unix_nanos() -> u64 {
    since_epoch().as_nanos() as u64
}
