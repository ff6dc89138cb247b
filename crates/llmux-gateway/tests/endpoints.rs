//! The other OpenAI routes: legacy completions (JSON and SSE) and embeddings, with usage
//! reconciled from each; and the mock provider's error mode driving failover.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::MockUpstream;

fn config(base: &str) -> String {
    format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
resources = [{{ name = "tpm", value = 100000, period = "hourly" }}, {{ name = "rpd", value = 1000, period = "daily" }}]
[models.m]
targets = [{{ provider = "up", model = "text-model" }}]
"#
    )
}

#[tokio::test]
async fn completions_and_embeddings_are_routed_and_reconciled() {
    let mock = MockUpstream::start().await;
    mock.set_usage(8, 4);
    let gw = start(&config(&mock.base_url())).await;

    let r = post(
        gw.addr,
        "/v1/completions",
        r#"{"model":"m","prompt":"Once upon"}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "text_completion");
    assert_eq!(r.header("x-llmux-target"), Some("up/k1/text-model"));

    let r = post(
        gw.addr,
        "/v1/completions",
        r#"{"model":"m","prompt":"Once upon","stream":true}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("text_completion") && !r.text().contains("\"prompt_tokens\""),
        "{}",
        r.text()
    );

    let r = post(
        gw.addr,
        "/v1/embeddings",
        r#"{"model":"m","input":["a","b","c"]}"#,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 3);
    assert_eq!(mock.requests()[2].path, "/v1/embeddings");
    assert!(mock.requests()[2].body.get("stream_options").is_none());

    // 12 + 12 (completions) + 8 (embeddings: prompt tokens only).
    eventually(|| async { counter(&gw.router, "up/k1", "tpm").await == (32, 0) }).await;
    assert_eq!(counter(&gw.router, "up/k1", "rpd").await, (3, 0));
}

#[tokio::test]
async fn a_failing_mock_provider_fails_over() {
    let cfg = r#"
[store]
kind = "memory"
[providers.flaky]
kind = "mock"
mock = { error_rate = 1.0 }
[providers.steady]
kind = "mock"
mock = { content = "steady answer" }
[models.m]
strategy = "priority"
targets = [{ provider = "flaky", model = "a" }, { provider = "steady", model = "b" }]
"#;
    let gw = start(cfg).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-llmux-target"), Some("steady/default/b"));
    assert_eq!(r.header("x-llmux-attempts"), Some("2"));
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "steady answer"
    );
}
