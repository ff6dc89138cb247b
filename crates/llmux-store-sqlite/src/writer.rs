//! The writer: the command queue, the one connection that writes, and the answers.
//!
//! Callers queue commands; whoever finds the writer free drains the queue into a `BEGIN
//! IMMEDIATE` transaction (flat combining) and applies each command through a
//! [`crate::cache::Batch`]. Reserves and detached commits are answered at once and a task
//! scheduled behind them commits; every other command is answered after its commit. A
//! background thread flushes what nobody else has and checkpoints the WAL.

use crate::cache::{Batch, Cache};
use llmux_core::store::{
    AdminOp, Admission, Counter, LeaseId, Line, Reserve, StoreError, SubjectState,
};
use llmux_core::{Subject, Timestamp};
use parking_lot::Mutex;
use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Cmd {
    Reserve(Reserve, Reply<Admission>),
    /// Without a reply channel the caller does not wait (`commit_detached`).
    Commit(LeaseId, Timestamp, Vec<Line>, Option<Reply<()>>),
    Release(LeaseId, Reply<()>),
    Cooldown(Subject, Timestamp, Reply<()>),
    Disabled(Subject, bool, Reply<()>),
    Snapshot(String, Reply<Vec<SubjectState>>),
    Update(Line, AdminOp, Timestamp, Reply<Counter>),
    Score(Subject, Option<f64>, Reply<()>),
    Reset(String, Reply<usize>),
    Scores(Timestamp, Vec<(Subject, Vec<Line>)>, Reply<Vec<f64>>),
}

/// Commands queue here; whoever finds the writer free runs every queued command in one
/// transaction (flat combining). No thread hand-off on the request path: an uncontended
/// reserve runs inline, and under load one transaction serves many callers.
pub(crate) struct Core {
    queue: Mutex<Vec<Cmd>>,
    writer: Mutex<Writer>,
    /// A task will commit the open transaction soon (see [`Core::schedule_commit`]).
    commit_scheduled: AtomicBool,
}

impl Core {
    /// Start the writer on `conn` and the background thread on `checkpointer`.
    pub(crate) fn start(conn: Connection, checkpointer: Connection) -> std::io::Result<Arc<Core>> {
        let core = Arc::new(Core {
            queue: Mutex::new(Vec::new()),
            commit_scheduled: AtomicBool::new(false),
            writer: Mutex::new(Writer {
                conn,
                cache: Cache::default(),
                next_sweep: Timestamp(0),
                spare: Vec::new(),
            }),
        });
        let weak = Arc::downgrade(&core);
        std::thread::Builder::new()
            .name("llmux-sqlite".into())
            .spawn(move || background(weak, checkpointer))?;
        Ok(core)
    }

    /// Queue `cmd`; it runs with the next transaction.
    pub(crate) fn push(&self, cmd: Cmd) {
        self.queue.lock().push(cmd);
    }

    /// Run queued commands while the writer is ours. If another caller holds it, that caller
    /// runs ours too: it checks the queue again after letting the writer go.
    pub(crate) fn drain(self: &Arc<Self>) {
        loop {
            let Some(mut w) = self.writer.try_lock() else {
                return;
            };
            // A bounded turn, so one caller does not serve a busy queue forever; whatever is
            // left is taken by the next caller or the background flush.
            for _ in 0..MAX_TURN_BATCHES {
                let batch = {
                    let mut q = self.queue.lock();
                    if q.is_empty() {
                        break;
                    }
                    // The emptied vector of the last batch takes the queue's place.
                    std::mem::replace(&mut *q, std::mem::take(&mut w.spare))
                };
                w.run(batch);
            }
            if w.is_open() {
                self.schedule_commit(&mut w);
            }
            drop(w);
            if self.queue.lock().is_empty() {
                return;
            }
        }
    }

    /// Commit the open transaction right after the current task's next step. Reserves are
    /// answered before their transaction commits (the write lock is held from the first
    /// check, so no other process reads or writes in between, and a crash before the commit
    /// loses only reservations of requests that die with the process): the commit's writes
    /// then run while the request is upstream, not before it leaves. Called with the writer
    /// held, so a committer that starts meanwhile waits for it and sees the open transaction.
    fn schedule_commit(self: &Arc<Self>, w: &mut Writer) {
        if self.commit_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let core = self.clone();
                rt.spawn(async move {
                    // Clears the flag even if the runtime drops this task unrun (shutdown).
                    let scheduled = Scheduled(core.clone());
                    // After the tasks woken meanwhile (the upstream request being written).
                    tokio::task::yield_now().await;
                    drop(scheduled);
                    // Never block a runtime thread: if the writer is busy, its holder
                    // schedules the next commit (or the background thread's safety net,
                    // within FLUSH_EVERY, does it).
                    if let Some(w) = core.writer.try_lock() {
                        core.commit_queued(w);
                    }
                });
            }
            Err(_) => {
                self.commit_scheduled.store(false, Ordering::Release);
                w.finish();
            }
        }
    }

    /// Run what is queued and commit, waiting for the writer (background thread only).
    fn commit_now(self: &Arc<Self>) {
        self.commit_queued(self.writer.lock());
    }

    /// Run what is queued and commit, with the writer held.
    fn commit_queued(self: &Arc<Self>, mut w: parking_lot::MutexGuard<'_, Writer>) {
        loop {
            let batch = std::mem::take(&mut *self.queue.lock());
            if batch.is_empty() {
                break;
            }
            w.run(batch);
        }
        w.finish();
        drop(w);
        // Callers that found the writer busy meanwhile left their commands to us.
        if !self.queue.lock().is_empty() {
            self.drain();
        }
    }

    /// Copy the WAL into the database file, in two steps. First beside the writer, on the
    /// background thread's own connection: that copies (and fsyncs) the bulk. Then once more
    /// with the writer held and its transaction committed, so nothing of this process appends
    /// meanwhile: the few frames written during the first step are copied too, and the next
    /// transaction starts the WAL over from its beginning. (A checkpoint beside a busy writer
    /// never catches up, and the WAL would grow for as long as the load lasts.) Requests that
    /// queue during the second step are served right after it.
    fn checkpoint(self: &Arc<Self>, checkpointer: &Connection) {
        let passive = |c: &Connection| {
            c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
        };
        if let Err(e) = passive(checkpointer) {
            tracing::warn!(error = %e, "sqlite checkpoint failed");
            return;
        }
        let mut w = self.writer.lock();
        w.finish();
        let done = passive(checkpointer);
        drop(w);
        match done {
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
        self.commit_now();
    }
}

/// A scheduled commit: dropping it lets the next batch schedule another.
struct Scheduled(Arc<Core>);

impl Drop for Scheduled {
    fn drop(&mut self) {
        self.0.commit_scheduled.store(false, Ordering::Release);
    }
}

/// Transactions one caller runs for others before it returns to its own request.
const MAX_TURN_BATCHES: usize = 8;

impl Drop for Core {
    /// The last handle is gone (store handles and the background thread alike): write what is
    /// still queued, so usage reported just before shutdown is kept.
    fn drop(&mut self) {
        let batch = std::mem::take(self.queue.get_mut());
        let w = self.writer.get_mut();
        if !batch.is_empty() {
            w.run(batch);
        }
        w.finish();
    }
}

/// How often the background thread writes detached commits nobody else has flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// How often the background thread checkpoints the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

fn background(core: std::sync::Weak<Core>, checkpointer: Connection) {
    let mut last_checkpoint = std::time::Instant::now();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(core) = core.upgrade() else { return };
        // The safety net: what no request or committer has written yet (detached commits
        // queued while idle, a transaction left open without a runtime to commit it).
        core.commit_now();
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            last_checkpoint = std::time::Instant::now();
            core.checkpoint(&checkpointer);
        }
    }
}

struct Writer {
    conn: Connection,
    cache: Cache,
    next_sweep: Timestamp,
    /// The vector of the last batch, emptied, to become the next queue.
    spare: Vec<Cmd>,
}

impl Writer {
    fn is_open(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Apply `batch` in the open transaction (beginning one if none is) and answer each
    /// command. Reserves and detached commits are answered at once, the transaction left open
    /// for the scheduled committer; any other command is answered after a commit, so what it
    /// wrote is durable when its caller hears back.
    fn run(&mut self, mut batch: Vec<Cmd>) {
        let sweep_now = batch
            .iter()
            .filter_map(|c| match c {
                Cmd::Reserve(r, _) if r.now >= self.next_sweep => Some(r.now),
                _ => None,
            })
            .max();
        let durable = batch
            .iter()
            .any(|c| !matches!(c, Cmd::Reserve(..) | Cmd::Commit(.., None)));
        let result = self.apply(&batch, sweep_now).and_then(|out| {
            if durable {
                self.commit()?;
            }
            Ok(out)
        });
        match result {
            Ok(results) => {
                if let Some(now) = sweep_now {
                    self.next_sweep = now.plus_millis(1000);
                }
                let mut orphans = Vec::new();
                for (cmd, res) in batch.drain(..).zip(results) {
                    orphans.extend(answer(cmd, Ok(res)));
                }
                self.spare = batch;
                if !orphans.is_empty() {
                    let releases = orphans
                        .into_iter()
                        .map(|id| Cmd::Release(id, oneshot::channel().0))
                        .collect();
                    self.run(releases);
                }
            }
            // `apply` and `commit` have rolled back what failed.
            Err(e) => {
                for cmd in batch {
                    let _ = answer(cmd, Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }

    /// Commit the open transaction, if any. On failure it is rolled back and logged; reserves
    /// it had answered then hold nothing (their settles count usage and free nothing).
    fn finish(&mut self) {
        // A failure is rolled back and logged by `commit`.
        let _ = self.commit();
    }

    /// Commit the open transaction, if any; on failure it is rolled back.
    fn commit(&mut self) -> rusqlite::Result<()> {
        if !self.is_open() {
            return Ok(());
        }
        let done = self
            .flush()
            .and_then(|()| self.conn.prepare_cached("COMMIT")?.execute([]));
        if let Err(e) = done {
            self.abort(&e);
            return Err(e);
        }
        Ok(())
    }

    /// Write the counters changed in the cache to the open transaction.
    fn flush(&mut self) -> rusqlite::Result<()> {
        Batch {
            tx: &self.conn,
            cache: &mut self.cache,
        }
        .flush()
    }

    /// Roll back and forget what the cache holds of the transaction.
    fn abort(&mut self, e: &rusqlite::Error) {
        tracing::error!(error = %e, "sqlite store transaction failed; rolled back");
        if self.is_open() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "sqlite rollback failed");
            }
        }
        self.cache = Cache::default();
    }
}

enum Outcome {
    Admission(Admission),
    Done,
    Snapshot(Vec<SubjectState>),
    Counter(Counter),
    Count(usize),
    Scores(Vec<f64>),
}

/// Answer one command; returns a lease granted to a caller that is no longer waiting.
fn answer(cmd: Cmd, res: Result<Outcome, StoreError>) -> Option<LeaseId> {
    fn send<T>(tx: Reply<T>, r: Result<Outcome, StoreError>, f: impl FnOnce(Outcome) -> Option<T>) {
        let r = r.and_then(|o| f(o).ok_or_else(|| StoreError::Backend("unexpected reply".into())));
        let _ = tx.send(r);
    }
    match cmd {
        Cmd::Reserve(_, tx) => {
            // A caller that went away (client hung up) cannot settle its grant: release it now
            // rather than holding the capacity for the whole lease TTL. (The caller releases
            // it too, by the id it chose: whichever comes second finds nothing to do.)
            let r = res.and_then(|o| match o {
                Outcome::Admission(a) => Ok(a),
                _ => Err(StoreError::Backend("unexpected reply".into())),
            });
            if let Err(Ok(Admission::Granted(id))) = tx.send(r) {
                return Some(id);
            }
        }
        Cmd::Commit(.., None) => {
            if let Err(e) = res {
                tracing::warn!(error = %e, "could not record usage");
            }
        }
        Cmd::Commit(.., Some(tx))
        | Cmd::Release(_, tx)
        | Cmd::Cooldown(.., tx)
        | Cmd::Score(.., tx)
        | Cmd::Disabled(.., tx) => send(tx, res, |o| matches!(o, Outcome::Done).then_some(())),
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
    }
    None
}

impl Writer {
    /// Apply `batch` inside the open transaction, beginning one if none is. A batch that
    /// joins a transaction holding batches already answered runs under a savepoint: if it
    /// fails, only it is undone. On failure, what failed has been rolled back.
    fn apply(
        &mut self,
        batch: &[Cmd],
        sweep_now: Option<Timestamp>,
    ) -> rusqlite::Result<Vec<Outcome>> {
        let joined = self.is_open();
        let step = |w: &mut Self| -> rusqlite::Result<Vec<Outcome>> {
            if joined {
                // What earlier batches left in the cache goes to the file first, so that
                // undoing this batch (and forgetting the cache) cannot lose it. A first batch
                // leaves its counters to the commit, off its callers' path.
                w.flush()?;
                w.conn.prepare_cached("SAVEPOINT batch")?.execute([])?;
            }
            let out = w.apply_cmds(batch, sweep_now)?;
            if joined {
                w.conn.prepare_cached("RELEASE batch")?.execute([])?;
            }
            Ok(out)
        };
        match step(self) {
            Ok(out) => Ok(out),
            Err(e) if joined && self.is_open() => {
                tracing::error!(error = %e, "sqlite store batch failed; rolled back to its start");
                let undone = self.conn.execute_batch("ROLLBACK TO batch; RELEASE batch");
                match undone {
                    // Earlier batches were written out before the savepoint: the cache
                    // reloads them from the file; this batch's changes are forgotten.
                    Ok(()) => self.cache = Cache::default(),
                    Err(e2) => self.abort(&e2),
                }
                Err(e)
            }
            Err(e) => {
                self.abort(&e);
                Err(e)
            }
        }
    }

    fn apply_cmds(
        &mut self,
        batch: &[Cmd],
        sweep_now: Option<Timestamp>,
    ) -> rusqlite::Result<Vec<Outcome>> {
        let Writer { conn, cache, .. } = self;
        if conn.is_autocommit() {
            // Cached statements: `Connection::transaction` parses BEGIN and COMMIT anew each
            // time, a measurable share of a small transaction.
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            // Another connection may have written since our last transaction: then what the
            // cache holds is stale. Within a transaction nobody else writes.
            let version: i64 = conn
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))?;
            cache.check_version(version);
        }
        let mut b = Batch { tx: conn, cache };
        if let Some(now) = sweep_now {
            b.sweep(now)?;
        }
        let mut out = Vec::with_capacity(batch.len());
        for cmd in batch {
            out.push(match cmd {
                Cmd::Reserve(r, _) => Outcome::Admission(b.reserve(r)?),
                Cmd::Commit(id, now, used, _) => {
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
            });
        }
        Ok(out)
    }
}
