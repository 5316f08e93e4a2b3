//! Timestamps for the benchmark (`benches/lifecycle.rs`): when the native side last
//! called the state observer and an operation's completion, so that the benchmark can
//! tell how long an event takes to reach a subscriber and a completion to reach the
//! caller. Not part of the API (hidden from the documentation); off unless enabled,
//! which costs one relaxed atomic load per callback.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static OBSERVER_NS: AtomicU64 = AtomicU64::new(0);
static COMPLETION_NS: AtomicU64 = AtomicU64::new(0);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Starts (or stops) recording.
pub fn enable(on: bool) {
    base();
    ENABLED.store(on, Ordering::SeqCst);
}

/// Nanoseconds on the probe's monotonic clock.
#[must_use]
pub fn now_ns() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// When the native side last called a VM's state observer ([`now_ns`] clock; 0: never).
#[must_use]
pub fn last_observer_call_ns() -> u64 {
    OBSERVER_NS.load(Ordering::Acquire)
}

/// When the native side last called a lifecycle completion ([`now_ns`] clock; 0: never).
#[must_use]
pub fn last_completion_ns() -> u64 {
    COMPLETION_NS.load(Ordering::Acquire)
}

pub(crate) fn observer_called() {
    if ENABLED.load(Ordering::Relaxed) {
        OBSERVER_NS.store(now_ns(), Ordering::Release);
    }
}

pub(crate) fn completion_called() {
    if ENABLED.load(Ordering::Relaxed) {
        COMPLETION_NS.store(now_ns(), Ordering::Release);
    }
}
