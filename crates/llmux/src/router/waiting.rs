//! Waiting instead of 429: a request that finds no capacity may wait (the model's `queue`, a
//! request's `x-llmux-max-wait` / `Request::max_wait`) for the first target that frees up.
//!
//! Waiters of a model queue in this process by tier (higher tiers first), then arrival. Only
//! the head tries the store; the rest sleep until they become the head. The head tries again
//! when a lease of the model's targets ends in this process (a release or a commit: it is
//! queued in the store before the head's next reserve, which therefore sees it), when the
//! denial said capacity returns (a window rolls, a cooldown ends, a reservation expires), and
//! at least every [`POLL`], which is how capacity freed by another replica on the same store
//! is seen. Admitted, the head leaves and wakes the next. A request that can never fit, or
//! that finds the queue full, is refused at once.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest the head waits before it tries the store again by itself.
pub(crate) const POLL: Duration = Duration::from_millis(1000);

/// Queue position: higher tier rank first, then arrival.
type Place = (std::cmp::Reverse<usize>, u64);

/// The waiters of one model pool.
#[derive(Default)]
pub(crate) struct WaitQueue {
    inner: Mutex<Waiters>,
    /// Waiters queued, read without the lock on the request path.
    len: AtomicUsize,
}

#[derive(Default)]
struct Waiters {
    next_seq: u64,
    queue: BTreeMap<Place, Arc<Notify>>,
}

impl std::fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitQueue")
            .field("len", &self.len())
            .finish()
    }
}

impl WaitQueue {
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Join the queue at tier rank `rank` (higher goes first); `None` when `max` are queued.
    pub(crate) fn join(self: &Arc<Self>, rank: usize, max: usize) -> Option<Ticket> {
        let mut w = self.inner.lock();
        if w.queue.len() >= max {
            return None;
        }
        let place = (std::cmp::Reverse(rank), w.next_seq);
        w.next_seq += 1;
        let notify = Arc::new(Notify::new());
        w.queue.insert(place, notify.clone());
        self.len.store(w.queue.len(), Ordering::Release);
        Some(Ticket {
            queue: self.clone(),
            place,
            notify,
        })
    }

    /// Tell the head that capacity may have freed up.
    pub(crate) fn wake_head(&self) {
        if self.len() == 0 {
            return;
        }
        if let Some((_, n)) = self.inner.lock().queue.first_key_value() {
            n.notify_one();
        }
    }
}

/// A place in a [`WaitQueue`]; dropping it leaves the queue and wakes the next head.
pub(crate) struct Ticket {
    queue: Arc<WaitQueue>,
    place: Place,
    notify: Arc<Notify>,
}

impl Ticket {
    fn is_head(&self) -> bool {
        self.queue
            .inner
            .lock()
            .queue
            .first_key_value()
            .is_some_and(|(p, _)| *p == self.place)
    }

    /// Wait until this ticket is the head and has a reason to try (woken, or `retry_in` has
    /// passed), or until `until`. Returns false when `until` came first.
    pub(crate) async fn turn(&self, retry_in: Duration, until: tokio::time::Instant) -> bool {
        // Not the head: sleep until woken as the head (or the wait ends).
        while !self.is_head() {
            if tokio::time::timeout_at(until, self.notify.notified())
                .await
                .is_err()
            {
                return false;
            }
        }
        let wake = (tokio::time::Instant::now() + retry_in.min(POLL)).min(until);
        let _ = tokio::time::timeout_at(wake, self.notify.notified()).await;
        tokio::time::Instant::now() < until || self.is_head()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = self.queue.inner.lock();
        w.queue.remove(&self.place);
        self.queue.len.store(w.queue.len(), Ordering::Release);
        if let Some((_, n)) = w.queue.first_key_value() {
            n.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn higher_tiers_then_arrival_order_and_a_full_queue_refuses() {
        let q = Arc::new(WaitQueue::default());
        let a = q.join(0, 3).unwrap();
        let b = q.join(2, 3).unwrap();
        let c = q.join(0, 3).unwrap();
        assert!(q.join(1, 3).is_none(), "full");
        assert_eq!(q.len(), 3);
        assert!(b.is_head());
        drop(b);
        assert!(a.is_head() && !c.is_head());
        drop(a);
        assert!(c.is_head());
        // The head waits at most `retry_in`; a waker cuts that short.
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        let started = tokio::time::Instant::now();
        q.wake_head();
        assert!(c.turn(Duration::from_secs(3), until).await);
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(c);
        assert_eq!(q.len(), 0);
    }
}

use super::failover::Prepared;
use super::{Response, Router};
use crate::error::RouteError;
use crate::stats::Pool;

/// How one request may wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wait {
    /// The longest it waits, from when it first finds no capacity.
    pub(crate) max: Duration,
    pub(crate) max_queued: usize,
    /// Its tier's rank in `tier_order` (higher goes first).
    pub(crate) rank: usize,
    /// When the wait ends at the latest (`None`: `max` after the first refusal).
    pub(crate) deadline: Option<tokio::time::Instant>,
}

/// The longest wait a request may ask for on a model without a `queue`.
const UNQUEUED_MAX_WAIT: Duration = Duration::from_secs(60);

impl Router {
    /// Whether and how a request of `pool` waits: the model's `queue`, a request's `max_wait`
    /// (capped by the queue's, else by a minute), neither: it does not.
    pub(super) fn waiting(
        &self,
        pool: &Pool,
        asked: Option<Duration>,
        tier: Option<&str>,
    ) -> Option<Wait> {
        let queue = pool.plan.pool.queue;
        let max = match (asked, queue) {
            (None, None) => return None,
            (Some(a), None) => a.min(UNQUEUED_MAX_WAIT),
            (None, Some(q)) => Duration::from_secs(q.max_wait_secs),
            (Some(a), Some(q)) => a.min(Duration::from_secs(q.max_wait_secs)),
        };
        if max.is_zero() {
            return None;
        }
        let rank = tier
            .and_then(|t| self.inner.config.tier_order.iter().position(|x| x == t))
            .map_or(0, |r| r + 1);
        Some(Wait {
            max,
            max_queued: queue.map_or(llmux_core::config::QueueConfig::DEFAULT_MAX_QUEUED, |q| {
                q.max_queued
            }),
            rank,
            deadline: None,
        })
    }

    /// [`Router::pass`] that waits for capacity: a refusal that capacity can end (not a
    /// budget, not one that never fits) puts the request in the model's queue, and it tries
    /// again at its turn, until admitted or `wait.max` has passed (then the last refusal).
    /// The request holds its place in `req.ticket`, which failover gives up on admission.
    pub(super) async fn pass_waiting(
        &self,
        chain: &[Arc<Pool>],
        req: &mut Prepared<'_>,
        wait: Wait,
    ) -> Result<Response, RouteError> {
        let mut waiter = Waiter::new(&chain[0].queue, wait, &mut req.ticket);
        if waiter.full {
            return Err(waiter.queue_full(&req.model, self.inner.ledger.clock.now()));
        }
        loop {
            let last = !waiter.turn(&mut req.ticket).await;
            let now = self.inner.ledger.clock.now();
            let r = self.pass(chain, req).await;
            let later = self.inner.ledger.clock.now();
            if last || !waiter.again(&r, now.max(later), &mut req.ticket) {
                return r;
            }
            req.decision = super::Decision::default();
        }
    }
}

/// One caller's waiting between its tries: its place in the queue, when its wait ends, and
/// how long until the last refusal said capacity returns. Shared by requests
/// (`pass_waiting`) and leases (`Router::acquire_wait`).
pub(crate) struct Waiter {
    queue: Arc<WaitQueue>,
    wait: Wait,
    until: Option<tokio::time::Instant>,
    retry_in: Duration,
    /// Others wait and the queue had no room: this caller does not try ahead of them.
    pub(crate) full: bool,
}

impl Waiter {
    /// Start waiting; while others wait already, queue behind them rather than pass them.
    pub(crate) fn new(queue: &Arc<WaitQueue>, wait: Wait, ticket: &mut Option<Ticket>) -> Waiter {
        let mut w = Waiter {
            queue: queue.clone(),
            wait,
            until: wait.deadline,
            retry_in: Duration::ZERO,
            full: false,
        };
        if queue.len() > 0 {
            match queue.join(wait.rank, wait.max_queued) {
                Some(t) => {
                    w.until
                        .get_or_insert_with(|| tokio::time::Instant::now() + wait.max);
                    *ticket = Some(t);
                }
                None => w.full = true,
            }
        }
        w
    }

    /// The refusal of a caller that found the queue of `model` full (see [`Waiter::full`]).
    pub(crate) fn queue_full(&self, model: &str, now: llmux_core::Timestamp) -> RouteError {
        let mut out = super::refusals::Outcomes::default();
        out.deny(llmux_core::store::Denial {
            subject: llmux_core::Subject::model(model),
            reason: llmux_core::store::DenialReason::QueueFull {
                max_queued: self.wait.max_queued,
            },
            retry_at: Some(now.plus(POLL)),
        });
        Router::no_capacity(model, now, out)
    }

    /// Before a try: wait for this caller's turn. False when the wait is over: the place is
    /// given up, and the next try is the last (its refusal is the answer).
    pub(crate) async fn turn(&mut self, ticket: &mut Option<Ticket>) -> bool {
        if let (Some(t), Some(u)) = (ticket.as_ref(), self.until) {
            if !t.turn(self.retry_in, u).await {
                *ticket = None;
                return false;
            }
        }
        true
    }

    /// After a try that ended with `r` (at `now`): whether to try again, holding a place in
    /// the queue. Not for an answer, an error other than `NoCapacity`, a budget, a limit
    /// that never fits, a wait that is over, or a full queue.
    pub(crate) fn again<T>(
        &mut self,
        r: &Result<T, RouteError>,
        now: llmux_core::Timestamp,
        ticket: &mut Option<Ticket>,
    ) -> bool {
        let retry_at = match r {
            Err(RouteError::NoCapacity {
                denial,
                budget: false,
                ..
            }) => denial.retry_at,
            _ => None,
        };
        let Some(at) = retry_at else {
            *ticket = None;
            return false;
        };
        let max = self.wait.max;
        let u = *self
            .until
            .get_or_insert_with(|| tokio::time::Instant::now() + max);
        if tokio::time::Instant::now() >= u {
            *ticket = None;
            return false;
        }
        if ticket.is_none() {
            match self.queue.join(self.wait.rank, self.wait.max_queued) {
                Some(t) => *ticket = Some(t),
                // The queue is full: the refusal stands.
                None => return false,
            }
        }
        self.retry_in =
            Duration::from_millis(u64::try_from(at.0.saturating_sub(now.0)).unwrap_or(0));
        true
    }
}
