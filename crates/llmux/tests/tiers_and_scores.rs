//! Tiers (DESIGN.md's rule) and the `score` strategy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux::core::store::StoreAdmin;
use llmux::{Config, Request, RouteError, Router};

const TIERS: &str = r#"
tier_order = ["free", "pro", "enterprise"]
[store]
kind = "memory"
[providers.basic]
kind = "mock"
tiers = ["free"]
[[providers.basic.keys]]
id = "k"
resources = [{ name = "rpm", value = 1, period = "minutely" }]
[providers.plus]
kind = "mock"
tiers = ["pro", "enterprise"]
[[providers.plus.keys]]
id = "k"
resources = [{ name = "rpm", value = 1, period = "minutely" }]
[providers.premium]
kind = "mock"
tiers = ["enterprise"]
[[providers.premium.keys]]
id = "k"
resources = [{ name = "rpm", value = 1, period = "minutely" }]
[providers.shared]
kind = "mock"
[[providers.shared.keys]]
id = "k"
resources = [{ name = "rpm", value = 1, period = "minutely" }]
[models.m]
strategy = "priority"
max_attempts = 5
targets = [
  { provider = "premium", model = "x" },
  { provider = "plus", model = "x" },
  { provider = "basic", model = "x" },
  { provider = "shared", model = "x" },
]
"#;

fn router() -> Router {
    Router::from_config(Config::from_toml_str(TIERS, &|_| None).unwrap()).unwrap()
}

async fn targets(r: &Router, tier: Option<&str>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut req = Request::chat(serde_json::json!({"model": "m", "messages": []})).unwrap();
        req.tier = tier.map(str::to_string);
        match r.request(req).await {
            Ok(resp) => out.push(resp.target.provider.to_string()),
            Err(RouteError::NoCapacity { .. }) => out.push("429".into()),
            Err(e) => panic!("{e}"),
        }
    }
    out
}

#[tokio::test]
async fn a_pro_request_tries_pro_targets_then_lower_tiers_never_higher() {
    // Each provider admits one request a minute, so the order of use shows the order tried.
    // "shared" lists no tiers: it serves every tier, including pro's own round.
    let r = router();
    assert_eq!(
        targets(&r, Some("pro"), 4).await,
        ["plus", "shared", "basic", "429"]
    );
}

#[tokio::test]
async fn a_free_request_only_reaches_free_and_untiered_targets() {
    let r = router();
    assert_eq!(
        targets(&r, Some("free"), 3).await,
        ["basic", "shared", "429"]
    );
}

#[tokio::test]
async fn a_request_without_a_tier_skips_tier_filtering() {
    let r = router();
    assert_eq!(
        targets(&r, None, 5).await,
        ["premium", "plus", "basic", "shared", "429"]
    );
}

#[tokio::test]
async fn an_enterprise_request_walks_every_tier_down() {
    let r = router();
    assert_eq!(
        targets(&r, Some("enterprise"), 5).await,
        ["premium", "plus", "shared", "basic", "429"]
    );
}

#[tokio::test]
async fn the_score_strategy_prefers_remaining_capacity_and_honours_overrides() {
    let cfg = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "a"
resources = [{ name = "rpm", value = 10, period = "minutely" }]
[[providers.p.keys]]
id = "b"
resources = [{ name = "rpm", value = 10, period = "minutely" }]
[models.m]
strategy = "score"
targets = [{ provider = "p", model = "x" }]
"#;
    let r = Router::from_config(Config::from_toml_str(cfg, &|_| None).unwrap()).unwrap();
    let pick = || async {
        let req = Request::chat(serde_json::json!({"model": "m", "messages": []})).unwrap();
        r.request(req).await.unwrap().target.key.to_string()
    };
    // Whichever goes first, the next goes to the other key (more remaining capacity).
    let first = pick().await;
    let second = pick().await;
    assert_ne!(first, second);
    // An operator pins key a low: b takes the traffic until a's usage changes.
    r.store()
        .set_score(llmux::core::Subject::new("p/a"), Some(0.0))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(pick().await, "b");
    }
}
