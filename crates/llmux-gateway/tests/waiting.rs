//! Waiting instead of 429: requests that find no capacity wait in the model's queue and are
//! admitted as capacity returns, never past the limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::MockUpstream;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn config(base: &str, store: &str, queue: &str) -> String {
    format!(
        r#"
[store]
{store}
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
resources = [{{ name = "rps", value = 50, period = "secondly" }}]
[models.m]
{queue}
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
"#
    )
}

/// 500 requests at once against 50 a second, with a queue: every one is answered 200 within
/// the ideal 10 s + 10 %, and no second of the upstream's log holds more than 50.
async fn five_hundred_wait_their_turn(store: &str) {
    let mock = MockUpstream::start().await;
    let gw = start(&config(
        &mock.base_url(),
        store,
        "queue = { max_wait_secs = 30 }",
    ))
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            post(addr, "/v1/chat/completions", chat("m"), &[]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(11), "took {took:?}");
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for r in mock.requests() {
        *per_second.entry(r.at_ms.div_euclid(1000)).or_default() += 1;
    }
    assert_eq!(per_second.values().sum::<usize>(), 500);
    assert!(
        per_second.values().all(|&n| n <= 50),
        "over the limit in a second: {per_second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_requests_wait_their_turn_on_memory() {
    five_hundred_wait_their_turn("kind = \"memory\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_requests_wait_their_turn_on_sqlite() {
    five_hundred_wait_their_turn("kind = \"sqlite\"\npath = \"{DB}\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_requests_wait_their_turn_on_redis() {
    let Some(server) = llmux_testkit::redis::RedisServer::start() else {
        return;
    };
    let prefix = format!("wait{}", std::process::id());
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"",
        server.url()
    );
    five_hundred_wait_their_turn(&store).await;
}

/// Without a queue a request may still ask to wait (`x-llmux-max-wait`); one that asks for
/// nothing gets its 429 at once, and so does one that can never fit.
#[tokio::test]
async fn a_request_can_ask_to_wait_and_never_fits_is_refused_at_once() {
    let mock = MockUpstream::start().await;
    let gw = start(&config(&mock.base_url(), "kind = \"memory\"", "")).await;
    let burst = |n: usize, headers: Vec<(&'static str, &'static str)>| {
        let addr = gw.addr;
        async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                let h = headers.clone();
                tasks.push(tokio::spawn(async move {
                    post(addr, "/v1/chat/completions", chat("m"), &h)
                        .await
                        .status
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    // Wait for the start of a second, so that 60 requests straddle two windows.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - ms) + 20)).await;
    let plain = burst(60, vec![]).await;
    assert_eq!(plain.iter().filter(|&&s| s == 429).count(), 10, "{plain:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let waited = burst(60, vec![("x-llmux-max-wait", "5")]).await;
    assert!(waited.iter().all(|&s| s == 200), "{waited:?}");
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        chat("m"),
        &[("x-llmux-max-wait", "soon")],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("x-llmux-max-wait"));

    // A request larger than a limit's whole capacity never fits: no wait.
    let small = config(
        &mock.base_url(),
        "kind = \"memory\"",
        "queue = { max_wait_secs = 30 }",
    )
    .replace(
        r#"{ name = "rps", value = 50, period = "secondly" }"#,
        r#"{ name = "tpm", value = 100, period = "minutely" }"#,
    );
    let gw = start(&small).await;
    let big = serde_json::json!({"model": "m", "max_tokens": 500,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let t0 = Instant::now();
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        big,
        &[("x-llmux-max-wait", "10")],
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "waited {:?}",
        t0.elapsed()
    );
}
