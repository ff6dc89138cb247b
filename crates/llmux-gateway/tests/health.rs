//! Upstream health end to end: learned limits from the upstream's headers, growing cooldowns,
//! the circuit breaker (open, no traffic, probe, closed), first-token timeouts, deadlines, the
//! decision header and llmux's own rate-limit headers; two replicas on one Redis share it all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_core::store::{Flags, StoreAdmin};
use llmux_testkit::{Behavior, MockUpstream};
use std::time::{Duration, Instant};

fn two_providers(a: &MockUpstream, b: &MockUpstream, store: &str, extra: &str) -> String {
    format!(
        r#"
[store]
{store}
[providers.a]
kind = "openai-compatible"
base_url = "{}"
[providers.a.health]
breaker = {{ failures = 2, open_secs = 1 }}
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
strategy = "priority"
max_attempts = 3
retry = {{ backoff_ms = 1, max_backoff_ms = 5 }}
{extra}
targets = [{{ provider = "a", model = "ma", priority = 1 }}, {{ provider = "b", model = "mb" }}]
"#,
        a.base_url(),
        b.base_url()
    )
}

const SQLITE: &str = "kind = \"sqlite\"\npath = \"{DB}\"";

fn one_key(mock: &MockUpstream, health: &str, resources: &str) -> String {
    format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.up]
kind = "openai-compatible"
base_url = "{}"
[providers.up.health]
{health}
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
resources = [{resources}]
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
"#,
        mock.base_url()
    )
}

async fn flags(gw: &Gateway, subject: &str) -> Flags {
    let states = gw.router.store().snapshot(subject).await.unwrap();
    states
        .iter()
        .find(|s| s.subject == subject)
        .map(|s| s.flags)
        .unwrap_or_default()
}

fn decided(r: &Resp) -> String {
    r.header("x-llmux-decision").unwrap_or_default().to_string()
}

const DECIDE: &[(&str, &str)] = &[("x-llmux-decision", "1")];

#[tokio::test]
async fn a_limit_the_upstream_announces_is_obeyed_until_its_reset() {
    let mock = MockUpstream::start().await;
    let low = |remaining: &str, reset: &str| {
        Behavior::WithHeaders(vec![
            ("x-ratelimit-limit-requests".into(), "60".into()),
            ("x-ratelimit-remaining-requests".into(), remaining.into()),
            ("x-ratelimit-reset-requests".into(), reset.into()),
        ])
    };
    // Two left, then one, then none, until about 1.5 s from now.
    mock.push(low("2", "1500ms"));
    mock.push(low("1", "1450ms"));
    mock.push(low("0", "1400ms"));
    let gw = start(&one_key(&mock, "", "")).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(|| async { flags(&gw, "up/k1").await.learned[0].is_some() }).await;
    let t0 = Instant::now();
    for left in [1, 0] {
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        eventually(|| async {
            flags(&gw, "up/k1").await.learned[0].is_some_and(|l| l.remaining == left)
        })
        .await;
    }
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("x-llmux-limit"), Some("up/k1:upstream_requests"));
    assert_eq!(
        decided(&r),
        "picked=none; attempts=0; skipped=up/k1/gpt-4o-mini:limit:upstream_requests"
    );
    assert!(
        r.header("ratelimit-policy")
            .unwrap()
            .starts_with(r#""up/k1:upstream_requests";q=60"#),
        "{:?}",
        r.headers
    );
    assert_eq!(mock.request_count(), 3, "the fourth request was never sent");
    let learned = flags(&gw, "up/k1").await.learned[0].unwrap();
    assert_eq!((learned.limit, learned.remaining), (60, 0));
    // Released at its reset.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(t0.elapsed())).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.request_count(), 4);
}

#[tokio::test]
async fn an_answer_with_room_again_replaces_the_low_figures() {
    let mock = MockUpstream::start().await;
    // The first request is slow and comes back healthy (9999 of 10000 left); the second one
    // answers first and says none are left for 10 s.
    mock.push(Behavior::Delay(Duration::from_millis(600)));
    mock.push(Behavior::WithHeaders(vec![
        ("x-ratelimit-limit-requests".into(), "60".into()),
        ("x-ratelimit-remaining-requests".into(), "0".into()),
        ("x-ratelimit-reset-requests".into(), "10s".into()),
    ]));
    let gw = start(&one_key(&mock, "", "")).await;
    let addr = gw.addr;
    let slow =
        tokio::spawn(async move { post(addr, "/v1/chat/completions", chat("m"), &[]).await });
    eventually(|| async { mock.request_count() == 1 }).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(|| async { flags(&gw, "up/k1").await.learned[0].is_some_and(|l| l.remaining == 0) })
        .await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429, "held back by the low figures: {}", r.text());
    let t0 = Instant::now();
    assert_eq!(slow.await.unwrap().status, 200);
    eventually(|| async { flags(&gw, "up/k1").await.learned[0].is_none_or(|l| l.remaining > 0) })
        .await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "not held until the 10 s reset"
    );
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test]
async fn repeated_429s_cool_the_key_longer_and_it_comes_back_by_itself() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behavior::Status {
        status: 429,
        retry_after_secs: None,
    });
    let gw = start(&one_key(
        &mock,
        "cooldown = { base_secs = 0.2, factor = 3, max_secs = 10 }",
        "",
    ))
    .await;
    let mut lengths = Vec::new();
    for _ in 0..3 {
        let before = gw.router.now();
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
        assert_eq!(r.status, 429, "{}", r.text());
        let f = flags(&gw, "up/k1").await;
        let until = f.cooldown_until.unwrap();
        lengths.push((until.0 - before.0, f.strikes));
        // While it cools, nothing is sent.
        let n = mock.request_count();
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("x-llmux-limit"), Some("up/k1:cooldown"));
        assert_eq!(
            decided(&r),
            "picked=none; attempts=0; skipped=up/k1/gpt-4o-mini:cooldown"
        );
        assert!(r
            .header("ratelimit")
            .unwrap()
            .starts_with(r#""up/k1:cooldown";r=0"#));
        assert_eq!(mock.request_count(), n);
        let wait = until.0 - gw.router.now().0 + 20;
        tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    }
    let strikes: Vec<u32> = lengths.iter().map(|l| l.1).collect();
    assert_eq!(strikes, vec![1, 2, 3], "{lengths:?}");
    // 200 ms, 600 ms, 1.8 s (each measured from just before its request).
    for ((len, _), want) in lengths.iter().zip([200, 600, 1800]) {
        assert!((want..want + 300).contains(len), "{lengths:?}");
    }
    // It comes back by itself.
    mock.set_default(Behavior::Ok);
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn the_breaker_opens_sends_nothing_while_open_probes_and_closes() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Behavior::Status {
        status: 503,
        retry_after_secs: None,
    });
    let gw = start(&two_providers(&a, &b, SQLITE, "")).await;
    for _ in 0..2 {
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            decided(&r),
            "picked=b/k1/mb; attempts=2; skipped=a/k1/ma:failed:503"
        );
    }
    // Two failures in a row opened it: a gets nothing while it is open.
    eventually(|| async { flags(&gw, "a/k1/ma").await.breaker.open_until.is_some() }).await;
    let sent = a.request_count();
    for _ in 0..5 {
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            decided(&r),
            "picked=b/k1/mb; attempts=1; skipped=a/k1/ma:breaker-open"
        );
    }
    assert_eq!(a.request_count(), sent);
    // After open_secs, one probe goes through; it succeeds and closes the breaker.
    a.set_default(Behavior::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
    assert_eq!(decided(&r), "picked=a/k1/ma; attempts=1; skipped=");
    eventually(|| async { flags(&gw, "a/k1/ma").await.breaker.open_until.is_none() }).await;
    for _ in 0..3 {
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
        assert_eq!(r.header("x-llmux-target"), Some("a/k1/ma"));
    }
}

#[tokio::test]
async fn a_failed_probe_opens_the_breaker_again() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Behavior::Status {
        status: 500,
        retry_after_secs: None,
    });
    let gw = start(&two_providers(&a, &b, SQLITE, "")).await;
    for _ in 0..2 {
        post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    }
    eventually(|| async { flags(&gw, "a/k1/ma").await.breaker.open_until.is_some() }).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = a.request_count();
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(a.request_count(), sent + 1, "one probe");
    let now = gw.router.now();
    eventually(|| async {
        flags(&gw, "a/k1/ma")
            .await
            .breaker
            .open_until
            .is_some_and(|u| u.0 > now.0 + 500)
    })
    .await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.header("x-llmux-target"), Some("b/k1/mb"));
    assert_eq!(a.request_count(), sent + 1, "open again: no traffic");
}

#[tokio::test]
async fn no_first_token_in_time_moves_to_the_next_target() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Behavior::StallFirstChunk(Duration::from_secs(5)));
    let gw = start(&two_providers(
        &a,
        &b,
        SQLITE,
        "first_token_timeout_secs = 1",
    ))
    .await;
    let t0 = Instant::now();
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        chat_stream("m", false),
        DECIDE,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(
        decided(&r),
        "picked=b/k1/mb; attempts=2; skipped=a/k1/ma:failed:timeout"
    );
    assert!(r.text().contains("[DONE]"));
    // A non-streamed answer whose head does not come in time moves on too.
    let t0 = Instant::now();
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(
        decided(&r).ends_with("a/k1/ma:failed:timeout"),
        "{}",
        decided(&r)
    );
}

#[tokio::test]
async fn the_deadline_bounds_the_whole_request() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Behavior::Delay(Duration::from_secs(10)));
    b.set_default(Behavior::Delay(Duration::from_secs(10)));
    let gw = start(&two_providers(&a, &b, SQLITE, "deadline_secs = 1")).await;
    let t0 = Instant::now();
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(took < Duration::from_millis(1600), "{took:?}");
    // A stream that stalls after its first bytes ends at the deadline with an error event.
    b.set_default(Behavior::GatedStream(std::sync::Arc::new(
        tokio::sync::Semaphore::new(0),
    )));
    a.set_default(Behavior::GatedStream(std::sync::Arc::new(
        tokio::sync::Semaphore::new(0),
    )));
    let t0 = Instant::now();
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        chat_stream("m", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(1600),
        "{:?}",
        t0.elapsed()
    );
    let text = r.text();
    assert!(text.contains("deadline_exceeded"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
}

#[tokio::test]
async fn every_answer_reports_the_limits_that_applied() {
    let mock = MockUpstream::start().await;
    let gw = start(&one_key(
        &mock,
        "",
        r#"{ name = "rpm", value = 60, period = "minutely" }, { name = "tpm-monthly", value = 1000000, period = "monthly", unit = "tokens" }"#,
    ))
    .await;
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("60"));
    let left: u64 = r
        .header("x-ratelimit-remaining-requests")
        .unwrap()
        .parse()
        .unwrap();
    assert!(left <= 59, "{left}");
    assert!(r
        .header("x-ratelimit-reset-requests")
        .unwrap()
        .ends_with('s'));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000000"));
    let policy = r.header("ratelimit-policy").unwrap();
    assert!(policy.contains(r#""up/k1:rpm";q=60;w=60"#), "{policy}");
    assert!(
        policy.contains(r#""up/k1:tpm-monthly";q=1000000;w="#),
        "{policy}"
    );
    let state = r.header("ratelimit").unwrap();
    assert!(state.contains(r#""up/k1:rpm";r="#), "{state}");
}

#[tokio::test]
async fn two_replicas_on_one_redis_share_learned_limits_and_breakers() {
    let Some(server) = llmux_testkit::redis::RedisServer::start() else {
        return;
    };
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let prefix = format!("health{}", std::process::id());
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"",
        server.url()
    );
    let one = start(&two_providers(&a, &b, &store, "")).await;
    let two = start(&two_providers(&a, &b, &store, "")).await;
    // Replica one sees two failures and opens a's breaker; replica two sends it nothing.
    a.set_default(Behavior::Status {
        status: 502,
        retry_after_secs: None,
    });
    for _ in 0..2 {
        post(one.addr, "/v1/chat/completions", chat("m"), &[]).await;
    }
    eventually(|| async { flags(&two, "a/k1/ma").await.breaker.open_until.is_some() }).await;
    let sent = a.request_count();
    let r = post(two.addr, "/v1/chat/completions", chat("m"), DECIDE).await;
    assert_eq!(
        decided(&r),
        "picked=b/k1/mb; attempts=1; skipped=a/k1/ma:breaker-open"
    );
    assert_eq!(a.request_count(), sent);
    // Replica one learns that b's key has no requests left; replica two obeys.
    b.push(Behavior::WithHeaders(vec![
        ("x-ratelimit-limit-requests".into(), "100".into()),
        ("x-ratelimit-remaining-requests".into(), "0".into()),
        ("x-ratelimit-reset-requests".into(), "30s".into()),
    ]));
    let r = post(one.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.header("x-llmux-target"), Some("b/k1/mb"));
    eventually(|| async { flags(&two, "b/k1").await.learned[0].is_some() }).await;
    let sent_b = b.request_count();
    let r = post(two.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(b.request_count(), sent_b);
}

/// Anthropic's `anthropic-ratelimit-*` headers on a healthy answer tighten the key as
/// OpenAI's do: none left until the announced RFC 3339 reset, then free again.
#[tokio::test]
async fn anthropic_limit_headers_on_a_healthy_answer_are_obeyed_until_their_reset() {
    let mock = MockUpstream::start().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let reset = llmux_core::Timestamp(now_ms + 1500).rfc3339();
    mock.push(Behavior::WithHeaders(vec![
        ("anthropic-ratelimit-requests-limit".into(), "50".into()),
        ("anthropic-ratelimit-requests-remaining".into(), "0".into()),
        ("anthropic-ratelimit-requests-reset".into(), reset),
    ]));
    let cfg = format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.claude]
kind = "anthropic"
base_url = "{}"
[[providers.claude.keys]]
id = "k1"
secret = "sk-ant"
[models.m]
targets = [{{ provider = "claude", model = "claude-3-5-haiku-latest" }}]
"#,
        mock.base_url()
    );
    let gw = start(&cfg).await;
    let body = serde_json::json!({"model": "m", "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let r = post(gw.addr, "/v1/messages", body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(|| async {
        flags(&gw, "claude/k1").await.learned[0].is_some_and(|l| l.limit == 50 && l.remaining == 0)
    })
    .await;
    let r = post(gw.addr, "/v1/messages", body.clone(), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.header("x-llmux-limit"),
        Some("claude/k1:upstream_requests")
    );
    assert_eq!(
        r.json()["type"],
        "error",
        "Anthropic's envelope on /v1/messages"
    );
    assert_eq!(
        mock.request_count(),
        1,
        "nothing was sent past the announced limit"
    );
    let wait = (now_ms + 1600)
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    let r = post(gw.addr, "/v1/messages", body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The 429 names the limit that denied it with its window, as the IETF fields do, and carries
/// llmux's own `x-ratelimit-*` counters for it, as every answer does.
#[tokio::test]
async fn a_429_gives_the_denying_limit_with_its_window() {
    let mock = MockUpstream::start().await;
    let gw = start(&one_key(
        &mock,
        "",
        r#"{ name = "rpd", value = 1, period = "daily" }"#,
    ))
    .await;
    assert_eq!(
        post(gw.addr, "/v1/chat/completions", chat("m"), &[])
            .await
            .status,
        200
    );
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(r#""up/k1:rpd";q=1;w=86400"#)
    );
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with(r#""up/k1:rpd";r=0;t="#));
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("1"));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    let reset = r.header("x-ratelimit-reset-requests").unwrap();
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        reset.ends_with('s') && reset.contains('h') == (retry >= 3600),
        "{reset} vs {retry}"
    );
    assert_eq!(r.header("x-ratelimit-limit-tokens"), None);
}
