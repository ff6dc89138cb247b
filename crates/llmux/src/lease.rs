//! `Lease`: a reservation held for one request on one target.
//!
//! Settle it with [`Lease::complete`], [`Lease::rate_limited`] or [`Lease::failed`]; each takes
//! `self`, so a lease is settled once. A lease dropped unsettled releases its reservation in
//! the background (drop never awaits), and a crashed process loses at most the lease TTL.

use crate::ledger::Ledger;
use crate::stats::{PoolSlot, TargetStats};
use llmux_core::config::{Health, Price};
use llmux_core::health::HealthOp;
use llmux_core::plan::Bound;
use llmux_core::store::{LeaseId, Store};
use llmux_core::time::secs_to_millis;
use llmux_core::{Secret, StoreError, Subject, TargetId, Timestamp, Usage};
use std::sync::Arc;
use std::time::Duration;

/// When a key told to wait `retry_after` at `now` may serve again (1 s without a hint).
pub(crate) fn cooldown_until(now: Timestamp, retry_after: Option<Duration>) -> Timestamp {
    now.plus(retry_after.unwrap_or(Duration::from_secs(1)))
}

/// A granted reservation on one target.
#[must_use = "settle it: complete(), failed() or rate_limited()"]
pub struct Lease {
    id: LeaseId,
    target: TargetId,
    secret: Secret,
    key_subject: Subject,
    bounds: Arc<[Bound]>,
    extra: Option<Arc<[Bound]>>,
    estimate: Usage,
    ledger: Arc<Ledger>,
    pub(crate) stats: Arc<TargetStats>,
    /// The target's price: actual usage is costed at it.
    price: Option<Price>,
    _slot: Option<PoolSlot>,
    settled: bool,
    /// Reserved in the process-local fallback store (fail-open while the store was down).
    local: bool,
    /// `provider/key/model`: whose breaker the outcome counts for.
    target_gate: Subject,
    /// The provider's cooldown and breaker rules.
    health: Health,
    /// Granted as a half-open breaker's probe: its outcome closes or reopens the breaker.
    probe: bool,
    /// The outcome has been counted for the breaker.
    reported: bool,
    /// The request has been handed to the upstream: dropped unsettled from now on (the
    /// client hung up, the batch was cancelled), the estimate is committed, not released.
    sent: bool,
}

/// What a granted reservation is made of (see [`Lease::granted`]).
pub(crate) struct Grant {
    pub(crate) id: LeaseId,
    pub(crate) target: TargetId,
    pub(crate) secret: Secret,
    /// `provider/key`: what a 429 cools down and a 401 disables.
    pub(crate) key_subject: Subject,
    /// The target's resource bounds, and the gateway key's (`extra`).
    pub(crate) bounds: Arc<[Bound]>,
    pub(crate) extra: Option<Arc<[Bound]>>,
    pub(crate) estimate: Usage,
    pub(crate) stats: Arc<TargetStats>,
    pub(crate) price: Option<Price>,
    pub(crate) slot: Option<PoolSlot>,
    pub(crate) local: bool,
    pub(crate) target_gate: Subject,
    pub(crate) health: Health,
    pub(crate) probe: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id)
            .field("target", &self.target.to_string())
            .field("estimate", &self.estimate)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A lease for a grant the store just made; counts the target's request in flight.
    pub(crate) fn granted(g: Grant, ledger: Arc<Ledger>) -> Lease {
        g.stats.start();
        Lease {
            id: g.id,
            target: g.target,
            secret: g.secret,
            key_subject: g.key_subject,
            bounds: g.bounds,
            extra: g.extra,
            estimate: g.estimate,
            ledger,
            stats: g.stats,
            price: g.price,
            _slot: g.slot,
            settled: false,
            local: g.local,
            target_gate: g.target_gate,
            health: g.health,
            probe: g.probe,
            reported: false,
            sent: false,
        }
    }

    /// The request is about to leave for the upstream: from now on the upstream may do the
    /// work whatever happens to the caller, so dropping the lease unsettled commits the
    /// estimate (the unknown-usage rule) instead of releasing it.
    pub(crate) fn mark_sent(&mut self) {
        self.sent = true;
    }

    /// Count the attempt's outcome for the target's breaker, once: a failure that trips it
    /// (or a failed probe) opens it in the store; a probe's success closes it.
    pub(crate) fn report(&mut self, ok: bool) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let now = self.ledger.clock.now();
        let cfg = &self.health.breaker;
        let trips = self.stats.breaker_outcome(ok, now, cfg);
        let change = match (ok, self.probe || trips) {
            (true, _) if self.probe => Some(None),
            (false, true) => {
                let until = now.plus_millis(secs_to_millis(cfg.open_secs));
                tracing::warn!(target = %self.target, open_secs = cfg.open_secs, "circuit breaker open");
                metrics::counter!("llmux_breaker_opened_total", "target" => self.stats.label.clone())
                    .increment(1);
                Some(Some(until))
            }
            _ => None,
        };
        if let Some(until) = change {
            if until.is_none() {
                tracing::info!(target = %self.target, "circuit breaker closed: the probe succeeded");
            }
            // 0 closed, 1 open (as this process last saw it).
            metrics::gauge!("llmux_breaker_state", "target" => self.stats.label.clone())
                .set(if until.is_some() { 1.0 } else { 0.0 });
            self.ledger
                .health_later(self.target_gate.clone(), HealthOp::Breaker(until));
        }
    }

    /// Settle without counting for the breaker (the answer was the request's fault, e.g. 400).
    pub(crate) fn neutral(&mut self) {
        self.reported = true;
    }

    /// Granted as a half-open breaker's probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// `provider/key`: the subject a 429 cools down and a 401 disables.
    pub(crate) fn key_subject(&self) -> &Subject {
        &self.key_subject
    }

    /// The target to call: `provider/key/model`.
    pub fn target(&self) -> &TargetId {
        &self.target
    }
    /// The key's credential, to send upstream.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }
    /// The upstream model name.
    pub fn model(&self) -> &str {
        &self.target.model
    }
    /// What was reserved.
    pub fn estimate(&self) -> Usage {
        self.estimate
    }
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// The lines to commit for `usage`, in the windows of `now` (costed at the target's price,
    /// when it has one).
    fn used_lines(&self, usage: &Usage, now: Timestamp) -> Vec<llmux_core::Line> {
        let usage = &self.price.map_or(*usage, |p| p.priced(usage));
        let extra = self.extra.iter().flat_map(|e| e.iter());
        let mut v =
            Vec::with_capacity(self.bounds.len() + self.extra.as_ref().map_or(0, |e| e.len()));
        v.extend(self.bounds.iter().chain(extra).map(|b| b.line(usage, now)));
        v
    }

    /// The request succeeded: swap the reservation for the usage the upstream reported.
    pub async fn complete(mut self, usage: Usage, latency: Duration) -> Result<(), StoreError> {
        self.settled = true;
        self.report(true);
        self.stats.record_success(latency, self.ledger.clock.now());
        self.commit_usage(&usage).await
    }

    async fn commit_usage(&self, usage: &Usage) -> Result<(), StoreError> {
        let now = self.ledger.clock.now();
        let used = self.used_lines(usage, now);
        self.ledger.commit(self.id, now, used, self.local).await
    }

    /// The upstream answered 429: the request counts as one request and no tokens (upstreams
    /// count refused requests against their per-minute limits), and the key cools down for
    /// the longest of `retry_after` and the provider's growing cooldown (see
    /// [`llmux_core::health`]).
    pub async fn rate_limited(self, retry_after: Option<Duration>) -> Result<(), StoreError> {
        self.cool_down(retry_after).await.1
    }

    /// [`Lease::rate_limited`], also returning until when the key cools.
    pub(crate) async fn cool_down(
        mut self,
        retry_after: Option<Duration>,
    ) -> (Timestamp, Result<(), StoreError>) {
        self.settled = true;
        self.reported = true;
        self.stats.record_failure(self.ledger.clock.now());
        let now = self.ledger.clock.now();
        let op = HealthOp::RateLimited {
            now,
            hint: retry_after.map(|d| now.plus(d)),
            growth: self.health.cooldown,
        };
        let counted = self.commit_usage(&Usage::default()).await;
        let cooled = self.ledger.store.health(self.key_subject.clone(), op).await;
        let (until, shared) = match cooled {
            Ok(f) => (f.cooldown_until.unwrap_or(now), Ok(())),
            // Fail-open: the cooldown holds in this process until the store is back.
            Err(e) if self.local => {
                tracing::error!(error = %e, "could not share a cooldown: the store is unreachable");
                (cooldown_until(now, retry_after), Ok(()))
            }
            Err(e) => (cooldown_until(now, retry_after), Err(e)),
        };
        self.ledger.note_local_gate(&self.key_subject, until);
        (until, counted.and(shared))
    }

    /// The request failed upstream: it counts as one request and no tokens.
    pub async fn failed(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.report(false);
        self.stats.record_failure(self.ledger.clock.now());
        self.commit_usage(&Usage::default()).await
    }

    /// The request left but its answer was lost (a timeout, a reset): the upstream may have
    /// done the work, so the estimate is committed.
    pub(crate) async fn lost(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.report(false);
        let estimate = self.estimate;
        self.commit_usage(&estimate).await
    }

    /// Give the reservation back: the upstream never saw the request.
    pub async fn release(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.ledger.release(self.id, self.local).await
    }

    /// An answer that broke after it began (a cut or stalled stream): its usage is committed
    /// as for a success, but it counts as a failure for the breaker and the success rate.
    pub(crate) fn broken_detached(mut self, usage: Usage) {
        self.settled = true;
        self.report(false);
        let now = self.ledger.clock.now();
        self.stats.record_failure(now);
        self.commit_usage_detached(&usage, now);
    }

    /// Record `usage` without waiting (the store applies it in order).
    fn commit_usage_detached(&self, usage: &Usage, now: Timestamp) {
        let used = self.used_lines(usage, now);
        self.ledger.commit_detached(self.id, now, used, self.local);
    }

    /// Settle as [`Lease::complete`] without waiting (the gateway's path: the client never
    /// waits on the reconcile).
    pub(crate) fn complete_detached(mut self, usage: Usage, latency: Duration) {
        self.settled = true;
        self.report(true);
        let now = self.ledger.clock.now();
        self.stats.record_success(latency, now);
        self.commit_usage_detached(&usage, now);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stats.finish();
        if self.settled {
            return;
        }
        if self.sent {
            // It left: the upstream may have done the work, so the estimate stays.
            let now = self.ledger.clock.now();
            self.commit_usage_detached(&self.estimate, now);
        } else {
            self.ledger.release_later(self.id, self.local);
        }
    }
}
