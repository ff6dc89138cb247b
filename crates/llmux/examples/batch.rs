//! Run a batch in-process: items paced by the limits (20 a second here), results in
//! completion order with their ids; then the same with the blocking API and `acquire_wait`.
//!
//! cargo run -p llmux --example batch

use futures_util::StreamExt;
use llmux::batch::{BatchItem, BatchOptions};
use llmux::core::Usage;
use llmux::{Config, Router};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[store]
kind = "memory"

[providers.demo]
kind = "mock"
mock = { latency_ms = 5 }
[[providers.demo.keys]]
id = "k1"
resources = [{ name = "rps", value = 20, period = "secondly" }]

[models.fast]
targets = [{ provider = "demo", model = "demo-small" }]
"#;

fn items(n: usize) -> Result<Vec<BatchItem>, String> {
    (0..n)
        .map(|i| {
            let line = serde_json::json!({"custom_id": format!("q{i}"), "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "fast", "messages": [{"role": "user", "content": format!("question {i}")}]}});
            BatchItem::parse(&line.to_string(), None)
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let router = Router::from_config(Config::from_toml_str(CONFIG, &llmux::process_env)?)?;
        let started = Instant::now();
        let opts = BatchOptions {
            concurrency: 8,
            ..BatchOptions::default()
        };
        let mut results = router.batch(items(60)?, opts);
        let mut ok = 0;
        while let Some(r) = results.next().await {
            ok += usize::from(r.ok());
            if ok % 20 == 0 {
                println!(
                    "{} done after {:.1} s (last: {})",
                    ok,
                    started.elapsed().as_secs_f64(),
                    r.custom_id
                );
            }
        }
        println!(
            "60 items at 20/s: {ok} answered in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // acquire_wait: a lease as soon as a target has room (here: the next second).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let lease = router
            .acquire_wait("fast", Usage::new(10, 10), deadline)
            .await?;
        println!("acquired {} after waiting for room", lease.target());
        lease
            .complete(Usage::new(8, 4), Duration::from_millis(5))
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;

    // The blocking mirror, for threaded programs (no async in sight).
    let router =
        llmux::blocking::Router::from_config(Config::from_toml_str(CONFIG, &llmux::process_env)?)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lease = router.acquire_wait("fast", Usage::new(10, 10), deadline)?;
    println!("blocking: acquired {}", lease.target());
    lease.complete(Usage::new(8, 4), Duration::from_millis(5))?;
    Ok(())
}
