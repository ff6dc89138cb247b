//! Capacity states and forecasts: how much of a resource is left, in words, and when it runs
//! out at the rate it has been used in its window. Pure: `now` is a parameter.

use crate::store::Counter;
use crate::time::Timestamp;
use serde::Serialize;

/// How much of a resource's window is left, by `capacity_thresholds = [a, c]`: `abundant`
/// above `a`, `constrained` above `c`, `critical` above 0, `exhausted` at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityState {
    Abundant,
    Constrained,
    Critical,
    Exhausted,
}

impl CapacityState {
    pub fn name(self) -> &'static str {
        match self {
            CapacityState::Abundant => "abundant",
            CapacityState::Constrained => "constrained",
            CapacityState::Critical => "critical",
            CapacityState::Exhausted => "exhausted",
        }
    }
    /// 3 abundant … 0 exhausted (a metric's value).
    pub fn level(self) -> u8 {
        match self {
            CapacityState::Abundant => 3,
            CapacityState::Constrained => 2,
            CapacityState::Critical => 1,
            CapacityState::Exhausted => 0,
        }
    }
}

impl Counter {
    /// The state of this counter at `now` (reservations in flight count as used).
    pub fn capacity_state(&self, now: Timestamp, thresholds: [f64; 2]) -> CapacityState {
        let frac = self.remaining_fraction(now);
        if frac <= 0.0 {
            CapacityState::Exhausted
        } else if frac > thresholds[0] {
            CapacityState::Abundant
        } else if frac > thresholds[1] {
            CapacityState::Constrained
        } else {
            CapacityState::Critical
        }
    }

    /// When the capacity runs out if use goes on at its rate so far in this window (used
    /// over the time since the window started); `None` when it lasts the window (or nothing
    /// was used yet). Already exhausted: `now`.
    pub fn exhausts_at(&self, now: Timestamp) -> Option<Timestamp> {
        if now >= self.window.end {
            return None;
        }
        let taken = self.used.saturating_add(self.reserved);
        let left = self.capacity.saturating_sub(taken);
        if left == 0 {
            return Some(now);
        }
        let elapsed = now.0.saturating_sub(self.window.start.0).max(1) as f64;
        if self.used == 0 {
            return None;
        }
        let rate = self.used as f64 / elapsed;
        let at = now.0 as f64 + left as f64 / rate;
        (at < self.window.end.0 as f64).then(|| Timestamp(at.ceil() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Window;

    fn c(capacity: u64, used: u64, reserved: u64) -> Counter {
        Counter {
            capacity,
            used,
            reserved,
            window: Window {
                start: Timestamp(0),
                end: Timestamp(100_000),
            },
        }
    }

    #[test]
    fn states_follow_the_thresholds() {
        let t = [0.5, 0.2];
        let now = Timestamp(10);
        assert_eq!(c(100, 0, 0).capacity_state(now, t), CapacityState::Abundant);
        assert_eq!(
            c(100, 50, 0).capacity_state(now, t),
            CapacityState::Constrained
        );
        assert_eq!(
            c(100, 70, 10).capacity_state(now, t),
            CapacityState::Critical
        );
        assert_eq!(
            c(100, 90, 10).capacity_state(now, t),
            CapacityState::Exhausted
        );
        // A window that has ended starts over.
        assert_eq!(
            c(100, 100, 0).capacity_state(Timestamp(100_000), t),
            CapacityState::Abundant
        );
    }

    #[test]
    fn forecast_extrapolates_the_rate_within_the_window() {
        // 40 of 100 used in the first 20 s: 60 left at 2/s runs out 30 s later.
        assert_eq!(
            c(100, 40, 0).exhausts_at(Timestamp(20_000)),
            Some(Timestamp(50_000))
        );
        // 10 used in 50 s: the rest lasts past the window's end.
        assert_eq!(c(100, 10, 0).exhausts_at(Timestamp(50_000)), None);
        assert_eq!(c(100, 0, 0).exhausts_at(Timestamp(50_000)), None);
        assert_eq!(c(100, 100, 0).exhausts_at(Timestamp(5)), Some(Timestamp(5)));
    }
}
