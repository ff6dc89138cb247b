#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use llmux_core::store::{Admission, LeaseId, Line, Reserve, Store, StoreAdmin};
use llmux_core::{Subject, Timestamp, Window};
use llmux_store_sqlite::SqliteStore;
use std::sync::Arc;

fn line(capacity: u64, amount: u64) -> Line {
    Line {
        subject: Subject::new("p/k"),
        resource: Arc::from("rpm"),
        window: Window {
            start: Timestamp(0),
            end: Timestamp(60_000),
        },
        capacity,
        amount,
    }
}

fn reserve(now: i64, capacity: u64) -> Reserve {
    Reserve {
        lease: LeaseId::random(&mut rand::rng()),
        now: Timestamp(now),
        lease_ttl_ms: 1_000,
        lines: vec![line(capacity, 1)],
        gates: vec![Subject::new("p/k")],
        health: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserves_from_two_handles_admit_exactly_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    // Two stores = two connections on one file, as two processes would have.
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.reserve(reserve(0, 50)).await.unwrap()
        }));
    }
    let mut granted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Admission::Granted(_)) {
            granted += 1;
        }
    }
    assert_eq!(granted, 50);
    let snap = a.snapshot("p").await.unwrap();
    assert_eq!(snap[0].resources[0].1.reserved, 50);
}

#[tokio::test]
async fn commit_survives_reopen_and_leases_expire() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        let Admission::Granted(id) = s.reserve(reserve(0, 5)).await.unwrap() else {
            panic!()
        };
        s.commit(id, Timestamp(5), vec![line(5, 2)]).await.unwrap();
        // A lease never settled.
        assert!(matches!(
            s.reserve(reserve(10, 5)).await.unwrap(),
            Admission::Granted(_)
        ));
    }
    let s = SqliteStore::open(&path).unwrap();
    let c = s.snapshot("p/k").await.unwrap()[0].resources[0].1;
    assert_eq!((c.used, c.reserved), (2, 1));
    // After the lease TTL the orphan's reservation is swept on the next reserve.
    assert!(matches!(
        s.reserve(reserve(2_000, 5)).await.unwrap(),
        Admission::Granted(_)
    ));
    let c = s.snapshot("p/k").await.unwrap()[0].resources[0].1;
    assert_eq!((c.used, c.reserved), (2, 1));
}

#[tokio::test]
async fn cooldown_gates_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("s.db")).unwrap();
    s.set_cooldown(Subject::new("p/k"), Timestamp(500))
        .await
        .unwrap();
    let Admission::Denied(d) = s.reserve(reserve(100, 5)).await.unwrap() else {
        panic!()
    };
    assert_eq!(d.retry_at, Some(Timestamp(500)));
    assert!(matches!(
        s.reserve(reserve(500, 5)).await.unwrap(),
        Admission::Granted(_)
    ));
}

#[tokio::test]
async fn detached_commits_reach_the_file_without_further_calls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).unwrap();
    let Admission::Granted(id) = s.reserve(reserve(0, 5)).await.unwrap() else {
        panic!()
    };
    s.commit_detached(id, Timestamp(5), vec![line(5, 3)]);
    // Another connection (as the CLI would be) sees it once the writer has run it.
    let other = SqliteStore::open(&path).unwrap();
    for _ in 0..200 {
        let snap = other.snapshot("p/k").await.unwrap();
        if snap[0].resources[0].1.used == 3 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("detached commit never flushed");
}

#[tokio::test]
async fn a_grant_nobody_waits_for_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).unwrap();
    // Another connection holds the write lock, so the writer cannot answer at once.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The caller queues its reserve and gives up before it runs (a client that hung up).
    use futures_util::FutureExt;
    assert!(
        s.reserve(reserve(0, 5)).now_or_never().is_none(),
        "the reserve was still queued"
    );
    other.execute_batch("COMMIT").unwrap();
    // The writer runs it, finds nobody waiting, and gives the capacity back.
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let snap = s.snapshot("p/k").await.unwrap();
        if let Some(st) = snap.first() {
            let c = st.resources[0].1;
            assert_eq!(c.used, 0);
            if c.reserved == 0 {
                return;
            }
        }
    }
    panic!("the orphaned grant kept its reservation");
}

/// A file written by an older llmux (schema v2, AUTOINCREMENT lease ids) opens, and the lease in
/// flight it holds is still released by its id.
#[tokio::test]
async fn a_v2_file_migrates_and_keeps_its_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE counters (subject TEXT NOT NULL, resource TEXT NOT NULL,
                capacity INTEGER NOT NULL, used INTEGER NOT NULL, reserved INTEGER NOT NULL,
                window_start INTEGER NOT NULL, window_end INTEGER NOT NULL,
                PRIMARY KEY (subject, resource)) WITHOUT ROWID;
             CREATE TABLE leases (id INTEGER PRIMARY KEY AUTOINCREMENT,
                expires_at INTEGER NOT NULL, lines TEXT NOT NULL);
             CREATE TABLE subjects (subject TEXT PRIMARY KEY, cooldown_until INTEGER,
                disabled INTEGER NOT NULL DEFAULT 0, score REAL) WITHOUT ROWID;
             INSERT INTO counters VALUES ('p/k', 'rpm', 5, 1, 3, 0, 60000);
             INSERT INTO leases (id, expires_at, lines) VALUES (41, 999999, 'p/k\trpm\t3\n');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    s.release(llmux_core::store::LeaseId(41)).await.unwrap();
    let snap = s.snapshot("p/k").await.unwrap();
    assert_eq!(snap[0].resources[0].1.reserved, 0);
    assert_eq!(snap[0].resources[0].1.used, 1);
    // Settling it again changes nothing; new leases still work.
    s.release(llmux_core::store::LeaseId(41)).await.unwrap();
    assert!(matches!(
        s.reserve(reserve(0, 5)).await.unwrap(),
        Admission::Granted(_)
    ));
    let snap = s.snapshot("p/k").await.unwrap();
    assert_eq!(snap[0].resources[0].1.reserved, 1);
}

/// A lease granted through one connection settles through another (as when the CLI or a
/// second gateway settles it), and frees its reservation only once.
#[tokio::test]
async fn a_lease_settles_once_from_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    let Admission::Granted(first) = a.reserve(reserve(0, 5)).await.unwrap() else {
        panic!("denied")
    };
    let Admission::Granted(second) = a.reserve(reserve(0, 5)).await.unwrap() else {
        panic!("denied")
    };
    assert_ne!(first, second);
    b.commit(first, Timestamp(10), vec![line(5, 2)])
        .await
        .unwrap();
    // The granting connection releases the same id late: the other lease keeps its hold.
    a.release(first).await.unwrap();
    let snap = a.snapshot("p/k").await.unwrap();
    let c = snap[0].resources[0].1;
    assert_eq!((c.used, c.reserved), (2, 1));
    a.commit(second, Timestamp(20), vec![line(5, 1)])
        .await
        .unwrap();
    let snap = b.snapshot("p/k").await.unwrap();
    let c = snap[0].resources[0].1;
    assert_eq!((c.used, c.reserved), (3, 0));
}

/// Under steady load the WAL is checkpointed and starts over, instead of growing for as long as
/// the load lasts.
#[tokio::test]
async fn the_wal_starts_over_under_steady_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).unwrap();
    let started = std::time::Instant::now();
    let mut transactions = 0i64;
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        let Admission::Granted(id) = s.reserve(reserve(0, u64::MAX / 4)).await.unwrap() else {
            panic!("denied")
        };
        s.commit(id, Timestamp(1), vec![line(u64::MAX / 4, 1)])
            .await
            .unwrap();
        transactions += 2;
    }
    // Every transaction appended at least one frame: without a restart the WAL holds them all.
    let c = rusqlite::Connection::open(&path).unwrap();
    let frames: i64 = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .unwrap();
    assert!(
        frames < transactions / 2,
        "{frames} WAL frames after {transactions} transactions"
    );
}

/// A grant is answered before its transaction commits, but no other connection can see the
/// counters without it: the next reader waits for the commit, which follows at once.
#[tokio::test]
async fn another_connection_sees_a_grant_as_soon_as_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    for n in 1..=20u64 {
        let started = std::time::Instant::now();
        assert!(matches!(
            a.reserve(reserve(0, 100)).await.unwrap(),
            Admission::Granted(_)
        ));
        let snap = b.snapshot("p/k").await.unwrap();
        assert_eq!(snap[0].resources[0].1.reserved, n);
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "the reader waited {:?} for the commit",
            started.elapsed()
        );
    }
}

/// Usage reported before a reserve is counted before that reserve is decided.
#[tokio::test]
async fn a_detached_report_counts_before_the_next_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path().join("s.db")).unwrap();
    let mut r = reserve(0, 100);
    r.lines[0].amount = 10;
    let Admission::Granted(a) = s.reserve(r.clone()).await.unwrap() else {
        panic!("denied")
    };
    s.commit_detached(a, Timestamp(1), vec![line(100, 95)]);
    assert!(
        matches!(s.reserve(r).await.unwrap(), Admission::Denied(_)),
        "95 used + 10 asked > 100"
    );
}

/// The state of `p/k`'s `rpm` counter: (used, reserved).
async fn used_reserved(s: &SqliteStore) -> (u64, u64) {
    let c = s.snapshot("p/k").await.unwrap()[0].resources[0].1;
    (c.used, c.reserved)
}

/// From now on every write of a counter fails, as on a full disk: a transaction that changed a
/// counter cannot commit. Dropping the returned connection's trigger ends it.
fn fail_counter_writes(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "CREATE TRIGGER full BEFORE INSERT ON counters
         BEGIN SELECT RAISE(ABORT, 'database or disk is full (test)'); END;",
    )
    .unwrap();
    c
}

/// Finding 5: usage reported by `commit_detached` is kept when the transaction that carried it
/// fails to commit, and lands with a later transaction once the file takes writes again. An
/// awaited call in a failed transaction gets the error.
#[tokio::test]
async fn finding_5_detached_usage_survives_a_failed_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).unwrap();
    let Admission::Granted(id) = s.reserve(reserve(0, 5)).await.unwrap() else {
        panic!("denied")
    };
    assert_eq!(used_reserved(&s).await, (0, 1));
    let other = fail_counter_writes(&path);
    s.commit_detached(id, Timestamp(5), vec![line(5, 3)]);
    // An awaited call after it rides in the same or a later transaction, which fails too.
    let unreserved = LeaseId::random(&mut rand::rng());
    assert!(
        s.commit(unreserved, Timestamp(6), vec![line(5, 1)])
            .await
            .is_err(),
        "a counter write committed"
    );
    other.execute_batch("DROP TRIGGER full").unwrap();
    let mut state = (0, 0);
    for _ in 0..300 {
        state = used_reserved(&s).await;
        if state == (3, 0) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the detached usage was lost: (used, reserved) = {state:?}, expected (3, 0)");
}

/// A grant answered in a transaction that then fails to commit holds nothing afterwards, and
/// its commit still records its usage.
#[tokio::test]
async fn a_grant_whose_transaction_fails_holds_nothing_and_its_usage_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).unwrap();
    let Admission::Granted(first) = s.reserve(reserve(0, 5)).await.unwrap() else {
        panic!("denied")
    };
    s.commit(first, Timestamp(1), vec![line(5, 1)])
        .await
        .unwrap();
    let other = fail_counter_writes(&path);
    // Answered before its transaction commits; the commit then fails.
    let Admission::Granted(id) = s.reserve(reserve(2, 5)).await.unwrap() else {
        panic!("denied")
    };
    other.execute_batch("DROP TRIGGER full").unwrap();
    assert_eq!(
        used_reserved(&s).await,
        (1, 0),
        "the failed grant holds nothing"
    );
    s.commit(id, Timestamp(3), vec![line(5, 2)]).await.unwrap();
    assert_eq!(used_reserved(&s).await, (3, 0));
}

/// Finding 6: the store's SQL runs on its own thread. While another connection holds the file's
/// write lock, a call waits for it without blocking the runtime it was made from, and completes
/// once the lock is released.
#[tokio::test(flavor = "current_thread")]
async fn finding_6_a_call_waiting_for_the_write_lock_does_not_block_the_runtime() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let s = SqliteStore::open(&path).unwrap();
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        held_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        c.execute_batch("COMMIT").unwrap();
    });
    held_rx.recv().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut last = Instant::now();
            let mut worst = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            worst
        }
    });
    let started = Instant::now();
    let admission = s.reserve(reserve(0, 5)).await.unwrap();
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let worst = ticker.await.unwrap();
    holder.join().unwrap();
    assert!(matches!(admission, Admission::Granted(_)));
    assert!(
        waited >= Duration::from_millis(1000),
        "the call did not wait for the lock ({waited:?})"
    );
    assert!(
        worst < Duration::from_millis(500),
        "the runtime stalled for {worst:?} while the call waited {waited:?} for the lock"
    );
}
