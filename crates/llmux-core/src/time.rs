//! Time as an input. Core never reads a clock: callers pass `now` down, read once per request
//! from a [`Clock`]. [`SystemClock`] is the one place that reads the system time;
//! [`ManualClock`] lets tests move time by hand.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// An instant in UTC, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }
    /// This instant plus `ms` milliseconds (saturating).
    pub fn plus_millis(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
    /// This instant plus `d` (saturating).
    pub fn plus(self, d: std::time::Duration) -> Timestamp {
        self.plus_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
    /// Whole seconds from `self` until `later`, rounded up, at least 0.
    /// RFC 3339 in UTC (`2026-12-04T12:00:00Z`, with fractional seconds when there are any).
    pub fn rfc3339(self) -> String {
        jiff::Timestamp::from_millisecond(self.0)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
    pub fn secs_until_ceil(self, later: Timestamp) -> u64 {
        let ms = later.0.saturating_sub(self.0).max(0);
        (ms as u64).div_ceil(1000)
    }
}

/// `secs` seconds in milliseconds, saturating (config bounds every duration, so this never
/// saturates in practice, but it never wraps either).
pub fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the system clock
    fn now(&self) -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
    pub fn advance_millis(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
