//! Use llmux in-process: route a request through the engine, then use the lower-level
//! acquire → Lease API as a caller with its own HTTP client would.
//!
//! cargo run -p llmux --example acquire

use llmux::core::Usage;
use llmux::{Config, Request, Router};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[store]
kind = "memory"

[providers.demo]
kind = "mock"
mock = { latency_ms = 5, completion_tokens = 12 }
[[providers.demo.keys]]
id = "k1"
resources = [{ name = "rpm", value = 3, period = "minutely" }]

[models.fast]
targets = [{ provider = "demo", model = "demo-small" }]
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_toml_str(CONFIG, &llmux::process_env)?;
    let router = Router::from_config(config)?;

    // 1. The gateway's own path, in-process.
    let req = Request::chat(serde_json::json!({
        "model": "fast",
        "messages": [{"role": "user", "content": "Hello"}]
    }))?;
    let resp = router.request(req).await?;
    let target = resp.target.clone();
    let body = resp.json().await?;
    println!(
        "request: {target} said {}",
        body["choices"][0]["message"]["content"]
    );

    // 2. Your own HTTP client: reserve, call, settle.
    let lease = router.acquire("fast", Usage::new(100, 50)).await?;
    println!(
        "acquire: send to {} (model {})",
        lease.target(),
        lease.model()
    );
    let started = Instant::now();
    // ... call the upstream with lease.secret().expose() here ...
    lease
        .complete(Usage::new(80, 40), started.elapsed())
        .await?;

    // 3. The key allows 3 requests a minute: the next acquire is refused with a retry hint.
    let lease = router.acquire("fast", Usage::new(10, 10)).await?;
    lease.rate_limited(Some(Duration::from_secs(30))).await?; // the upstream said 429
    match router.acquire("fast", Usage::new(10, 10)).await {
        Err(e) => println!("acquire: refused as expected: {e}"),
        Ok(_) => println!("acquire: unexpectedly admitted"),
    }
    Ok(())
}
