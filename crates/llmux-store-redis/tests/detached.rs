//! Detached commits are applied in order, before any call made after them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{counter, granted, line, prefix, reserve};
use llmux_core::store::{Admission, DenialReason, LeaseId, Store, StoreAdmin};
use llmux_core::Timestamp;
use llmux_store_redis::RedisStore;
use llmux_testkit::redis::RedisServer;
use std::time::Duration;

/// Many detached commits, then an awaited call: it sees every one of them. The first call
/// after them is a reserve (one round trip) that fits only if some of them are missing.
#[tokio::test]
async fn a_call_after_detached_commits_sees_them() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::open(server.url(), &prefix("detached")).unwrap();
    let l = |cap, amount| line("det/a", cap, amount, 0, 60_000);
    // Load the scripts first, so no NOSCRIPT round trip hides a reordering.
    let id = granted(&s, reserve(1_000, 60_000, vec![l(1_000, 1)])).await;
    s.commit(id, Timestamp(1_000), vec![l(1_000, 0)])
        .await
        .unwrap();
    for round in 1..=3u64 {
        for _ in 0..200 {
            s.commit_detached(
                LeaseId::random(&mut rand::rng()),
                Timestamp(1_000),
                vec![l(1_000, 1)],
            );
        }
        let used = 200 * round;
        match s
            .reserve(reserve(1_000, 60_000, vec![l(used + 1, 2)]))
            .await
            .unwrap()
        {
            Admission::Denied(d) => assert!(
                matches!(d.reason, DenialReason::Exhausted { used: u, .. } if u == used),
                "{d:?}"
            ),
            Admission::Granted(id) | Admission::Probe(id) => panic!(
                "round {round}: a reserve after {used} detached commits did not see them all \
                 (granted {id:?})"
            ),
        }
        assert_eq!(counter(&s, "det/a").await.used, used);
    }
    // A clone shares the order: its detached commit lands before this handle's next call.
    s.clone()
        .commit_detached(LeaseId(1), Timestamp(1_000), vec![l(1_000, 10)]);
    assert_eq!(counter(&s, "det/a").await.used, 610);
}

/// Two detached commits reach Redis in the order they were made: the second, in the next
/// window, restarts the counter; swapped, the first would add to the new window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_commits_keep_their_order() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::open(server.url(), &prefix("order")).unwrap();
    s.ping().await.unwrap();
    for i in 0..50 {
        let subj = format!("ord/{i}");
        s.commit_detached(
            LeaseId::random(&mut rand::rng()),
            Timestamp(1_000),
            vec![line(&subj, 100, 5, 0, 60_000)],
        );
        s.commit_detached(
            LeaseId::random(&mut rand::rng()),
            Timestamp(61_000),
            vec![line(&subj, 100, 7, 60_000, 120_000)],
        );
    }
    // Let them all land first: this checks their order, not only that they are visible.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..50 {
        let c = counter(&s, &format!("ord/{i}")).await;
        assert_eq!(
            (c.used, c.window.end),
            (7, Timestamp(120_000)),
            "ord/{i}: the later commit came first"
        );
    }
}

/// While Redis is down, detached commits fail (logged, no panic) and calls made after them
/// still answer; once Redis is back, detached commits are recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_commits_during_an_outage_do_not_block_later_calls() {
    let Some(mut server) = RedisServer::start_owned() else {
        return;
    };
    let s = RedisStore::open(server.url(), &prefix("outage")).unwrap();
    let l = |amount| line("out/a", 100, amount, 0, 60_000);
    s.commit(LeaseId(1), Timestamp(1_000), vec![l(1)])
        .await
        .unwrap();
    server.stop();
    for _ in 0..5 {
        s.commit_detached(LeaseId(2), Timestamp(1_000), vec![l(1)]);
    }
    let started = std::time::Instant::now();
    assert!(s.snapshot("out/a").await.is_err(), "redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a call after failing detached commits waited {:?}",
        started.elapsed()
    );
    server.restart();
    let mut up = false;
    for _ in 0..100 {
        if s.ping().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "redis is back");
    // The restarted server is empty; commits retried into it may have landed too.
    s.commit_detached(LeaseId(3), Timestamp(1_000), vec![l(10)]);
    let used = counter(&s, "out/a").await.used;
    assert!((10..=15).contains(&used), "used {used}");
}
