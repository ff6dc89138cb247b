//! Zero config: providers from OPENAI_API_KEY / ANTHROPIC_API_KEY / OPENROUTER_API_KEY, and
//! the model name picks the provider (gpt-*/o* → openai, claude-* → anthropic, vendor/model →
//! openrouter). State lives in memory.
//!
//! OPENAI_API_KEY=sk-… cargo run -p llmux --example from_env -- gpt-4o-mini "Say hello"

use llmux::{Request, Router};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().unwrap_or_else(|| "gpt-4o-mini".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "Say hello in five words.".into());
    let router = Router::from_env()?;
    let found: Vec<&str> = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENROUTER_API_KEY"]
        .into_iter()
        .filter(|v| llmux::process_env(v).is_some_and(|k| !k.is_empty()))
        .collect();
    if found.is_empty() {
        println!("no provider: set OPENAI_API_KEY, ANTHROPIC_API_KEY or OPENROUTER_API_KEY");
        return Ok(());
    }
    println!("providers from {}", found.join(", "));
    let req = Request::chat(serde_json::json!({
        "model": model, "max_tokens": 64,
        "messages": [{"role": "user", "content": prompt}]
    }))?;
    let resp = router.request(req).await?;
    let (target, status) = (resp.target.to_string(), resp.status);
    println!("{target} answered {status}: {}", resp.json().await?);
    Ok(())
}
