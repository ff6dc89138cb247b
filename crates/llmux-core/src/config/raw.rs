//! The config as written: plain serde, loosely typed where users make mistakes (periods,
//! strategies, kinds are strings), so validation can report every problem with its path.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub tier_order: Vec<String>,
    pub resources_file: Option<String>,
    pub max_body_bytes: Option<u64>,
    /// Largest upstream answer read whole (non-streamed), in bytes.
    pub max_response_bytes: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub lease_ttl_secs: Option<u64>,
    /// Same as `store.on_store_error`.
    pub on_store_error: Option<String>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub gateway_keys: Vec<RawGatewayKey>,
    /// Refuse requests without a valid gateway key even while no key exists.
    pub require_keys: Option<bool>,
    /// `[prices."MODEL"]`: USD per 1M tokens, by upstream model name.
    #[serde(default)]
    pub prices: BTreeMap<String, RawPrice>,
    /// The price of a target that has none of its own and no `[prices]` entry.
    pub default_price: Option<RawPrice>,
    /// `[teams.NAME]`: limits, budgets and policies shared by a team's gateway keys.
    #[serde(default)]
    pub teams: BTreeMap<String, RawTeam>,
    /// `[tiers.NAME]`: limits and budgets of every request at a tier.
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTierLimits>,
    /// `[global]`: limits and budgets of every request.
    pub global: Option<RawTierLimits>,
    /// `[left fraction for "abundant", for "constrained"]` (default `[0.5, 0.2]`).
    pub capacity_thresholds: Option<Vec<RawNumber>>,
    /// `[files]`: uploads for the Batch API.
    pub files: Option<RawFiles>,
}

/// `[files]`: sizes in MiB, retention in days.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    pub max_file_mb: Option<u64>,
    pub quota_mb_per_key: Option<u64>,
    pub retention_days: Option<u64>,
}

/// USD per 1M tokens. `cache_read` / `cache_write` default to `input`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: Option<RawNumber>,
    pub output: Option<RawNumber>,
    pub cache_read: Option<RawNumber>,
    pub cache_write: Option<RawNumber>,
}

/// What a gateway key or team may ask for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTeam {
    #[serde(default)]
    pub resources: Vec<RawResource>,
    pub models: Option<Vec<String>>,
    pub providers: Option<Vec<String>>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd_per_request: Option<RawNumber>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierLimits {
    #[serde(default)]
    pub resources: Vec<RawResource>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub path: Option<String>,
    pub url: Option<String>,
    pub prefix: Option<String>,
    /// What to do when the store cannot be reached: fail-closed | fail-open.
    pub on_store_error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub tiers: Option<Vec<String>>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
    #[serde(default)]
    pub keys: Vec<RawKey>,
    pub timeout_secs: Option<u64>,
    pub mock: Option<RawMock>,
    /// `anthropic-version` header of an `anthropic` provider.
    pub anthropic_version: Option<String>,
    /// `[providers.NAME.health]`: cooldowns, the circuit breaker, limit discovery.
    pub health: Option<RawHealth>,
    /// The `headroom` of every resource of the provider and its keys that sets none.
    pub headroom: Option<RawNumber>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub cooldown: Option<RawCooldown>,
    pub breaker: Option<RawBreaker>,
    pub discover_limits: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCooldown {
    pub base_secs: Option<RawNumber>,
    pub factor: Option<RawNumber>,
    pub max_secs: Option<RawNumber>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub failure_rate: Option<RawNumber>,
    pub min_requests: Option<u32>,
    pub window_secs: Option<u64>,
    pub open_secs: Option<u64>,
    pub half_open_probes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: String,
    pub secret: Option<String>,
    pub weight: Option<u32>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    pub name: String,
    pub value: RawNumber,
    pub period: String,
    pub ttl: Option<u64>,
    /// Older spelling of `ttl`.
    pub initial_ttl: Option<u64>,
    /// What one unit counts: requests | tokens | input_tokens | output_tokens | cost_usd.
    pub unit: Option<String>,
    /// `hard` (default): refuse past the limit; `soft`: serve and flag it.
    pub enforce: Option<String>,
    /// Use at most this fraction of `value` (0 < headroom <= 1).
    pub headroom: Option<RawNumber>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum RawNumber {
    Int(i64),
    Float(f64),
}

impl RawNumber {
    pub fn as_f64(self) -> f64 {
        match self {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMock {
    pub latency_ms: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub error_rate: Option<f64>,
    pub rate_limit_after: Option<u64>,
    pub retry_after_secs: Option<u64>,
    pub content: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub strategy: Option<String>,
    pub max_attempts: Option<u32>,
    pub fallback_on: Option<Vec<RawFallbackOn>>,
    #[serde(default)]
    pub fallback_models: Vec<String>,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
    pub max_concurrent: Option<u32>,
    pub timeout_secs: Option<u64>,
    /// Output tokens reserved when a request gives no `max_tokens` (default 4096).
    pub default_max_tokens: Option<u64>,
    /// Longest gap between two chunks of a streamed answer (default: the attempt's timeout).
    pub stream_idle_timeout_secs: Option<u64>,
    /// Full-jitter backoff between attempts.
    pub retry: Option<RawRetry>,
    /// No first byte of the answer by then: the next target.
    pub first_token_timeout_secs: Option<u64>,
    /// The whole request, every attempt included.
    pub deadline_secs: Option<u64>,
    /// Weights of the `objective` strategy.
    pub objective: Option<RawObjective>,
    /// Wait for capacity instead of a 429.
    pub queue: Option<RawQueue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub max_wait_secs: Option<u64>,
    pub max_queued: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjective {
    pub cost: Option<RawNumber>,
    pub reliability: Option<RawNumber>,
    pub latency: Option<RawNumber>,
    pub fairness: Option<RawNumber>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawFallbackOn {
    Status(i64),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub provider: String,
    pub model: String,
    pub weight: Option<u32>,
    pub priority: Option<i32>,
    /// Restrict this target to some of the provider's keys (default: all).
    pub keys: Option<Vec<String>>,
    /// This target's price (wins over `[prices]` and `default_price`).
    pub price: Option<RawPrice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatewayKey {
    pub id: String,
    pub secret: String,
    pub tier: Option<String>,
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
    pub team: Option<String>,
    pub providers: Option<Vec<String>>,
    pub max_tokens: Option<u64>,
    pub max_cost_usd_per_request: Option<RawNumber>,
}

/// A resources file (`resources_file` / `$LLMUX_RESOURCES_FILE`), JSON or TOML.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResourcesFile {
    pub timezone: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, RawFileProvider>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileProvider {
    pub timezone: Option<String>,
    #[serde(default)]
    pub resources: Vec<RawResource>,
}

// Secrets and URLs that may hold a password never reach Debug output.

impl std::fmt::Debug for RawStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawStore")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(crate::ids::redact_url))
            .field("prefix", &self.prefix)
            .field("on_store_error", &self.on_store_error)
            .finish()
    }
}

impl std::fmt::Debug for RawKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawKey")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "*****"))
            .field("weight", &self.weight)
            .field("resources", &self.resources)
            .finish()
    }
}

impl std::fmt::Debug for RawGatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawGatewayKey")
            .field("id", &self.id)
            .field("secret", &"*****")
            .field("tier", &self.tier)
            .field("models", &self.models)
            .field("resources", &self.resources)
            .field("team", &self.team)
            .finish_non_exhaustive()
    }
}
