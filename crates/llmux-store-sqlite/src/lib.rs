//! `SqliteStore`: the embedded default store, one SQLite file.
//!
//! One writer thread owns the connection. Callers queue commands on a channel; the writer takes
//! every queued command, applies them in order inside one `BEGIN IMMEDIATE` transaction (each
//! checked on its own with `llmux_core::store::decide`, so admission stays exact), commits, and
//! only then answers each caller. `BEGIN IMMEDIATE` also takes SQLite's write lock, so several
//! processes on one file (gateways, the CLI) never interleave a check and its write. WAL mode
//! with `synchronous = NORMAL`: what was committed survives `kill -9` of the process.
//!
//! Schema changes are append-only migrations keyed by `PRAGMA user_version`.

use llmux_core::store::{
    decide, Admission, Counter, Flags, LeaseId, Line, Reserve, Store, StoreAdmin, StoreError,
    SubjectState,
};
use llmux_core::{Subject, Timestamp, Window};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
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
];

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 512;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Cmd {
    Reserve(Reserve, Reply<Admission>),
    Commit(LeaseId, Timestamp, Vec<Line>, Reply<()>),
    Release(LeaseId, Reply<()>),
    Cooldown(Subject, Timestamp, Reply<()>),
    Disabled(Subject, bool, Reply<()>),
    Snapshot(String, Reply<Vec<SubjectState>>),
}

/// A [`Store`] on one SQLite file. Cloning shares the writer.
#[derive(Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<Cmd>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path` and start its writer thread.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_conn(&path).map_err(|e| {
            StoreError::Unavailable(format!("cannot open sqlite store {}: {e}", path.display()))
        })?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("llmux-sqlite".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start sqlite writer: {e}")))?;
        Ok(SqliteStore { tx, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable("sqlite writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer has stopped".into()))?
    }
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
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

fn writer(mut conn: Connection, rx: mpsc::Receiver<Cmd>) {
    let mut next_sweep = Timestamp(0);
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let sweep_now = batch
            .iter()
            .filter_map(|c| match c {
                Cmd::Reserve(r, _) if r.now >= next_sweep => Some(r.now),
                _ => None,
            })
            .max();
        match run_batch(&mut conn, &batch, sweep_now) {
            Ok(results) => {
                if let Some(now) = sweep_now {
                    next_sweep = now.plus_millis(1000);
                }
                for (cmd, res) in batch.into_iter().zip(results) {
                    answer(cmd, Ok(res));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "sqlite store transaction failed");
                for cmd in batch {
                    answer(cmd, Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

enum Outcome {
    Admission(Admission),
    Done,
    Snapshot(Vec<SubjectState>),
}

fn answer(cmd: Cmd, res: Result<Outcome, StoreError>) {
    fn send<T>(tx: Reply<T>, r: Result<Outcome, StoreError>, f: impl FnOnce(Outcome) -> Option<T>) {
        let r = r.and_then(|o| f(o).ok_or_else(|| StoreError::Backend("unexpected reply".into())));
        let _ = tx.send(r);
    }
    match cmd {
        Cmd::Reserve(_, tx) => send(tx, res, |o| match o {
            Outcome::Admission(a) => Some(a),
            _ => None,
        }),
        Cmd::Commit(.., tx)
        | Cmd::Release(_, tx)
        | Cmd::Cooldown(.., tx)
        | Cmd::Disabled(.., tx) => send(tx, res, |o| matches!(o, Outcome::Done).then_some(())),
        Cmd::Snapshot(_, tx) => send(tx, res, |o| match o {
            Outcome::Snapshot(s) => Some(s),
            _ => None,
        }),
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: &[Cmd],
    sweep_now: Option<Timestamp>,
) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(now) = sweep_now {
        sweep(&tx, now)?;
    }
    let mut out = Vec::with_capacity(batch.len());
    for cmd in batch {
        out.push(match cmd {
            Cmd::Reserve(r, _) => Outcome::Admission(reserve(&tx, r)?),
            Cmd::Commit(id, now, used, _) => {
                commit(&tx, *id, *now, used)?;
                Outcome::Done
            }
            Cmd::Release(id, _) => {
                release(&tx, *id)?;
                Outcome::Done
            }
            Cmd::Cooldown(s, until, _) => {
                tx.prepare_cached(
                    "INSERT INTO subjects (subject, cooldown_until) VALUES (?1, ?2)
                     ON CONFLICT (subject) DO UPDATE SET cooldown_until =
                       max(coalesce(cooldown_until, 0), excluded.cooldown_until)",
                )?
                .execute(params![s.as_str(), until.0])?;
                Outcome::Done
            }
            Cmd::Disabled(s, d, _) => {
                tx.prepare_cached(
                    "INSERT INTO subjects (subject, disabled) VALUES (?1, ?2)
                     ON CONFLICT (subject) DO UPDATE SET disabled = excluded.disabled",
                )?
                .execute(params![s.as_str(), *d as i64])?;
                Outcome::Done
            }
            Cmd::Snapshot(subject, _) => Outcome::Snapshot(snapshot(&tx, subject)?),
        });
    }
    tx.commit()?;
    Ok(out)
}

fn load_counter(tx: &rusqlite::Transaction, l: &Line) -> rusqlite::Result<Option<Counter>> {
    tx.prepare_cached(
        "SELECT capacity, used, reserved, window_start, window_end FROM counters
         WHERE subject = ?1 AND resource = ?2",
    )?
    .query_row(params![l.subject.as_str(), &*l.resource], |r| {
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
    tx: &rusqlite::Transaction,
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

fn load_flags(tx: &rusqlite::Transaction, s: &str) -> rusqlite::Result<Flags> {
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

fn reserve(tx: &rusqlite::Transaction, r: &Reserve) -> rusqlite::Result<Admission> {
    let mut gates = Vec::with_capacity(r.gates.len());
    for g in &r.gates {
        gates.push(load_flags(tx, g.as_str())?);
    }
    let mut counters = Vec::with_capacity(r.lines.len());
    for l in &r.lines {
        counters.push(load_counter(tx, l)?.unwrap_or_else(|| Counter::fresh(l)));
    }
    if let Err(d) = decide(r, &mut counters, &gates) {
        return Ok(Admission::Denied(d));
    }
    let mut lines = Vec::with_capacity(r.lines.len());
    for (l, c) in r.lines.iter().zip(&counters) {
        save_counter(tx, l.subject.as_str(), &l.resource, c)?;
        lines.push(serde_json::json!([
            l.subject.as_str(),
            &*l.resource,
            l.amount
        ]));
    }
    tx.prepare_cached("INSERT INTO leases (expires_at, lines) VALUES (?1, ?2)")?
        .execute(params![
            r.now.plus_millis(r.lease_ttl_ms).0,
            serde_json::Value::Array(lines).to_string()
        ])?;
    Ok(Admission::Granted(LeaseId(tx.last_insert_rowid() as u64)))
}

/// Remove a lease; returns its lines `(subject, resource, amount)`.
fn take_lease(
    tx: &rusqlite::Transaction,
    id: LeaseId,
) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let text: Option<String> = tx
        .prepare_cached("DELETE FROM leases WHERE id = ?1 RETURNING lines")?
        .query_row([id.0 as i64], |r| r.get(0))
        .optional()?;
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let parsed: Vec<(String, String, u64)> = serde_json::from_str(&text).unwrap_or_default();
    Ok(parsed)
}

fn unreserve(
    tx: &rusqlite::Transaction,
    subject: &str,
    resource: &str,
    amount: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE counters SET reserved = max(reserved - ?3, 0) WHERE subject = ?1 AND resource = ?2",
    )?
    .execute(params![subject, resource, amount as i64])?;
    Ok(())
}

fn release(tx: &rusqlite::Transaction, id: LeaseId) -> rusqlite::Result<()> {
    for (s, r, amount) in take_lease(tx, id)? {
        unreserve(tx, &s, &r, amount)?;
    }
    Ok(())
}

fn commit(
    tx: &rusqlite::Transaction,
    id: LeaseId,
    now: Timestamp,
    used: &[Line],
) -> rusqlite::Result<()> {
    let mut held = take_lease(tx, id)?;
    for l in used {
        let pos = held
            .iter()
            .position(|(s, r, _)| s == l.subject.as_str() && r == &*l.resource);
        let reserved = pos.map(|i| held.swap_remove(i).2).unwrap_or(0);
        let mut c = load_counter(tx, l)?.unwrap_or_else(|| Counter::fresh(l));
        c.settle(l, reserved, now);
        save_counter(tx, l.subject.as_str(), &l.resource, &c)?;
    }
    for (s, r, amount) in held {
        unreserve(tx, &s, &r, amount)?;
    }
    Ok(())
}

fn sweep(tx: &rusqlite::Transaction, now: Timestamp) -> rusqlite::Result<()> {
    let expired: Vec<i64> = tx
        .prepare_cached("SELECT id FROM leases WHERE expires_at <= ?1")?
        .query_map([now.0], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in expired {
        release(tx, LeaseId(id as u64))?;
    }
    Ok(())
}

fn snapshot(tx: &rusqlite::Transaction, subject: &str) -> rusqlite::Result<Vec<SubjectState>> {
    let below = format!("{subject}/%");
    let mut out: std::collections::BTreeMap<String, SubjectState> = Default::default();
    let mut stmt = tx.prepare_cached(
        "SELECT subject, resource, capacity, used, reserved, window_start, window_end
         FROM counters WHERE subject = ?1 OR subject LIKE ?2 ORDER BY subject, resource",
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
    for row in rows {
        let (s, res, c) = row?;
        out.entry(s.clone())
            .or_insert_with(|| SubjectState {
                subject: s,
                ..Default::default()
            })
            .resources
            .push((res, c));
    }
    let mut stmt =
        tx.prepare_cached("SELECT subject FROM subjects WHERE subject = ?1 OR subject LIKE ?2")?;
    let subjects: Vec<String> = stmt
        .query_map(params![subject, below], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for s in subjects {
        let flags = load_flags(tx, &s)?;
        out.entry(s.clone())
            .or_insert_with(|| SubjectState {
                subject: s,
                ..Default::default()
            })
            .flags = flags;
    }
    Ok(out.into_values().collect())
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
        self.call(|tx| Cmd::Commit(lease, now, used, tx)).await
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
}

impl StoreAdmin for SqliteStore {
    async fn snapshot(&self, subject: &str) -> Result<Vec<SubjectState>, StoreError> {
        let subject = subject.to_string();
        self.call(|tx| Cmd::Snapshot(subject, tx)).await
    }
}

#[doc(hidden)]
pub fn _backend_error(e: rusqlite::Error) -> StoreError {
    backend(e)
}
