//! Failover: a 500 moves to the next target; an upstream 429 cools the key down and traffic
//! moves to the other key; fallback_models are tried when a pool is exhausted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::{Behavior, MockUpstream};

fn two_providers(a: &MockUpstream, b: &MockUpstream, strategy: &str) -> String {
    format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.a]
kind = "openai-compatible"
base_url = "{}"
[[providers.a.keys]]
id = "k1"
secret = "sk-a"
[providers.b]
kind = "openai-compatible"
base_url = "{}"
[[providers.b.keys]]
id = "k1"
secret = "sk-b"
[models.m]
strategy = "{strategy}"
max_attempts = 3
targets = [{{ provider = "a", model = "model-a" }}, {{ provider = "b", model = "model-b" }}]
"#,
        a.base_url(),
        b.base_url()
    )
}

#[tokio::test]
async fn a_500_fails_over_to_the_next_target() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Behavior::Status {
        status: 500,
        retry_after_secs: None,
    });
    let gw = start(&two_providers(&a, &b, "priority")).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-llmux-target"), Some("b/k1/model-b"));
    assert_eq!(r.header("x-llmux-attempts"), Some("2"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert_eq!(b.requests()[0].body["model"], "model-b");
    assert_eq!(
        b.requests()[0].authorization.as_deref(),
        Some("Bearer sk-b")
    );
}

#[tokio::test]
async fn a_status_not_in_fallback_on_is_passed_through() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.push(Behavior::Status {
        status: 400,
        retry_after_secs: None,
    });
    let gw = start(&two_providers(&a, &b, "priority")).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-llmux-target"), Some("a/k1/model-a"));
    assert!(r.json()["error"].is_object());
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn an_upstream_429_cools_the_key_and_traffic_moves() {
    let up = MockUpstream::start().await;
    let other = MockUpstream::start().await;
    let cfg = format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.p]
kind = "openai-compatible"
base_url = "{}"
[[providers.p.keys]]
id = "k1"
secret = "sk-1"
[providers.q]
kind = "openai-compatible"
base_url = "{}"
[[providers.q.keys]]
id = "k2"
secret = "sk-2"
[models.m]
strategy = "priority"
targets = [{{ provider = "p", model = "x" }}, {{ provider = "q", model = "x" }}]
"#,
        up.base_url(),
        other.base_url()
    );
    up.push(Behavior::RateLimited {
        retry_after_secs: 30,
    });
    let gw = start(&cfg).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-llmux-target"), Some("q/k2/x"));
    // While p/k1 cools down, priority order no longer reaches it.
    for _ in 0..5 {
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
        assert_eq!(r.header("x-llmux-target"), Some("q/k2/x"));
    }
    assert_eq!(up.request_count(), 1);
    assert_eq!(other.request_count(), 6);
    // The cooldown is in the store, where other processes (and show-state) see it.
    use llmux_core::store::StoreAdmin;
    let s = gw.router.store().snapshot("p/k1").await.unwrap();
    let until = s[0].flags.cooldown_until.expect("cooldown recorded");
    let now = llmux_core::Clock::now(&llmux_core::SystemClock);
    assert!(until.0 - now.0 > 25_000, "about 30 s of cooldown");
}

#[tokio::test]
async fn when_every_key_cools_down_the_client_gets_429_with_retry_after() {
    let up = MockUpstream::start().await;
    up.set_default(Behavior::RateLimited {
        retry_after_secs: 7,
    });
    let b = MockUpstream::start().await;
    let mut cfg = two_providers(&up, &b, "priority");
    cfg = cfg.replace(r#", {{ provider = "b", model = "model-b" }}"#, "");
    cfg = cfg.replace(r#", { provider = "b", model = "model-b" }"#, "");
    let gw = start(&cfg).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((6..=7).contains(&secs), "{secs}");
    assert_eq!(r.json()["error"]["code"], "no_capacity");
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-llmux-limit"), Some("a/k1:cooldown"));
    assert_eq!(up.request_count(), 1, "a cooling key is not called");
}

#[tokio::test]
async fn fallback_models_take_over_when_the_pool_has_no_capacity() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let cfg = format!(
        r#"
[store]
kind = "memory"
[providers.a]
kind = "openai-compatible"
base_url = "{}"
[[providers.a.keys]]
id = "k1"
secret = "sk-a"
resources = [{{ name = "rpm", value = 2, period = "minutely" }}]
[providers.b]
kind = "openai-compatible"
base_url = "{}"
[[providers.b.keys]]
id = "k1"
secret = "sk-b"
[models.main]
fallback_models = ["spare"]
targets = [{{ provider = "a", model = "big" }}]
[models.spare]
targets = [{{ provider = "b", model = "small" }}]
"#,
        a.base_url(),
        b.base_url()
    );
    let gw = start(&cfg).await;
    let mut targets = Vec::new();
    for _ in 0..4 {
        let r = post(gw.addr, "/v1/chat/completions", chat("main"), &[]).await;
        assert_eq!(r.status, 200);
        targets.push(r.header("x-llmux-target").unwrap().to_string());
    }
    assert_eq!(
        targets,
        ["a/k1/big", "a/k1/big", "b/k1/small", "b/k1/small"]
    );
}

#[tokio::test]
async fn round_robin_spreads_evenly_over_keys() {
    let up = MockUpstream::start().await;
    let cfg = format!(
        r#"
[store]
kind = "memory"
[providers.p]
kind = "openai-compatible"
base_url = "{}"
[[providers.p.keys]]
id = "k1"
secret = "s1"
[[providers.p.keys]]
id = "k2"
secret = "s2"
[[providers.p.keys]]
id = "k3"
secret = "s3"
[models.rr]
strategy = "round-robin"
targets = [{{ provider = "p", model = "x" }}]
"#,
        up.base_url()
    );
    let gw = start(&cfg).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..9 {
        let r = post(gw.addr, "/v1/chat/completions", chat("rr"), &[]).await;
        *seen
            .entry(r.header("x-llmux-target").unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3],
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_answer_over_max_response_bytes_fails_over_and_keeps_its_estimate() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    // The mock's chat answers are a few hundred bytes: over 64 on a, never read whole.
    let cfg = two_providers(&a, &b, "priority")
        .replace("[store]", "max_response_bytes = 64\n[store]")
        .replace(
            "secret = \"sk-a\"",
            "secret = \"sk-a\"\nresources = [{ name = \"tpm\", value = 100000, period = \"minutely\" }]",
        );
    let gw = start(&cfg).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    // b's answer is as large: every attempt fails, and the client hears why.
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("larger than 64 bytes"), "{}", r.text());
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    // The upstream did the work: a's estimate stays committed, nothing stays reserved.
    let (used, reserved) = counter(&gw.router, "a/k1", "tpm").await;
    assert_eq!(reserved, 0);
    assert!(
        used > 4096,
        "the estimate (prompt + default_max_tokens) is kept: {used}"
    );
}
