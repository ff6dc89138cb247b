//! Per-target live figures (in flight, latency and success EWMAs, cached metric handles), a
//! model pool with its runtime state, and the pool's `max_concurrent` slot a lease holds.

use llmux_core::config::BreakerConfig;
use llmux_core::plan::{Bound, PlannedPool};
use llmux_core::select::Candidate;
use llmux_core::{Measure, Timestamp, Usage};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Live figures of one target, for strategies and health.
#[derive(Debug)]
pub struct TargetStats {
    /// `provider/key/model`, the metrics label.
    pub(crate) label: String,
    /// The same, as the `x-llmux-target` header value.
    pub(crate) header: http::HeaderValue,
    /// Metric handles of the success path, registered on first use (after the gateway has
    /// installed its recorder), so a request does no label allocation or registry lookup.
    ok_metrics: std::sync::OnceLock<(metrics::Counter, metrics::Histogram)>,
    /// `llmux_usage_unknown_total` and the input and output `llmux_estimate_error_ratio`.
    usage_metrics: std::sync::OnceLock<(metrics::Counter, metrics::Histogram, metrics::Histogram)>,
    /// `llmux_upstream_first_byte_seconds`: time to the answer's head (a stream's first byte).
    first_byte: std::sync::OnceLock<metrics::Histogram>,
    in_flight: AtomicU64,
    /// Latency EWMA in microseconds, as f64 bits.
    latency_us: AtomicU64,
    /// Success EWMA in 0..=1, as f64 bits (starts at 1).
    success: AtomicU64,
    /// This process's recent outcomes, which trip the target's (stored) breaker.
    failures: parking_lot::Mutex<Failures>,
    /// When the last latency or success sample came (ms since the epoch): the EWMAs decay
    /// with the time since, so an idle target that once failed or was slow recovers.
    last_sample_ms: std::sync::atomic::AtomicI64,
    /// Until when the low limits this process last wrote for the target's key hold (ms; 0:
    /// none).
    low_limits_until_ms: std::sync::atomic::AtomicI64,
    /// A quota of a day or longer runs out before its window ends at its recent rate
    /// (`Router::refresh_capacity`): routing tries the targets that last first.
    pub(crate) short: std::sync::atomic::AtomicBool,
    /// The pool's waiters, woken when a lease on this target ends.
    queue: Arc<crate::queue::WaitQueue>,
}

/// How fast the EWMAs forget an idle target: after this long without a sample, what they
/// remember of a failure or a slow answer has shrunk to 1/e.
const DECAY_MS: f64 = 10_000.0;

/// Outcomes seen by this process, for the breaker's two rules: `failures` in a row, or a
/// failure rate over a tumbling window of `window_secs` once `min_requests` were seen.
#[derive(Debug, Default)]
struct Failures {
    in_a_row: u32,
    window_start_ms: i64,
    requests: u32,
    failed: u32,
}

impl TargetStats {
    pub(crate) fn new(label: String, queue: Arc<crate::queue::WaitQueue>) -> Self {
        TargetStats {
            header: http::HeaderValue::from_str(&label)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
            label,
            ok_metrics: std::sync::OnceLock::new(),
            usage_metrics: std::sync::OnceLock::new(),
            first_byte: std::sync::OnceLock::new(),
            in_flight: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            success: AtomicU64::new(1f64.to_bits()),
            failures: parking_lot::Mutex::new(Failures::default()),
            last_sample_ms: std::sync::atomic::AtomicI64::new(0),
            low_limits_until_ms: std::sync::atomic::AtomicI64::new(0),
            short: std::sync::atomic::AtomicBool::new(false),
            queue,
        }
    }

    /// Count an outcome for the breaker at `now`; true when it trips the breaker (the counts
    /// start over then).
    pub(crate) fn breaker_outcome(&self, ok: bool, now: Timestamp, cfg: &BreakerConfig) -> bool {
        let mut f = self.failures.lock();
        let window_ms = llmux_core::time::secs_to_millis(cfg.window_secs);
        if now.0 >= f.window_start_ms.saturating_add(window_ms) || now.0 < f.window_start_ms {
            f.window_start_ms = now.0;
            f.requests = 0;
            f.failed = 0;
        }
        f.requests = f.requests.saturating_add(1);
        if ok {
            f.in_a_row = 0;
            return false;
        }
        f.in_a_row = f.in_a_row.saturating_add(1);
        f.failed = f.failed.saturating_add(1);
        let by_rate = f.requests >= cfg.min_requests
            && f64::from(f.failed) >= cfg.failure_rate * f64::from(f.requests);
        let trip = f.in_a_row >= cfg.failures || by_rate;
        if trip {
            *f = Failures {
                window_start_ms: now.0,
                ..Failures::default()
            };
        }
        trip
    }
    /// The usage to commit for an answer that reported `reported`: that, or (absent usage is
    /// not zero) the estimate, counted in `llmux_usage_unknown_total`. A reported usage also
    /// records the estimate's error, actual / estimate, for input and output.
    pub(crate) fn observe_usage(&self, reported: Option<Usage>, estimate: Usage) -> Usage {
        let (unknown, input, output) = self.usage_metrics.get_or_init(|| {
            let ratio = |m: &'static str| {
                metrics::histogram!("llmux_estimate_error_ratio", "target" => self.label.clone(), "measure" => m)
            };
            (
                metrics::counter!("llmux_usage_unknown_total", "target" => self.label.clone()),
                ratio("input"),
                ratio("output"),
            )
        });
        let Some(actual) = reported else {
            unknown.increment(1);
            return estimate;
        };
        if estimate.input_tokens > 0 {
            input.record(actual.input_tokens as f64 / estimate.input_tokens as f64);
        }
        if estimate.output_tokens > 0 {
            output.record(actual.output_tokens as f64 / estimate.output_tokens as f64);
        }
        actual
    }

    pub(crate) fn record_ok(&self, latency: Option<Duration>) {
        let (count, hist) = self.ok_metrics.get_or_init(|| {
            (
                metrics::counter!("llmux_upstream_requests_total", "target" => self.label.clone(), "outcome" => "ok"),
                metrics::histogram!("llmux_upstream_latency_seconds", "target" => self.label.clone()),
            )
        });
        count.increment(1);
        if let Some(l) = latency {
            hist.record(l.as_secs_f64());
        }
    }
    /// This process wrote low learned limits for the key that still hold at `now`.
    pub(crate) fn wrote_low_limits(&self, now: Timestamp) -> bool {
        self.low_limits_until_ms.load(Ordering::Acquire) > now.0
    }
    /// Remember the reset of low limits just written (`None`: healthy ones replaced them).
    pub(crate) fn note_low_limits(&self, until: Option<Timestamp>) {
        self.low_limits_until_ms
            .store(until.map_or(0, |t| t.0), Ordering::Release);
    }

    pub(crate) fn record_first_byte(&self, d: Duration) {
        self.first_byte
            .get_or_init(|| {
                metrics::histogram!("llmux_upstream_first_byte_seconds", "target" => self.label.clone())
            })
            .record(d.as_secs_f64());
    }
    pub(crate) fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn finish(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // Its settle is queued in the store already: a waiter's next reserve sees it.
        self.queue.wake_head();
    }
    fn ewma(cell: &AtomicU64, sample: f64, alpha: f64) {
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
            let old = f64::from_bits(bits);
            let new = if old == 0.0 {
                sample
            } else {
                old + alpha * (sample - old)
            };
            Some(new.to_bits())
        });
    }
    pub(crate) fn record_success(&self, latency: Duration, now: Timestamp) {
        self.settle_decay(now);
        Self::ewma(&self.latency_us, latency.as_micros() as f64, 0.2);
        Self::ewma(&self.success, 1.0, 0.1);
    }
    pub(crate) fn record_failure(&self, now: Timestamp) {
        self.settle_decay(now);
        Self::ewma(&self.success, 0.0, 0.1);
    }

    /// How much of the EWMAs' memory is left at `now` (1 right after a sample).
    fn kept(&self, now: Timestamp) -> f64 {
        let last = self.last_sample_ms.load(Ordering::Acquire);
        let idle = now.0.saturating_sub(last).max(0) as f64;
        (-idle / DECAY_MS).exp()
    }

    /// Before a new sample, fold the decay since the last one into the stored figures.
    fn settle_decay(&self, now: Timestamp) {
        let kept = self.kept(now);
        self.last_sample_ms.store(now.0, Ordering::Release);
        if kept < 1.0 {
            let _ = self
                .success
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some((1.0 - (1.0 - f64::from_bits(b)) * kept).to_bits())
                });
            let _ = self
                .latency_us
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some((f64::from_bits(b) * kept).to_bits())
                });
        }
    }

    /// The target's figures at `now`: success decays towards 1 and latency towards 0 (untried)
    /// with idle time.
    pub(crate) fn candidate(&self, weight: u64, priority: i32, now: Timestamp) -> Candidate {
        let kept = self.kept(now);
        let success = f64::from_bits(self.success.load(Ordering::Acquire));
        Candidate {
            weight,
            priority,
            in_flight: self.in_flight.load(Ordering::Acquire),
            score: 1.0 - (1.0 - success) * kept,
            latency_us: f64::from_bits(self.latency_us.load(Ordering::Acquire)) * kept,
            cost: None,
        }
    }
}

/// A model pool with its runtime state.
pub(crate) struct Pool {
    pub(crate) plan: PlannedPool,
    /// Per target: provider + key + pool resources.
    pub(crate) bounds: Vec<Arc<[Bound]>>,
    pub(crate) stats: Vec<Arc<TargetStats>>,
    /// Advances once per request (round-robin).
    pub(crate) turn: AtomicU64,
    /// Requests in flight, for `max_concurrent`.
    pub(crate) active: Arc<AtomicU32>,
    /// Requests waiting for capacity (see `router::waiting`).
    pub(crate) queue: Arc<crate::queue::WaitQueue>,
    /// Spaces the batch items sent to this pool (see [`Pacer`]).
    pub(crate) pacer: Option<Pacer>,
}

impl Pool {
    pub(crate) fn new(plan: PlannedPool) -> Pool {
        let bounds: Vec<Arc<[Bound]>> = plan
            .targets
            .iter()
            .map(|t| {
                t.bounds
                    .iter()
                    .chain(plan.bounds.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        let queue = Arc::new(crate::queue::WaitQueue::default());
        let stats = plan
            .targets
            .iter()
            .map(|t| Arc::new(TargetStats::new(t.id.to_string(), queue.clone())))
            .collect();
        let pacer = Pacer::for_bounds(&bounds);
        Pool {
            plan,
            bounds,
            stats,
            pacer,
            turn: AtomicU64::new(0),
            active: Arc::new(AtomicU32::new(0)),
            queue,
        }
    }
}

/// The longest window whose request limit paces batch items.
const PACED_WINDOW_SECS: u64 = 60;

/// Spaces the starts of a pool's batch items evenly at the rate its request limits allow, so
/// that a window's capacity is spread across it instead of spent in a burst as it opens: an
/// upstream that counts over a sliding window (as the big APIs do) then never sees more than
/// its limit in any stretch of that length. Only request-count limits with windows of at most
/// [`PACED_WINDOW_SECS`] pace (rate limits, not quotas: 100 a day must not space items 14
/// minutes apart); the reservations stay what keeps every limit exact.
#[derive(Debug)]
pub(crate) struct Pacer {
    every: Duration,
    next: parking_lot::Mutex<Option<Instant>>,
}

impl Pacer {
    /// The pacer of a pool whose targets have `bounds` (each target's own and shared ones):
    /// the pool's rate is the sum of each target's tightest request rate, and no more than
    /// any limit that every target shares. `None` when a target has no such limit.
    pub(crate) fn for_bounds(bounds: &[Arc<[Bound]>]) -> Option<Pacer> {
        let rate = |b: &Bound| {
            let secs = b
                .resource
                .period
                .fixed_secs()
                .filter(|s| *s <= PACED_WINDOW_SECS)?;
            (b.resource.measure == Measure::Requests)
                .then(|| b.resource.capacity as f64 / secs as f64)
        };
        let mut total = 0.0;
        for target in bounds {
            total += target.iter().filter_map(rate).reduce(f64::min)?;
        }
        let shared = bounds.first()?.iter().filter(|b| {
            bounds.iter().all(|t| {
                t.iter()
                    .any(|o| o.subject == b.subject && o.resource.name == b.resource.name)
            })
        });
        let rate = shared.filter_map(rate).fold(total, f64::min);
        (rate > 0.0).then(|| Pacer {
            every: Duration::from_secs_f64(1.0 / rate),
            next: parking_lot::Mutex::new(None),
        })
    }

    /// Take the next start slot: how long to wait for it.
    pub(crate) fn slot(&self, now: Instant) -> Duration {
        let mut next = self.next.lock();
        let at = next.map_or(now, |n| n.max(now));
        *next = Some(at + self.every);
        at - now
    }
}

/// Holds one of a model pool's `max_concurrent` slots until dropped.
#[derive(Debug)]
pub(crate) struct PoolSlot(Arc<AtomicU32>);

impl PoolSlot {
    /// Take a slot of `pool` if fewer than `max` are taken.
    pub(crate) fn take(pool: &Pool, max: u32) -> Option<PoolSlot> {
        let prev = pool.active.fetch_add(1, Ordering::AcqRel);
        let slot = PoolSlot(pool.active.clone());
        (prev < max).then_some(slot)
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmux_core::config::{Enforce, Resource};
    use llmux_core::{Period, Subject};

    fn bound(subject: &str, name: &str, capacity: u64, period: Period, measure: Measure) -> Bound {
        let resource = Resource {
            name: name.into(),
            capacity,
            period,
            measure,
            enforce: Enforce::Hard,
        };
        Bound::new(Subject::new(subject), resource, jiff::tz::TimeZone::UTC)
    }

    fn every(targets: Vec<Vec<Bound>>) -> Option<Duration> {
        let bounds: Vec<Arc<[Bound]>> = targets.into_iter().map(Into::into).collect();
        Pacer::for_bounds(&bounds).map(|p| p.every)
    }

    #[test]
    fn pacing_follows_the_tightest_request_limit_summed_over_targets() {
        let rpm = |s: &str, n| bound(s, "rpm", n, Period::Minutely, Measure::Requests);
        let rps = |s: &str, n| bound(s, "rps", n, Period::Secondly, Measure::Requests);
        let tpm = |s: &str| bound(s, "tpm", 1_000, Period::Minutely, Measure::Tokens);
        let daily = |s: &str| bound(s, "rpd", 10, Period::Daily, Measure::Requests);
        let hourly = |s: &str| bound(s, "rph", 10, Period::Hourly, Measure::Requests);
        let ms = |ms| Some(Duration::from_millis(ms));
        // 600 a minute and 10 a second: one every 100 ms; tokens, hours and days do not pace.
        assert_eq!(
            every(vec![vec![
                rpm("p/a", 600),
                rps("p/a", 10),
                tpm("p/a"),
                daily("p/a"),
                hourly("p/a")
            ]]),
            ms(100)
        );
        // Two keys of 10/s each: 20/s together.
        assert_eq!(
            every(vec![vec![rps("p/a", 10)], vec![rps("p/b", 10)]]),
            ms(50)
        );
        // ... unless a limit both share allows fewer.
        assert_eq!(
            every(vec![
                vec![rps("p/a", 10), rps("p", 10)],
                vec![rps("p/b", 10), rps("p", 10)]
            ]),
            ms(100)
        );
        // A target without a request limit of a minute or less: no pacing.
        assert_eq!(every(vec![vec![hourly("p/a")]]), None);
        assert_eq!(every(vec![vec![rps("p/a", 10)], vec![daily("p/b")]]), None);
        assert_eq!(every(vec![]), None);
    }

    #[test]
    fn slots_are_evenly_spaced_and_never_saved_up() {
        let bounds: Vec<Arc<[Bound]>> =
            vec![vec![bound("p/a", "rps", 4, Period::Secondly, Measure::Requests)].into()];
        let pacer = Pacer::for_bounds(&bounds).unwrap();
        let t0 = Instant::now();
        let waits: Vec<_> = (0..3).map(|_| pacer.slot(t0)).collect();
        assert_eq!(waits, [0, 250, 500].map(Duration::from_millis));
        // Idle for a while: the next item starts at once, and the one after it a slot later.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(pacer.slot(later), Duration::ZERO);
        assert_eq!(pacer.slot(later), Duration::from_millis(250));
    }
}
