//! Promises on the paths beside the main one: a client that hangs up after its request left,
//! an upstream 429, bodies nested too deep, hints that point decades ahead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::{Behavior, MockUpstream};
use std::time::Duration;

/// Hourly limits: a test never meets two windows (a minutely one could reset mid-test).
fn config(base: &str, requests: u32) -> String {
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
resources = [{{ name = "requests", value = {requests}, period = "hourly" }},
             {{ name = "tokens", value = 1000000, period = "hourly" }}]
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
fallback_on = [500]
"#
    )
}

/// Send `body` and hang up once the upstream has it (before its answer comes).
async fn hang_up_after_sent(gw: &Gateway, mock: &MockUpstream, body: String) {
    let before = mock.request_count();
    let addr = gw.addr;
    let call = tokio::spawn(async move { post(addr, "/v1/chat/completions", body, &[]).await });
    let mut reached = false;
    for _ in 0..300 {
        if call.is_finished() {
            // Refused by the limit before anything was sent: nothing to hang up on.
            return;
        }
        if mock.request_count() > before {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call.abort();
    let _ = call.await;
    if !reached {
        // Refused by the limit before anything was sent: nothing to hang up on.
        return;
    }
    // Give the gateway a moment to see the connection close.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// With 2 requests allowed, clients that hang up once their request went upstream still count: five
/// leavers and one normal request put at most two requests on the upstream, and the limit's
/// counter holds two requests, none of them reserved. JSON and streams alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_after_sending_still_counts() {
    for stream in [false, true] {
        let mock = MockUpstream::start().await;
        mock.set_default(Behavior::Delay(Duration::from_secs(2)));
        let gw = start(&config(&mock.base_url(), 2)).await;
        for _ in 0..5 {
            let body = if stream {
                chat_stream("m", false)
            } else {
                chat("m")
            };
            hang_up_after_sent(&gw, &mock, body).await;
        }
        mock.set_default(Behavior::Ok);
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
        assert_eq!(r.status, 429, "stream={stream}: {}", r.text());
        assert_eq!(mock.request_count(), 2, "stream={stream}");
        let router = gw.router.clone();
        eventually(|| {
            let router = router.clone();
            async move { counter(&router, "up/k1", "requests").await == (2, 0) }
        })
        .await;
        // The estimate was committed, not released: tokens count too.
        let (tokens, reserved) = counter(&gw.router, "up/k1", "tokens").await;
        assert!(
            tokens > 0 && reserved == 0,
            "stream={stream}: {tokens}/{reserved}"
        );
    }
}

/// An upstream 429 counts one request (and no tokens) against the key's limits, as the
/// upstream itself counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_429_counts_one_request_and_no_tokens() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::Status {
        status: 429,
        retry_after_secs: Some(1),
    });
    let gw = start(&config(&mock.base_url(), 100)).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(mock.request_count(), 1);
    let router = gw.router.clone();
    eventually(|| {
        let router = router.clone();
        async move { counter(&router, "up/k1", "requests").await == (1, 0) }
    })
    .await;
    assert_eq!(counter(&gw.router, "up/k1", "tokens").await, (0, 0));
}

/// Both dialects' targets with a gateway key whose policy caps output at 100 tokens.
fn capped(mock: &MockUpstream) -> String {
    format!(
        "{}\n[[gateway_keys]]\nid = \"capped\"\nsecret = \"gk-capped\"\nmax_tokens = 100\n",
        two_dialects(mock)
    )
}

/// What is reserved, checked by the policy and asked upstream is one number: a request
/// without a cap asks each wire for the policy's 100 (translated to Anthropic or not), and
/// `max_completion_tokens` past the policy is refused like `max_tokens` (the larger of the two
/// when both are given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_cap_is_one_number_on_every_wire() {
    let mock = MockUpstream::start().await;
    let gw = start(&capped(&mock)).await;
    let auth = [("authorization", "Bearer gk-capped")];
    for model in ["claude", "gpt"] {
        let r = post(gw.addr, "/v1/chat/completions", chat(model), &auth).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let asked = mock.requests().last().unwrap().body.clone();
        let cap = asked
            .get("max_tokens")
            .or_else(|| asked.get("max_completion_tokens"))
            .cloned();
        assert_eq!(cap, Some(serde_json::json!(100)), "{model}: {asked}");
    }
    let before = mock.request_count();
    for body in [
        serde_json::json!({"model": "claude", "max_completion_tokens": 100000,
            "messages": [{"role": "user", "content": "hi"}]}),
        serde_json::json!({"model": "gpt", "max_tokens": 10, "max_completion_tokens": 100000,
            "messages": [{"role": "user", "content": "hi"}]}),
    ] {
        let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &auth).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.text().contains("max_tokens"), "{}", r.text());
    }
    assert_eq!(
        mock.request_count(),
        before,
        "nothing past the policy was sent"
    );
    // Both given under the cap: the larger is what the translation asks for.
    let body = serde_json::json!({"model": "claude", "max_tokens": 20, "max_completion_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]});
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.requests().last().unwrap().body["max_tokens"], 50);
}

/// A body nested deeper than 128 levels is a 400 naming the limit on every routed endpoint,
/// and never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_too_deep_is_refused_on_every_route() {
    let mock = MockUpstream::start().await;
    let gw = start(&two_dialects(&mock)).await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    for (path, model) in [
        ("/v1/chat/completions", "gpt"),
        ("/v1/chat/completions", "claude"),
        ("/v1/messages", "claude"),
        ("/v1/completions", "gpt"),
        ("/v1/embeddings", "gpt"),
        ("/v1/responses", "gpt"),
    ] {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}],"input":"x","prompt":"x","metadata":{deep}}}"#
        );
        let r = post(gw.addr, path, body, &[]).await;
        assert_eq!(r.status, 400, "{path} {model}: {}", r.text());
        assert!(r.text().contains("128 levels"), "{path}: {}", r.text());
    }
    assert_eq!(mock.request_count(), 0);
}

/// An Anthropic answer whose limit resets in 2099 cools its key for a day at most: the 429
/// that follows says so in `retry-after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_decades_ahead_holds_a_key_back_a_day_at_most() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::WithHeaders(vec![
        ("anthropic-ratelimit-requests-limit".into(), "50".into()),
        ("anthropic-ratelimit-requests-remaining".into(), "0".into()),
        (
            "anthropic-ratelimit-requests-reset".into(),
            "2099-01-01T00:00:00Z".into(),
        ),
    ]));
    let gw = start(&two_dialects(&mock)).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("claude"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut refused = None;
    for _ in 0..50 {
        let r = post(gw.addr, "/v1/chat/completions", chat("claude"), &[]).await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = refused.expect("the learned limit refuses");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(secs <= 86_400, "retry-after: {secs}");
}

/// A translated answer that is not the shape expected is a 502 `upstream_error` in the
/// client's envelope, chosen by the gateway like every other error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_cannot_be_translated_is_a_502_in_the_clients_envelope() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An "Anthropic" upstream whose 200 is JSON of no Messages shape.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let mut buf = vec![0u8; 65536];
            let _ = c.read(&mut buf).await;
            let body = r#"{"weird":true}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(head.as_bytes()).await;
            let _ = c.write_all(body.as_bytes()).await;
        }
    });
    let cfg = format!(
        r#"
[store]
kind = "memory"
[providers.claude]
kind = "anthropic"
base_url = "http://{addr}/v1"
[[providers.claude.keys]]
id = "k1"
secret = "sk-ant-1"
[models.claude]
targets = [{{ provider = "claude", model = "claude-sonnet-4-5" }}]
"#
    );
    let gw = start(&cfg).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("claude"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "upstream_error", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be translated"),
        "{e}"
    );
    assert_eq!(r.header("x-llmux-attempts"), Some("1"));
}
