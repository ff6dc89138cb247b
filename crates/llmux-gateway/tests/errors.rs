//! Error envelopes: every failure is OpenAI-shaped JSON with the right status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;

const CONFIG: &str = r#"
max_body_bytes = 1024
[store]
kind = "memory"
[providers.up]
kind = "openai-compatible"
base_url = "BASE"
[[providers.up.keys]]
id = "k1"
secret = "sk-upstream-secret"
[models.m]
targets = [{ provider = "up", model = "gpt-4o-mini" }]
"#;

fn assert_envelope(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(!r.text().contains("sk-upstream-secret"));
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_errors() {
    let mock = llmux_testkit::MockUpstream::start().await;
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let r = post(gw.addr, "/v1/chat/completions", "{not json", &[]).await;
    assert_envelope(&r, 400, "invalid_request");
    let r = post(gw.addr, "/v1/chat/completions", r#"{"messages": []}"#, &[]).await;
    assert_envelope(&r, 400, "invalid_request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("model"));
    let r = post(gw.addr, "/v1/chat/completions", chat("nope"), &[]).await;
    assert_envelope(&r, 404, "model_not_found");
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let r = post(gw.addr, "/v1/chat/completions", big, &[]).await;
    assert_envelope(&r, 413, "payload_too_large");
    let r = get(gw.addr, "/v1/nothing").await;
    assert_envelope(&r, 404, "not_found");
    assert_eq!(
        mock.request_count(),
        0,
        "no bad request reached the upstream"
    );
}

#[tokio::test]
async fn upstream_failure_after_all_attempts_is_502_and_timeout_504() {
    let mock = llmux_testkit::MockUpstream::start().await;
    mock.set_default(llmux_testkit::Behavior::Status {
        status: 503,
        retry_after_secs: None,
    });
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_envelope(&r, 502, "upstream_error");
    assert_eq!(r.header("x-llmux-attempts"), Some("1"));

    let cfg = CONFIG
        .replace("BASE", &mock.base_url())
        .replace("[models.m]", "[models.m]\ntimeout_secs = 1");
    let gw = start(&cfg).await;
    mock.set_default(llmux_testkit::Behavior::Delay(
        std::time::Duration::from_secs(3),
    ));
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_envelope(&r, 504, "upstream_timeout");
}

#[tokio::test]
async fn gateway_keys_are_enforced() {
    let mock = llmux_testkit::MockUpstream::start().await;
    let cfg = format!(
        "{}\n[[gateway_keys]]\nid = \"team-a\"\nsecret = \"gk-123\"\nmodels = [\"m\"]\n",
        CONFIG.replace("BASE", &mock.base_url())
    );
    let gw = start(&cfg).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_envelope(&r, 401, "invalid_api_key");
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        chat("m"),
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_envelope(&r, 401, "invalid_api_key");
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        chat("m"),
        &[("authorization", "Bearer gk-123")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream gets the provider key, never the gateway key.
    let seen = mock.requests();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-upstream-secret")
    );
}

#[tokio::test]
async fn models_health_and_metrics() {
    let mock = llmux_testkit::MockUpstream::start().await;
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let r = get(gw.addr, "/v1/models").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"][0]["id"], "m");
    let r = get(gw.addr, "/health").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let ok = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(ok.status, 200);
    let r = get(gw.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("llmux_requests_total"), "{text}");
    assert!(
        text.contains("llmux_upstream_requests_total{target=\"up/k1/gpt-4o-mini\""),
        "{text}"
    );
    assert!(!text.contains("sk-upstream-secret"));
    // The estimate's error, from the usage the mock reported.
    assert!(
        text.contains("llmux_estimate_error_ratio_bucket{target=\"up/k1/gpt-4o-mini\",measure=\"input\",le=\"1\"}"),
        "{text}"
    );
    // A stream that breaks reports no usage: counted as unknown (its estimate is committed).
    mock.set_default(llmux_testkit::Behavior::BreakStreamAfter(1));
    let broken = post(
        gw.addr,
        "/v1/chat/completions",
        chat_stream("m", false),
        &[],
    )
    .await;
    assert!(
        broken.text().contains("upstream_stream_broken"),
        "{}",
        broken.text()
    );
    eventually(|| async {
        get(gw.addr, "/metrics")
            .await
            .text()
            .contains("llmux_usage_unknown_total{target=\"up/k1/gpt-4o-mini\"}")
    })
    .await;
}
