//! Cancel safety: a caller that stops waiting while the store works on its reserve (a client
//! that hangs up, a timeout around the call) leaves no reservation behind, on every store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::FutureExt;
use llmux::core::store::StoreAdmin;
use llmux::core::Usage;
use llmux::{Config, Router};
use llmux_testkit::redis::RedisServer;
use std::time::Duration;

fn config(store: &str) -> Config {
    let text = format!(
        r#"
{store}
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "k1"
resources = [{{ name = "rpm", value = 1000, period = "minutely" }}]
[models.m]
targets = [{{ provider = "p", model = "x" }}]
"#
    );
    Config::from_toml_str(&text, &|_| None).unwrap()
}

async fn reserved(r: &Router) -> u64 {
    let s = r.store().snapshot("p/k1").await.unwrap();
    s.iter()
        .find(|s| s.subject == "p/k1")
        .and_then(|s| s.resources.iter().find(|(n, _)| n == "rpm"))
        .map_or(0, |(_, c)| c.reserved)
}

/// Start 50 acquires and drop each after its first poll, while its reserve is with the
/// store (with `stall`, a Redis server at that address, also 20 acquires that time out while
/// the server is busy); then every reservation must come back well before the lease TTL (900 s).
async fn dropped_reserves_hold_nothing(r: &Router, stall: Option<std::net::SocketAddr>) {
    // Warm the connection up, so the reserves below are sent at their first poll.
    r.acquire("m", Usage::new(1, 1))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let mut pending = 0;
    for _ in 0..50 {
        match r.acquire("m", Usage::new(1, 1)).now_or_never() {
            None => pending += 1,
            Some(lease) => lease.unwrap().release().await.unwrap(),
        }
    }
    if let Some(addr) = stall {
        // The server stalls for 300 ms; reserves sent meanwhile wait there, and their
        // callers give up after 5 ms, long before the grants come back.
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let script = "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] \
            repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] - s > 300000 return 1";
        let cmd = format!(
            "*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n",
            script.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut c, cmd.as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        for _ in 0..20 {
            let t =
                tokio::time::timeout(Duration::from_millis(5), r.acquire("m", Usage::new(1, 1)));
            assert!(
                t.await.is_err(),
                "a reserve was answered while the server stalled"
            );
            pending += 1;
        }
        drop(c);
    }
    assert!(
        pending > 0,
        "no reserve was still in flight at its first poll"
    );
    for _ in 0..200 {
        if reserved(r).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} of {pending} dropped reserves still hold capacity",
        reserved(r).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dropped_reserves_hold_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = format!(
        "[store]\nkind = \"sqlite\"\npath = {:?}",
        path.display().to_string()
    );
    let r = Router::from_config(config(&store)).unwrap();
    dropped_reserves_hold_nothing(&r, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropped_reserves_hold_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = {:?}\nprefix = \"cancel{}\"",
        server.url(),
        std::process::id()
    );
    let r = Router::from_config(config(&store)).unwrap();
    let addr = server.url().trim_start_matches("redis://");
    let addr = addr.split('/').next().unwrap().parse().unwrap();
    dropped_reserves_hold_nothing(&r, Some(addr)).await;
}
