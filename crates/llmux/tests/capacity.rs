//! Capacity forecasts steer routing: a key whose monthly quota will not last the month at its
//! rate so far is tried after keys that will.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux::core::store::{AdminOp, StoreAdmin};
use llmux::core::{window_at, Line, ManualClock, Period, Subject, Timestamp};
use llmux::{Config, Request, Router};
use std::sync::Arc;

const CONFIG: &str = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "fast"
resources = [{ name = "rpmo", value = 1000, period = "monthly" }]
[[providers.p.keys]]
id = "slow"
resources = [{ name = "rpmo", value = 1000, period = "monthly" }]
[models.m]
strategy = "round-robin"
targets = [{ provider = "p", model = "x" }]
"#;

#[tokio::test]
async fn a_key_that_will_run_out_this_month_is_tried_last() {
    assert_eq!(picks_after_forecast("round-robin").await, vec!["slow"; 6]);
    // `priority` keeps the order the operator chose: the first key, short or not.
    assert_eq!(picks_after_forecast("priority").await, vec!["fast"; 6]);
}

async fn picks_after_forecast(strategy: &str) -> Vec<String> {
    let text = CONFIG.replace("round-robin", strategy);
    let config = Config::from_toml_str(&text, &|_| None).unwrap();
    // The 3rd of a 30-day month, noon UTC.
    let now = Timestamp(
        jiff::Timestamp::from_second(1_775_217_600)
            .unwrap()
            .as_millisecond(),
    );
    let clock = ManualClock::new(now);
    let router = Router::builder(config)
        .clock(clock.clone())
        .build()
        .unwrap();
    let window = window_at(Period::Monthly, &jiff::tz::TimeZone::UTC, now);
    // `fast` used 400 of 1,000 in 2.5 days: at that rate it runs out long before the month
    // ends. `slow` used 10: it lasts.
    for (key, used) in [("fast", 400), ("slow", 10)] {
        let line = Line {
            subject: Subject::new(&format!("p/{key}")),
            resource: Arc::from("rpmo"),
            window,
            capacity: 1000,
            amount: 0,
        };
        router
            .store()
            .update(line, AdminOp::SetUsed(used), now)
            .await
            .unwrap();
    }
    router.refresh_capacity().await.unwrap();
    let mut v = Vec::new();
    for _ in 0..6 {
        let req = Request::chat(serde_json::json!({"model": "m", "messages": []})).unwrap();
        v.push(router.request(req).await.unwrap().target.key.to_string());
    }
    v
}
