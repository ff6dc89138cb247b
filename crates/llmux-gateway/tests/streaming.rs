//! SSE passes through chunk by chunk; usage comes from the final usage chunk; a broken
//! upstream stream ends cleanly for the client and leaves the reservation settled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use http_body_util::BodyExt;
use llmux_testkit::{Behavior, MockUpstream};
use std::sync::Arc;
use tokio::sync::Semaphore;

const CONFIG: &str = r#"
[store]
kind = "sqlite"
path = "{DB}"
[providers.up]
kind = "openai-compatible"
base_url = "BASE"
resources = [{ name = "tpm", value = 100000, period = "minutely" }]
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
resources = [{ name = "rpm", value = 100, period = "minutely" }]
[models.m]
targets = [{ provider = "up", model = "gpt-4o-mini" }]
"#;

async fn next_data(body: &mut hyper::body::Incoming) -> String {
    loop {
        let frame = body
            .frame()
            .await
            .expect("stream ended")
            .expect("stream error");
        if let Ok(data) = frame.into_data() {
            return String::from_utf8_lossy(&data).into_owned();
        }
    }
}

#[tokio::test]
async fn chunks_reach_the_client_as_they_arrive() {
    let mock = MockUpstream::start().await;
    let gate = Arc::new(Semaphore::new(0));
    mock.push(Behavior::GatedStream(gate.clone()));
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let (status, headers, mut body) = send(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        chat_stream("m", false),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-llmux-target"], "up/k1/gpt-4o-mini");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The first event arrives while the upstream is still held at its second one.
    let first = next_data(&mut body).await;
    assert!(first.contains("\"role\":\"assistant\""), "{first}");
    gate.add_permits(1);
    let second = next_data(&mut body).await;
    assert!(second.contains("Hello"), "{second}");
    gate.add_permits(100);
    let rest = body.collect().await.unwrap().to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    // The client did not ask for usage: the usage-only chunk is withheld…
    assert!(!rest.contains("\"prompt_tokens\""), "{rest}");
    // …but llmux asked for it upstream and reconciled with it (mock usage: 10 + 5).
    let sent = &mock.requests()[0].body;
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["model"], "gpt-4o-mini");
    eventually(|| async { counter(&gw.router, "up", "tpm").await == (15, 0) }).await;
    assert_eq!(counter(&gw.router, "up/k1", "rpm").await, (1, 0));
}

#[tokio::test]
async fn clients_that_ask_for_usage_get_the_usage_chunk() {
    let mock = MockUpstream::start().await;
    mock.set_usage(20, 7);
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let r = post(gw.addr, "/v1/chat/completions", chat_stream("m", true), &[]).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("\"prompt_tokens\":20"), "{text}");
    eventually(|| async { counter(&gw.router, "up", "tpm").await == (27, 0) }).await;
}

#[tokio::test]
async fn a_broken_upstream_stream_ends_cleanly_and_settles() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::BreakStreamAfter(1));
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let body = serde_json::json!({
        "model": "m", "stream": true, "max_tokens": 50,
        "messages": [{"role": "user", "content": "Say hello"}]
    });
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("Hello"), "{text}");
    assert!(
        text.contains("upstream_stream_broken"),
        "the client is told: {text}"
    );
    // No usage arrived: the estimate (input estimate + max_tokens) is committed, nothing stays
    // reserved.
    eventually(|| async {
        let (used, reserved) = counter(&gw.router, "up", "tpm").await;
        reserved == 0 && used >= 50
    })
    .await;
    assert_eq!(counter(&gw.router, "up/k1", "rpm").await, (1, 0));
    // The gateway still serves.
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_settles_the_lease() {
    let mock = MockUpstream::start().await;
    let gate = Arc::new(Semaphore::new(0));
    mock.push(Behavior::GatedStream(gate.clone()));
    let gw = start(&CONFIG.replace("BASE", &mock.base_url())).await;
    let (status, _, mut body) = send(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        chat_stream("m", false),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let _ = next_data(&mut body).await;
    assert_eq!(counter(&gw.router, "up/k1", "rpm").await, (0, 1));
    drop(body);
    gate.add_permits(100);
    eventually(|| async { counter(&gw.router, "up/k1", "rpm").await == (1, 0) }).await;
}
