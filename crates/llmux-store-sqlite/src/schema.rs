//! The file's schema and how a connection to it is opened.
//!
//! **Invariant:** the schema changes only by appending to [`MIGRATIONS`]; `PRAGMA
//! user_version` counts the migrations a file has run, so any older file migrates forward.

use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

pub(crate) const MIGRATIONS: &[&str] = &[
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
    // v4: upstream health: 429s in a row, the circuit breaker, and learned limits
    // (`rows::encode_learned`).
    "ALTER TABLE subjects ADD COLUMN strikes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE subjects ADD COLUMN breaker_until INTEGER;
    ALTER TABLE subjects ADD COLUMN probes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE subjects ADD COLUMN learned TEXT;",
    // v5: records (`llmux_core::records`): gateway keys (hashed) and encrypted secrets.
    "CREATE TABLE records (
        tbl TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (tbl, name)
    ) WITHOUT ROWID;",
];

/// Open `path` in WAL mode with the store's pragmas, running the migrations it lacks.
pub(crate) fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
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
