//! `SqliteStore`: the embedded default store, one SQLite file.
//!
//! One writer thread owns the connection and runs all of the store's SQL. Callers queue a
//! command and await its answer; the writer takes every queued command into one `BEGIN
//! IMMEDIATE` transaction and applies them in order, each checked on its own with
//! `llmux_core::store::decide`, so admission stays exact and under load one transaction
//! serves many callers. `BEGIN IMMEDIATE` takes SQLite's write lock, so several processes on
//! one file (gateways, the CLI) never interleave a check and its write; while another process
//! holds the lock only the writer thread waits, never a caller's (tokio) thread.
//!
//! Reserves are answered before their transaction commits. The write lock is held from the
//! first check to the commit, so no other process reads or writes a half state; a crash before
//! the commit loses only reservations of requests that die with it. If the commit fails, a
//! grant answered in it holds nothing afterwards (its settle still records usage), and the
//! detached commits (`commit_detached`) it carried are applied again in the next transactions
//! (after a short, doubling pause; given up with an error log after 8 failed transactions).
//! Every other command (an awaited commit, a release, flags, admin) is answered after its
//! commit, with the error if it failed. Commands that arrive meanwhile go into the next
//! transaction. Between transactions the counters stay cached while `PRAGMA data_version` shows
//! no other connection has written. WAL mode with `synchronous = NORMAL`: what was committed
//! survives `kill -9`. A second thread checkpoints the WAL every second (the writer finishes
//! each checkpoint between two transactions, so the WAL starts over), so no fsync sits on the
//! request path. Dropping the last handle writes what is queued and stops both threads.
//!
//! Schema changes are append-only migrations keyed by `PRAGMA user_version`.
//!
//! Modules: `schema` (migrations, opening a connection), `rows` (the SQL of counter, flag and
//! lease rows), `cache` (what the writer knows of the file, and one transaction's view through
//! it), `writer` (the writer and checkpointer threads, the queue, transactions and answers).

mod cache;
mod rows;
mod schema;
mod writer;

use llmux_core::health::HealthOp;
use llmux_core::store::Flags;
use llmux_core::store::{
    AdminOp, Counter, LeaseId, Line, Reserve, Reserved, Store, StoreAdmin, StoreError, SubjectState,
};
use llmux_core::{Subject, Timestamp};
use rows::{RecordOp, RecordOut};
use schema::open_conn;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use writer::{Cmd, Handle, Reply};

/// A [`Store`] on one SQLite file. Cloning shares the connection and its writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Handle>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Open (creating and migrating if needed) the store at `path`, on the calling thread, and
    /// start the writer thread and the thread that checkpoints the WAL.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let unavailable = |e: rusqlite::Error| {
            StoreError::Unavailable(format!("cannot open sqlite store {}: {e}", path.display()))
        };
        let conn = open_conn(&path).map_err(unavailable)?;
        // Checkpoints (which fsync) run on the checkpointer thread, not at commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(unavailable)?;
        let checkpointer = open_conn(&path).map_err(unavailable)?;
        let writer = Handle::start(conn, checkpointer)
            .map_err(|e| StoreError::Unavailable(format!("cannot start sqlite thread: {e}")))?;
        Ok(SqliteStore {
            writer: Arc::new(writer),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer.push(make(tx));
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite store has stopped".into()))?
    }
}

impl Store for SqliteStore {
    async fn reserve_with_room(&self, r: Reserve) -> Result<Reserved, StoreError> {
        self.call(|tx| Cmd::Reserve(r, Some(tx))).await
    }
    async fn commit(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
    ) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Commit(lease, now, used, tx)).await
    }
    fn commit_detached(&self, lease: LeaseId, now: Timestamp, used: Vec<Line>) {
        // Rides with the next transaction, after every call made before.
        self.writer.push(Cmd::Detached(lease, now, used, 0));
    }
    async fn release(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Release(lease, tx)).await
    }
    async fn set_cooldown(&self, subject: Subject, until: Timestamp) -> Result<(), StoreError> {
        self.call(|tx| Cmd::Cooldown(subject, until, tx)).await
    }
    async fn health(&self, subject: Subject, op: HealthOp) -> Result<Flags, StoreError> {
        self.call(|tx| Cmd::Health(subject, op, tx)).await
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

impl llmux_core::Records for SqliteStore {
    async fn put_record(&self, table: &str, name: &str, value: &str) -> Result<(), StoreError> {
        let op = RecordOp::Put(table.into(), name.into(), value.into());
        match self.call(|tx| Cmd::Record(op, tx)).await? {
            RecordOut::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }
    async fn get_record(&self, table: &str, name: &str) -> Result<Option<String>, StoreError> {
        let op = RecordOp::Get(table.into(), name.into());
        match self.call(|tx| Cmd::Record(op, tx)).await? {
            RecordOut::Value(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }
    async fn list_records(&self, table: &str) -> Result<Vec<(String, String)>, StoreError> {
        match self
            .call(|tx| Cmd::Record(RecordOp::List(table.into()), tx))
            .await?
        {
            RecordOut::List(v) => Ok(v),
            _ => Err(unexpected()),
        }
    }
    async fn swap_record(
        &self,
        table: &str,
        name: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        let op = RecordOp::Swap(
            table.into(),
            name.into(),
            expected.map(str::to_string),
            value.into(),
        );
        match self.call(|tx| Cmd::Record(op, tx)).await? {
            RecordOut::Removed(b) => Ok(b),
            _ => Err(unexpected()),
        }
    }
    async fn delete_record(&self, table: &str, name: &str) -> Result<bool, StoreError> {
        let op = RecordOp::Delete(table.into(), name.into());
        match self.call(|tx| Cmd::Record(op, tx)).await? {
            RecordOut::Removed(b) => Ok(b),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Backend("unexpected reply".into())
}
