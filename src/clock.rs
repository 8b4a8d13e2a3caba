//! A process-wide millisecond clock for coarse per-session timestamps (last activity, rate limits):
//! a `u64` is half the size of an `Instant` in every session.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Microseconds since the first call in this process (same epoch on every core).
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}
