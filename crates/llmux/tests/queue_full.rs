//! A full wait queue refuses a newcomer at once: it never tries the store ahead of the
//! requests already waiting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux::{Config, Request, RouteError, Router};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_to_a_full_queue_is_refused_without_trying_ahead_of_the_waiters() {
    let text = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "k1"
resources = [{ name = "rpd", value = 1, period = "daily" }]
[models.m]
targets = [{ provider = "p", model = "x" }]
queue = { max_wait_secs = 5, max_queued = 1 }
"#;
    let router = Router::from_config(Config::from_toml_str(text, &|_| None).unwrap()).unwrap();
    let chat = || {
        Request::chat(serde_json::json!({"model": "m", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap()
    };
    let first = router.request(chat()).await.unwrap();
    drop(first);
    // The second waits (the day's request is used): the queue is full with it.
    let r = router.clone();
    let waiter = tokio::spawn(async move { r.request(chat()).await });
    let started = std::time::Instant::now();
    while !waiter.is_finished() && started.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiter.is_finished(), "the second request waits");
    let err = router.request(chat()).await.unwrap_err();
    match &err {
        RouteError::NoCapacity { denial, .. } => {
            assert_eq!(denial.limit(), "model:m:queue", "{err}")
        }
        e => panic!("{e:?}"),
    }
    waiter.abort();
}
