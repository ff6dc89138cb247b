//! `Lease`: a reservation held for one request on one target.
//!
//! Settle it with [`Lease::complete`], [`Lease::rate_limited`] or [`Lease::failed`]; each takes
//! `self`, so a lease is settled once. A lease dropped unsettled releases its reservation in
//! the background (drop never awaits), and a crashed process loses at most the lease TTL.

use crate::router::{Inner, TargetStats};
use llmux_core::plan::{lines, Bound};
use llmux_core::store::{LeaseId, Store};
use llmux_core::{Secret, StoreError, Subject, TargetId, Timestamp, Usage};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Holds one of a model pool's `max_concurrent` slots.
#[derive(Debug)]
pub(crate) struct PoolSlot(pub(crate) Arc<AtomicU32>);

impl Drop for PoolSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A granted reservation on one target.
#[must_use = "settle it: complete(), failed() or rate_limited()"]
pub struct Lease {
    pub(crate) id: LeaseId,
    pub(crate) target: TargetId,
    pub(crate) secret: Secret,
    pub(crate) key_subject: Subject,
    pub(crate) bounds: Arc<[Bound]>,
    pub(crate) extra: Option<Arc<[Bound]>>,
    pub(crate) estimate: Usage,
    pub(crate) inner: Arc<Inner>,
    pub(crate) stats: Arc<TargetStats>,
    pub(crate) _slot: Option<PoolSlot>,
    pub(crate) settled: bool,
    /// Reserved in the process-local fallback store (fail-open while the store was down).
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
        let now = self.inner.clock.now();
        let used = self.used_lines(usage, now);
        if self.local {
            self.inner.fallback.commit(self.id, now, used).await
        } else {
            self.inner.store.commit(self.id, now, used).await
        }
    }

    async fn release_now(&self) -> Result<(), StoreError> {
        if self.local {
            self.inner.fallback.release(self.id).await
        } else {
            self.inner.store.release(self.id).await
        }
    }

    /// The upstream answered 429: release the reservation and cool the key down for
    /// `retry_after` (1 s when the upstream gave no hint).
    pub async fn rate_limited(mut self, retry_after: Option<Duration>) -> Result<(), StoreError> {
        self.settled = true;
        self.stats.record_failure();
        let wait = retry_after.unwrap_or(Duration::from_secs(1));
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
        let until = self.inner.clock.now().plus_millis(wait_ms);
        self.inner.note_cooldown(&self.key_subject, until);
        self.release_now().await?;
        match self
            .inner
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

    /// Give the reservation back: the upstream never saw the request.
    pub async fn release(mut self) -> Result<(), StoreError> {
        self.settled = true;
        self.release_now().await
    }

    /// Settle as [`Lease::complete`] without waiting (the gateway's path: the client never
    /// waits on the reconcile).
    pub(crate) fn complete_detached(mut self, usage: Usage, latency: Duration) {
        self.settled = true;
        self.stats.record_success(latency);
        let now = self.inner.clock.now();
        let used = self.used_lines(&usage, now);
        if self.local {
            self.inner.fallback.commit_detached(self.id, now, used);
        } else {
            self.inner.store.commit_detached(self.id, now, used);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stats.finish();
        if !self.settled {
            let _ = self.inner.orphans.send((self.id, self.local));
        }
    }
}
