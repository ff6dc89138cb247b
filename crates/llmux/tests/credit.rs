//! OpenRouter credit as a USD resource: a key's `credit_usd` follows what OpenRouter's key
//! endpoint says is left, so a request that would cost more is refused before it is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux::core::store::StoreAdmin;
use llmux::{Config, Request, Router};
use llmux_testkit::MockUpstream;
use std::time::{Duration, Instant};

async fn credit_used(router: &Router) -> Option<u64> {
    let states = router.store().snapshot("or/k").await.unwrap();
    states
        .iter()
        .find(|s| s.subject == "or/k")?
        .resources
        .iter()
        .find(|(name, _)| name == "credit_usd")
        .map(|(_, c)| c.used)
}

#[tokio::test]
async fn an_openrouter_key_spends_no_more_than_the_credit_it_has_left() {
    let mock = MockUpstream::start().await;
    mock.set_credit(Some(0.5));
    let text = format!(
        r#"
[store]
kind = "memory"
[prices."or-model"]
input = 1000.0
output = 1000.0
[providers.or]
kind = "openrouter"
base_url = "{}"
[[providers.or.keys]]
id = "k"
secret = "sk-or-test-credit"
resources = [{{ name = "credit_usd", value = 100, period = "monthly" }}]
[models.m]
targets = [{{ provider = "or", model = "or-model" }}]
"#,
        mock.base_url()
    );
    let config = Config::from_toml_str(&text, &|_| None).unwrap();
    let router = Router::from_config(config).unwrap();
    // The first read happens at start: $0.50 left of a $100 resource.
    let started = Instant::now();
    while credit_used(&router).await != Some(99_500_000) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the credit was not read: used = {:?}",
            credit_used(&router).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let read = mock.requests();
    let key_read = read.iter().find(|r| r.path == "/v1/key").unwrap();
    assert_eq!(key_read.method, "GET");
    assert_eq!(
        key_read.authorization.as_deref(),
        Some("Bearer sk-or-test-credit")
    );

    // At $1,000 per million tokens, 1,000 output tokens could cost $1: more than is left.
    let big = Request::chat(serde_json::json!({
        "model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    let err = router.request(big).await.unwrap_err();
    assert!(
        matches!(err, llmux::RouteError::NoCapacity { budget: true, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("credit_usd"), "{err}");
    let sent = |m: &MockUpstream| {
        m.requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count()
    };
    assert_eq!(sent(&mock), 0, "refused before sending");
    // 20 tokens at most: about $0.02, which fits.
    let small = Request::chat(serde_json::json!({
        "model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    let resp = router.request(small).await.unwrap();
    assert_eq!(resp.status, 200);
    drop(resp);
    assert_eq!(sent(&mock), 1);
}
