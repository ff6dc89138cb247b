//! Waiting instead of 429: a request that finds no capacity may wait (the model's `queue`, a
//! request's `x-llmux-max-wait` / `Request::max_wait`) for the first target that frees up, in
//! its model's [`WaitQueue`] (tier, then arrival; `crate::queue`). A request that can never
//! fit, or that finds the queue full, is refused at once.

use super::prepared::Prepared;
use super::{Response, Router};
use crate::error::RouteError;
use crate::queue::{Ticket, WaitQueue, POLL};
use crate::stats::Pool;
use std::sync::Arc;
use std::time::Duration;

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
