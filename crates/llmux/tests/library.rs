//! The library contract: acquire → Lease → complete/rate_limited/failed, drop releases,
//! request() on the mock provider, and the blocking mirror.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux::core::store::StoreAdmin;
use llmux::core::Usage;
use llmux::{Config, Request, RouteError, Router};
use std::time::Duration;

const CONFIG: &str = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
resources = [{ name = "tpm", value = 1000, period = "minutely" }]
[[providers.p.keys]]
id = "k1"
resources = [{ name = "rpm", value = 2, period = "minutely" }]
[[providers.p.keys]]
id = "k2"
resources = [{ name = "rpm", value = 2, period = "minutely" }]
[models.m]
strategy = "priority"
# tpm is 1000: without max_tokens a request reserves this much output.
default_max_tokens = 64
targets = [{ provider = "p", model = "x" }]
"#;

fn router() -> Router {
    Router::from_config(Config::from_toml_str(CONFIG, &|_| None).unwrap()).unwrap()
}

async fn counter(r: &Router, subject: &str, resource: &str) -> (u64, u64) {
    let s = r.store().snapshot(subject).await.unwrap();
    let s = s.iter().find(|s| s.subject == subject).unwrap();
    let c = s.resources.iter().find(|(n, _)| n == resource).unwrap().1;
    (c.used, c.reserved)
}

#[tokio::test]
async fn complete_reconciles_to_actual_usage() {
    let r = router();
    let lease = r.acquire("m", Usage::new(100, 50)).await.unwrap();
    assert_eq!(lease.target().to_string(), "p/k1/x");
    assert_eq!(counter(&r, "p", "tpm").await, (0, 150));
    lease
        .complete(Usage::new(70, 30), Duration::from_millis(5))
        .await
        .unwrap();
    assert_eq!(counter(&r, "p", "tpm").await, (100, 0));
    assert_eq!(counter(&r, "p/k1", "rpm").await, (1, 0));
}

#[tokio::test]
async fn a_dropped_lease_releases_its_reservation() {
    let r = router();
    let lease = r.acquire("m", Usage::new(10, 10)).await.unwrap();
    assert_eq!(counter(&r, "p/k1", "rpm").await, (0, 1));
    drop(lease);
    for _ in 0..100 {
        if counter(&r, "p/k1", "rpm").await == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("reservation not released");
}

#[tokio::test]
async fn rate_limited_cools_the_key_and_failed_counts_a_request() {
    let r = router();
    let lease = r.acquire("m", Usage::new(1, 1)).await.unwrap();
    lease
        .rate_limited(Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let lease = r.acquire("m", Usage::new(1, 1)).await.unwrap();
    assert_eq!(lease.target().to_string(), "p/k2/x", "k1 is cooling down");
    lease.failed().await.unwrap();
    assert_eq!(counter(&r, "p/k2", "rpm").await, (1, 0));
    assert_eq!(counter(&r, "p", "tpm").await, (0, 0));
    let _held = r.acquire("m", Usage::new(1, 1)).await.unwrap();
    match r.acquire("m", Usage::new(1, 1)).await {
        Err(RouteError::NoCapacity {
            retry_after_secs,
            denial,
            ..
        }) => {
            assert!(retry_after_secs.is_some_and(|s| (1..=60).contains(&s)));
            assert!(denial.limit().starts_with("p/k"), "{}", denial.limit());
        }
        other => panic!("expected NoCapacity, got {other:?}"),
    }
}

#[tokio::test]
async fn request_routes_through_the_mock_provider() {
    let r = router();
    let req = Request::chat(serde_json::json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    let resp = r.request(req).await.unwrap();
    assert_eq!((resp.status, resp.attempts), (200, 1));
    let v = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let req =
        Request::chat(serde_json::json!({"model": "m", "stream": true, "messages": []})).unwrap();
    let text = String::from_utf8(
        r.request(req)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("chat.completion.chunk") && text.trim_end().ends_with("[DONE]"),
        "{text}"
    );
    assert!(
        !text.contains("\"prompt_tokens\""),
        "usage chunk hidden: {text}"
    );
}

#[tokio::test]
async fn messages_and_responses_requests_come_back_in_their_dialect() {
    let r = router();
    let body = serde_json::json!({"model": "m", "max_tokens": 20, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}]});
    let v = r
        .request(Request::messages(body.clone()).unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["content"][0]["type"].as_str()),
        (Some("message"), Some("text")),
        "{v}"
    );
    let mut streamed = body;
    streamed["stream"] = serde_json::json!(true);
    let text = r
        .request(Request::messages(streamed).unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.starts_with("event: message_start\n") && text.contains("event: message_stop\n"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    let req = Request::responses(serde_json::json!({"model": "m", "input": "hi"})).unwrap();
    let v = r.request(req).await.unwrap().json().await.unwrap();
    assert_eq!(v["object"], "response", "{v}");
    assert!(Request::messages(serde_json::json!([1])).is_err());
}

#[tokio::test]
async fn the_mock_provider_rate_limits_after_n_requests() {
    let cfg = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
mock = { rate_limit_after = 2, retry_after_secs = 9 }
[models.m]
targets = [{ provider = "p", model = "x" }]
"#;
    let r = Router::from_config(Config::from_toml_str(cfg, &|_| None).unwrap()).unwrap();
    let chat = || Request::chat(serde_json::json!({"model": "m", "messages": []})).unwrap();
    assert_eq!(r.request(chat()).await.unwrap().status, 200);
    assert_eq!(r.request(chat()).await.unwrap().status, 200);
    match r.request(chat()).await {
        Err(RouteError::NoCapacity {
            retry_after_secs: Some(s),
            ..
        }) => assert!((8..=9).contains(&s)),
        other => panic!("expected NoCapacity after the mock's 429, got {other:?}"),
    }
}

#[test]
fn the_blocking_api_mirrors_the_async_one() {
    let r = llmux::blocking::Router::from_config(Config::from_toml_str(CONFIG, &|_| None).unwrap())
        .unwrap();
    let resp = r
        .request(Request::chat(serde_json::json!({"model": "m", "messages": []})).unwrap())
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.target, "p/k1/x");
    let lease = r.acquire("m", Usage::new(1, 1)).unwrap();
    lease.complete(Usage::new(1, 1), Duration::ZERO).unwrap();
}

/// `acquire_wait` waits in the model's queue: a lease released elsewhere admits it at once;
/// past its deadline it fails with the refusal.
#[tokio::test]
async fn acquire_wait_is_admitted_when_capacity_frees_up() {
    let config = llmux::Config::from_toml_str(
        r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "k1"
resources = [{ name = "rpm", value = 2, period = "minutely" }]
[models.m]
targets = [{ provider = "p", model = "x" }]
"#,
        &|_| None,
    )
    .unwrap();
    let r = Router::from_config(config).unwrap();
    let a = r.acquire("m", Usage::new(1, 1)).await.unwrap();
    let _b = r.acquire("m", Usage::new(1, 1)).await.unwrap();
    let t0 = std::time::Instant::now();
    let soon = t0 + std::time::Duration::from_millis(300);
    match r.acquire_wait("m", Usage::new(1, 1), soon).await {
        Err(RouteError::NoCapacity { .. }) => {}
        other => panic!("expected NoCapacity after the deadline, got {other:?}"),
    }
    assert!(t0.elapsed() >= std::time::Duration::from_millis(290));
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let started = std::time::Instant::now();
            let lease = r.acquire_wait("m", Usage::new(1, 1), deadline).await;
            (lease.map(|l| l.target().to_string()), started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    a.release().await.unwrap();
    let (lease, waited) = waiter.await.unwrap();
    assert_eq!(lease.unwrap(), "p/k1/x");
    assert!(
        waited < std::time::Duration::from_millis(1000),
        "admitted {waited:?} after it began waiting"
    );
}

/// `router.batch(items)` yields every item once, in completion order, paced by the limit;
/// the blocking mirror returns the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_come_in_completion_order_with_their_ids() {
    use futures_util::StreamExt;
    use llmux::batch::{BatchItem, BatchOptions};
    let text = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "k1"
resources = [{ name = "rps", value = 10, period = "secondly" }]
[models.m]
targets = [{ provider = "p", model = "x" }]
"#;
    let items: Vec<BatchItem> = (0..25)
        .map(|i| {
            let line = serde_json::json!({"custom_id": format!("c{i}"), "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}});
            BatchItem::parse(&line.to_string(), None).unwrap()
        })
        .collect();
    let r = Router::from_config(llmux::Config::from_toml_str(text, &|_| None).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let results: Vec<_> = r
        .batch(items.clone(), BatchOptions::default())
        .collect()
        .await;
    let mut ids: Vec<String> = results.iter().map(|x| x.custom_id.clone()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(results.iter().all(|x| x.ok()), "{results:?}");
    assert_eq!(results[0].output_line()["response"]["status_code"], 200);
    // 25 items at 10 a second: at least two window rolls.
    assert!(started.elapsed() >= std::time::Duration::from_millis(1000));
    let blocking = std::thread::spawn(move || {
        let b = llmux::blocking::Router::from_config(
            llmux::Config::from_toml_str(text, &|_| None).unwrap(),
        )
        .unwrap();
        b.batch(items[..5].to_vec(), BatchOptions::default())
    })
    .join()
    .unwrap();
    assert_eq!(blocking.len(), 5);
}
