//! The validated config. [`Config::from_toml_str`] parses TOML, resolves `${VAR}` through the
//! env it is given, runs every check and returns either a [`Config`] or every [`Issue`] found,
//! each naming its path (`providers.openai.keys[0].resources[1].period: …`).
//!
//! Invariant: a `Config` refers only to providers, keys, models and tiers that exist, and every
//! resource has a capacity > 0 and a known period.

mod auto;
mod env;
pub mod raw;

pub use auto::auto_pool;

use crate::ids::{KeyId, ProviderId, Secret, Subject};
use crate::usage::Measure;
use crate::window::Period;
use jiff::tz::TimeZone;
use raw::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// One problem in a config, with the path of the value at fault.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config, sorted by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Display for Issues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if issue.path.is_empty() {
                write!(f, "{}", issue.message)?;
            } else {
                write!(f, "{}: {}", issue.path, issue.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Issues {}

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
    fn parse(s: &str) -> Option<Self> {
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
}

#[derive(Clone, Debug)]
pub struct Key {
    pub id: KeyId,
    pub secret: Secret,
    pub weight: u32,
    pub resources: Vec<Resource>,
}

/// A named, limited quantity with a capacity per window.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: Arc<str>,
    /// Capacity per window, in `measure` units.
    pub capacity: u64,
    pub period: Period,
    pub measure: Measure,
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
}

impl Strategy {
    pub const NAMES: [&'static str; 7] = [
        "weighted",
        "priority",
        "round-robin",
        "least-busy",
        "score",
        "latency",
        "cost",
    ];
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "weighted" => Strategy::Weighted,
            "priority" => Strategy::Priority,
            "round-robin" => Strategy::RoundRobin,
            "least-busy" => Strategy::LeastBusy,
            "score" => Strategy::Score,
            "latency" => Strategy::Latency,
            "cost" => Strategy::Cost,
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
}

#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub provider: ProviderId,
    pub model: Arc<str>,
    pub weight: u32,
    pub priority: i32,
    pub keys: Option<Vec<KeyId>>,
}

/// A virtual key clients send as `Authorization: Bearer …`.
#[derive(Clone, Debug)]
pub struct GatewayKey {
    pub id: String,
    pub secret: Secret,
    pub tier: Option<String>,
    pub models: Option<Vec<String>>,
    pub resources: Vec<Resource>,
}

impl GatewayKey {
    pub fn subject(&self) -> Subject {
        Subject::gateway_key(&self.id)
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

/// The longest duration a setting may give, in seconds (ten years): beyond any window, lease
/// or timeout anyone means, and far from overflowing milliseconds in an `i64`.
pub const MAX_SECS: u64 = 10 * 366 * 86_400;

/// The largest `max_tokens` (and `default_max_tokens`): beyond any model's output, and far from
/// overflowing the token arithmetic.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000_000;

/// Output tokens reserved for a request that gives no `max_tokens`, unless the model sets
/// `default_max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Check a duration in seconds: `Some(0)` and values above [`MAX_SECS`] are issues at `at`.
fn check_secs(v: Option<u64>, at: &str, out: &mut Issues) -> Option<u64> {
    match v {
        Some(0) => {
            out.push(at, "must be greater than 0");
            None
        }
        Some(v) if v > MAX_SECS => {
            out.push(
                at,
                format!("{v} seconds is too long; at most {MAX_SECS} (ten years)"),
            );
            Some(MAX_SECS)
        }
        v => v,
    }
}

/// Names that end up in store keys, lease records, metrics labels and headers (model names,
/// upstream model names): anything printable but whitespace and control characters.
fn check_label(name: &str, at: &str, what: &str, out: &mut Issues) {
    if name.is_empty() {
        out.push(at, format!("{what} must not be empty"));
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        out.push(
            at,
            format!("invalid {what} {name:?}: spaces, tabs, newlines and control characters are not allowed"),
        );
    }
}

/// The text of a resources file and the name to report problems under.
#[derive(Clone, Debug)]
pub struct ResourcesFile {
    pub name: String,
    pub text: String,
}

impl ResourcesFile {
    fn parse(&self, out: &mut Issues) -> Option<RawResourcesFile> {
        let json = self.name.ends_with(".json") || self.text.trim_start().starts_with('{');
        let parsed = if json {
            let mut de = serde_json::Deserializer::from_str(&self.text);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| (e.path().to_string(), e.into_inner().to_string()))
        } else {
            match toml::from_str::<toml::Value>(&self.text) {
                Ok(v) => serde_path_to_error::deserialize(v)
                    .map_err(|e| (e.path().to_string(), e.into_inner().to_string())),
                Err(e) => Err((".".to_string(), e.to_string().trim_end().to_string())),
            }
        };
        match parsed {
            Ok(r) => Some(r),
            Err((path, msg)) => {
                let at = if path == "." {
                    self.name.clone()
                } else {
                    format!("{}: {path}", self.name)
                };
                out.push(at, msg);
                None
            }
        }
    }
}

impl Config {
    /// Parse and validate TOML. `env` resolves `${VAR}` references.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Issues> {
        Config::from_toml_str_with(text, env, None)
    }

    /// [`Config::from_toml_str`] merged with a resources file.
    pub fn from_toml_str_with(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        resources_file: Option<&ResourcesFile>,
    ) -> Result<Config, Issues> {
        Config::from_toml_str_opts(text, env, resources_file, &[])
    }

    /// [`Config::from_toml_str_with`] that also accepts the provider kinds in `custom_kinds`
    /// (registered by the library user).
    pub fn from_toml_str_opts(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        resources_file: Option<&ResourcesFile>,
        custom_kinds: &[&str],
    ) -> Result<Config, Issues> {
        let mut issues = Issues::default();
        let file = resources_file.and_then(|f| f.parse(&mut issues).map(|r| (f.name.as_str(), r)));
        let mut tree: toml::Value = match toml::from_str::<toml::Table>(text) {
            Ok(t) => toml::Value::Table(t),
            Err(e) => {
                issues.push("", format!("invalid TOML: {}", e.to_string().trim_end()));
                return Err(issues);
            }
        };
        env::interpolate(&mut tree, "", env, &mut issues);
        let raw: RawConfig = match serde_path_to_error::deserialize(tree) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                issues.push(path, e.into_inner().to_string());
                return Err(issues);
            }
        };
        let built = Config::from_raw_with(
            raw,
            file.as_ref().map(|(n, r)| (*n, r)),
            custom_kinds,
            &mut issues,
        );
        match built {
            Some(c) if issues.is_empty() => Ok(c),
            _ => {
                issues.0.sort();
                issues.0.dedup();
                Err(issues)
            }
        }
    }

    /// Validate a raw config, recording every problem in `out`.
    pub fn from_raw(raw: RawConfig, out: &mut Issues) -> Option<Config> {
        Config::from_raw_with(raw, None, &[], out)
    }

    /// [`Config::from_raw`] merged with a resources file `(name, contents)`.
    pub fn from_raw_with(
        raw: RawConfig,
        file: Option<(&str, &RawResourcesFile)>,
        custom_kinds: &[&str],
        out: &mut Issues,
    ) -> Option<Config> {
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                out.push(
                    "listen",
                    format!("invalid address {listen_text:?}; expected HOST:PORT such as \"127.0.0.1:4000\""),
                );
                DEFAULT_LISTEN.parse().ok()?
            }
        };
        let file_tz = file.and_then(|(name, f)| {
            f.timezone
                .as_deref()
                .map(|tz| (tz, format!("{name}: timezone")))
        });
        let timezone = match (&raw.timezone, &file_tz) {
            (Some(a), Some((b, at))) if a != b => {
                out.push(
                    "timezone",
                    format!("{a:?} conflicts with {b:?} set in {at}"),
                );
                TimeZone::UTC
            }
            (Some(_), _) => parse_tz(raw.timezone.as_deref(), "timezone", &TimeZone::UTC, out),
            (None, Some((tz, at))) => parse_tz(Some(tz), at, &TimeZone::UTC, out),
            (None, None) => TimeZone::UTC,
        };
        if let Some((name, f)) = file {
            for p in f.providers.keys() {
                if !raw.providers.contains_key(p) {
                    out.push(
                        format!("{name}: providers.{p}"),
                        format!("no provider {p:?} in config"),
                    );
                }
            }
        }
        let mut seen_tiers = BTreeSet::new();
        for (i, t) in raw.tier_order.iter().enumerate() {
            if !seen_tiers.insert(t.as_str()) {
                out.push(
                    format!("tier_order[{i}]"),
                    format!("tier {t:?} is listed twice"),
                );
            }
        }
        let store = check_store(&raw.store, out);
        let on_store_error = match (
            raw.on_store_error.as_deref(),
            raw.store.on_store_error.as_deref(),
        ) {
            (Some(a), Some(b)) if a != b => {
                out.push(
                    "on_store_error",
                    format!("{a:?} conflicts with store.on_store_error = {b:?}"),
                );
                OnStoreError::FailClosed
            }
            (Some(v), _) | (None, Some(v)) => match v {
                "fail-closed" => OnStoreError::FailClosed,
                "fail-open" => OnStoreError::FailOpen,
                other => {
                    let at = if raw.on_store_error.is_some() {
                        "on_store_error"
                    } else {
                        "store.on_store_error"
                    };
                    out.push(
                        at,
                        format!("unknown policy {other:?}; expected fail-closed or fail-open"),
                    );
                    OnStoreError::FailClosed
                }
            },
            (None, None) => OnStoreError::FailClosed,
        };

        let shared = Shared {
            global_tz: &timezone,
            tier_order: &raw.tier_order,
            custom_kinds,
        };
        let mut providers = BTreeMap::new();
        for (name, p) in &raw.providers {
            let at = format!("providers.{name}");
            check_name(name, &at, out);
            let from_file = file.and_then(|(f, r)| r.providers.get(name).map(|p| (f, p)));
            if let Some(p) = check_provider(name, p, &at, &shared, from_file, out) {
                providers.insert(ProviderId::new(name), Arc::new(p));
            }
        }

        let mut models = BTreeMap::new();
        for (name, m) in &raw.models {
            let at = format!("models.{name}");
            if let Some(m) = check_model(name, m, &at, &raw, &providers, out) {
                models.insert(name.clone(), Arc::new(m));
            }
        }

        let mut gateway_keys = Vec::new();
        let mut key_ids = BTreeSet::new();
        let mut secrets: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, g) in raw.gateway_keys.iter().enumerate() {
            let at = format!("gateway_keys[{i}]");
            check_name(&g.id, &format!("{at}.id"), out);
            if !g.secret.is_empty() {
                match secrets.get(g.secret.as_str()) {
                    // Never the secret itself: only where its twin is.
                    Some(first) => out.push(
                        format!("{at}.secret"),
                        format!("the same secret as gateway_keys[{first}]; each key needs its own"),
                    ),
                    None => {
                        secrets.insert(g.secret.as_str(), i);
                    }
                }
            }
            if !key_ids.insert(g.id.as_str()) {
                out.push(
                    format!("{at}.id"),
                    format!("duplicate gateway key id {:?}", g.id),
                );
            }
            if g.secret.is_empty() {
                out.push(format!("{at}.secret"), "must not be empty");
            }
            if let Some(t) = &g.tier {
                if !raw.tier_order.contains(t) {
                    out.push(format!("{at}.tier"), unknown_tier(t, &raw.tier_order));
                }
            }
            if let Some(ms) = &g.models {
                for (j, m) in ms.iter().enumerate() {
                    if !raw.models.contains_key(m) {
                        out.push(format!("{at}.models[{j}]"), format!("unknown model {m:?}"));
                    }
                }
            }
            gateway_keys.push(GatewayKey {
                id: g.id.clone(),
                secret: Secret::new(&g.secret),
                tier: g.tier.clone(),
                models: g.models.clone(),
                resources: check_resources(&g.resources, &format!("{at}.resources"), out),
            });
        }

        let max_body_bytes = match raw.max_body_bytes {
            Some(0) => {
                out.push("max_body_bytes", "must be greater than 0");
                0
            }
            Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
            None => 4 * 1024 * 1024,
        };
        let max_response_bytes = match raw.max_response_bytes {
            Some(0) => {
                out.push("max_response_bytes", "must be greater than 0");
                0
            }
            Some(v) => usize::try_from(v).unwrap_or(usize::MAX),
            None => 64 * 1024 * 1024,
        };
        let request_timeout_secs =
            check_secs(raw.request_timeout_secs, "request_timeout_secs", out).unwrap_or(600);
        let lease_ttl_secs = check_secs(raw.lease_ttl_secs, "lease_ttl_secs", out).unwrap_or(900);

        Some(Config {
            listen,
            timezone,
            tier_order: raw.tier_order.clone(),
            resources_file: raw.resources_file.clone(),
            max_body_bytes,
            max_response_bytes,
            request_timeout_secs,
            lease_ttl_secs,
            store,
            on_store_error,
            providers,
            models,
            gateway_keys,
        })
    }

    /// The provider named `id`.
    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.get(&ProviderId::new(id))
    }
}

fn unknown_tier(t: &str, order: &[String]) -> String {
    if order.is_empty() {
        format!("unknown tier {t:?}; `tier_order` is empty")
    } else {
        format!("unknown tier {t:?}; expected one of {}", order.join(", "))
    }
}

fn check_name(name: &str, at: &str, out: &mut Issues) {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        out.push(
            at,
            format!("invalid name {name:?}; use letters, digits, '-', '_' and '.'"),
        );
    }
}

fn parse_tz(name: Option<&str>, at: &str, default: &TimeZone, out: &mut Issues) -> TimeZone {
    match name {
        None => default.clone(),
        Some(n) => match TimeZone::get(n) {
            Ok(tz) => tz,
            Err(_) => {
                out.push(
                    at,
                    format!("unknown IANA time zone {n:?} (e.g. \"Europe/Warsaw\")"),
                );
                default.clone()
            }
        },
    }
}

fn check_store(s: &RawStore, out: &mut Issues) -> StoreConfig {
    match s.kind.as_deref().unwrap_or("sqlite") {
        "memory" => StoreConfig::Memory,
        "sqlite" => StoreConfig::Sqlite {
            path: s.path.clone().unwrap_or_else(|| "llmux.db".to_string()),
        },
        "redis" => {
            let url = s.url.clone().unwrap_or_default();
            if url.is_empty() {
                out.push("store.url", "required when store.kind = \"redis\"");
            } else if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                out.push("store.url", "must start with redis:// or rediss://");
            }
            if s.prefix
                .as_deref()
                .is_some_and(|p| p.is_empty() || p.contains(['{', '}', ' ']))
            {
                out.push(
                    "store.prefix",
                    "must be non-empty, without braces or spaces",
                );
            }
            StoreConfig::Redis {
                url,
                prefix: s.prefix.clone().unwrap_or_else(|| "llmux".to_string()),
            }
        }
        other => {
            out.push(
                "store.kind",
                format!("unknown store {other:?}; expected one of memory, sqlite, redis"),
            );
            StoreConfig::Memory
        }
    }
}

/// Validate a list of resources at `at` (`…resources`).
pub fn check_resources(list: &[RawResource], at: &str, out: &mut Issues) -> Vec<Resource> {
    let mut result = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if r.name.is_empty() {
            out.push(format!("{at}.name"), "must not be empty");
        } else if !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            out.push(
                format!("{at}.name"),
                format!(
                    "invalid resource name {:?}; use letters, digits, '-', '_' and '.'",
                    r.name
                ),
            );
        } else if !names.insert(r.name.as_str()) {
            out.push(
                format!("{at}.name"),
                format!("resource {:?} is listed twice", r.name),
            );
        }
        let measure = match &r.unit {
            None => Measure::from_name(&r.name),
            Some(u) => Measure::parse_unit(u).unwrap_or_else(|| {
                out.push(
                    format!("{at}.unit"),
                    format!(
                        "unknown unit {u:?}; expected one of {}",
                        Measure::UNITS.join(", ")
                    ),
                );
                Measure::Requests
            }),
        };
        let value = r.value.as_f64();
        let capacity = if !(value.is_finite() && value > 0.0) {
            out.push(format!("{at}.value"), "must be greater than 0");
            1
        } else {
            measure.capacity_from_value(value).max(1)
        };
        if r.ttl.is_some() && r.initial_ttl.is_some() {
            out.push(
                format!("{at}.initial_ttl"),
                "give `ttl` or `initial_ttl`, not both",
            );
        }
        let ttl_at = if r.ttl.is_some() {
            "ttl"
        } else {
            "initial_ttl"
        };
        let ttl = match r.ttl.or(r.initial_ttl) {
            Some(t) if t > MAX_SECS => check_secs(Some(t), &format!("{at}.{ttl_at}"), out),
            t => t,
        };
        let period = match Period::parse(&r.period, ttl) {
            Ok(p) => {
                if ttl.is_some() && !matches!(p, Period::Custom { .. }) {
                    out.push(format!("{at}.ttl"), "only a \"custom\" period takes `ttl`");
                }
                p
            }
            Err(e) => {
                out.push(format!("{at}.period"), e.to_string());
                Period::Minutely
            }
        };
        result.push(Resource {
            name: Arc::from(r.name.as_str()),
            capacity,
            period,
            measure,
        });
    }
    result
}

/// What every provider's checks share.
struct Shared<'a> {
    global_tz: &'a TimeZone,
    tier_order: &'a [String],
    custom_kinds: &'a [&'a str],
}

fn check_provider(
    name: &str,
    p: &RawProvider,
    at: &str,
    shared: &Shared<'_>,
    from_file: Option<(&str, &RawFileProvider)>,
    out: &mut Issues,
) -> Option<Provider> {
    let Shared {
        global_tz,
        tier_order,
        custom_kinds,
    } = *shared;
    let kind = match ProviderKind::parse(&p.kind) {
        Some(k) => k,
        None if custom_kinds.contains(&p.kind.as_str()) => {
            ProviderKind::Custom(Arc::from(p.kind.as_str()))
        }
        None => {
            out.push(
                format!("{at}.kind"),
                format!(
                    "unknown provider kind {:?}; expected one of {}",
                    p.kind,
                    ProviderKind::NAMES.join(", ")
                ),
            );
            return None;
        }
    };
    if kind == ProviderKind::Anthropic {
        out.push(
            format!("{at}.kind"),
            "provider kind \"anthropic\" is not available in this build yet; use \"openai-compatible\" with an OpenAI-compatible endpoint",
        );
    }
    let base_url = match (&p.base_url, &kind) {
        (Some(u), _) => {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                out.push(
                    format!("{at}.base_url"),
                    format!("must start with http:// or https://, got {u:?}"),
                );
            }
            Some(u.trim_end_matches('/').to_string())
        }
        (None, ProviderKind::OpenAi) => Some("https://api.openai.com/v1".to_string()),
        (None, ProviderKind::OpenRouter) => Some("https://openrouter.ai/api/v1".to_string()),
        (None, ProviderKind::Anthropic) => Some("https://api.anthropic.com/v1".to_string()),
        (None, ProviderKind::OpenAiCompatible) => {
            out.push(
                format!("{at}.base_url"),
                "required for kind \"openai-compatible\"",
            );
            None
        }
        (None, ProviderKind::Mock | ProviderKind::Custom(_)) => None,
    };
    if let Some(tiers) = &p.tiers {
        for (i, t) in tiers.iter().enumerate() {
            if !tier_order.contains(t) {
                out.push(format!("{at}.tiers[{i}]"), unknown_tier(t, tier_order));
            }
        }
    }
    let file_tz = from_file.and_then(|(f, fp)| fp.timezone.as_deref().map(|tz| (f, tz)));
    let timezone = match (&p.timezone, file_tz) {
        (Some(a), Some((f, b))) if a != b => {
            out.push(
                format!("{at}.timezone"),
                format!("{a:?} conflicts with {b:?} set in {f}: providers.{name}.timezone"),
            );
            global_tz.clone()
        }
        (Some(a), _) => parse_tz(Some(a), &format!("{at}.timezone"), global_tz, out),
        (None, Some((f, b))) => parse_tz(
            Some(b),
            &format!("{f}: providers.{name}.timezone"),
            global_tz,
            out,
        ),
        (None, None) => global_tz.clone(),
    };
    let mut resources = check_resources(&p.resources, &format!("{at}.resources"), out);
    if let Some((f, fp)) = from_file {
        let file_at = format!("{f}: providers.{name}.resources");
        for (j, r) in check_resources(&fp.resources, &file_at, out)
            .into_iter()
            .enumerate()
        {
            match resources.iter().position(|x| x.name == r.name) {
                Some(i) => out.push(
                    format!("{at}.resources[{i}]"),
                    format!(
                        "resource {:?} is defined both here and in {file_at}[{j}]",
                        &*r.name
                    ),
                ),
                None => resources.push(r),
            }
        }
    }
    let timeout_secs = check_secs(p.timeout_secs, &format!("{at}.timeout_secs"), out);

    let mut keys = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, k) in p.keys.iter().enumerate() {
        let kat = format!("{at}.keys[{i}]");
        check_name(&k.id, &format!("{kat}.id"), out);
        if !ids.insert(k.id.as_str()) {
            out.push(
                format!("{kat}.id"),
                format!("duplicate key id {:?} in provider {name:?}", k.id),
            );
        }
        let secret = match (&k.secret, &kind) {
            (Some(s), _) if !s.is_empty() => Secret::new(s),
            (_, ProviderKind::Mock | ProviderKind::Custom(_)) => Secret::new(""),
            _ => {
                out.push(
                    format!("{kat}.secret"),
                    "required (e.g. secret = \"${OPENAI_API_KEY}\")",
                );
                Secret::new("")
            }
        };
        if k.weight == Some(0) {
            out.push(format!("{kat}.weight"), "must be greater than 0");
        }
        keys.push(Key {
            id: KeyId::new(&k.id),
            secret,
            weight: k.weight.unwrap_or(1).max(1),
            resources: check_resources(&k.resources, &format!("{kat}.resources"), out),
        });
    }
    if keys.is_empty() {
        if matches!(kind, ProviderKind::Mock | ProviderKind::Custom(_)) {
            keys.push(Key {
                id: KeyId::new("default"),
                secret: Secret::new(""),
                weight: 1,
                resources: Vec::new(),
            });
        } else {
            out.push(
                format!("{at}.keys"),
                "needs at least one key ([[providers.NAME.keys]])",
            );
        }
    }

    let mock = match &p.mock {
        None => MockSettings::default(),
        Some(m) => {
            if kind != ProviderKind::Mock {
                out.push(
                    format!("{at}.mock"),
                    "only a provider of kind \"mock\" takes mock settings",
                );
            }
            let d = MockSettings::default();
            let error_rate = m.error_rate.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&error_rate) {
                out.push(
                    format!("{at}.mock.error_rate"),
                    "must be between 0.0 and 1.0",
                );
            }
            MockSettings {
                latency_ms: m.latency_ms.unwrap_or(d.latency_ms),
                prompt_tokens: m.prompt_tokens,
                completion_tokens: m.completion_tokens.unwrap_or(d.completion_tokens),
                error_rate,
                rate_limit_after: m.rate_limit_after,
                retry_after_secs: m.retry_after_secs.unwrap_or(d.retry_after_secs),
                content: m.content.clone().unwrap_or(d.content),
            }
        }
    };

    Some(Provider {
        id: ProviderId::new(name),
        kind,
        base_url,
        tiers: p.tiers.clone(),
        timezone,
        resources,
        keys,
        timeout_secs,
        mock,
    })
}

fn check_model(
    name: &str,
    m: &RawModel,
    at: &str,
    raw: &RawConfig,
    providers: &BTreeMap<ProviderId, Arc<Provider>>,
    out: &mut Issues,
) -> Option<ModelPool> {
    check_label(name, at, "model name", out);
    let strategy = match m.strategy.as_deref() {
        None => Strategy::Weighted,
        Some(s) => Strategy::parse(s).unwrap_or_else(|| {
            out.push(
                format!("{at}.strategy"),
                format!(
                    "unknown strategy {s:?}; expected one of {}",
                    Strategy::NAMES.join(", ")
                ),
            );
            Strategy::Weighted
        }),
    };
    if m.max_attempts == Some(0) {
        out.push(format!("{at}.max_attempts"), "must be at least 1");
    }
    let fallback_on = match &m.fallback_on {
        None => FallbackOn::default(),
        Some(list) => {
            let mut f = FallbackOn {
                statuses: BTreeSet::new(),
                timeout: false,
            };
            for (i, item) in list.iter().enumerate() {
                match item {
                    RawFallbackOn::Status(s) if (400..=599).contains(s) => {
                        f.statuses.insert(*s as u16);
                    }
                    RawFallbackOn::Word(w) if w == "timeout" => f.timeout = true,
                    other => out.push(
                        format!("{at}.fallback_on[{i}]"),
                        format!("expected an HTTP status 400..=599 or \"timeout\", got {other:?}"),
                    ),
                }
            }
            f
        }
    };
    for (i, f) in m.fallback_models.iter().enumerate() {
        if f == name {
            out.push(
                format!("{at}.fallback_models[{i}]"),
                "a model cannot fall back to itself",
            );
        } else if !raw.models.contains_key(f) {
            out.push(
                format!("{at}.fallback_models[{i}]"),
                format!("unknown model {f:?}"),
            );
        }
    }
    if m.targets.is_empty() {
        out.push(format!("{at}.targets"), "needs at least one target");
    }
    let mut targets = Vec::new();
    for (i, t) in m.targets.iter().enumerate() {
        let tat = format!("{at}.targets[{i}]");
        let Some(p) = providers.get(&ProviderId::new(&t.provider)) else {
            if !raw.providers.contains_key(&t.provider) {
                out.push(
                    format!("{tat}.provider"),
                    format!("unknown provider {:?}", t.provider),
                );
            }
            continue;
        };
        check_label(
            &t.model,
            &format!("{tat}.model"),
            "upstream model name",
            out,
        );
        if t.weight == Some(0) {
            out.push(format!("{tat}.weight"), "must be greater than 0");
        }
        if t.keys.as_ref().is_some_and(Vec::is_empty) {
            out.push(
                format!("{tat}.keys"),
                "lists no keys, so the target could never be used; omit `keys` to use all of the provider's keys",
            );
        }
        let keys = t.keys.as_ref().map(|ks| {
            ks.iter()
                .enumerate()
                .filter_map(|(j, k)| {
                    if p.keys.iter().any(|pk| pk.id.as_str() == k) {
                        Some(KeyId::new(k))
                    } else {
                        out.push(
                            format!("{tat}.keys[{j}]"),
                            format!("provider {:?} has no key {k:?}", t.provider),
                        );
                        None
                    }
                })
                .collect()
        });
        targets.push(TargetConfig {
            provider: p.id.clone(),
            model: Arc::from(t.model.as_str()),
            weight: t.weight.unwrap_or(1).max(1),
            priority: t.priority.unwrap_or(i as i32),
            keys,
        });
    }
    if m.max_concurrent == Some(0) {
        out.push(format!("{at}.max_concurrent"), "must be greater than 0");
    }
    let timeout_secs = check_secs(m.timeout_secs, &format!("{at}.timeout_secs"), out);
    let stream_idle_timeout_secs = check_secs(
        m.stream_idle_timeout_secs,
        &format!("{at}.stream_idle_timeout_secs"),
        out,
    );
    let default_max_tokens = match m.default_max_tokens {
        None => DEFAULT_MAX_TOKENS,
        Some(n) if (1..=MAX_OUTPUT_TOKENS).contains(&n) => n,
        Some(n) => {
            out.push(
                format!("{at}.default_max_tokens"),
                format!("{n} is out of range; expected 1..={MAX_OUTPUT_TOKENS}"),
            );
            DEFAULT_MAX_TOKENS
        }
    };
    Some(ModelPool {
        name: Arc::from(name),
        strategy,
        max_attempts: m.max_attempts.unwrap_or(3).max(1),
        fallback_on,
        fallback_models: m.fallback_models.clone(),
        targets,
        resources: check_resources(&m.resources, &format!("{at}.resources"), out),
        max_concurrent: m.max_concurrent,
        timeout_secs,
        default_max_tokens,
        stream_idle_timeout_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
listen = "127.0.0.1:4000"
timezone = "UTC"
tier_order = ["free", "pro", "enterprise"]

[store]
kind = "sqlite"
path = "llmux.db"

[providers.openai]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9000/v1"
tiers = ["pro", "enterprise"]
timezone = "Europe/Warsaw"
resources = [{ name = "tpm", value = 1000000, period = "monthly" }]

[[providers.openai.keys]]
id = "k1"
secret = "${OPENAI_KEY_1}"
weight = 2
resources = [{ name = "rpm", value = 60, period = "minutely" }]

[models.fast]
strategy = "weighted"
max_attempts = 3
fallback_on = [429, 500, 502, 503, 504, "timeout"]
fallback_models = []
targets = [{ provider = "openai", model = "gpt-4o-mini", weight = 1 }]
"#;

    fn env(k: &str) -> Option<String> {
        (k == "OPENAI_KEY_1").then(|| "sk-test".to_string())
    }

    #[test]
    fn design_example_loads() {
        let c = Config::from_toml_str(DESIGN_EXAMPLE, &env).unwrap();
        let p = c.provider("openai").unwrap();
        assert_eq!(p.keys[0].secret.expose(), "sk-test");
        assert_eq!(p.keys[0].weight, 2);
        assert_eq!(p.resources[0].period, Period::Monthly);
        assert_eq!(p.keys[0].resources[0].measure, Measure::Requests);
        assert_eq!(c.models["fast"].fallback_on, FallbackOn::default());
        assert_eq!(
            c.store,
            StoreConfig::Sqlite {
                path: "llmux.db".into()
            }
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let text = DESIGN_EXAMPLE
            .replace("period = \"minutely\"", "period = \"montly\"")
            .replace("strategy = \"weighted\"", "strategy = \"fastest\"")
            .replace("provider = \"openai\", model", "provider = \"nope\", model");
        let e = Config::from_toml_str(&text, &|_| None).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("providers.openai.keys[0].resources[0].period: unknown period \"montly\"; expected one of secondly, minutely"), "{s}");
        assert!(
            s.contains("models.fast.strategy: unknown strategy \"fastest\""),
            "{s}"
        );
        assert!(
            s.contains("models.fast.targets[0].provider: unknown provider \"nope\""),
            "{s}"
        );
        assert!(
            s.contains(
                "providers.openai.keys[0].secret: environment variable OPENAI_KEY_1 is not set"
            ),
            "{s}"
        );
        assert_eq!(e.len(), 4, "{s}");
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let e = Config::from_toml_str("[providers.a]\nkind = \"mock\"\nbogus = 1\n", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers.a") && e.contains("bogus"), "{e}");
    }

    #[test]
    fn resources_files_merge_and_conflicts_name_both_places() {
        let file = ResourcesFile {
            name: "limits.json".into(),
            text: r#"{"timezone": "UTC", "providers": {"openai": {"resources": [
                {"name": "rpd", "value": 1000, "period": "daily"},
                {"name": "budget", "value": 50, "period": "custom", "ttl": 3600}
            ]}}}"#
                .into(),
        };
        let c = Config::from_toml_str_with(DESIGN_EXAMPLE, &env, Some(&file)).unwrap();
        let names: Vec<&str> = c
            .provider("openai")
            .unwrap()
            .resources
            .iter()
            .map(|r| &*r.name)
            .collect();
        assert_eq!(names, ["tpm", "rpd", "budget"]);
        assert_eq!(
            c.provider("openai").unwrap().resources[2].period,
            Period::Custom { ttl_secs: 3600 }
        );

        let toml_file = ResourcesFile {
            name: "limits.toml".into(),
            text: "[providers.openai]\nresources = [{ name = \"tpm\", value = 5, period = \"daily\" }]\n[providers.ghost]\n".into(),
        };
        let e = Config::from_toml_str_with(DESIGN_EXAMPLE, &env, Some(&toml_file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers.openai.resources[0]: resource \"tpm\" is defined both here and in limits.toml: providers.openai.resources[0]"), "{e}");
        assert!(
            e.contains("limits.toml: providers.ghost: no provider \"ghost\" in config"),
            "{e}"
        );
    }

    #[test]
    fn mock_provider_gets_a_default_key() {
        let c = Config::from_toml_str(
            "[providers.demo]\nkind = \"mock\"\n[models.m]\ntargets = [{provider = \"demo\", model = \"x\"}]\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(c.provider("demo").unwrap().keys[0].id.as_str(), "default");
    }

    fn issues(text: &str) -> String {
        Config::from_toml_str(text, &|_| None)
            .unwrap_err()
            .to_string()
    }

    const MOCK: &str = "[providers.demo]\nkind = \"mock\"\n";

    #[test]
    fn every_duration_is_bounded_with_its_path() {
        let huge = u64::MAX;
        let text = format!(
            "lease_ttl_secs = {big}\nrequest_timeout_secs = {big}\n{MOCK}timeout_secs = {big}\nresources = [{{ name = \"b\", value = 1, period = \"custom\", ttl = {big} }}]\n[models.m]\ntimeout_secs = {big}\ntargets = [{{provider = \"demo\", model = \"x\"}}]\n",
            big = i64::MAX
        );
        let e = issues(&text);
        for at in [
            "lease_ttl_secs: ",
            "request_timeout_secs: ",
            "providers.demo.timeout_secs: ",
            "providers.demo.resources[0].ttl: ",
            "models.m.timeout_secs: ",
        ] {
            assert!(
                e.contains(&format!("{at}{} seconds is too long", i64::MAX)),
                "{at} in {e}"
            );
        }
        // Above i64::MAX (JSON resources files can carry it): bounded, never wrapped.
        let file = ResourcesFile {
            name: "limits.json".into(),
            text: format!(
                r#"{{"providers": {{"demo": {{"resources": [{{"name": "b", "value": 1, "period": "custom", "ttl": {huge}}}]}}}}}}"#
            ),
        };
        let text =
            format!("{MOCK}[models.m]\ntargets = [{{provider = \"demo\", model = \"x\"}}]\n");
        let e = Config::from_toml_str_with(&text, &|_| None, Some(&file))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.json: providers.demo.resources[0].ttl: 18446744073709551615 seconds is too long"), "{e}");
        let e = issues(&format!("lease_ttl_secs = 0\n{MOCK}"));
        assert!(e.contains("lease_ttl_secs: must be greater than 0"), "{e}");
    }

    #[test]
    fn names_that_reach_store_keys_are_checked() {
        let e = issues(&format!(
            "{MOCK}[models.\"a\\tb\"]\ntargets = [{{provider = \"demo\", model = \"x\\ny\", keys = []}}]\ntimeout_secs = 0\n[[gateway_keys]]\nid = \"g\\n1\"\nsecret = \"sk-same\"\n[[gateway_keys]]\nid = \"g2\"\nsecret = \"sk-same\"\n"
        ));
        assert!(e.contains("models.a\tb: invalid model name"), "{e}");
        assert!(
            e.contains("models.a\tb.targets[0].model: invalid upstream model name"),
            "{e}"
        );
        assert!(
            e.contains("models.a\tb.targets[0].keys: lists no keys"),
            "{e}"
        );
        assert!(
            e.contains("models.a\tb.timeout_secs: must be greater than 0"),
            "{e}"
        );
        assert!(e.contains("gateway_keys[0].id: invalid name"), "{e}");
        assert!(
            e.contains("gateway_keys[1].secret: the same secret as gateway_keys[0]"),
            "{e}"
        );
        assert!(!e.contains("sk-same"), "a secret in an error: {e}");
    }

    #[test]
    fn default_max_tokens_is_4096_and_never_0() {
        let base =
            format!("{MOCK}[models.m]\ntargets = [{{provider = \"demo\", model = \"x\"}}]\n");
        let c = Config::from_toml_str(&base, &|_| None).unwrap();
        assert_eq!(c.models["m"].default_max_tokens, 4096);
        let c =
            Config::from_toml_str(&format!("{base}default_max_tokens = 512\n"), &|_| None).unwrap();
        assert_eq!(c.models["m"].default_max_tokens, 512);
        let e = issues(&format!("{base}default_max_tokens = 0\n"));
        assert!(
            e.contains("models.m.default_max_tokens: 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let text = "[store]\nkind = \"redis\"\nurl = \"redis://user:hunter2@db:6379/0\"\n[providers.p]\nkind = \"openai\"\n[[providers.p.keys]]\nid = \"k\"\nsecret = \"sk-upstream-secret\"\n[[gateway_keys]]\nid = \"g\"\nsecret = \"sk-gateway-secret\"\n";
        let c = Config::from_toml_str(text, &|_| None).unwrap();
        let tree: toml::Value = toml::from_str(text).unwrap();
        let raw: RawConfig = tree.try_into().unwrap();
        for shown in [format!("{c:?}"), format!("{raw:?}")] {
            for secret in ["hunter2", "sk-upstream-secret", "sk-gateway-secret"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            assert!(shown.contains("db:6379"), "{shown}");
        }
        assert_eq!(
            crate::ids::redact_url("rediss://:pw@h:1/0?x=@"),
            "rediss://*****@h:1/0?x=@"
        );
        assert_eq!(crate::ids::redact_url("redis://h:1/0"), "redis://h:1/0");
    }
}
