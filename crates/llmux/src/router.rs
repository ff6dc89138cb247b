//! `Router`: the engine. For each request it reads the clock once, picks candidates in the
//! pool's strategy order (by tier), reserves on every resource that applies in one store call,
//! sends, fails over on `fallback_on`, and reconciles the reservation to the reported usage
//! without making the caller wait.

use crate::error::{RouteError, UpstreamError};
use crate::lease::{Lease, PoolSlot};
use crate::provider::mock::MockProvider;
use crate::provider::openai::{http_client, OpenAiCompatible};
/// A response body: the whole body, or SSE bytes as they arrive (usage is reconciled when the
/// stream ends or is dropped).
pub use crate::provider::ReplyBody as ResponseBody;
use crate::provider::{retry_after, ByteStream, Call, Endpoint, Provider, ReplyBody};
use crate::sse::{usage_of_body, UsageScanner};
use crate::store::AnyStore;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::HeaderMap;
use llmux_core::config::{Config, GatewayKey, OnStoreError, ProviderKind, Strategy};
use llmux_core::plan::{gateway_key_bounds, lines, plan_pool, Bound, PlannedPool};
use llmux_core::select::{order, Candidate};
use llmux_core::store::{Admission, Denial, DenialReason, LeaseId, Reserve, Store};
use llmux_core::{
    Clock, MemoryStore, ProviderId, Subject, SystemClock, TargetId, Timestamp, Usage,
};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use llmux_core::config::MAX_OUTPUT_TOKENS;

/// How long a key that answered 401/403 stays out in this process without asking the store.
const LOCAL_DISABLE_MS: i64 = 60_000;

/// Seconds as milliseconds, saturating (config bounds durations; this never wraps anyway).
fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

/// A settle that failed in the store: the reservation expires with its lease; the request
/// goes on (failover, or the upstream's answer) rather than failing on bookkeeping.
fn log_settle(r: Result<(), llmux_core::StoreError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "could not settle a reservation; it expires with its lease");
    }
}

/// Live figures of one target, for strategies and health.
#[derive(Debug)]
pub struct TargetStats {
    /// `provider/key/model`, the metrics label.
    label: String,
    /// The same, as the `x-llmux-target` header value.
    header: http::HeaderValue,
    /// Metric handles of the success path, registered on first use (after the gateway has
    /// installed its recorder), so a request does no label allocation or registry lookup.
    ok_metrics: std::sync::OnceLock<(metrics::Counter, metrics::Histogram)>,
    in_flight: AtomicU64,
    /// Latency EWMA in microseconds, as f64 bits.
    latency_us: AtomicU64,
    /// Success EWMA in 0..=1, as f64 bits (starts at 1).
    success: AtomicU64,
}

impl TargetStats {
    fn new(label: String) -> Self {
        TargetStats {
            header: http::HeaderValue::from_str(&label)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid")),
            label,
            ok_metrics: std::sync::OnceLock::new(),
            in_flight: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            success: AtomicU64::new(1f64.to_bits()),
        }
    }
    fn record_ok(&self, latency: Option<Duration>) {
        let (count, hist) = self.ok_metrics.get_or_init(|| {
            (
                metrics::counter!("llmux_upstream_requests_total", "target" => self.label.clone(), "outcome" => "ok"),
                metrics::histogram!("llmux_upstream_latency_seconds", "target" => self.label.clone()),
            )
        });
        count.increment(1);
        if let Some(l) = latency {
            hist.record(l.as_secs_f64());
        }
    }
    fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn finish(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
    fn ewma(cell: &AtomicU64, sample: f64, alpha: f64) {
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
            let old = f64::from_bits(bits);
            let new = if old == 0.0 {
                sample
            } else {
                old + alpha * (sample - old)
            };
            Some(new.to_bits())
        });
    }
    pub(crate) fn record_success(&self, latency: Duration) {
        Self::ewma(&self.latency_us, latency.as_micros() as f64, 0.2);
        Self::ewma(&self.success, 1.0, 0.1);
    }
    pub(crate) fn record_failure(&self) {
        Self::ewma(&self.success, 0.0, 0.1);
    }
    fn candidate(&self, weight: u64, priority: i32) -> Candidate {
        Candidate {
            weight,
            priority,
            in_flight: self.in_flight.load(Ordering::Acquire),
            score: f64::from_bits(self.success.load(Ordering::Acquire)),
            latency_us: f64::from_bits(self.latency_us.load(Ordering::Acquire)),
        }
    }
}

/// A model pool with its runtime state.
pub(crate) struct Pool {
    plan: PlannedPool,
    /// Per target: provider + key + pool resources.
    bounds: Vec<Arc<[Bound]>>,
    stats: Vec<Arc<TargetStats>>,
    turn: AtomicU64,
    active: Arc<AtomicU32>,
}

impl Pool {
    fn new(plan: PlannedPool) -> Pool {
        let bounds = plan
            .targets
            .iter()
            .map(|t| {
                t.bounds
                    .iter()
                    .chain(plan.bounds.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect();
        let stats = plan
            .targets
            .iter()
            .map(|t| Arc::new(TargetStats::new(t.id.to_string())))
            .collect();
        Pool {
            plan,
            bounds,
            stats,
            turn: AtomicU64::new(0),
            active: Arc::new(AtomicU32::new(0)),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pools: HashMap<String, Arc<Pool>>,
    pub(crate) store: AnyStore,
    pub(crate) clock: Arc<dyn Clock>,
    providers: HashMap<ProviderId, Arc<dyn Provider>>,
    gateway_keys: HashMap<String, Arc<AuthorizedKey>>,
    /// Model names not in config map to providers by prefix (`Router::from_env`).
    auto_models: bool,
    auto_pools: Mutex<HashMap<String, Arc<Pool>>>,
    cooldowns: Mutex<HashMap<Subject, Timestamp>>,
    pub(crate) orphans: mpsc::UnboundedSender<(LeaseId, bool)>,
    /// Counts in this process while the store is unreachable (`on_store_error = "fail-open"`).
    pub(crate) fallback: MemoryStore,
}

impl Inner {
    pub(crate) fn note_cooldown(&self, subject: &Subject, until: Timestamp) {
        let mut c = self.cooldowns.lock();
        let e = c.entry(subject.clone()).or_insert(until);
        *e = (*e).max(until);
    }
    /// Keep a key that answered 401/403 out locally for a while, even if the store is
    /// unreachable; the store's disabled flag (cleared by `reset-state`) is the lasting record.
    pub(crate) fn note_disabled(&self, subject: &Subject, now: Timestamp) {
        self.note_cooldown(subject, now.plus_millis(LOCAL_DISABLE_MS));
    }
    fn known_cooldown(&self, subject: &Subject, now: Timestamp) -> Option<Timestamp> {
        let c = self.cooldowns.lock();
        c.get(subject).copied().filter(|u| *u > now)
    }
}

/// A gateway key that passed authorization, with its resources bound.
#[derive(Debug)]
pub struct AuthorizedKey {
    pub key: GatewayKey,
    bounds: Arc<[Bound]>,
}

/// One request to route.
#[derive(Debug, Clone)]
pub struct Request {
    pub endpoint: Endpoint,
    /// The OpenAI-shaped JSON body; `model` names the pool.
    pub body: Map<String, Value>,
    /// The caller's tier; `None` = no tier filtering (unless the gateway key has one).
    pub tier: Option<String>,
    pub gateway_key: Option<Arc<AuthorizedKey>>,
}

impl Request {
    pub fn new(endpoint: Endpoint, body: Map<String, Value>) -> Request {
        Request {
            endpoint,
            body,
            tier: None,
            gateway_key: None,
        }
    }
    /// A chat completion request from a JSON value.
    pub fn chat(body: Value) -> Result<Request, RouteError> {
        match body {
            Value::Object(m) => Ok(Request::new(Endpoint::ChatCompletions, m)),
            _ => Err(RouteError::BadRequest(
                "the body must be a JSON object".into(),
            )),
        }
    }
}

/// The upstream's answer, with where it came from.
#[derive(Debug)]
pub struct Response {
    pub target: TargetId,
    /// `target` as a header value, made once per target.
    target_header: http::HeaderValue,
    /// Upstream attempts made, this one included.
    pub attempts: u32,
    pub status: u16,
    /// Upstream headers worth passing on (`content-type`, `x-request-id`, `openai-*`).
    pub headers: HeaderMap,
    pub body: ResponseBody,
}

impl Response {
    /// `provider/key/model` as a header value (`x-llmux-target`).
    pub fn target_header(&self) -> &http::HeaderValue {
        &self.target_header
    }
    /// The whole body (collects a stream).
    pub async fn bytes(self) -> Result<Bytes, UpstreamError> {
        match self.body {
            ResponseBody::Full(b) => Ok(b),
            ResponseBody::Stream(mut s) => {
                let mut out = Vec::new();
                while let Some(chunk) = s.next().await {
                    out.extend_from_slice(&chunk?);
                }
                Ok(Bytes::from(out))
            }
        }
    }
    /// The body as JSON (non-streamed answers).
    pub async fn json(self) -> Result<Value, UpstreamError> {
        let b = self.bytes().await?;
        serde_json::from_slice(&b).map_err(|e| UpstreamError::Body(e.to_string()))
    }
}

/// The routing engine; cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("store", &self.inner.store.kind())
            .field("models", &self.inner.pools.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Makes the provider of a registered kind from its config.
pub type ProviderFactory =
    Arc<dyn Fn(&llmux_core::config::Provider) -> Arc<dyn Provider> + Send + Sync>;

/// Builder for a [`Router`]: store, clock and custom providers.
pub struct RouterBuilder {
    config: Config,
    store: Option<AnyStore>,
    clock: Arc<dyn Clock>,
    providers: HashMap<ProviderId, Arc<dyn Provider>>,
    kinds: HashMap<String, ProviderFactory>,
    auto_models: bool,
}

impl RouterBuilder {
    pub fn store(mut self, store: AnyStore) -> Self {
        self.store = Some(store);
        self
    }
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Serve provider `name` with a custom implementation.
    pub fn provider(mut self, name: &str, p: impl Provider) -> Self {
        self.providers.insert(ProviderId::new(name), Arc::new(p));
        self
    }
    /// Serve every provider whose config says `kind = "<kind>"` with `make(provider_config)`.
    /// Load the config with `Config::from_toml_str_opts(…, &["<kind>"])` so it accepts the kind.
    pub fn provider_kind(
        mut self,
        kind: &str,
        make: impl Fn(&llmux_core::config::Provider) -> Arc<dyn Provider> + Send + Sync + 'static,
    ) -> Self {
        self.kinds.insert(kind.to_string(), Arc::new(make));
        self
    }

    pub(crate) fn auto_models(mut self, on: bool) -> Self {
        self.auto_models = on;
        self
    }

    /// Open the store and start the background reconciler. Needs a tokio runtime.
    pub fn build(self) -> Result<Router, RouteError> {
        let config = Arc::new(self.config);
        let store = match self.store {
            Some(s) => s,
            None => AnyStore::open(&config.store)?,
        };
        let http = http_client();
        let mut providers = self.providers;
        for (id, p) in &config.providers {
            if providers.contains_key(id) {
                continue;
            }
            let adapter: Arc<dyn Provider> = match &p.kind {
                ProviderKind::Mock => Arc::new(MockProvider::new(p.mock.clone())),
                ProviderKind::Custom(kind) => match self.kinds.get(&**kind) {
                    Some(make) => make(p),
                    None => {
                        return Err(RouteError::BadRequest(format!(
                            "providers.{id}: no provider kind {kind:?} is registered"
                        )))
                    }
                },
                _ => Arc::new(OpenAiCompatible::new(
                    p.base_url.as_deref().unwrap_or_default(),
                    http.clone(),
                )),
            };
            providers.insert(id.clone(), adapter);
        }
        let pools = config
            .models
            .iter()
            .map(|(name, pool)| (name.clone(), Arc::new(Pool::new(plan_pool(&config, pool)))))
            .collect();
        let gateway_keys = config
            .gateway_keys
            .iter()
            .map(|k| {
                (
                    k.secret.expose().to_string(),
                    Arc::new(AuthorizedKey {
                        key: k.clone(),
                        bounds: gateway_key_bounds(&config, k).into(),
                    }),
                )
            })
            .collect();
        let (orphans, mut rx) = mpsc::unbounded_channel::<(LeaseId, bool)>();
        let reaper_store = store.clone();
        let fallback = MemoryStore::new();
        let reaper_fallback = fallback.clone();
        tokio::runtime::Handle::try_current()
            .map_err(|_| RouteError::BadRequest("Router::build needs a tokio runtime".into()))?
            .spawn(async move {
                while let Some((id, local)) = rx.recv().await {
                    let done = if local {
                        reaper_fallback.release(id).await
                    } else {
                        reaper_store.release(id).await
                    };
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "could not release an abandoned reservation");
                    }
                }
            });
        Ok(Router {
            inner: Arc::new(Inner {
                config,
                pools,
                store,
                clock: self.clock,
                providers,
                gateway_keys,
                auto_models: self.auto_models,
                auto_pools: Mutex::new(HashMap::new()),
                cooldowns: Mutex::new(HashMap::new()),
                orphans,
                fallback,
            }),
        })
    }
}

/// A reserve the store may be working on: dropped before the answer arrives (the caller went
/// away, or the store call failed after it may have been applied), it releases the lease by
/// the id the caller chose.
struct PendingGrant<'a> {
    id: LeaseId,
    orphans: &'a mpsc::UnboundedSender<(LeaseId, bool)>,
    /// Still unanswered by the shared store.
    store: bool,
}

impl Drop for PendingGrant<'_> {
    fn drop(&mut self) {
        if self.store {
            let _ = self.orphans.send((self.id, false));
        }
    }
}

/// What the failover loop learned so far.
#[derive(Default)]
struct Outcomes {
    attempts: u32,
    /// The denial that frees up first.
    denial: Option<Denial>,
    /// The last upstream failure: (message, timeout?).
    failure: Option<(String, bool)>,
}

impl Outcomes {
    fn deny(&mut self, d: Denial) {
        let better = match (&self.denial, d.retry_at) {
            (None, _) => true,
            (Some(old), Some(t)) => old.retry_at.is_none_or(|o| t < o),
            (Some(_), None) => false,
        };
        if better {
            self.denial = Some(d);
        }
    }
}

fn client_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let name = k.as_str();
        if name == "content-type" || name == "x-request-id" || name.starts_with("openai-") {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

impl Router {
    pub fn builder(config: Config) -> RouterBuilder {
        RouterBuilder {
            config,
            store: None,
            clock: Arc::new(SystemClock),
            providers: HashMap::new(),
            kinds: HashMap::new(),
            auto_models: false,
        }
    }

    /// A router on `config`, with the store it names. Needs a tokio runtime.
    pub fn from_config(config: Config) -> Result<Router, RouteError> {
        Router::builder(config).build()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    pub fn store(&self) -> &AnyStore {
        &self.inner.store
    }

    /// Model names clients may send.
    pub fn models(&self) -> Vec<String> {
        self.inner.pools.keys().cloned().collect()
    }

    /// Check a bearer token. With no gateway keys configured every caller is let through.
    pub fn authorize(
        &self,
        bearer: Option<&str>,
    ) -> Result<Option<Arc<AuthorizedKey>>, RouteError> {
        if self.inner.gateway_keys.is_empty() {
            return Ok(None);
        }
        let token = bearer.ok_or(RouteError::Unauthorized)?;
        self.inner
            .gateway_keys
            .get(token)
            .cloned()
            .map(Some)
            .ok_or(RouteError::Unauthorized)
    }

    fn pool(&self, model: &str) -> Option<Arc<Pool>> {
        if let Some(p) = self.inner.pools.get(model) {
            return Some(p.clone());
        }
        if !self.inner.auto_models {
            return None;
        }
        let mut cache = self.inner.auto_pools.lock();
        if let Some(p) = cache.get(model) {
            return Some(p.clone());
        }
        let pool = crate::env::auto_pool(&self.inner.config, model)?;
        let pool = Arc::new(Pool::new(plan_pool(&self.inner.config, &Arc::new(pool))));
        cache.insert(model.to_string(), pool.clone());
        Some(pool)
    }

    /// The tier a request runs at: a gateway key's tier caps what the caller may ask for (a
    /// lower tier may be requested, never a higher one); without a key, the requested tier.
    fn effective_tier(&self, asked: Option<String>, key: Option<&AuthorizedKey>) -> Option<String> {
        let Some(cap) = key.and_then(|k| k.key.tier.clone()) else {
            return asked;
        };
        let order = &self.inner.config.tier_order;
        let rank = |t: &str| order.iter().position(|x| x == t);
        match asked {
            Some(a) if rank(&a).zip(rank(&cap)).is_some_and(|(a, c)| a <= c) => Some(a),
            _ => Some(cap),
        }
    }

    /// Candidate target indices of `pool` in the order to try: the request's tier first, then
    /// each lower tier; without a tier, every target.
    async fn candidates(
        &self,
        pool: &Pool,
        tier: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<usize>, RouteError> {
        let targets = &pool.plan.targets;
        if targets.len() == 1 && tier.is_none() {
            return Ok(vec![0]);
        }
        let scores = self.scores(pool, now).await?;
        let turn = pool.turn.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        let ordered = |subset: &[usize], rng: &mut rand::rngs::ThreadRng| -> Vec<usize> {
            let cands: Vec<Candidate> = subset
                .iter()
                .map(|&i| {
                    let mut c = pool.stats[i].candidate(targets[i].weight, targets[i].priority);
                    if let Some(s) = &scores {
                        c.score *= s[i];
                    }
                    c
                })
                .collect();
            order(pool.plan.pool.strategy, &cands, turn, rng)
                .into_iter()
                .map(|j| subset[j])
                .collect()
        };
        let all: Vec<usize> = (0..targets.len()).collect();
        let Some(tier) = tier else {
            return Ok(ordered(&all, &mut rng));
        };
        let tier_order = &self.inner.config.tier_order;
        let Some(pos) = tier_order.iter().position(|t| t == tier) else {
            return Ok(ordered(&all, &mut rng));
        };
        let mut out = Vec::new();
        for t in tier_order[..=pos].iter().rev() {
            let subset: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| !out.contains(&i))
                .filter(|&i| {
                    targets[i]
                        .provider
                        .tiers
                        .as_ref()
                        .is_none_or(|ts| ts.iter().any(|x| x == t))
                })
                .collect();
            out.extend(ordered(&subset, &mut rng));
        }
        Ok(out)
    }

    /// For the `score` strategy: each target's stored score, the lower of its provider's and
    /// its key's (remaining capacity fraction, 0 while cooling down or disabled, or an
    /// operator's override). One store round trip; other strategies skip it.
    async fn scores(&self, pool: &Pool, now: Timestamp) -> Result<Option<Vec<f64>>, RouteError> {
        if pool.plan.pool.strategy != Strategy::Score {
            return Ok(None);
        }
        let mut subjects: Vec<(Subject, Vec<llmux_core::Line>)> = Vec::new();
        for t in &pool.plan.targets {
            for g in &t.gates {
                if subjects.iter().any(|(s, _)| s == g) {
                    continue;
                }
                let bounds = t.bounds.iter().filter(|b| &b.subject == g);
                subjects.push((g.clone(), lines(bounds, &Usage::default(), now)));
            }
        }
        let names: Vec<Subject> = subjects.iter().map(|(s, _)| s.clone()).collect();
        let values = match self.inner.store.scores(now, subjects).await {
            Ok(v) => v,
            Err(e) if self.inner.config.on_store_error == OnStoreError::FailOpen => {
                tracing::error!(error = %e, "store unreachable: scoring on local figures only");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let of = |s: &Subject| names.iter().position(|n| n == s).map_or(1.0, |i| values[i]);
        Ok(Some(
            pool.plan
                .targets
                .iter()
                .map(|t| t.gates.iter().map(of).fold(1.0, f64::min))
                .collect(),
        ))
    }

    /// Try to reserve `usage` on target `i` of `pool`.
    async fn try_target(
        &self,
        pool: &Pool,
        i: usize,
        usage: &Usage,
        now: Timestamp,
        key: Option<&AuthorizedKey>,
    ) -> Result<Result<Lease, Denial>, RouteError> {
        let t = &pool.plan.targets[i];
        for g in &t.gates {
            if let Some(until) = self.inner.known_cooldown(g, now) {
                return Ok(Err(Denial {
                    subject: g.clone(),
                    reason: DenialReason::Cooldown,
                    retry_at: Some(until),
                }));
            }
        }
        let slot = match pool.plan.pool.max_concurrent {
            None => None,
            Some(max) => {
                let prev = pool.active.fetch_add(1, Ordering::AcqRel);
                let slot = PoolSlot(pool.active.clone());
                if prev >= max {
                    drop(slot);
                    return Ok(Err(Denial {
                        subject: Subject::model(&pool.plan.pool.name),
                        reason: DenialReason::Concurrency {
                            max_concurrent: max,
                        },
                        retry_at: Some(now.plus_millis(1000)),
                    }));
                }
                Some(slot)
            }
        };
        let bounds = pool.bounds[i].clone();
        let extra = key.map(|k| k.bounds.clone()).filter(|b| !b.is_empty());
        let mut ls = lines(bounds.iter(), usage, now);
        if let Some(extra) = &extra {
            ls.extend(lines(extra.iter(), usage, now));
        }
        // The id is ours before the store sees the call: if this future is dropped while the
        // store works, `pending` releases whatever it may have granted.
        let id = LeaseId::random(&mut rand::rng());
        let mut pending = PendingGrant {
            id,
            orphans: &self.inner.orphans,
            store: true,
        };
        let reserve = Reserve {
            lease: id,
            now,
            lease_ttl_ms: secs_to_millis(self.inner.config.lease_ttl_secs),
            lines: ls,
            gates: t.gates.clone(),
        };
        let fail_open = self.inner.config.on_store_error == OnStoreError::FailOpen;
        let (admission, local) = if fail_open {
            match self.inner.store.reserve(reserve.clone()).await {
                Ok(a) => (a, false),
                Err(e) => {
                    tracing::error!(error = %e, "store unreachable: serving fail-open, counting in this process only");
                    metrics::counter!("llmux_store_errors_total", "policy" => "fail-open")
                        .increment(1);
                    (self.inner.fallback.reserve(reserve).await?, true)
                }
            }
        } else {
            match self.inner.store.reserve(reserve).await {
                Ok(a) => (a, false),
                Err(e) => {
                    metrics::counter!("llmux_store_errors_total", "policy" => "fail-closed")
                        .increment(1);
                    return Err(e.into());
                }
            }
        };
        // The store answered: a grant becomes a `Lease`, which settles it; a denial holds
        // nothing. (When it failed instead, `pending` still releases there, in case it
        // applied the reserve before failing.)
        if !local {
            pending.store = false;
        }
        match admission {
            Admission::Denied(d) => {
                if let (DenialReason::Cooldown, Some(until)) = (&d.reason, d.retry_at) {
                    self.inner.note_cooldown(&d.subject, until);
                }
                metrics::counter!("llmux_rejections_total", "limit" => d.limit()).increment(1);
                Ok(Err(d))
            }
            Admission::Granted(id) => {
                let stats = pool.stats[i].clone();
                stats.start();
                let key = &t.provider.keys[t.key_index];
                Ok(Ok(Lease {
                    id,
                    target: t.id.clone(),
                    secret: key.secret.clone(),
                    key_subject: t.gates[1].clone(),
                    bounds,
                    extra,
                    estimate: *usage,
                    inner: self.inner.clone(),
                    stats,
                    _slot: slot,
                    settled: false,
                    local,
                }))
            }
        }
    }

    fn no_capacity(model: &str, now: Timestamp, out: Outcomes) -> RouteError {
        match out.denial {
            Some(d) => RouteError::NoCapacity {
                model: model.to_string(),
                retry_after_secs: d.retry_at.map(|t| now.secs_until_ceil(t).max(1)),
                denial: Box::new(d),
            },
            None => RouteError::UnknownModel(model.to_string()),
        }
    }

    /// Reserve `estimate` on the first target of `model` with capacity, for callers that send
    /// the request with their own HTTP client.
    pub async fn acquire(&self, model: &str, estimate: Usage) -> Result<Lease, RouteError> {
        let pool = self
            .pool(model)
            .ok_or_else(|| RouteError::UnknownModel(model.to_string()))?;
        let now = self.inner.clock.now();
        let mut out = Outcomes::default();
        for i in self.candidates(&pool, None, now).await? {
            match self.try_target(&pool, i, &estimate, now, None).await? {
                Ok(lease) => return Ok(lease),
                Err(d) => out.deny(d),
            }
        }
        Err(Self::no_capacity(model, now, out))
    }

    /// Route one request: select, reserve, send with failover, reconcile in the background.
    pub async fn request(&self, req: Request) -> Result<Response, RouteError> {
        let Request {
            endpoint,
            mut body,
            tier,
            gateway_key,
        } = req;
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(_) => {
                return Err(RouteError::BadRequest(
                    "`model` must be a non-empty string".into(),
                ))
            }
            None => return Err(RouteError::BadRequest("`model` is required".into())),
        };
        let allowed = |m: &str| {
            gateway_key
                .as_ref()
                .and_then(|k| k.key.models.as_ref())
                .is_none_or(|ms| ms.iter().any(|x| x == m))
        };
        if !allowed(&model) {
            return Err(RouteError::UnknownModel(model));
        }
        let pool = self
            .pool(&model)
            .ok_or_else(|| RouteError::UnknownModel(model.clone()))?;
        let tier = self.effective_tier(tier, gateway_key.as_deref());

        let stream = matches!(body.get("stream"), Some(Value::Bool(true)));
        let mut client_wants_usage = true;
        if stream && endpoint != Endpoint::Embeddings {
            let opts = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = opts {
                client_wants_usage = matches!(o.get("include_usage"), Some(Value::Bool(true)));
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        // Output is reserved as asked, else as the model's `default_max_tokens`: never 0, or
        // token and USD limits would ignore output. Embeddings produce none.
        let max_out = match ["max_tokens", "max_completion_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64))
        {
            Some(n) => n,
            None if endpoint == Endpoint::Embeddings => 0,
            None => pool.plan.pool.default_max_tokens,
        };
        if max_out > MAX_OUTPUT_TOKENS {
            return Err(RouteError::BadRequest(format!(
                "max_tokens {max_out} is larger than any model allows ({MAX_OUTPUT_TOKENS})"
            )));
        }
        let estimate = Usage::new(llmux_core::usage::estimate_input_tokens(&body), max_out);
        let now = self.inner.clock.now();

        let mut chain = vec![pool.clone()];
        for f in &pool.plan.pool.fallback_models {
            if allowed(f) {
                if let Some(p) = self.pool(f) {
                    chain.push(p);
                }
            }
        }
        let mut out = Outcomes::default();
        'chain: for pool in chain {
            let mut tried = 0u32;
            for i in self.candidates(&pool, tier.as_deref(), now).await? {
                // Read per attempt: an earlier attempt may have waited for a timeout.
                let now = self.inner.clock.now();
                if tried >= pool.plan.pool.max_attempts {
                    break;
                }
                let provider = match self.inner.providers.get(&pool.plan.targets[i].id.provider) {
                    Some(p) => p.clone(),
                    None => return Err(RouteError::UnknownModel(model)),
                };
                let estimate = provider.estimate_cost(&body).unwrap_or(estimate);
                let lease = match self
                    .try_target(&pool, i, &estimate, now, gateway_key.as_deref())
                    .await?
                {
                    Ok(l) => l,
                    Err(d) => {
                        out.deny(d);
                        continue;
                    }
                };
                tried += 1;
                out.attempts += 1;
                let target = lease.target.clone();
                body.insert("model".into(), Value::String(target.model.to_string()));
                let mut payload = Vec::with_capacity(1024);
                if let Err(e) = serde_json::to_writer(&mut payload, &body) {
                    return Err(RouteError::BadRequest(e.to_string()));
                }
                let payload = Bytes::from(payload);
                let timeout = Duration::from_secs(
                    pool.plan
                        .pool
                        .timeout_secs
                        .or(pool.plan.targets[i].provider.timeout_secs)
                        .unwrap_or(self.inner.config.request_timeout_secs),
                );
                let call = Call {
                    endpoint,
                    body: payload,
                    stream,
                    secret: lease.secret.clone(),
                    timeout,
                };
                let started = Instant::now();
                let label = &pool.stats[i].label;
                let fallback_on = &pool.plan.pool.fallback_on;
                match provider.send(call).await {
                    Ok(reply) if reply.status < 400 => {
                        let headers = client_headers(&reply.headers);
                        let body = match reply.body {
                            ReplyBody::Full(bytes) => {
                                let latency = started.elapsed();
                                pool.stats[i].record_ok(Some(latency));
                                let usage = provider
                                    .actual_cost(&bytes)
                                    .or_else(|| usage_of_body(&bytes))
                                    .unwrap_or(estimate);
                                lease.complete_detached(usage, latency);
                                ResponseBody::Full(bytes)
                            }
                            ReplyBody::Stream(s) => {
                                pool.stats[i].record_ok(None);
                                ResponseBody::Stream(
                                    Tracked {
                                        inner: s,
                                        scanner: UsageScanner::new(!client_wants_usage),
                                        lease: Some(lease),
                                        started,
                                        done: false,
                                    }
                                    .boxed(),
                                )
                            }
                        };
                        return Ok(Response {
                            target,
                            target_header: pool.stats[i].header.clone(),
                            attempts: out.attempts,
                            status: reply.status,
                            headers,
                            body,
                        });
                    }
                    Ok(reply) => {
                        let status = reply.status;
                        let outcome = status.to_string();
                        metrics::counter!("llmux_upstream_requests_total", "target" => label.clone(), "outcome" => outcome).increment(1);
                        if status == 429 {
                            let wait = retry_after(&reply.headers);
                            let wait_ms = wait.unwrap_or(Duration::from_secs(1)).as_millis();
                            let until = now.plus_millis(i64::try_from(wait_ms).unwrap_or(i64::MAX));
                            let subject = lease.key_subject.clone();
                            log_settle(lease.rate_limited(wait).await);
                            tracing::info!(target = %label, retry_after_ms = until.0 - now.0, "upstream 429: key cooling down");
                            if fallback_on.status(429) {
                                out.deny(Denial {
                                    subject,
                                    reason: DenialReason::Cooldown,
                                    retry_at: Some(until),
                                });
                                continue;
                            }
                        } else if status == 401 || status == 403 {
                            tracing::warn!(target = %label, status, "upstream refused the key: disabling it");
                            let subject = lease.key_subject.clone();
                            log_settle(lease.failed().await);
                            self.inner.note_disabled(&subject, now);
                            if let Err(e) = self.inner.store.set_disabled(subject, true).await {
                                tracing::error!(error = %e, "could not record the disabled key in the store");
                            }
                            out.failure = Some((format!("{label} answered {status}"), false));
                            continue;
                        } else {
                            log_settle(lease.failed().await);
                            if fallback_on.status(status) {
                                out.failure = Some((format!("{label} answered {status}"), false));
                                continue;
                            }
                        }
                        // Not a failover status: the client gets the upstream's answer.
                        return Ok(Response {
                            target,
                            target_header: pool.stats[i].header.clone(),
                            attempts: out.attempts,
                            status,
                            headers: client_headers(&reply.headers),
                            body: reply.body,
                        });
                    }
                    Err(e) => {
                        let timeout = matches!(e, UpstreamError::Timeout(_));
                        metrics::counter!("llmux_upstream_requests_total", "target" => label.clone(), "outcome" => if timeout { "timeout" } else { "error" }).increment(1);
                        tracing::info!(target = %label, error = %e, "upstream attempt failed");
                        if timeout {
                            log_settle(lease.failed().await);
                        } else {
                            // The request may never have left: give the reservation back.
                            lease.stats.record_failure();
                            log_settle(lease.release().await);
                        }
                        out.failure = Some((format!("{label}: {e}"), timeout));
                        if timeout && !fallback_on.timeout {
                            break 'chain;
                        }
                    }
                }
            }
        }
        if let Some((message, timeout)) = out.failure.take() {
            return Err(RouteError::Upstream {
                attempts: out.attempts,
                timeout,
                message,
            });
        }
        if let Some(d) = &out.denial {
            metrics::counter!("llmux_no_capacity_total", "model" => model.clone(), "limit" => d.limit()).increment(1);
        }
        Err(Self::no_capacity(&model, now, out))
    }
}

/// A streamed answer that reconciles its lease when it ends, breaks or is dropped.
struct Tracked {
    inner: ByteStream,
    scanner: UsageScanner,
    lease: Option<Lease>,
    started: Instant,
    done: bool,
}

impl Tracked {
    fn settle(&mut self) {
        if let Some(lease) = self.lease.take() {
            // A stream that ended without usage (or broke) commits the estimate: tokens that
            // cannot be proved unused are never given back.
            let usage = self.scanner.usage.unwrap_or(lease.estimate);
            lease.complete_detached(usage, self.started.elapsed());
        }
    }
}

impl Stream for Tracked {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(out) = self.scanner.feed(chunk) {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    self.settle();
                    tracing::warn!(error = %e, "upstream stream broke");
                    // End the SSE stream cleanly with an OpenAI-shaped error event.
                    let event = serde_json::json!({"error": {
                        "message": "the upstream stream ended unexpectedly",
                        "type": "upstream_error",
                        "code": "upstream_stream_broken",
                    }});
                    return Poll::Ready(Some(Ok(Bytes::from(format!("data: {event}\n\n")))));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let rest = self.scanner.finish();
                    self.settle();
                    return Poll::Ready(rest.map(Ok));
                }
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.settle();
    }
}
