//! `Ledger`: where reservations live and how they are settled, shared by the router (which
//! reserves) and every [`Lease`](crate::Lease) (which settles). Neither depends on the other.

use crate::store::AnyStore;
use llmux_core::health::HealthOp;
use llmux_core::store::{LeaseId, Line, Reserve, Store};
use llmux_core::{Admission, Clock, MemoryStore, StoreError, Subject, Timestamp};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The store, its process-local stand-in while it is unreachable (`on_store_error =
/// "fail-open"`), the clock, and the background task that releases abandoned reservations.
pub(crate) struct Ledger {
    pub(crate) store: AnyStore,
    /// Counts in this process while the store is unreachable.
    fallback: MemoryStore,
    pub(crate) clock: Arc<dyn Clock>,
    /// Lease ids to release, and whether they live in `fallback`.
    orphans: mpsc::UnboundedSender<(LeaseId, bool)>,
    /// Cooldowns and disabled keys seen while serving fail-open: the store is the record,
    /// this is what the process remembers while it cannot reach it.
    local_gates: Mutex<HashMap<Subject, Timestamp>>,
    /// Where health changes nobody waits for are written from.
    rt: tokio::runtime::Handle,
}

/// How long a key that answered 401/403 stays out locally while the store is unreachable.
const LOCAL_DISABLE_MS: i64 = 60_000;

impl Ledger {
    /// A ledger on `store`, with its release task spawned on the current tokio runtime.
    pub(crate) fn start(
        store: AnyStore,
        clock: Arc<dyn Clock>,
        rt: &tokio::runtime::Handle,
    ) -> Arc<Ledger> {
        let (orphans, mut rx) = mpsc::unbounded_channel::<(LeaseId, bool)>();
        let fallback = MemoryStore::new();
        let (reaper_store, reaper_fallback) = (store.clone(), fallback.clone());
        rt.spawn(async move {
            while let Some((id, local)) = rx.recv().await {
                if let Err(e) = release_in(&reaper_store, &reaper_fallback, id, local).await {
                    tracing::warn!(error = %e, "could not release an abandoned reservation");
                }
            }
        });
        Arc::new(Ledger {
            store,
            fallback,
            clock,
            orphans,
            local_gates: Mutex::new(HashMap::new()),
            rt: rt.clone(),
        })
    }

    /// Write a health change in the background (a breaker's trip or close, learned limits):
    /// the answer never waits on it; a failure is logged.
    pub(crate) fn health_later(&self, subject: Subject, op: HealthOp) {
        let store = self.store.clone();
        self.rt.spawn(async move {
            if let Err(e) = store.health(subject, op).await {
                tracing::warn!(error = %e, "could not record upstream health in the store");
            }
        });
    }

    /// Release `id` in the background (never awaits: called from `Drop`).
    pub(crate) fn release_later(&self, id: LeaseId, local: bool) {
        let _ = self.orphans.send((id, local));
    }

    /// Reserve in the process-local fallback (the store is unreachable and the policy is
    /// fail-open); the shared store is asked through `store` directly.
    pub(crate) async fn reserve_locally(&self, r: Reserve) -> Result<Admission, StoreError> {
        self.fallback.reserve(r).await
    }

    pub(crate) async fn commit(
        &self,
        id: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
        local: bool,
    ) -> Result<(), StoreError> {
        if local {
            self.fallback.commit(id, now, used).await
        } else {
            self.store.commit(id, now, used).await
        }
    }

    pub(crate) fn commit_detached(
        &self,
        id: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
        local: bool,
    ) {
        if local {
            self.fallback.commit_detached(id, now, used);
        } else {
            self.store.commit_detached(id, now, used);
        }
    }

    pub(crate) async fn release(&self, id: LeaseId, local: bool) -> Result<(), StoreError> {
        release_in(&self.store, &self.fallback, id, local).await
    }

    /// Remember locally that `subject` is out until `until` (for fail-open serving).
    pub(crate) fn note_local_gate(&self, subject: &Subject, until: Timestamp) {
        let mut c = self.local_gates.lock();
        let e = c.entry(subject.clone()).or_insert(until);
        *e = (*e).max(until);
    }

    /// A key that answered 401/403 stays out locally for a while even if the store is
    /// unreachable; the store's disabled flag (cleared by `reset-state`) is the lasting record.
    pub(crate) fn note_local_disable(&self, subject: &Subject, now: Timestamp) {
        self.note_local_gate(subject, now.plus_millis(LOCAL_DISABLE_MS));
    }

    /// Until when `subject` is out locally, if it is at `now`.
    pub(crate) fn local_gate(&self, subject: &Subject, now: Timestamp) -> Option<Timestamp> {
        self.local_gates
            .lock()
            .get(subject)
            .copied()
            .filter(|u| *u > now)
    }
}

/// Release `id` in `fallback` if it was reserved there (`local`), else in `store`: for the
/// ledger and for its release task, which holds clones (not the ledger, whose sender it would
/// keep alive).
async fn release_in(
    store: &AnyStore,
    fallback: &MemoryStore,
    id: LeaseId,
    local: bool,
) -> Result<(), StoreError> {
    if local {
        fallback.release(id).await
    } else {
        store.release(id).await
    }
}
