//! The typed, validated config: what the rest of llmux reads.

use super::*;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub timezone: TimeZone,
    pub tier_order: Vec<String>,
    pub resources_file: Option<String>,
    pub max_body_bytes: usize,
    /// Largest non-streamed upstream answer read, in bytes (larger ones fail the attempt).
    pub max_response_bytes: usize,
    pub request_timeout_secs: u64,
    pub lease_ttl_secs: u64,
    pub store: StoreConfig,
    pub on_store_error: OnStoreError,
    pub providers: BTreeMap<ProviderId, Arc<Provider>>,
    pub models: BTreeMap<String, Arc<ModelPool>>,
    pub gateway_keys: Vec<GatewayKey>,
    /// Requests need a valid gateway key even while none exists.
    pub require_keys: bool,
    /// `[prices."MODEL"]`, by upstream model name.
    pub prices: BTreeMap<String, Price>,
    pub default_price: Option<Price>,
    pub teams: BTreeMap<String, Arc<Team>>,
    /// `[tiers.NAME] resources`, by tier.
    pub tier_resources: BTreeMap<String, Vec<Resource>>,
    /// `[global] resources`: every request counts against them.
    pub global_resources: Vec<Resource>,
    /// Left fractions above which a resource is `abundant`, then `constrained`.
    pub capacity_thresholds: [f64; 2],
    /// `[files]`: uploads for the Batch API.
    pub files: FilesConfig,
}

/// `[files]`: how large an upload may be, how much each gateway key may keep, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilesConfig {
    /// The largest file, in bytes (`max_file_mb`, default 100).
    pub max_file_bytes: u64,
    /// What one gateway key may keep in all, in bytes (`quota_mb_per_key`, default 1024).
    pub quota_bytes_per_key: u64,
    /// How long a file is kept, in seconds (`retention_days`, default 30).
    pub retention_secs: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            max_file_bytes: 100 << 20,
            quota_bytes_per_key: 1024 << 20,
            retention_secs: 30 * 86_400,
        }
    }
}

impl Config {
    /// The price of `model` on a target that gives none of its own: `[prices]`, else the
    /// built-in list price ([`builtin_price`]), else `default_price`.
    pub fn price_of(&self, model: &str) -> Option<Price> {
        self.prices
            .get(model)
            .copied()
            .or_else(|| builtin_price(model))
            .or(self.default_price)
    }
}

/// A price in USD per 1M tokens, which is micro-USD per token.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl Price {
    /// What `usage` costs, in micro-USD (rounded up): prompt tokens not read from or written
    /// to the cache at `input`, cache reads at `cache_read`, cache writes at `cache_write`,
    /// output at `output`.
    /// `u` with its cost at this price.
    pub fn priced(&self, u: &Usage) -> Usage {
        Usage {
            cost_micro_usd: self.cost_micro_usd(u),
            ..*u
        }
    }

    pub fn cost_micro_usd(&self, u: &Usage) -> u64 {
        let cached = u.cache_read_tokens.saturating_add(u.cache_write_tokens);
        let plain = u.input_tokens.saturating_sub(cached) as f64;
        let micro = plain * self.input
            + u.cache_read_tokens as f64 * self.cache_read
            + u.cache_write_tokens as f64 * self.cache_write
            + u.output_tokens as f64 * self.output;
        // Float noise (0.1 * 3 = 0.30000000000000004) must not round a cent up.
        (micro - 1e-6).ceil().max(0.0) as u64
    }
}

/// Rules a gateway key or team sets on what a request may ask; a violation is refused (403).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub models: Option<Vec<String>>,
    pub providers: Option<Vec<String>>,
    pub max_tokens: Option<u64>,
    pub max_cost_micro_usd: Option<u64>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// `[teams.NAME]`.
#[derive(Clone, Debug)]
pub struct Team {
    pub name: String,
    pub resources: Vec<Resource>,
    pub policy: Policy,
}

/// How a resource holds its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Enforce {
    /// Refuse a request that would pass the limit (the default).
    #[default]
    Hard,
    /// Serve it, and flag the answer (`x-llmux-budget-exceeded`).
    Soft,
}

/// What the gateway does when the store cannot be reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnStoreError {
    /// Refuse requests with 503 until the store is back (the default).
    #[default]
    FailClosed,
    /// Serve, counting in this process only, and log loudly.
    FailOpen,
}

#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    Sqlite {
        path: String,
    },
    /// `url` may hold a password: Debug shows it redacted.
    Redis {
        url: String,
        prefix: String,
    },
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Memory => f.write_str("Memory"),
            StoreConfig::Sqlite { path } => f.debug_struct("Sqlite").field("path", path).finish(),
            StoreConfig::Redis { url, prefix } => f
                .debug_struct("Redis")
                .field("url", &crate::ids::redact_url(url))
                .field("prefix", prefix)
                .finish(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    OpenAiCompatible,
    OpenRouter,
    Anthropic,
    Mock,
    /// A kind registered by a library user (`RouterBuilder::provider_kind`).
    Custom(Arc<str>),
}

impl ProviderKind {
    pub const NAMES: [&'static str; 5] = [
        "openai",
        "openai-compatible",
        "openrouter",
        "anthropic",
        "mock",
    ];
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "openai" => ProviderKind::OpenAi,
            "openai-compatible" => ProviderKind::OpenAiCompatible,
            "openrouter" => ProviderKind::OpenRouter,
            "anthropic" => ProviderKind::Anthropic,
            "mock" => ProviderKind::Mock,
            _ => return None,
        })
    }
    pub fn name(&self) -> &str {
        match self {
            ProviderKind::Custom(name) => name,
            ProviderKind::OpenAi => "openai",
            ProviderKind::OpenAiCompatible => "openai-compatible",
            ProviderKind::OpenRouter => "openrouter",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Mock => "mock",
        }
    }
}

impl Provider {
    /// Whether a USD limit over its targets needs them priced: `mock` upstreams cost nothing
    /// unless priced, and a plug-in kind may cost its answers itself.
    pub fn needs_price(&self) -> bool {
        !matches!(self.kind, ProviderKind::Mock | ProviderKind::Custom(_))
    }
}

#[derive(Clone, Debug)]
pub struct Provider {
    pub id: ProviderId,
    pub kind: ProviderKind,
    /// Base URL ending before `/chat/completions`, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Tiers served; `None` = all.
    pub tiers: Option<Vec<String>>,
    pub timezone: TimeZone,
    pub resources: Vec<Resource>,
    pub keys: Vec<Key>,
    pub timeout_secs: Option<u64>,
    pub mock: MockSettings,
    /// The `anthropic-version` header (`anthropic` providers only).
    pub anthropic_version: Option<String>,
    pub health: Health,
}

/// `[providers.NAME.health]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Health {
    pub cooldown: crate::health::Growth,
    pub breaker: BreakerConfig,
    /// Read `x-ratelimit-*` / `anthropic-ratelimit-*` on every answer and tighten the key.
    pub discover_limits: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            cooldown: crate::health::Growth::default(),
            breaker: BreakerConfig::default(),
            discover_limits: true,
        }
    }
}

/// When a target's circuit breaker opens, and how it comes back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open it.
    pub failures: u32,
    /// The failure fraction over `window_secs` that opens it, once `min_requests` were seen.
    pub failure_rate: f64,
    pub min_requests: u32,
    pub window_secs: u64,
    pub open_secs: u64,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            failure_rate: 0.5,
            min_requests: 10,
            window_secs: 30,
            open_secs: 30,
            half_open_probes: 1,
        }
    }
}

/// A model's full-jitter backoff between attempts: attempt `n` (from 1) waits a random time in
/// `0 ..= min(max_backoff_ms, backoff_ms × 2^(n−1))` before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            backoff_ms: 100,
            max_backoff_ms: 5000,
        }
    }
}

impl Retry {
    /// The longest wait after the `failed`-th failed attempt (`failed >= 1`).
    pub fn ceiling_ms(&self, failed: u32) -> u64 {
        let shift = failed.saturating_sub(1).min(32);
        self.backoff_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_backoff_ms)
    }
}

/// The `anthropic-version` an `anthropic` provider sends unless its config names another.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Clone, Debug)]
pub struct Key {
    pub id: KeyId,
    pub secret: Secret,
    pub weight: u32,
    pub resources: Vec<Resource>,
    /// `secret = "store"`: the secret is kept encrypted in the store (`llmux secrets set`);
    /// `secret` is empty here.
    pub from_store: bool,
}

/// The `secret` value of a key whose secret is kept encrypted in the store.
pub const STORED_SECRET: &str = "store";

/// The variable holding the key that encrypts stored secrets: 64 hex characters (32 bytes).
pub const MASTER_KEY_VAR: &str = "LLMUX_MASTER_KEY";

/// Parse a master key: 64 hex characters.
pub fn parse_master_key(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    crate::hex::decode(t)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "${MASTER_KEY_VAR} must be 64 hex characters (32 bytes; e.g. `openssl rand -hex 32`), got {} characters",
                t.len()
            )
        })
}

/// Added to a soft resource's capacity in the store: reservations never stop at the real
/// capacity, and the room the store reports (below the margin once past it) tells that the
/// limit was passed. 2^50 keeps every sum exact in Redis's doubles (below 2^53).
pub const SOFT_MARGIN: u64 = 1 << 50;

/// The largest capacity of a soft resource (so capacity + [`SOFT_MARGIN`] stays exact).
pub const MAX_SOFT_CAPACITY: u64 = 1 << 52;

/// A named, limited quantity with a capacity per window.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: Arc<str>,
    /// Capacity per window, in `measure` units.
    pub capacity: u64,
    pub period: Period,
    pub measure: Measure,
    pub enforce: Enforce,
}

impl Resource {
    /// The capacity the store holds: for a soft resource, plus [`SOFT_MARGIN`].
    pub fn stored_capacity(&self) -> u64 {
        match self.enforce {
            Enforce::Hard => self.capacity,
            Enforce::Soft => self.capacity.saturating_add(SOFT_MARGIN),
        }
    }
    /// A stored capacity (or room) as people mean it: without the soft margin.
    pub fn shown(&self, stored: u64) -> u64 {
        match self.enforce {
            Enforce::Hard => stored,
            Enforce::Soft => stored.saturating_sub(SOFT_MARGIN),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct MockSettings {
    pub latency_ms: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: u64,
    pub error_rate: f64,
    pub rate_limit_after: Option<u64>,
    pub retry_after_secs: u64,
    pub content: String,
}

impl Default for MockSettings {
    fn default() -> Self {
        MockSettings {
            latency_ms: 0,
            prompt_tokens: None,
            completion_tokens: 16,
            error_rate: 0.0,
            rate_limit_after: None,
            retry_after_secs: 1,
            content: "Hello from the llmux mock provider.".to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Weighted,
    Priority,
    RoundRobin,
    LeastBusy,
    Score,
    Latency,
    Cost,
    Objective,
}

impl Strategy {
    pub const NAMES: [&'static str; 8] = [
        "weighted",
        "priority",
        "round-robin",
        "least-busy",
        "score",
        "latency",
        "cost",
        "objective",
    ];
    pub(super) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "weighted" => Strategy::Weighted,
            "priority" => Strategy::Priority,
            "round-robin" => Strategy::RoundRobin,
            "least-busy" => Strategy::LeastBusy,
            "score" => Strategy::Score,
            "latency" => Strategy::Latency,
            "cost" => Strategy::Cost,
            "objective" => Strategy::Objective,
            _ => return None,
        })
    }
}

/// When to try the next target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FallbackOn {
    pub statuses: BTreeSet<u16>,
    pub timeout: bool,
}

impl FallbackOn {
    pub fn status(&self, s: u16) -> bool {
        self.statuses.contains(&s)
    }
}

impl Default for FallbackOn {
    fn default() -> Self {
        FallbackOn {
            statuses: [429, 500, 502, 503, 504].into_iter().collect(),
            timeout: true,
        }
    }
}

/// A model name clients send, mapped to targets.
#[derive(Clone, Debug)]
pub struct ModelPool {
    pub name: Arc<str>,
    pub strategy: Strategy,
    pub max_attempts: u32,
    pub fallback_on: FallbackOn,
    pub fallback_models: Vec<String>,
    pub targets: Vec<TargetConfig>,
    pub resources: Vec<Resource>,
    pub max_concurrent: Option<u32>,
    pub timeout_secs: Option<u64>,
    /// Output tokens reserved when a request gives no `max_tokens` (never 0).
    pub default_max_tokens: u64,
    /// Longest gap between two chunks of a streamed answer; `None`: the attempt's timeout.
    pub stream_idle_timeout_secs: Option<u64>,
    pub retry: Retry,
    /// No first byte of an attempt's answer by then: the next target (`None`: no bound but
    /// the attempt's timeout).
    pub first_token_timeout_secs: Option<u64>,
    /// The whole request, every attempt and backoff included (`None`: unbounded).
    pub deadline_secs: Option<u64>,
    /// The weights of the `objective` strategy.
    pub objective: Objective,
    /// `queue = { max_wait_secs, max_queued }`: requests that find no capacity wait.
    pub queue: Option<QueueConfig>,
}

/// How requests of a model wait for capacity instead of a 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The longest a request waits (a request's `x-llmux-max-wait` may ask for less).
    pub max_wait_secs: u64,
    /// Requests waiting at once in one process; more get a 429 at once.
    pub max_queued: usize,
}

impl QueueConfig {
    pub const DEFAULT_MAX_WAIT_SECS: u64 = 30;
    pub const DEFAULT_MAX_QUEUED: usize = 1000;
}

/// Weights of the `objective` strategy (see `select::order`): each target's cost,
/// unreliability, latency and load are normalised to 0..=1 over the candidates, and the
/// lowest weighted sum goes first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Objective {
    pub cost: f64,
    pub reliability: f64,
    pub latency: f64,
    pub fairness: f64,
}

impl Default for Objective {
    fn default() -> Self {
        Objective {
            cost: 0.5,
            reliability: 0.3,
            latency: 0.2,
            fairness: 0.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub provider: ProviderId,
    pub model: Arc<str>,
    pub weight: u32,
    pub priority: i32,
    pub keys: Option<Vec<KeyId>>,
    /// The target's own price, else `[prices]` of its model, else `default_price`.
    pub price: Option<Price>,
}

/// A virtual key clients send as `Authorization: Bearer …`.
#[derive(Clone, Debug)]
pub struct GatewayKey {
    pub id: String,
    pub secret: Secret,
    pub tier: Option<String>,
    pub models: Option<Vec<String>>,
    pub resources: Vec<Resource>,
    pub team: Option<String>,
    /// The key's own rules (`models` is also its allowed models).
    pub policy: Policy,
}

impl GatewayKey {
    pub fn subject(&self) -> Subject {
        Subject::gateway_key(&self.id)
    }
}

/// The longest duration a setting may give, in seconds (ten years): beyond any window, lease
/// or timeout anyone means, and far from overflowing milliseconds in an `i64`.
pub const MAX_SECS: u64 = 10 * 366 * 86_400;

/// The largest `max_tokens` (and `default_max_tokens`): beyond any model's output, and far from
/// overflowing the token arithmetic.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000_000;

/// Output tokens reserved for a request that gives no `max_tokens`, unless the model sets
/// `default_max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
