//! The wait queue of a model pool (see `router/waiting.rs` for who waits and how long):
//! waiters of a model queue in this process by tier (higher tiers first), then arrival. Only
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
