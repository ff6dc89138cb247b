//! Pools made up on demand for `Router::from_env`: a bare model name picks its provider.

use super::{Config, FallbackOn, ModelPool, Strategy, TargetConfig, DEFAULT_MAX_TOKENS};
use crate::ids::ProviderId;
use std::sync::Arc;

/// A one-target pool for `model` on the provider its name belongs to (`gpt-*`, `o1…`,
/// `text-embedding-*` → `openai`; `claude-*` → `anthropic`; `vendor/model` → `openrouter`), if
/// that provider is configured.
pub fn auto_pool(config: &Config, model: &str) -> Option<ModelPool> {
    let provider = if model.contains('/') {
        "openrouter"
    } else if model.starts_with("gpt-")
        || model.starts_with("text-embedding-")
        || (model.starts_with('o') && model[1..].starts_with(|c: char| c.is_ascii_digit()))
    {
        "openai"
    } else if model.starts_with("claude-") {
        "anthropic"
    } else {
        return None;
    };
    let id = ProviderId::new(provider);
    config.providers.get(&id)?;
    Some(ModelPool {
        name: Arc::from(model),
        strategy: Strategy::Weighted,
        max_attempts: 2,
        fallback_on: FallbackOn::default(),
        fallback_models: Vec::new(),
        targets: vec![TargetConfig {
            provider: id,
            model: Arc::from(model),
            weight: 1,
            priority: 0,
            keys: None,
            price: config.price_of(model),
        }],
        resources: Vec::new(),
        max_concurrent: None,
        timeout_secs: None,
        default_max_tokens: DEFAULT_MAX_TOKENS,
        stream_idle_timeout_secs: None,
        retry: super::Retry::default(),
        first_token_timeout_secs: None,
        deadline_secs: None,
        objective: super::Objective::default(),
        queue: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_pick_their_provider() {
        let text = "[providers.openai]\nkind = \"openai\"\n[[providers.openai.keys]]\nid = \"k\"\nsecret = \"s\"\n";
        let c = Config::from_toml_str(text, &|_| None).unwrap();
        for m in ["gpt-4o", "o1-mini", "text-embedding-3-small"] {
            let p = auto_pool(&c, m).unwrap();
            assert_eq!(
                (p.targets[0].provider.as_str(), &*p.targets[0].model),
                ("openai", m)
            );
        }
        assert!(
            auto_pool(&c, "vendor/model").is_none(),
            "openrouter is not configured"
        );
        assert!(
            auto_pool(&c, "claude-3").is_none(),
            "anthropic is not configured"
        );
        let text = "[providers.anthropic]\nkind = \"anthropic\"\n[[providers.anthropic.keys]]\nid = \"k\"\nsecret = \"s\"\n";
        let c = Config::from_toml_str(text, &|_| None).unwrap();
        let p = auto_pool(&c, "claude-sonnet-4-5").unwrap();
        assert_eq!(p.targets[0].provider.as_str(), "anthropic");
        assert!(auto_pool(&c, "o").is_none());
    }
}
