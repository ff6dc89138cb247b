//! Chaos: 2,000 requests at concurrency 50 over a pool whose three upstreams fail at random
//! (5xx, 429 with hints, broken bodies, stalls past the attempt timeout). No client waits past
//! `deadline_secs`, every answer is a clean status, and afterwards every key's counters equal
//! what its upstream saw: one request per answer that was not a 429, the reported tokens of
//! each answer that reached a client, the estimate of each attempt that was lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use futures_util::StreamExt;
use llmux_testkit::{Behavior, MockUpstream};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const REQUESTS: usize = 2000;
const CONCURRENCY: usize = 50;
const DEADLINE_SECS: u64 = 3;
/// What the mock reports per answer.
const REPORTED: (u64, u64) = (7, 3);
const MAX_TOKENS: u64 = 5;

/// The behaviours a mock serves, in order (then `Ok`), and which of them the pool sees as
/// lost (the estimate is committed) or as a 429 (nothing is).
fn chaos_queue(seed: u64, n: usize) -> Vec<Behavior> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| match rng.random_range(0..100) {
            0..=64 => Behavior::Ok,
            65..=72 => Behavior::Status {
                status: 500,
                retry_after_secs: None,
            },
            73..=79 => Behavior::Status {
                status: 503,
                retry_after_secs: None,
            },
            80 => Behavior::RateLimited {
                retry_after_secs: 0,
            },
            81..=90 => Behavior::BreakStreamAfter(1),
            _ => Behavior::Delay(Duration::from_millis(1500)),
        })
        .collect()
}

fn config(mocks: &[MockUpstream]) -> String {
    let mut c = String::from("[store]\nkind = \"sqlite\"\npath = \"{DB}\"\n");
    let mut targets = Vec::new();
    for (i, m) in mocks.iter().enumerate() {
        c.push_str(&format!(
            r#"
[providers.p{i}]
kind = "openai-compatible"
base_url = "{}"
timeout_secs = 1
[providers.p{i}.health]
cooldown = {{ base_secs = 0.02, factor = 2, max_secs = 0.1 }}
breaker = {{ failures = 10, failure_rate = 0.9, min_requests = 50, window_secs = 10, open_secs = 1 }}
[[providers.p{i}.keys]]
id = "k1"
secret = "sk-{i}"
resources = [{{ name = "rph", value = 1000000, period = "hourly", unit = "requests" }}, {{ name = "tph", value = 1000000000, period = "hourly", unit = "tokens" }}]
"#,
            m.base_url()
        ));
        targets.push(format!("{{ provider = \"p{i}\", model = \"m{i}\" }}"));
    }
    c.push_str(&format!(
        r#"
[models.m]
strategy = "weighted"
max_attempts = 3
deadline_secs = {DEADLINE_SECS}
retry = {{ backoff_ms = 5, max_backoff_ms = 50 }}
targets = [{}]
"#,
        targets.join(", ")
    ));
    c
}

fn body() -> String {
    serde_json::json!({
        "model": "m",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Say hello to the chaos"}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_requests_through_random_failures_keep_deadlines_and_exact_counts() {
    let mut mocks = Vec::new();
    let mut queues = Vec::new();
    for i in 0..3u64 {
        let m = MockUpstream::start().await;
        m.set_usage(REPORTED.0, REPORTED.1);
        let q = chaos_queue(42 + i, REQUESTS * 2);
        for b in &q {
            m.push(b.clone());
        }
        mocks.push(m);
        queues.push(q);
    }
    let gw = start(&config(&mocks)).await;
    let addr = gw.addr;
    let results: Vec<(u16, Option<String>, Duration)> = futures_util::stream::iter(0..REQUESTS)
        .map(|_| async move {
            let t0 = Instant::now();
            let r = post(addr, "/v1/chat/completions", body(), &[]).await;
            let target = r
                .header("x-llmux-target")
                .or(r.header("x-llmux-limit"))
                .map(str::to_string);
            if r.status != 200 {
                // Every failure is a clean error envelope.
                let v = r.json();
                assert!(v["error"]["code"].is_string(), "{}: {}", r.status, r.text());
            }
            (r.status, target, t0.elapsed())
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let slowest = results.iter().map(|r| r.2).max().unwrap();
    assert!(
        slowest < Duration::from_millis(DEADLINE_SECS * 1000 + 700),
        "a client waited {slowest:?}, past the {DEADLINE_SECS} s deadline"
    );
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut limits: HashMap<String, usize> = HashMap::new();
    for r in &results {
        *statuses.entry(r.0).or_default() += 1;
        if r.0 == 429 {
            *limits.entry(r.1.clone().unwrap_or_default()).or_default() += 1;
        }
    }
    eprintln!("statuses {statuses:?}, 429s by limit {limits:?}");
    for s in statuses.keys() {
        assert!([200, 429, 502, 503, 504].contains(s), "{statuses:?}");
    }
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > REQUESTS / 4,
        "{statuses:?}"
    );

    // Every key's counters equal what its upstream saw.
    let estimate = {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&body()).unwrap();
        llmux_core::usage::estimate_input_tokens(&map) + MAX_TOKENS
    };
    for (i, (mock, queue)) in mocks.iter().zip(&queues).enumerate() {
        let subject = format!("p{i}/k1");
        let seen = mock.request_count();
        assert!(seen < queue.len(), "the queue outlasted the run");
        let served = &queue[..seen];
        let limited = served
            .iter()
            .filter(|b| matches!(b, Behavior::RateLimited { .. }))
            .count() as u64;
        let lost = served
            .iter()
            .filter(|b| matches!(b, Behavior::BreakStreamAfter(_) | Behavior::Delay(_)))
            .count() as u64;
        let target = format!("p{i}/k1/m{i}");
        let answered = results
            .iter()
            .filter(|r| r.0 == 200 && r.1.as_deref() == Some(target.as_str()))
            .count() as u64;
        // Every request the upstream saw counts, its 429s included (as the upstream counts
        // them); a 429 counts no tokens.
        let want_requests = seen as u64;
        let want_tokens = answered * (REPORTED.0 + REPORTED.1) + lost * estimate;
        let gw = &gw;
        let subject = &subject;
        let mut last = ((0, 0), (0, 0));
        for _ in 0..500 {
            last = (
                counter(&gw.router, subject, "rph").await,
                counter(&gw.router, subject, "tph").await,
            );
            if last == ((want_requests, 0), (want_tokens, 0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            last,
            ((want_requests, 0), (want_tokens, 0)),
            "{subject}: (requests, tokens) as (used, reserved): upstream saw {seen} requests, \
             {limited} answered 429, {lost} lost, {answered} answered a client; {statuses:?}"
        );
    }
}
