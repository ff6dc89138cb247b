//! RedisStore against the shared store conformance suite, on a real redis-server, plus exact
//! admission under concurrency from several store handles (as several replicas would be).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux_core::store::{Admission, LeaseId, Line, Reserve, Store, StoreAdmin};
use llmux_core::{Subject, Timestamp, Window};
use llmux_store_redis::RedisStore;
use llmux_testkit::redis::RedisServer;
use std::sync::Arc;

fn ns() -> String {
    format!("t{}", std::process::id())
}

#[tokio::test]
async fn redis_store_conforms() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::open(server.url(), &format!("llmuxtest{}", ns())).unwrap();
    llmux_core::conformance::run(&s, "r").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_handles_admit_exactly_capacity() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = format!("llmuxconc{}", ns());
    let stores: Vec<RedisStore> = (0..3)
        .map(|_| RedisStore::open(server.url(), &prefix).unwrap())
        .collect();
    let line = Line {
        subject: Subject::new("p/k"),
        resource: Arc::from("rpm"),
        window: Window {
            start: Timestamp(0),
            end: Timestamp(60_000),
        },
        capacity: 100,
        amount: 1,
    };
    let mut tasks = Vec::new();
    for i in 0..400 {
        let s = stores[i % 3].clone();
        let r = Reserve {
            lease: LeaseId::random(&mut rand::rng()),
            now: Timestamp(1),
            lease_ttl_ms: 60_000,
            lines: vec![line.clone()],
            gates: vec![Subject::new("p/k")],
            health: Default::default(),
        };
        tasks.push(tokio::spawn(async move { s.reserve(r).await.unwrap() }));
    }
    let mut granted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Admission::Granted(_)) {
            granted += 1;
        }
    }
    assert_eq!(granted, 100);
    let snap = stores[0].snapshot("p/k").await.unwrap();
    assert_eq!(snap[0].resources[0].1.reserved, 100);
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_panic_and_recovery_is_automatic() {
    let Some(mut server) = RedisServer::start_owned() else {
        return;
    };
    let s = RedisStore::open(server.url(), &format!("llmuxdown{}", ns())).unwrap();
    s.ping().await.unwrap();
    server.stop();
    let r = Reserve {
        lease: LeaseId::random(&mut rand::rng()),
        now: Timestamp(1),
        lease_ttl_ms: 1_000,
        lines: vec![],
        gates: vec![Subject::new("p")],
        health: Default::default(),
    };
    let e = s.reserve(r.clone()).await.unwrap_err();
    assert!(e.to_string().contains("redis"), "{e}");
    server.restart();
    let mut ok = false;
    for _ in 0..100 {
        if s.reserve(r.clone()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ok, "the store recovers when redis returns");
}
