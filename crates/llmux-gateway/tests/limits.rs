//! Limits are exact: concurrent requests never get past a limit, and counters reconcile to the
//! usage the upstream reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::MockUpstream;

fn config(base: &str, store: &str, resources: &str) -> String {
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
resources = [{resources}]
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
"#
    )
}

async fn burst(gw: &Gateway, n: usize) -> (usize, usize, Vec<Resp>) {
    // A burst that straddles a minute boundary meets two `minutely` windows: start it well
    // inside one.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if secs > 50.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(60.5 - secs)).await;
    }
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            post(addr, "/v1/chat/completions", chat("m"), &[]).await
        }));
    }
    let (mut ok, mut limited, mut rejected) = (0, 0, Vec::new());
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                rejected.push(r);
            }
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    (ok, limited, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_requests_against_rpm_50_admit_exactly_50_on_sqlite() {
    let mock = MockUpstream::start().await;
    let gw = start(&config(
        &mock.base_url(),
        "kind = \"sqlite\"\npath = \"{DB}\"",
        r#"{ name = "rpm", value = 50, period = "minutely" }"#,
    ))
    .await;
    let (ok, limited, rejected) = burst(&gw, 300).await;
    assert_eq!((ok, limited), (50, 250));
    assert_eq!(mock.request_count(), 50);
    let r = &rejected[0];
    assert_eq!(r.json()["error"]["code"], "no_capacity");
    assert_eq!(r.header("x-llmux-limit"), Some("up/k1:rpm"));
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    eventually(|| async { counter(&gw.router, "up/k1", "rpm").await == (50, 0) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_requests_against_rpm_50_admit_exactly_50_in_memory() {
    let mock = MockUpstream::start().await;
    let gw = start(&config(
        &mock.base_url(),
        "kind = \"memory\"",
        r#"{ name = "rpm", value = 50, period = "minutely" }"#,
    ))
    .await;
    let (ok, limited, _) = burst(&gw, 300).await;
    assert_eq!((ok, limited), (50, 250));
    assert_eq!(mock.request_count(), 50);
}

#[tokio::test]
async fn token_limits_reserve_the_estimate_and_reconcile_to_reported_usage() {
    let mock = MockUpstream::start().await;
    mock.set_usage(30, 20); // 50 tokens reported per request
    let gw = start(&config(
        &mock.base_url(),
        "kind = \"sqlite\"\npath = \"{DB}\"",
        r#"{ name = "tpm", value = 120, period = "minutely" }"#,
    ))
    .await;
    // Without max_tokens a request reserves the model's default_max_tokens (4096): never fits.
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_none());
    // Two requests fit (2 x 50 = 100 used); a third would need 50 more of the 20 left.
    for _ in 0..2 {
        let body = serde_json::json!({"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
        let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
        assert_eq!(r.status, 200);
    }
    eventually(|| async { counter(&gw.router, "up/k1", "tpm").await == (100, 0) }).await;
    let body = serde_json::json!({"model": "m", "max_tokens": 40, "messages": [{"role": "user", "content": "hi"}]});
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("x-llmux-limit"), Some("up/k1:tpm"));
    // A request that can never fit is refused with no retry hint.
    let body = serde_json::json!({"model": "m", "max_tokens": 500, "messages": []});
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_none());
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn model_pool_limits_apply_across_targets() {
    let mock = MockUpstream::start().await;
    let cfg = config(&mock.base_url(), "kind = \"memory\"", "")
        + "resources = [{ name = \"rpm\", value = 3, period = \"minutely\" }]\n";
    let gw = start(&cfg).await;
    let (ok, limited, rejected) = burst(&gw, 10).await;
    assert_eq!((ok, limited), (3, 7));
    assert_eq!(rejected[0].header("x-llmux-limit"), Some("model:m:rpm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_caps_requests_in_flight() {
    let mock = MockUpstream::start().await;
    mock.set_default(llmux_testkit::Behavior::Delay(
        std::time::Duration::from_millis(300),
    ));
    let cfg = config(&mock.base_url(), "kind = \"memory\"", "") + "max_concurrent = 4\n";
    let gw = start(&cfg).await;
    let (ok, limited, rejected) = burst(&gw, 20).await;
    assert_eq!((ok, limited), (4, 16));
    assert_eq!(
        rejected[0].header("x-llmux-limit"),
        Some("model:m:max_concurrent")
    );
    // Slots come back when the answers are done.
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200);
}

/// A prompt whose rough estimate (bytes / 4) does not fit a token limit but whose exact count
/// (tiktoken, for an OpenAI model) does is admitted; one that does not fit either way is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_limit_refusal_is_checked_again_with_the_exact_count() {
    let mock = llmux_testkit::MockUpstream::start().await;
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let body = serde_json::json!({"model": "m", "max_tokens": 10,
        "messages": [{"role": "user", "content": text}]});
    let map = body.as_object().unwrap();
    let exact = llmux::protocol::tokens::Encoding::O200k
        .input_tokens(map)
        .unwrap();
    let rough = llmux::core::usage::estimate_input_tokens(map);
    assert!(exact < rough, "exact {exact}, rough {rough}");
    let cfg = |capacity: u64| {
        format!(
            "[store]\nkind = \"memory\"\n[providers.up]\nkind = \"openai-compatible\"\nbase_url = \"{}\"\n[[providers.up.keys]]\nid = \"k\"\nsecret = \"s\"\nresources = [{{ name = \"tpm\", value = {capacity}, period = \"minutely\" }}]\n[models.m]\ntargets = [{{ provider = \"up\", model = \"gpt-4o-mini\" }}]\n",
            mock.base_url()
        )
    };
    let gw = start(&cfg(exact + 10)).await;
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let gw = start(&cfg(exact + 9)).await;
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
}
