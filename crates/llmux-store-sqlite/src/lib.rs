//! `SqliteStore`: the embedded default store, one SQLite file.
//!
//! Callers queue commands; whoever finds the connection free takes every queued command and
//! applies them in order inside a `BEGIN IMMEDIATE` transaction, each checked on its own with
//! `llmux_core::store::decide`, so admission stays exact (flat combining: no thread hand-off
//! on the request path, and one transaction serves many callers under load). `BEGIN
//! IMMEDIATE` takes SQLite's write lock, so several processes on one file (gateways, the CLI)
//! never interleave a check and its write.
//!
//! Reserves are answered before their transaction commits, and a task scheduled behind the
//! callers commits it while their requests travel upstream; batches that arrive meanwhile join
//! the same transaction, each under a savepoint, so a failing batch undoes only itself. The write lock is held from the first check to the commit, so no
//! other process reads or writes a half state; a crash before the commit loses only
//! reservations of requests that die with it. Every other command (an awaited commit, a
//! release, flags, admin) is answered after its commit. Between transactions the counters
//! stay cached while `PRAGMA data_version` shows no other connection has written. WAL mode
//! with `synchronous = NORMAL`: what was committed survives `kill -9`. A background thread
//! flushes detached commits (within 5 ms) and checkpoints the WAL so it starts over, so no
//! fsync sits on the request path.
//!
//! Schema changes are append-only migrations keyed by `PRAGMA user_version`.

use llmux_core::ids::at_or_below;
use llmux_core::store::{
    decide, score_of, AdminOp, Admission, Counter, Flags, LeaseId, Line, Reserve, Store,
    StoreAdmin, StoreError, SubjectState,
};
use llmux_core::{Subject, Timestamp, Window};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE counters (
        subject TEXT NOT NULL,
        resource TEXT NOT NULL,
        capacity INTEGER NOT NULL,
        used INTEGER NOT NULL,
        reserved INTEGER NOT NULL,
        window_start INTEGER NOT NULL,
        window_end INTEGER NOT NULL,
        PRIMARY KEY (subject, resource)
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        expires_at INTEGER NOT NULL,
        lines TEXT NOT NULL
    );
    CREATE INDEX leases_expires_at ON leases (expires_at);
    CREATE TABLE subjects (
        subject TEXT PRIMARY KEY,
        cooldown_until INTEGER,
        disabled INTEGER NOT NULL DEFAULT 0,
        score REAL
    ) WITHOUT ROWID;",
    // v2: the sweep scans the (small) table of leases in flight once a second; an index on
    // expires_at cost a page write in every transaction.
    "DROP INDEX IF EXISTS leases_expires_at;",
    // v3: lease ids are drawn at random (never reused, as AUTOINCREMENT promised) without the
    // sqlite_sequence page AUTOINCREMENT wrote in every transaction.
    "CREATE TABLE leases_v3 (
        id INTEGER PRIMARY KEY,
        expires_at INTEGER NOT NULL,
        lines TEXT NOT NULL
    );
    INSERT INTO leases_v3 (id, expires_at, lines) SELECT id, expires_at, lines FROM leases;
    DROP TABLE leases;
    ALTER TABLE leases_v3 RENAME TO leases;",
];

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Cmd {
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

/// A [`Store`] on one SQLite file. Cloning shares the connection.
#[derive(Clone)]
pub struct SqliteStore {
    core: Arc<Core>,
    path: PathBuf,
}

/// Commands queue here; whoever finds the writer free runs every queued command in one
/// transaction (flat combining). No thread hand-off on the request path: an uncontended
/// reserve runs inline, and under load one transaction serves many callers.
struct Core {
    queue: Mutex<Vec<Cmd>>,
    writer: Mutex<Writer>,
    /// A task will commit the open transaction soon (see [`Core::schedule_commit`]).
    commit_scheduled: AtomicBool,
}

impl Core {
    /// Run queued commands while the writer is ours. If another caller holds it, that caller
    /// runs ours too: it checks the queue again after letting the writer go.
    fn drain(self: &Arc<Self>) {
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

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// How often the background thread writes detached commits nobody else has flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(5);
/// How often the background thread checkpoints the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl SqliteStore {
    /// Open (creating if needed) the store at `path`, and start the background thread that
    /// flushes detached commits and checkpoints the WAL off the request path.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let unavailable = |e: rusqlite::Error| {
            StoreError::Unavailable(format!("cannot open sqlite store {}: {e}", path.display()))
        };
        let conn = open_conn(&path).map_err(unavailable)?;
        // Checkpoints (which fsync) run on the background thread, not at commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(unavailable)?;
        let checkpointer = open_conn(&path).map_err(unavailable)?;
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
            .spawn(move || background(weak, checkpointer))
            .map_err(|e| StoreError::Unavailable(format!("cannot start sqlite thread: {e}")))?;
        Ok(SqliteStore { core, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.core.queue.lock().push(make(tx));
        // Let other ready tasks queue theirs first, so one batch serves them all. Without this
        // yield each request ran its own batch: 137 us of CPU per request and 7.2k req/s at
        // c=64 in ../shared/bench, against 56 us and 17k with it (and still 15.5k against 22k+
        // once transactions spanned batches).
        tokio::task::yield_now().await;
        self.core.drain();
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite store has stopped".into()))?
    }
}

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

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // The hot rows (counters, leases in flight) fit in a few pages; the writer caches counters.
    conn.pragma_update(None, "cache_size", -256)?;
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < MIGRATIONS.len() {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Re-read inside the write lock: another process may have migrated meanwhile.
        let version: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
    }
    Ok(conn)
}

/// A cached counter: `None` = known to be absent; `dirty` = changed in this transaction.
#[derive(Clone, Copy, Default)]
struct Cached {
    counter: Option<Counter>,
    dirty: bool,
}

/// What the writer knows of the file. Valid while `PRAGMA data_version` is unchanged, i.e. no
/// other connection (another gateway, the CLI) has committed since our last transaction.
#[derive(Default)]
struct Cache {
    version: Option<i64>,
    /// subject -> resource -> counter: looked up by `&str` with no allocation; changed
    /// counters are written once before the transaction commits.
    counters: HashMap<Box<str>, HashMap<Box<str>, Cached>>,
    flags: HashMap<Box<str>, Flags>,
    /// The lines of leases this writer granted, so settling one needs no read or parse of
    /// its row (the row is still deleted, and only a deleted row is settled).
    leases: HashMap<u64, Box<[Held]>>,
    any_dirty: bool,
}

/// One reserved line of a lease: subject, resource, amount.
type Held = (Subject, Arc<str>, u64);

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

/// Lease lines as stored: `subject\tresource\tamount` per line. Names never hold tabs or
/// newlines (config validation).
fn encode_lines(lines: &[Line]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(lines.len() * 48);
    for l in lines {
        let _ = writeln!(s, "{}\t{}\t{}", l.subject, l.resource, l.amount);
    }
    s
}

fn decode_lines(text: &str) -> Vec<Held> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split('\t');
            let s = parts.next()?;
            let r = parts.next()?;
            let a = parts.next()?.parse().ok()?;
            Some((Subject::new(s), Arc::from(r), a))
        })
        .collect()
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
            if cache.version != Some(version) {
                *cache = Cache {
                    version: Some(version),
                    ..Cache::default()
                };
            }
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
                    b.tx.prepare_cached(
                        "INSERT INTO subjects (subject, cooldown_until) VALUES (?1, ?2)
                         ON CONFLICT (subject) DO UPDATE SET cooldown_until =
                           max(coalesce(cooldown_until, 0), excluded.cooldown_until)",
                    )?
                    .execute(params![s.as_str(), until.0])?;
                    b.cache.flags.remove(s.as_str());
                    Outcome::Done
                }
                Cmd::Disabled(s, d, _) => {
                    b.tx.prepare_cached(
                        "INSERT INTO subjects (subject, disabled) VALUES (?1, ?2)
                         ON CONFLICT (subject) DO UPDATE SET disabled = excluded.disabled",
                    )?
                    .execute(params![s.as_str(), *d as i64])?;
                    b.cache.flags.remove(s.as_str());
                    Outcome::Done
                }
                Cmd::Snapshot(subject, _) => {
                    b.flush()?;
                    Outcome::Snapshot(snapshot(b.tx, subject)?)
                }
                Cmd::Update(line, op, now, _) => {
                    let mut c = b
                        .counter(line.subject.as_str(), &line.resource)?
                        .unwrap_or_else(|| Counter::fresh(line));
                    c.apply_admin(line, *op, *now);
                    b.set_counter(line.subject.as_str(), &line.resource, c);
                    Outcome::Counter(c)
                }
                Cmd::Scores(now, subjects, _) => {
                    let mut out = Vec::with_capacity(subjects.len());
                    for (s, lines) in subjects {
                        let flags = b.flags(s.as_str())?;
                        let mut counters = Vec::with_capacity(lines.len());
                        for l in lines {
                            counters.push((l.clone(), b.counter(l.subject.as_str(), &l.resource)?));
                        }
                        out.push(score_of(&flags, &counters, *now));
                    }
                    Outcome::Scores(out)
                }
                Cmd::Score(subject, score, _) => {
                    b.tx.prepare_cached(
                        "INSERT INTO subjects (subject, score) VALUES (?1, ?2)
                         ON CONFLICT (subject) DO UPDATE SET score = excluded.score",
                    )?
                    .execute(params![subject.as_str(), score])?;
                    b.cache.flags.remove(subject.as_str());
                    Outcome::Done
                }
                Cmd::Reset(subject, _) => {
                    b.flush()?;
                    let below = format!("{subject}/");
                    let n =
                        b.tx.prepare_cached(&format!("DELETE FROM counters WHERE {UNDER}"))?
                            .execute(params![subject, below])?;
                    b.tx.prepare_cached(&format!("DELETE FROM subjects WHERE {UNDER}"))?
                        .execute(params![subject, below])?;
                    forget_lease_lines(b.tx, subject)?;
                    // Simplest correct cache after a bulk delete: start over.
                    b.cache.counters.clear();
                    b.cache.flags.clear();
                    b.cache.leases.clear();
                    Outcome::Count(n)
                }
            });
        }
        Ok(out)
    }
}

/// One transaction's view: the cache in front of the file.
struct Batch<'a> {
    tx: &'a Connection,
    cache: &'a mut Cache,
}

impl Batch<'_> {
    /// The cache slot of a counter, created on a miss (the only place that allocates).
    fn slot(&mut self, subject: &str, resource: &str) -> &mut Cached {
        self.cache
            .counters
            .entry(subject.into())
            .or_default()
            .entry(resource.into())
            .or_default()
    }

    fn counter(&mut self, subject: &str, resource: &str) -> rusqlite::Result<Option<Counter>> {
        if let Some(c) = self
            .cache
            .counters
            .get(subject)
            .and_then(|m| m.get(resource))
        {
            return Ok(c.counter);
        }
        let counter = load_counter(self.tx, subject, resource)?;
        *self.slot(subject, resource) = Cached {
            counter,
            dirty: false,
        };
        Ok(counter)
    }

    fn set_counter(&mut self, subject: &str, resource: &str, c: Counter) {
        self.cache.any_dirty = true;
        let cached = Cached {
            counter: Some(c),
            dirty: true,
        };
        match self
            .cache
            .counters
            .get_mut(subject)
            .and_then(|m| m.get_mut(resource))
        {
            Some(slot) => *slot = cached,
            None => *self.slot(subject, resource) = cached,
        }
    }

    fn flags(&mut self, subject: &str) -> rusqlite::Result<Flags> {
        if let Some(f) = self.cache.flags.get(subject) {
            return Ok(*f);
        }
        let f = load_flags(self.tx, subject)?;
        self.cache.flags.insert(subject.into(), f);
        Ok(f)
    }

    /// Write every changed counter once.
    fn flush(&mut self) -> rusqlite::Result<()> {
        if !std::mem::take(&mut self.cache.any_dirty) {
            return Ok(());
        }
        for (subject, per) in self.cache.counters.iter_mut() {
            for (resource, cached) in per.iter_mut() {
                if let (true, Some(c)) = (cached.dirty, &cached.counter) {
                    save_counter(self.tx, subject, resource, c)?;
                    cached.dirty = false;
                }
            }
        }
        Ok(())
    }

    fn reserve(&mut self, r: &Reserve) -> rusqlite::Result<Admission> {
        let mut gates = Vec::with_capacity(r.gates.len());
        for g in &r.gates {
            gates.push(self.flags(g.as_str())?);
        }
        let mut counters = Vec::with_capacity(r.lines.len());
        for l in &r.lines {
            let c = self.counter(l.subject.as_str(), &l.resource)?;
            counters.push(c.unwrap_or_else(|| Counter::fresh(l)));
        }
        if let Err(d) = decide(r, &mut counters, &gates) {
            return Ok(Admission::Denied(d));
        }
        let id = r.lease.0;
        let expires_at = r.now.plus_millis(r.lease_ttl_ms).0;
        let text = encode_lines(&r.lines);
        // The caller's id (random, 63 bits: unique across processes on the file, never
        // reused). One already held is a retried call: granted again, reserved once.
        let inserted = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO leases (id, expires_at, lines) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id as i64, expires_at, text])?;
        if inserted == 0 {
            return Ok(Admission::Granted(r.lease));
        }
        for (l, c) in r.lines.iter().zip(counters) {
            self.set_counter(l.subject.as_str(), &l.resource, c);
        }
        let held = r
            .lines
            .iter()
            .map(|l| (l.subject.clone(), l.resource.clone(), l.amount))
            .collect();
        self.cache.leases.insert(id, held);
        Ok(Admission::Granted(r.lease))
    }

    /// Remove a lease; returns its lines, or none when the lease is gone (settled, expired
    /// or reset elsewhere).
    fn take_lease(&mut self, id: LeaseId) -> rusqlite::Result<Vec<Held>> {
        if let Some(held) = self.cache.leases.remove(&id.0) {
            let deleted = self
                .tx
                .prepare_cached("DELETE FROM leases WHERE id = ?1")?
                .execute([id.0 as i64])?;
            return Ok(if deleted == 1 {
                held.into()
            } else {
                Vec::new()
            });
        }
        let text: Option<String> = self
            .tx
            .prepare_cached("DELETE FROM leases WHERE id = ?1 RETURNING lines")?
            .query_row([id.0 as i64], |r| r.get(0))
            .optional()?;
        Ok(text.map(|t| decode_lines(&t)).unwrap_or_default())
    }

    fn unreserve(&mut self, subject: &str, resource: &str, amount: u64) -> rusqlite::Result<()> {
        if let Some(mut c) = self.counter(subject, resource)? {
            c.reserved = c.reserved.saturating_sub(amount);
            self.set_counter(subject, resource, c);
        }
        Ok(())
    }

    fn release(&mut self, id: LeaseId) -> rusqlite::Result<()> {
        for (s, r, amount) in self.take_lease(id)? {
            self.unreserve(s.as_str(), &r, amount)?;
        }
        Ok(())
    }

    fn commit(&mut self, id: LeaseId, now: Timestamp, used: &[Line]) -> rusqlite::Result<()> {
        let mut held = self.take_lease(id)?;
        for l in used {
            let pos = held
                .iter()
                .position(|(s, r, _)| *s == l.subject && *r == l.resource);
            let reserved = pos.map(|i| held.swap_remove(i).2).unwrap_or(0);
            let mut c = self
                .counter(l.subject.as_str(), &l.resource)?
                .unwrap_or_else(|| Counter::fresh(l));
            c.settle(l, reserved, now);
            self.set_counter(l.subject.as_str(), &l.resource, c);
            // Usage changed: an operator's score override ends.
            if self.flags(l.subject.as_str())?.score.is_some() {
                self.tx
                    .prepare_cached("UPDATE subjects SET score = NULL WHERE subject = ?1")?
                    .execute([l.subject.as_str()])?;
                self.cache.flags.remove(l.subject.as_str());
            }
        }
        for (s, r, amount) in held {
            self.unreserve(s.as_str(), &r, amount)?;
        }
        Ok(())
    }

    fn sweep(&mut self, now: Timestamp) -> rusqlite::Result<()> {
        let expired: Vec<i64> = self
            .tx
            .prepare_cached("SELECT id FROM leases WHERE expires_at <= ?1")?
            .query_map([now.0], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in expired {
            self.release(LeaseId(id as u64))?;
        }
        Ok(())
    }
}

fn load_counter(
    tx: &Connection,
    subject: &str,
    resource: &str,
) -> rusqlite::Result<Option<Counter>> {
    tx.prepare_cached(
        "SELECT capacity, used, reserved, window_start, window_end FROM counters
         WHERE subject = ?1 AND resource = ?2",
    )?
    .query_row(params![subject, resource], |r| {
        Ok(Counter {
            capacity: r.get::<_, i64>(0)? as u64,
            used: r.get::<_, i64>(1)? as u64,
            reserved: r.get::<_, i64>(2)? as u64,
            window: Window {
                start: Timestamp(r.get(3)?),
                end: Timestamp(r.get(4)?),
            },
        })
    })
    .optional()
}

fn save_counter(
    tx: &Connection,
    subject: &str,
    resource: &str,
    c: &Counter,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO counters
         (subject, resource, capacity, used, reserved, window_start, window_end)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        subject,
        resource,
        c.capacity as i64,
        c.used as i64,
        c.reserved as i64,
        c.window.start.0,
        c.window.end.0
    ])?;
    Ok(())
}

fn load_flags(tx: &Connection, s: &str) -> rusqlite::Result<Flags> {
    Ok(tx
        .prepare_cached("SELECT cooldown_until, disabled, score FROM subjects WHERE subject = ?1")?
        .query_row([s], |r| {
            Ok(Flags {
                cooldown_until: r.get::<_, Option<i64>>(0)?.map(Timestamp),
                disabled: r.get::<_, i64>(1)? != 0,
                score: r.get(2)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// `subject = ?1` or below it (`?2` = `subject/`): an exact prefix, unlike LIKE, where `_` is a
/// wildcard and case is folded.
const UNDER: &str = "(subject = ?1 OR substr(subject, 1, length(?2)) = ?2)";

/// After a reset, leases in flight must not give back, at settle or expiry, amounts reserved on
/// counters that no longer exist: drop their lines on the reset subjects.
fn forget_lease_lines(tx: &Connection, subject: &str) -> rusqlite::Result<()> {
    let leases: Vec<(i64, String)> = tx
        .prepare_cached("SELECT id, lines FROM leases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, text) in leases {
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !at_or_below(l.split('\t').next().unwrap_or(""), subject))
            .collect();
        if kept.len() == text.lines().count() {
            continue;
        }
        let mut joined = kept.join("\n");
        if !joined.is_empty() {
            joined.push('\n');
        }
        tx.prepare_cached("UPDATE leases SET lines = ?2 WHERE id = ?1")?
            .execute(params![id, joined])?;
    }
    Ok(())
}

fn snapshot(tx: &Connection, subject: &str) -> rusqlite::Result<Vec<SubjectState>> {
    let below = format!("{subject}/");
    let mut stmt = tx.prepare_cached(
        "SELECT subject, resource, capacity, used, reserved, window_start, window_end
         FROM counters WHERE (subject = ?1 OR substr(subject, 1, length(?2)) = ?2)
         ORDER BY subject, resource",
    )?;
    let rows = stmt.query_map(params![subject, below], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            Counter {
                capacity: r.get::<_, i64>(2)? as u64,
                used: r.get::<_, i64>(3)? as u64,
                reserved: r.get::<_, i64>(4)? as u64,
                window: Window {
                    start: Timestamp(r.get(5)?),
                    end: Timestamp(r.get(6)?),
                },
            },
        ))
    })?;
    let counters = rows.collect::<Result<Vec<_>, _>>()?;
    let mut stmt = tx.prepare_cached(&format!("SELECT subject FROM subjects WHERE {UNDER}"))?;
    let subjects: Vec<String> = stmt
        .query_map(params![subject, below], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut flags = Vec::with_capacity(subjects.len());
    for s in subjects {
        let f = load_flags(tx, &s)?;
        flags.push((s, f));
    }
    Ok(SubjectState::collect(counters, flags))
}

impl Store for SqliteStore {
    async fn reserve(&self, r: Reserve) -> Result<Admission, StoreError> {
        self.call(|tx| Cmd::Reserve(r, tx)).await
    }
    async fn commit(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
    ) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Commit(lease, now, used, Some(tx)))
            .await
    }
    fn commit_detached(&self, lease: LeaseId, now: Timestamp, used: Vec<Line>) {
        // Rides with the next transaction, or the background flush within FLUSH_EVERY.
        self.core
            .queue
            .lock()
            .push(Cmd::Commit(lease, now, used, None));
    }
    async fn release(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Release(lease, tx)).await
    }
    async fn set_cooldown(&self, subject: Subject, until: Timestamp) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Cooldown(subject, until, tx)).await
    }
    async fn set_disabled(&self, subject: Subject, disabled: bool) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Disabled(subject, disabled, tx)).await
    }
    async fn scores(
        &self,
        now: Timestamp,
        subjects: Vec<(Subject, Vec<Line>)>,
    ) -> Result<Vec<f64>, StoreError> {
        self.call(|tx| Cmd::Scores(now, subjects, tx)).await
    }
}

impl StoreAdmin for SqliteStore {
    async fn snapshot(&self, subject: &str) -> Result<Vec<SubjectState>, StoreError> {
        let subject = subject.to_string();
        self.call(|tx| Cmd::Snapshot(subject, tx)).await
    }
    async fn update(&self, line: Line, op: AdminOp, now: Timestamp) -> Result<Counter, StoreError> {
        self.call(|tx| Cmd::Update(line, op, now, tx)).await
    }
    async fn set_score(&self, subject: Subject, score: Option<f64>) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Score(subject, score, tx)).await
    }
    async fn reset(&self, subject: &str) -> Result<usize, StoreError> {
        let subject = subject.to_string();
        self.call(|tx| Cmd::Reset(subject, tx)).await
    }
}
