//! The writer: one thread that owns the connection and runs every transaction of the store.
//!
//! Callers push a [`Cmd`] on the [`Queue`] and await its oneshot reply; a push wakes the writer
//! only when it sleeps, and a writer idle for a second sleeps until one comes. The writer swaps
//! the whole queue out, applies every command in order inside one `BEGIN IMMEDIATE`
//! transaction (each through [`Batch`], so each is decided on its own), answers reserves,
//! commits, then answers the rest, and loops: commands that arrive while it works go into the
//! next transaction. No caller thread runs SQL or waits on the
//! file's lock; only this thread sleeps in SQLite's busy handler while another process writes.
//!
//! Reserves are answered before the commit: the write lock is held from `BEGIN IMMEDIATE` to
//! `COMMIT`, so no other process sees a half state, and a crash before the commit loses only
//! reservations of requests dying with the process. A second thread checkpoints the WAL.

use crate::cache::{Batch, Cache};
use crate::rows::{RecordOp, RecordOut};
use llmux_core::health::HealthOp;
use llmux_core::store::Flags;
use llmux_core::store::{
    AdminOp, Counter, LeaseId, Line, Reserve, Reserved, StoreError, SubjectState,
};
use llmux_core::{Subject, Timestamp};
use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Cmd {
    /// The reply is taken when the grant is answered, before the commit.
    Reserve(Reserve, Option<Reply<Reserved>>),
    Commit(LeaseId, Timestamp, Vec<Line>, Reply<()>),
    /// A commit nobody waits for (`commit_detached`), with the number of transactions that
    /// carried it and failed: it is applied again in the next one, up to [`DETACHED_ATTEMPTS`].
    Detached(LeaseId, Timestamp, Vec<Line>, u32),
    Release(LeaseId, Reply<()>),
    Cooldown(Subject, Timestamp, Reply<()>),
    Health(Subject, HealthOp, Reply<Flags>),
    Disabled(Subject, bool, Reply<()>),
    Snapshot(String, Reply<Vec<SubjectState>>),
    Update(Line, AdminOp, Timestamp, Reply<Counter>),
    Score(Subject, Option<f64>, Reply<()>),
    Reset(String, Reply<usize>),
    Scores(Timestamp, Vec<(Subject, Vec<Line>)>, Reply<Vec<f64>>),
    Record(RecordOp, Reply<RecordOut>),
}

/// Longest a detached commit waits for a transaction when nothing else wakes the writer.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// How long after its last reserve or detached commit the writer keeps looking for detached
/// commits every [`FLUSH_EVERY`] before it sleeps until woken.
const POLL_WHILE_ACTIVE: Duration = Duration::from_secs(1);
/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Transactions a detached commit is applied in before its usage is given up (logged).
const DETACHED_ATTEMPTS: u32 = 8;
/// The pause after the first failed transaction that leaves usage to apply again; it doubles
/// with each failure in a row, up to [`RETRY_AFTER_MAX`] (with these, about 2.3 s in all).
const RETRY_AFTER: Duration = Duration::from_millis(20);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(1);

/// Commands waiting for the writer.
struct Queue {
    state: Mutex<State>,
    /// Wakes the writer; notified only when it sleeps (`State::idle`).
    wake: Condvar,
}

#[derive(Default)]
struct State {
    cmds: Vec<Cmd>,
    /// The writer sleeps on `wake`: the next push notifies it.
    idle: bool,
    /// The writer sleeps with no deadline (the store has been idle for [`POLL_WHILE_ACTIVE`]):
    /// a detached commit wakes it too.
    deep: bool,
    /// When the writer last took reserves or detached commits.
    last_work: Option<Instant>,
    /// The checkpointer has copied the bulk of the WAL: the writer finishes it.
    checkpoint: bool,
    /// The last handle is gone: write what is queued, then stop.
    closed: bool,
}

/// What the writer takes in one turn.
struct Turn {
    checkpoint: bool,
    closed: bool,
}

impl Queue {
    fn push(&self, cmd: Cmd) {
        // A detached commit does not wake a writer that looks again within `FLUSH_EVERY`: it
        // rides with the next transaction. Only a writer in its deep sleep needs waking.
        let detached = matches!(cmd, Cmd::Detached(..));
        let mut s = self.state.lock();
        let wake = !detached || s.deep;
        s.cmds.push(cmd);
        if wake && s.idle {
            s.idle = false;
            drop(s);
            self.wake.notify_one();
        }
    }

    /// Set a flag (`f`) and wake the writer.
    fn signal(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.lock();
        f(&mut s);
        s.idle = false;
        drop(s);
        self.wake.notify_one();
    }

    fn closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Wait for work (or, with usage to apply again, until `retry_at`), then swap every queued
    /// command into `batch` (empty, keeping its capacity for the next queue).
    fn take(&self, batch: &mut Vec<Cmd>, retry_at: Option<Instant>) -> Turn {
        let mut s = self.state.lock();
        match retry_at {
            None => {
                if s.cmds.is_empty() && !s.closed {
                    // Before sleeping (and being woken again by the next push: a futex
                    // round trip each way), let the threads that were just answered run:
                    // under load they queue the next commands meanwhile.
                    drop(s);
                    std::thread::yield_now();
                    s = self.state.lock();
                }
                while s.cmds.is_empty() && !s.checkpoint && !s.closed {
                    s.idle = true;
                    // While the store is in use, detached commits queue without waking us:
                    // look again within the bound. Idle for a while, sleep until woken (an
                    // idle store costs no wake-ups).
                    let active = s.last_work.is_some_and(|t| t.elapsed() < POLL_WHILE_ACTIVE);
                    s.deep = !active;
                    if active {
                        self.wake.wait_for(&mut s, FLUSH_EVERY);
                    } else {
                        self.wake.wait(&mut s);
                    }
                }
                s.deep = false;
            }
            Some(at) => {
                while Instant::now() < at {
                    s.idle = true;
                    self.wake.wait_until(&mut s, at);
                }
            }
        }
        s.idle = false;
        // Request traffic (reserves, usage) keeps the writer looking for detached commits;
        // the router's periodic reads (keys, capacity) do not.
        if s.cmds
            .iter()
            .any(|c| matches!(c, Cmd::Reserve(..) | Cmd::Detached(..)))
        {
            s.last_work = Some(Instant::now());
        }
        std::mem::swap(&mut s.cmds, batch);
        Turn {
            checkpoint: std::mem::take(&mut s.checkpoint),
            closed: s.closed,
        }
    }
}

/// The store's side of the writer: pushes commands; dropping it writes what is queued and
/// stops both threads.
pub(crate) struct Handle {
    queue: Arc<Queue>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

impl Handle {
    /// Start the writer thread on `conn` and the checkpointer thread on `checkpointer`.
    pub(crate) fn start(conn: Connection, checkpointer: Connection) -> std::io::Result<Handle> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let mut handle = Handle {
            queue: queue.clone(),
            writer: None,
            checkpointer: None,
        };
        let writer = Writer {
            conn,
            cache: Cache::default(),
            next_sweep: Timestamp(0),
            outcomes: Vec::new(),
            retry: Vec::new(),
            failed_in_a_row: 0,
            failed_at: Instant::now(),
        };
        let q = queue.clone();
        handle.writer = Some(
            std::thread::Builder::new()
                .name("llmux-sqlite".into())
                .spawn(move || writer.run(&q))?,
        );
        // On failure `handle` drops, which stops the writer.
        handle.checkpointer = Some(
            std::thread::Builder::new()
                .name("llmux-sqlite-wal".into())
                .spawn(move || checkpoints(&queue, &checkpointer))?,
        );
        Ok(handle)
    }

    /// Queue `cmd` for the next transaction.
    pub(crate) fn push(&self, cmd: Cmd) {
        self.queue.push(cmd);
    }
}

impl Drop for Handle {
    /// The last store handle is gone: the writer writes what is still queued (usage reported
    /// just before shutdown is kept), and both threads stop. Waits for them.
    fn drop(&mut self) {
        self.queue.signal(|s| s.closed = true);
        if let Some(t) = self.writer.take() {
            let _ = t.join();
        }
        if let Some(t) = self.checkpointer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The checkpointer thread: copy the WAL into the database file every [`CHECKPOINT_EVERY`],
/// beside the writer (this copies, and fsyncs, the bulk off the writer's thread), then ask the
/// writer to run one more checkpoint between two of its transactions, so that nothing of this
/// process appends meanwhile: the few frames written during the first step are copied too, and
/// the next transaction starts the WAL over from its beginning. (A checkpoint beside a busy
/// writer never catches up, and the WAL would grow for as long as the load lasts.)
fn checkpoints(queue: &Queue, conn: &Connection) {
    let mut next = Instant::now() + CHECKPOINT_EVERY;
    loop {
        // `park_timeout` may return early (spuriously, or unparked at close).
        std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        if queue.closed() {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + CHECKPOINT_EVERY;
        match passive_checkpoint(conn) {
            Ok(_) => queue.signal(|s| s.checkpoint = true),
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
        }
    }
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (frames in the WAL, frames copied).
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// The writer thread's state: the connection and what it knows of the file.
struct Writer {
    conn: Connection,
    cache: Cache,
    next_sweep: Timestamp,
    /// One per command of the transaction; kept to reuse its allocation.
    outcomes: Vec<Outcome>,
    /// Detached commits of failed transactions, to apply first in the next one.
    retry: Vec<Cmd>,
    failed_in_a_row: u32,
    /// When the last transaction failed.
    failed_at: Instant,
}

impl Writer {
    /// The writer thread: one transaction per turn, until the store is closed and its queue
    /// written (or its usage given up).
    fn run(mut self, queue: &Queue) {
        let mut batch = Vec::new();
        loop {
            let retry_at = (!self.retry.is_empty()).then(|| {
                let doublings = self.failed_in_a_row.saturating_sub(1).min(16);
                self.failed_at + (RETRY_AFTER * (1 << doublings)).min(RETRY_AFTER_MAX)
            });
            let turn = queue.take(&mut batch, retry_at);
            if !self.retry.is_empty() {
                // Usage kept from a failed transaction goes first, as it was reported first.
                self.retry.append(&mut batch);
                std::mem::swap(&mut self.retry, &mut batch);
            }
            if !batch.is_empty() {
                self.transaction(&mut batch);
            }
            if turn.checkpoint {
                self.checkpoint();
            }
            // Closed by the last handle: nobody can push any more, and `batch` held the rest.
            if turn.closed && self.retry.is_empty() {
                return;
            }
        }
    }

    /// The second step of a checkpoint (see [`checkpoints`]), with no transaction open.
    fn checkpoint(&mut self) {
        match passive_checkpoint(&self.conn) {
            Ok((log, copied)) if log != copied => {
                tracing::debug!(
                    log,
                    copied,
                    "sqlite checkpoint incomplete (another process busy)"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
        }
    }

    /// Apply `batch` (emptied, keeping its capacity) in one transaction and answer every
    /// command: reserves before the commit, the rest after it. If the transaction fails, every
    /// command not yet answered gets the error, and detached commits are kept for the next
    /// transaction (see [`Writer::keep`]); reserves answered before a failed commit then hold
    /// nothing (their settles count usage and free nothing).
    fn transaction(&mut self, batch: &mut Vec<Cmd>) {
        let sweep_now = batch
            .iter()
            .filter_map(|c| match c {
                Cmd::Reserve(r, _) if r.now >= self.next_sweep => Some(r.now),
                _ => None,
            })
            .max();
        let mut outcomes = std::mem::take(&mut self.outcomes);
        outcomes.clear();
        let mut done = self.apply(batch, sweep_now, &mut outcomes);
        if done.is_ok() {
            // A caller that went away (client hung up) cannot settle its grant: release it
            // in this transaction rather than holding the capacity for the whole lease TTL.
            // (The caller releases it too, by the id it chose: whichever comes second finds
            // nothing to do.)
            let mut orphans = Vec::new();
            let mut answered = false;
            for (cmd, out) in batch.iter_mut().zip(outcomes.iter_mut()) {
                if let Cmd::Reserve(_, tx @ Some(_)) = cmd {
                    let out = std::mem::replace(out, Outcome::Done);
                    orphans.extend(tx.take().and_then(|tx| answer_reserve(tx, Ok(out))));
                    answered = true;
                }
            }
            if answered {
                // The callers just woken send their requests upstream first; the commit's
                // writes follow while those requests travel (on one core they would
                // otherwise wait for it).
                std::thread::yield_now();
            }
            done = self.commit(&orphans);
        }
        match done {
            Ok(()) => {
                self.failed_in_a_row = 0;
                if let Some(now) = sweep_now {
                    self.next_sweep = now.plus_millis(1000);
                }
                for (cmd, out) in batch.drain(..).zip(outcomes.drain(..)) {
                    answer(cmd, Ok(out));
                }
            }
            Err(e) => {
                self.abort(&e);
                self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
                self.failed_at = Instant::now();
                let error = e.to_string();
                for cmd in batch.drain(..) {
                    match cmd {
                        Cmd::Detached(id, now, used, failed) => {
                            self.keep(id, now, used, failed + 1, &error);
                        }
                        cmd => answer(cmd, Err(StoreError::Backend(error.clone()))),
                    }
                }
                if !self.retry.is_empty() {
                    tracing::warn!(
                        reports = self.retry.len(),
                        "sqlite store: usage reports kept for the next transaction"
                    );
                }
            }
        }
        self.outcomes = outcomes;
    }

    /// A detached commit whose transaction failed (`failed` times now): its usage was
    /// answered as taken, so apply it again in the next transaction; after
    /// [`DETACHED_ATTEMPTS`] failures, give it up with an error naming what is lost.
    fn keep(&mut self, id: LeaseId, now: Timestamp, used: Vec<Line>, failed: u32, error: &str) {
        if failed < DETACHED_ATTEMPTS {
            self.retry.push(Cmd::Detached(id, now, used, failed));
            return;
        }
        let lines: Vec<String> = used
            .iter()
            .map(|l| format!("{} {} {}", l.subject, l.resource, l.amount))
            .collect();
        tracing::error!(
            lease = id.0,
            ?lines,
            failed,
            error,
            "sqlite store: usage lost after repeated failed transactions"
        );
    }

    /// Begin the transaction and apply each command of `batch`, its outcome in `out`.
    fn apply(
        &mut self,
        batch: &[Cmd],
        sweep_now: Option<Timestamp>,
        out: &mut Vec<Outcome>,
    ) -> rusqlite::Result<()> {
        let Writer { conn, cache, .. } = self;
        // Cached statements: `Connection::transaction` parses BEGIN and COMMIT anew each
        // time, a measurable share of a small transaction.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        // Another connection may have written since our last transaction: then what the
        // cache holds is stale. Within a transaction nobody else writes.
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        cache.check_version(version);
        let mut b = Batch { tx: conn, cache };
        if let Some(now) = sweep_now {
            b.sweep(now)?;
        }
        for cmd in batch {
            out.push(apply_one(&mut b, cmd)?);
        }
        Ok(())
    }

    /// Release `orphans`, write the counters changed in the cache, and commit.
    fn commit(&mut self, orphans: &[LeaseId]) -> rusqlite::Result<()> {
        let mut b = Batch {
            tx: &self.conn,
            cache: &mut self.cache,
        };
        for id in orphans {
            b.release(*id)?;
        }
        b.flush()?;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    /// Roll back and forget what the cache holds of the transaction.
    fn abort(&mut self, e: &rusqlite::Error) {
        tracing::error!(error = %e, "sqlite store transaction failed; rolled back");
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "sqlite rollback failed");
            }
        }
        self.cache = Cache::default();
    }
}

fn apply_one(b: &mut Batch<'_>, cmd: &Cmd) -> rusqlite::Result<Outcome> {
    Ok(match cmd {
        Cmd::Reserve(r, _) => Outcome::Admission(b.reserve(r)?),
        Cmd::Commit(id, now, used, _) | Cmd::Detached(id, now, used, _) => {
            b.commit(*id, *now, used)?;
            Outcome::Done
        }
        Cmd::Release(id, _) => {
            b.release(*id)?;
            Outcome::Done
        }
        Cmd::Cooldown(s, until, _) => {
            b.set_cooldown(s, *until)?;
            Outcome::Done
        }
        Cmd::Health(s, op, _) => Outcome::Flags(b.health(s, op)?),
        Cmd::Disabled(s, d, _) => {
            b.set_disabled(s, *d)?;
            Outcome::Done
        }
        Cmd::Snapshot(subject, _) => Outcome::Snapshot(b.snapshot(subject)?),
        Cmd::Update(line, op, now, _) => Outcome::Counter(b.update(line, *op, *now)?),
        Cmd::Scores(now, subjects, _) => Outcome::Scores(b.scores(*now, subjects)?),
        Cmd::Score(subject, score, _) => {
            b.set_score(subject, *score)?;
            Outcome::Done
        }
        Cmd::Reset(subject, _) => Outcome::Count(b.reset(subject)?),
        Cmd::Record(op, _) => Outcome::Record(crate::rows::record(b.tx, op)?),
    })
}

enum Outcome {
    Admission(Reserved),
    Done,
    Snapshot(Vec<SubjectState>),
    Counter(Counter),
    Flags(Flags),
    Count(usize),
    Scores(Vec<f64>),
    Record(RecordOut),
}

/// Answer a reserve; returns a lease granted to a caller that is no longer waiting.
fn answer_reserve(tx: Reply<Reserved>, res: Result<Outcome, StoreError>) -> Option<LeaseId> {
    let r = res.and_then(|o| match o {
        Outcome::Admission(a) => Ok(a),
        _ => Err(StoreError::Backend("unexpected reply".into())),
    });
    match tx.send(r) {
        Err(Ok(r)) => r.admission.lease(),
        _ => None,
    }
}

/// Answer one command (a reserve answered already is skipped).
fn answer(cmd: Cmd, res: Result<Outcome, StoreError>) {
    fn send<T>(tx: Reply<T>, r: Result<Outcome, StoreError>, f: impl FnOnce(Outcome) -> Option<T>) {
        let r = r.and_then(|o| f(o).ok_or_else(|| StoreError::Backend("unexpected reply".into())));
        let _ = tx.send(r);
    }
    match cmd {
        // Only a failed transaction leaves a reserve unanswered: nothing was granted.
        Cmd::Reserve(_, tx) => {
            if let Some(tx) = tx {
                let _ = answer_reserve(tx, res);
            }
        }
        // Nobody waits; a failed transaction keeps it instead (`Writer::keep`).
        Cmd::Detached(..) => {}
        Cmd::Commit(.., tx)
        | Cmd::Release(_, tx)
        | Cmd::Cooldown(.., tx)
        | Cmd::Score(.., tx)
        | Cmd::Disabled(.., tx) => send(tx, res, |o| matches!(o, Outcome::Done).then_some(())),
        Cmd::Health(.., tx) => send(tx, res, |o| match o {
            Outcome::Flags(f) => Some(f),
            _ => None,
        }),
        Cmd::Update(.., tx) => send(tx, res, |o| match o {
            Outcome::Counter(c) => Some(c),
            _ => None,
        }),
        Cmd::Scores(.., tx) => send(tx, res, |o| match o {
            Outcome::Scores(v) => Some(v),
            _ => None,
        }),
        Cmd::Reset(_, tx) => send(tx, res, |o| match o {
            Outcome::Count(n) => Some(n),
            _ => None,
        }),
        Cmd::Snapshot(_, tx) => send(tx, res, |o| match o {
            Outcome::Snapshot(s) => Some(s),
            _ => None,
        }),
        Cmd::Record(_, tx) => send(tx, res, |o| match o {
            Outcome::Record(r) => Some(r),
            _ => None,
        }),
    }
}
