//! `AnyStore`: the store chosen by config, dispatched by `match` (no `dyn`).

use llmux_core::config::StoreConfig;
use llmux_core::store::{
    AdminOp, Admission, Counter, LeaseId, Line, Reserve, Store, StoreAdmin, StoreError,
    SubjectState,
};
use llmux_core::{MemoryStore, Subject, Timestamp};
use llmux_store_redis::RedisStore;
use llmux_store_sqlite::SqliteStore;

#[derive(Clone, Debug)]
pub enum AnyStore {
    Memory(MemoryStore),
    Sqlite(SqliteStore),
    Redis(RedisStore),
}

impl AnyStore {
    /// Open the store `config` names.
    pub fn open(config: &StoreConfig) -> Result<AnyStore, StoreError> {
        match config {
            StoreConfig::Memory => Ok(AnyStore::Memory(MemoryStore::new())),
            StoreConfig::Sqlite { path } => Ok(AnyStore::Sqlite(SqliteStore::open(path)?)),
            StoreConfig::Redis { url, prefix } => {
                Ok(AnyStore::Redis(RedisStore::open(url, prefix)?))
            }
        }
    }

    /// Check the store answers (a network store may be down at start-up).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            AnyStore::Redis(r) => r.ping().await,
            _ => Ok(()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            AnyStore::Memory(_) => "memory",
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Redis(_) => "redis",
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Memory($s) => $e,
            AnyStore::Sqlite($s) => $e,
            AnyStore::Redis($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn reserve(&self, r: Reserve) -> Result<Admission, StoreError> {
        dispatch!(self, s => s.reserve(r).await)
    }
    async fn reserve_with_room(
        &self,
        r: Reserve,
    ) -> Result<llmux_core::store::Reserved, StoreError> {
        dispatch!(self, s => s.reserve_with_room(r).await)
    }
    async fn commit(
        &self,
        lease: LeaseId,
        now: Timestamp,
        used: Vec<Line>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.commit(lease, now, used).await)
    }
    fn commit_detached(&self, lease: LeaseId, now: Timestamp, used: Vec<Line>) {
        dispatch!(self, s => s.commit_detached(lease, now, used))
    }
    async fn release(&self, lease: LeaseId) -> Result<(), StoreError> {
        dispatch!(self, s => s.release(lease).await)
    }
    async fn set_cooldown(&self, subject: Subject, until: Timestamp) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_cooldown(subject, until).await)
    }
    async fn health(
        &self,
        subject: Subject,
        op: llmux_core::health::HealthOp,
    ) -> Result<llmux_core::store::Flags, StoreError> {
        dispatch!(self, s => s.health(subject, op).await)
    }
    async fn set_disabled(&self, subject: Subject, disabled: bool) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_disabled(subject, disabled).await)
    }
    async fn scores(
        &self,
        now: Timestamp,
        subjects: Vec<(Subject, Vec<Line>)>,
    ) -> Result<Vec<f64>, StoreError> {
        dispatch!(self, s => s.scores(now, subjects).await)
    }
}

impl StoreAdmin for AnyStore {
    async fn snapshot(&self, subject: &str) -> Result<Vec<SubjectState>, StoreError> {
        dispatch!(self, s => s.snapshot(subject).await)
    }
    async fn update(&self, line: Line, op: AdminOp, now: Timestamp) -> Result<Counter, StoreError> {
        dispatch!(self, s => s.update(line, op, now).await)
    }
    async fn set_score(&self, subject: Subject, score: Option<f64>) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_score(subject, score).await)
    }
    async fn reset(&self, subject: &str) -> Result<usize, StoreError> {
        dispatch!(self, s => s.reset(subject).await)
    }
}

impl llmux_core::Records for AnyStore {
    async fn put_record(&self, table: &str, name: &str, value: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_record(table, name, value).await)
    }
    async fn get_record(&self, table: &str, name: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.get_record(table, name).await)
    }
    async fn list_records(&self, table: &str) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self, s => s.list_records(table).await)
    }
    async fn swap_record(
        &self,
        table: &str,
        name: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.swap_record(table, name, expected, value).await)
    }
    async fn delete_record(&self, table: &str, name: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_record(table, name).await)
    }
}
