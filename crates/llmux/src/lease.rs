//! `Lease`: a reservation held for one request on one target.
//!
//! Settle it with [`Lease::complete`], [`Lease::rate_limited`] or [`Lease::failed`]; each takes
//! `self`, so a lease is settled once. A lease dropped unsettled releases its reservation in
//! the background (drop never awaits), and a crashed process loses at most the lease TTL.

use crate::ledger::Ledger;
use crate::stats::{PoolSlot, TargetStats};
use llmux_core::plan::{lines, Bound};
use llmux_core::store::{LeaseId, Store};
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
    _slot: Option<PoolSlot>,
    settled: bool,
    /// Reserved in the process-local fallback store (fail-open while the store was down).
    local: bool,
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
    pub(crate) slot: Option<PoolSlot>,
    pub(crate) local: bool,
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
            _slot: g.slot,
            settled: false,
            local: g.local,
        }
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

    /// The lines to commit for `usage`, in the windows of `now`.
    fn used_lines(&self, usage: &Usage, now: Timestamp) -> Vec<llmux_core::Line> {
        let mut v = lines(self.bounds.iter(), usage, now);
        if let Some(extra) = &self.extra {
            v.extend(lines(extra.iter(), usage, now));
        }
        v
    }

    /// The request succeeded: swap the reservation for the usage the upstream reported.
    pub async fn complete(mut self, usage: Usage, latency: Duration) -> Result<(), StoreError> {
        self.settled = true;
        self.stats.record_success(latency);
        self.commit_usage(&usage).await
    }

    async fn commit_usage(&self, usage: &Usage) -> Result<(), StoreError> {
        let now = self.ledger.clock.now();
        let used = self.used_lines(usage, now);
        self.ledger.commit(self.id, now, used, self.local).await
    }

    /// The upstream answered 429: release the reservation and cool the key down for
    /// `retry_after` (1 s when the upstream gave no hint).
    pub async fn rate_limited(mut self, retry_after: Option<Duration>) -> Result<(), StoreError> {
        self.settled = true;
        self.stats.record_failure();
        let until = cooldown_until(self.ledger.clock.now(), retry_after);
        self.ledger.note_local_gate(&self.key_subject, until);
        self.ledger.release(self.id, self.local).await?;
        match self
            .ledger
            .store
            .set_cooldown(self.key_subject.clone(), until)
            .await
        {
            // Fail-open: the cooldown holds in this process until the store is back.
            Err(e) if self.local => {
                tracing::error!(error = %e, "could not share a cooldown: the store is unreachable");
                Ok(())
            }
            other => other,
        }
    }

    /// The request failed upstream: it counts as one request and no tokens.
    pub async fn failed(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.stats.record_failure();
        self.commit_usage(&Usage::default()).await
    }

    /// The request left but its answer was lost (a timeout, a reset): the upstream may have
    /// done the work, so the estimate is committed.
    pub(crate) async fn lost(mut self) -> Result<(), StoreError> {
        self.settled = true;
        let estimate = self.estimate;
        self.commit_usage(&estimate).await
    }

    /// Give the reservation back: the upstream never saw the request.
    pub async fn release(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.ledger.release(self.id, self.local).await
    }

    /// Settle as [`Lease::complete`] without waiting (the gateway's path: the client never
    /// waits on the reconcile).
    pub(crate) fn complete_detached(mut self, usage: Usage, latency: Duration) {
        self.settled = true;
        self.stats.record_success(latency);
        let now = self.ledger.clock.now();
        let used = self.used_lines(&usage, now);
        self.ledger.commit_detached(self.id, now, used, self.local);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stats.finish();
        if !self.settled {
            self.ledger.release_later(self.id, self.local);
        }
    }
}
