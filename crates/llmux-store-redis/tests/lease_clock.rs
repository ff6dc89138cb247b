//! Lease expiry runs on the Redis server's clock, not on the callers' (which may be skewed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{counter, granted, line, prefix, reserve};
use llmux_core::store::{Admission, Store};
use llmux_core::{Clock, SystemClock};
use llmux_store_redis::RedisStore;
use llmux_testkit::redis::RedisServer;
use std::time::Duration;

/// A replica whose clock runs an hour ahead must not sweep the live lease of another.
#[tokio::test]
async fn a_skewed_callers_clock_does_not_expire_other_leases() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let p = prefix("skew");
    let honest = RedisStore::open(server.url(), &p).unwrap();
    let ahead = RedisStore::open(server.url(), &p).unwrap();
    let now = SystemClock.now().0;
    let hour = 3_600_000;
    let (start, end) = (now - 1_000, now + 3 * hour);
    let held = granted(
        &honest,
        reserve(now, 60_000, vec![line("skew/a", 10, 4, start, end)]),
    )
    .await;
    // The skewed replica reserves elsewhere: its reserve sweeps expired leases.
    granted(
        &ahead,
        reserve(now + hour, 60_000, vec![line("skew/b", 10, 1, start, end)]),
    )
    .await;
    assert_eq!(
        counter(&honest, "skew/a").await.reserved,
        4,
        "a reserve from a clock an hour ahead swept a live lease"
    );
    honest.release(held).await.unwrap();
    assert_eq!(counter(&honest, "skew/a").await.reserved, 0);
}

/// A lease still expires after its TTL of real time, whatever `now` its caller passes.
#[tokio::test]
async fn leases_expire_by_the_servers_clock() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let s = RedisStore::open(server.url(), &prefix("srvclock")).unwrap();
    // A 1970 caller clock: as the caller's time it would have expired at once.
    let l = line("srv/a", 1, 1, 0, 60_000);
    granted(&s, reserve(1_000, 300, vec![l.clone()])).await;
    assert!(
        matches!(
            s.reserve(reserve(1_000, 300, vec![l.clone()]))
                .await
                .unwrap(),
            Admission::Denied(_)
        ),
        "the first lease holds"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    granted(&s, reserve(1_000, 300, vec![l])).await;
    assert_eq!(
        counter(&s, "srv/a").await.reserved,
        1,
        "the first was swept"
    );
}
