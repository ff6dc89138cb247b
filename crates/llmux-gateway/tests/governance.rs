//! Governance end to end: USD budgets that hold under concurrency, policies, gateway keys read
//! from the store while serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_core::Records;
use llmux_testkit::MockUpstream;

/// One openai-compatible provider whose model costs 1,000 USD per 1M tokens (1,000 micro-USD
/// a token), so small token counts make visible money.
fn priced(base: &str, store: &str, extra: &str) -> String {
    format!(
        r#"
tier_order = ["free", "pro"]
[store]
{store}
[prices."gpt-4o-mini"]
input = 1000
output = 1000
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
[models.other]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
{extra}
"#
    )
}

fn small_chat(model: &str, max_tokens: u64) -> String {
    serde_json::json!({"model": model, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say hello"}]})
    .to_string()
}

async fn burst(gw: &Gateway, n: usize, body: String, headers: Vec<(String, String)>) -> Vec<Resp> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (addr, body, headers) = (gw.addr, body.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            post(addr, "/v1/chat/completions", body, &h).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 200 concurrent requests against a hard budget that fits about 20: spend (the mock's
/// reported usage × the price) never passes the budget by more than one request's estimate
/// error, the rest are 429 `budget_exceeded` without `retry-after`, and the stored counter is
/// exactly what was spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hard_budget_holds_under_200_concurrent_requests() {
    let mock = MockUpstream::start().await;
    // Each answer reports 10 + 10 tokens: $0.02.
    mock.set_usage(10, 10);
    let extra = r#"
[[gateway_keys]]
id = "team-key"
secret = "gk-budget"
resources = [{ name = "budget", value = 0.4, period = "monthly" }]
"#;
    let gw = start(&priced(
        &mock.base_url(),
        "kind = \"sqlite\"\npath = \"{DB}\"",
        extra,
    ))
    .await;
    let auth = vec![("authorization".to_string(), "Bearer gk-budget".to_string())];
    let rs = burst(&gw, 200, small_chat("m", 10), auth.clone()).await;
    let ok = rs.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Resp> = rs.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + refused.len(), 200, "only 200s and 429s expected");
    assert!(ok >= 10, "the budget fits ~20 requests; {ok} were served");
    for r in &refused {
        let e = r.json();
        assert_eq!(e["error"]["type"], "insufficient_quota", "{e}");
        assert_eq!(e["error"]["code"], "budget_exceeded", "{e}");
        assert!(
            r.header("retry-after").is_none(),
            "a budget has no retry-after"
        );
        assert_eq!(
            r.header("x-llmux-limit"),
            Some("gateway-key:team-key:budget")
        );
    }
    let spent_micro = ok as u64 * 20_000;
    // One request's estimate (prompt estimate + 10 output tokens) bounds the overshoot; here
    // the estimate is never below the actual usage, so there is none at all.
    assert!(
        spent_micro <= 400_000,
        "spent ${}",
        spent_micro as f64 / 1e6
    );
    assert_eq!(mock.request_count(), ok);
    eventually(|| async {
        counter(&gw.router, "gateway-key:team-key", "budget").await == (spent_micro, 0)
    })
    .await;
    // Once reconciled, what is left is spent to the last request that fits.
    let left = 400_000 - spent_micro;
    let more = burst(&gw, 40, small_chat("m", 10), auth).await;
    let more_ok = more.iter().filter(|r| r.status == 200).count() as u64;
    assert!(
        more_ok * 20_000 <= left,
        "{more_ok} more after ${left} left"
    );
}

#[tokio::test]
async fn policies_refuse_with_403_naming_the_rule() {
    let mock = MockUpstream::start().await;
    let extra = r#"
[prices."pricey"]
input = 1000000
output = 1000000
[models.expensive]
targets = [{ provider = "up", model = "pricey" }]
[teams.research]
max_tokens = 500
[[gateway_keys]]
id = "narrow"
secret = "gk-narrow"
team = "research"
models = ["m", "expensive"]
max_cost_usd_per_request = 2
"#;
    let gw = start(&priced(&mock.base_url(), "kind = \"memory\"", extra)).await;
    let auth = [("authorization", "Bearer gk-narrow")];
    let refused = |r: &Resp, rule: &str| {
        assert_eq!(r.status, 403, "{}", r.text());
        let e = r.json();
        assert_eq!(e["error"]["type"], "permission_error");
        assert_eq!(e["error"]["code"], "policy_violation");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(rule), "{msg} should name {rule}");
    };
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        small_chat("other", 10),
        &auth,
    )
    .await;
    refused(&r, "models");
    let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 600), &auth).await;
    refused(&r, "max_tokens");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("team \"research\""));
    // 10 output tokens at $1 each is $10 before the prompt: above the $2 per request.
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        small_chat("expensive", 10),
        &auth,
    )
    .await;
    refused(&r, "max_cost_usd_per_request");
    assert_eq!(
        mock.request_count(),
        0,
        "nothing refused reached the upstream"
    );
    let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 100), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Without max_tokens the reservation takes the policy's cap, not the model's 4,096.
    let r = post(gw.addr, "/v1/chat/completions", chat("m"), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Team, tier and global USD limits all count each request; the one that runs out names
/// itself.
#[tokio::test]
async fn team_tier_and_global_budgets_count_every_request() {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 10);
    let extra = r#"
[teams.research]
resources = [{ name = "budget", value = 1, period = "daily" }]
[tiers.pro]
resources = [{ name = "pro_usd", value = 5, period = "monthly" }]
[global]
resources = [{ name = "spend_usd", value = 0.05, period = "monthly" }]
[[gateway_keys]]
id = "r1"
secret = "gk-r1"
tier = "pro"
team = "research"
"#;
    let gw = start(&priced(&mock.base_url(), "kind = \"memory\"", extra)).await;
    let auth = [("authorization", "Bearer gk-r1")];
    let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 10), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (subject, resource) in [
        ("team:research", "budget"),
        ("tier:pro", "pro_usd"),
        ("global", "spend_usd"),
    ] {
        eventually(|| async { counter(&gw.router, subject, resource).await == (20_000, 0) }).await;
    }
    let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 10), &auth).await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually(|| async { counter(&gw.router, "global", "spend_usd").await == (40_000, 0) }).await;
    // $0.01 left globally: the next request's estimate does not fit.
    let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 10), &auth).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");
    assert_eq!(r.header("x-llmux-limit"), Some("global:spend_usd"));
    // The global budget covers requests without a key too (no key exists for them: the
    // config has one, so they are 401 first).
    let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 10), &[]).await;
    assert_eq!(r.status, 401);
}

/// A key written to the store reaches a serving gateway within the refresh, a revoked one
/// stops working, and the store holds only the hash (sqlite).
#[tokio::test]
async fn stored_keys_are_honoured_and_revoked_while_serving() {
    let mock = MockUpstream::start().await;
    let cfg = priced(&mock.base_url(), "kind = \"sqlite\"\npath = \"{DB}\"", "");
    let gw = start(&cfg).await;
    let secret = stored_keys(&[&gw]).await;
    // The file holds the hash, never the secret.
    let db = std::fs::read(gw.dir.path().join("llmux.db")).unwrap();
    let wal = std::fs::read(gw.dir.path().join("llmux.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

/// The same on two replicas sharing one Redis: both honour and both drop the key.
#[tokio::test]
async fn two_replicas_on_one_redis_honour_and_drop_a_stored_key() {
    let Some(server) = llmux_testkit::redis::RedisServer::start() else {
        return;
    };
    let mock = MockUpstream::start().await;
    let prefix = format!("keys{}", std::process::id());
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"",
        server.url()
    );
    let cfg = priced(&mock.base_url(), &store, "");
    let (a, b) = (start(&cfg).await, start(&cfg).await);
    stored_keys(&[&a, &b]).await;
}

/// Open while no key exists; a stored key is required and honoured by every gateway within
/// 5 s; revoked, it stops working everywhere within 5 s. Returns the key's secret.
async fn stored_keys(gws: &[&Gateway]) -> String {
    use llmux::keys::{hash_hex, hint_of, new_secret, StoredKey};
    for gw in gws {
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let secret = new_secret().unwrap();
    let mut key = StoredKey {
        name: "app".into(),
        hash: hash_hex(&secret),
        hint: hint_of(&secret),
        tier: None,
        team: None,
        models: Some(vec!["m".into()]),
        budget_usd: None,
        budget_period: None,
        rpm: Some(100),
        tpm: None,
        created_ms: 0,
        revoked_ms: None,
    };
    let store = gws[0].router.store().clone();
    store
        .put_record("gateway_keys", "app", &serde_json::to_string(&key).unwrap())
        .await
        .unwrap();
    let bearer = format!("Bearer {secret}");
    let auth = [("authorization", bearer.as_str())];
    let until = |gw: &Gateway, headers: Vec<(&'static str, String)>, want: u16| {
        let addr = gw.addr;
        async move {
            let started = std::time::Instant::now();
            loop {
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let r = post(addr, "/v1/chat/completions", chat("m"), &h).await;
                if r.status == want {
                    return;
                }
                assert!(
                    started.elapsed().as_secs() < 5,
                    "still {} after 5 s",
                    r.status
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    for gw in gws {
        until(gw, vec![], 401).await;
        let r = post(gw.addr, "/v1/chat/completions", chat("m"), &auth).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = post(gw.addr, "/v1/chat/completions", chat("other"), &auth).await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    // What the store holds (in any store) is the hash, never the secret.
    let held = store.list_records("gateway_keys").await.unwrap();
    assert_eq!(held.len(), 1);
    assert!(!held[0].1.contains(&secret) && held[0].1.contains(&hash_hex(&secret)));
    let n = gws.len() as u64;
    eventually(|| async { counter(&gws[0].router, "gateway-key:app", "rpm").await == (n, 0) })
        .await;
    key.revoked_ms = Some(1);
    store
        .put_record("gateway_keys", "app", &serde_json::to_string(&key).unwrap())
        .await
        .unwrap();
    for gw in gws {
        until(gw, vec![("authorization", bearer.clone())], 401).await;
    }
    secret
}

/// `cost`: the cheapest target with room takes the request; when its limit is reached the
/// next cheapest does, and the decision header says why.
#[tokio::test]
async fn the_cost_strategy_takes_the_cheapest_target_with_room() {
    let mock = MockUpstream::start().await;
    let base = mock.base_url();
    let cfg = format!(
        r#"
[store]
kind = "memory"
[providers.dear]
kind = "openai-compatible"
base_url = "{base}"
[[providers.dear.keys]]
id = "k1"
secret = "sk-1"
[providers.cheap]
kind = "openai-compatible"
base_url = "{base}"
[[providers.cheap.keys]]
id = "k1"
secret = "sk-2"
resources = [{{ name = "rpm", value = 2, period = "minutely" }}]
[models.m]
strategy = "cost"
targets = [{{ provider = "dear", model = "gpt-4o" }},
           {{ provider = "cheap", model = "gpt-4o-mini" }},
           {{ provider = "cheap", model = "house", price = {{ input = 50, output = 50 }} }}]
"#
    );
    let gw = start(&cfg).await;
    let ask = [("x-llmux-decision", "1")];
    let mut picked = Vec::new();
    for _ in 0..3 {
        let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 10), &ask).await;
        assert_eq!(r.status, 200, "{}", r.text());
        picked.push(r.header("x-llmux-target").unwrap().to_string());
        if picked.len() == 3 {
            let d = r.header("x-llmux-decision").unwrap();
            assert!(d.contains("skipped=cheap/k1/gpt-4o-mini:limit:rpm"), "{d}");
        }
    }
    // gpt-4o-mini (built-in list price) is cheaper than gpt-4o and than the $50 house model.
    assert_eq!(
        picked,
        [
            "cheap/k1/gpt-4o-mini",
            "cheap/k1/gpt-4o-mini",
            "dear/k1/gpt-4o"
        ]
    );
}

/// A soft budget serves past its limit and says so in `x-llmux-budget-exceeded`; show-state
/// style counters keep the real spend.
#[tokio::test]
async fn a_soft_budget_serves_and_flags_the_answer() {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 10);
    let extra = r#"
[[gateway_keys]]
id = "soft"
secret = "gk-soft"
resources = [{ name = "budget", value = 0.05, period = "daily", enforce = "soft" }]
"#;
    let gw = start(&priced(
        &mock.base_url(),
        "kind = \"sqlite\"\npath = \"{DB}\"",
        extra,
    ))
    .await;
    let auth = [("authorization", "Bearer gk-soft")];
    let mut flagged = Vec::new();
    for i in 0..4u64 {
        let r = post(gw.addr, "/v1/chat/completions", small_chat("m", 10), &auth).await;
        assert_eq!(r.status, 200, "{}", r.text());
        flagged.push(r.header("x-llmux-budget-exceeded").map(str::to_string));
        eventually(|| async {
            counter(&gw.router, "gateway-key:soft", "budget").await == ((i + 1) * 20_000, 0)
        })
        .await;
    }
    // $0.02 a request against $0.05: the third takes it past (by its estimate), and every
    // later one is flagged too.
    assert_eq!(flagged[0], None);
    assert_eq!(flagged[1], None);
    assert_eq!(flagged[2].as_deref(), Some("gateway-key:soft:budget"));
    assert_eq!(flagged[3].as_deref(), Some("gateway-key:soft:budget"));
    assert_eq!(mock.request_count(), 4);
}
