//! Detached commits, in order: one background task per store sends them as they were queued,
//! pipelined, retrying while Redis is unreachable; every other call first waits (bounded) for
//! those queued before it, through [`Conn`].

use super::*;

/// The queue of detached commits, held by the store handles only: when the last handle goes,
/// the sender goes, and the background task ends once it has sent what was queued.
pub(super) struct Detached {
    /// To the background task; `None` until the first detached commit, replaced when the
    /// task's runtime has stopped.
    pub(super) queue: parking_lot::Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// The ticket of the last detached commit queued (tickets count up from 1, in queue order).
    pub(super) issued: AtomicU64,
}

/// One detached commit.
pub(super) struct Job {
    pub(super) ticket: u64,
    pub(super) lease: LeaseId,
    pub(super) now: Timestamp,
    pub(super) used: Vec<Line>,
}

/// At most this many queued detached commits share one round trip.
const MAX_BATCH: usize = 256;
/// Tries to send detached commits while Redis is unreachable (100 ms apart, doubling).
const ATTEMPTS: u32 = 4;

/// The connection as the store's calls use it: an answer from Redis shows it reachable again,
/// so later calls wait for detached commits again.
pub(super) struct Conn {
    pub(super) c: ConnectionManager,
    pub(super) inner: Arc<Inner>,
}

impl Conn {
    fn seen<T>(&self, r: &redis::RedisResult<T>) {
        let answered = match r {
            Ok(_) => true,
            Err(e) => !e.is_io_error(),
        };
        if answered {
            self.inner.unreachable.store(false, Ordering::Release);
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            let r = self.c.req_packed_command(cmd).await;
            self.seen(&r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let r = self.c.req_packed_commands(pipeline, offset, count).await;
            self.seen(&r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.c.get_db()
    }
}

/// The background task of one store's detached commits: it sends them in queue order.
pub(super) struct Worker {
    pub(super) inner: Arc<Inner>,
    pub(super) rx: mpsc::UnboundedReceiver<Job>,
    /// The last ticket and the size of the batch being sent.
    pub(super) in_flight: Option<(u64, usize)>,
}

impl Worker {
    pub(super) async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let last = batch.last().map_or(0, |j: &Job| j.ticket);
            self.in_flight = Some((last, batch.len()));
            self.inner.apply_detached(&batch).await;
            self.inner.done.send_modify(|d| *d = (*d).max(last));
            self.in_flight = None;
            batch.clear();
        }
    }
}

impl Drop for Worker {
    /// The task ends: all handles are gone (nothing is queued), or its runtime stopped with
    /// commits unsent. Those are lost; calls waiting for them need not wait any more.
    fn drop(&mut self) {
        self.rx.close();
        let (mut last, mut lost) = match self.in_flight {
            Some((last, n)) => (Some(last), n),
            None => (None, 0),
        };
        while let Ok(j) = self.rx.try_recv() {
            last = Some(j.ticket);
            lost += 1;
        }
        if let Some(last) = last {
            self.inner.done.send_modify(|d| *d = (*d).max(last));
        }
        if lost > 0 {
            tracing::warn!(
                commits = lost,
                "the runtime stopped: usage not (or not all) recorded in redis"
            );
        }
    }
}

/// Whether a failed round trip is sent again: Redis refused the connection, or the
/// connection was found closed. The latter is nearly always a connection that died before
/// the commits were sent (the first use after Redis went away), but may, rarely, be one lost
/// while they ran: usage may then count twice, which errs on the side of limits holding,
/// where not sending again would lose every commit that meets a dead connection.
fn resend(e: &RedisError) -> bool {
    e.is_connection_refusal() || e.is_connection_dropped()
}

impl Inner {
    /// Send `batch` in order, pipelined; retry what could not be sent (Redis unreachable) up
    /// to [`ATTEMPTS`] times, and log what fails for good. Never fails, never panics.
    pub(super) async fn apply_detached(&self, batch: &[Job]) {
        let mut todo: Vec<&Job> = batch.iter().collect();
        let mut load_first = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let again = match self.send_commits(&todo, load_first).await {
                Ok(results) => {
                    self.unreachable.store(false, Ordering::Release);
                    let mut again = Vec::new();
                    for (job, r) in todo.iter().zip(results) {
                        match r {
                            Ok(_) => {}
                            // The script cache was flushed: load it and send those again.
                            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                                again.push(*job)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "could not record usage in redis")
                            }
                        }
                    }
                    load_first = !again.is_empty();
                    again
                }
                Err(f) if f.unsent() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %f, attempt, "redis unreachable; retrying usage");
                    // Let the calls waiting for these go on.
                    self.unreachable.store(true, Ordering::Release);
                    self.done.send_modify(|_| {});
                    tokio::time::sleep(Duration::from_millis(100 << (attempt - 1))).await;
                    todo
                }
                Err(f) => {
                    tracing::warn!(
                        error = %f,
                        commits = todo.len(),
                        "could not record usage in redis"
                    );
                    return;
                }
            };
            if again.is_empty() {
                return;
            }
            if attempt >= ATTEMPTS {
                tracing::warn!(commits = again.len(), "could not record usage in redis");
                return;
            }
            todo = again;
        }
    }

    /// One round trip: the commits of `jobs` in order (after loading the script if asked).
    async fn send_commits(
        &self,
        jobs: &[&Job],
        load_first: bool,
    ) -> Result<Vec<redis::RedisResult<i64>>, Failure> {
        let mut c = self.conn().await.map_err(Failure::NoConnection)?;
        let invocations: Vec<_> = jobs
            .iter()
            .map(|j| self.commit_invocation(j.lease, j.now, &j.used))
            .collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if load_first {
            pipe.load_script(&self.scripts.commit).ignore();
        }
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        pipe.query_async(&mut c).await.map_err(|e| {
            if resend(&e) {
                Failure::Unsent(e)
            } else {
                Failure::Unknown(e)
            }
        })
    }
}

/// Why a round trip of detached commits failed.
enum Failure {
    /// No connection: nothing was sent.
    NoConnection(StoreError),
    /// Refused, or the connection was closed (see [`resend`]).
    Unsent(RedisError),
    /// Anything else (a timeout: Redis may be running it): not sent again.
    Unknown(RedisError),
}

impl Failure {
    /// Whether to send again.
    fn unsent(&self) -> bool {
        !matches!(self, Failure::Unknown(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoConnection(e) => write!(f, "{e}"),
            Failure::Unsent(e) | Failure::Unknown(e) => write!(f, "redis: {e}"),
        }
    }
}
