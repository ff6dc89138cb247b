//! Capacity states and forecasts, off the request path: every [`CAPACITY_REFRESH`] the router
//! reads the stored counters and flags of its providers and keys, publishes each resource's
//! state and forecast and each target's stored breaker state as metrics, and marks the targets whose long quotas (a day or longer) run out
//! before their window ends at the rate they are used. Routing tries the targets that last
//! their window first (see `candidates`).

use super::Router;
use crate::error::RouteError;
use llmux_core::health::BreakerState;
use llmux_core::store::{Counter, StoreAdmin};
use llmux_core::Timestamp;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the router reads the counters for states and forecasts.
pub(crate) const CAPACITY_REFRESH: Duration = Duration::from_secs(5);

/// Windows shorter than this never mark a target short: a minute's rate says little about
/// whether a monthly quota lasts, and short windows refill soon anyway.
const LONG_WINDOW_MS: i64 = 86_400_000;

impl Router {
    /// Read every provider's counters once: publish `llmux_capacity_state` (3 abundant,
    /// 2 constrained, 1 critical, 0 exhausted), `llmux_capacity_remaining_ratio` and
    /// `llmux_capacity_exhausts_in_seconds` (only while a forecast says it runs out in its
    /// window), and mark short targets.
    pub async fn refresh_capacity(&self) -> Result<(), RouteError> {
        let config = &self.inner.config;
        let now = self.inner.ledger.clock.now();
        let mut counters: HashMap<(String, String), Counter> = HashMap::new();
        let mut breakers = HashMap::new();
        for p in config.providers.keys() {
            for s in self.inner.ledger.store.snapshot(p.as_str()).await? {
                breakers.insert(s.subject.clone(), s.flags.breaker.state(now));
                for (r, c) in s.resources {
                    counters.insert((s.subject.clone(), r), c);
                }
            }
        }
        let thresholds = config.capacity_thresholds;
        let mut published = std::collections::HashSet::new();
        for pool in self.inner.pools.values() {
            for (i, t) in pool.plan.targets.iter().enumerate() {
                let mut short = false;
                for b in &t.bounds {
                    let key = (b.subject.to_string(), b.resource.name.to_string());
                    let Some(stored) = counters.get(&key) else {
                        continue;
                    };
                    let mut c = *stored;
                    c.capacity = b.resource.shown(c.capacity);
                    let ends_soon = c.exhausts_at(now).filter(|at| *at < c.window.end);
                    let long = c.window.end.0 - c.window.start.0 >= LONG_WINDOW_MS;
                    short |= long && ends_soon.is_some();
                    if published.insert(key.clone()) {
                        publish(&key.0, &key.1, &c, now, thresholds, ends_soon);
                    }
                }
                pool.stats[i].short.store(short, Ordering::Relaxed);
                // The breaker as the store holds it (opened by any replica): 0 closed, 1 open,
                // 2 half-open.
                let state = breakers
                    .get(t.target_gate().as_str())
                    .copied()
                    .unwrap_or(BreakerState::Closed);
                let level = match state {
                    BreakerState::Closed => 0.0,
                    BreakerState::Open => 1.0,
                    BreakerState::HalfOpen => 2.0,
                };
                metrics::gauge!("llmux_breaker_state", "target" => pool.stats[i].label.clone())
                    .set(level);
            }
        }
        Ok(())
    }
}

fn publish(
    subject: &str,
    resource: &str,
    c: &Counter,
    now: Timestamp,
    thresholds: [f64; 2],
    ends: Option<Timestamp>,
) {
    let labels = [
        ("subject", subject.to_string()),
        ("resource", resource.to_string()),
    ];
    let state = c.capacity_state(now, thresholds);
    metrics::gauge!("llmux_capacity_state", &labels).set(f64::from(state.level()));
    metrics::gauge!("llmux_capacity_remaining_ratio", &labels).set(c.remaining_fraction(now));
    let secs = ends.map_or(-1.0, |t| (t.0 - now.0).max(0) as f64 / 1000.0);
    metrics::gauge!("llmux_capacity_exhausts_in_seconds", &labels).set(secs);
}
