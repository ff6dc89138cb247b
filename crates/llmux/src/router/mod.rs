//! `Router`: the engine. For each request it reads the clock once, picks candidates in the
//! pool's strategy order (by tier), reserves on every resource that applies in one store call,
//! sends, fails over on `fallback_on`, and reconciles the reservation to the reported usage
//! without making the caller wait.
//!
//! The public API (`Router`, `Request`, `Response`) is here; `builder` builds the runtime state
//! from a config, `candidates` orders targets, `failover` runs one attempt and the loop,
//! `outcome` is the pure rule for settling an attempt, `tracked` the stream that settles its
//! lease when it ends.

mod answer;
mod applied;
mod attempt;
mod builder;
mod candidates;
mod capacity;
mod credit;
mod decision;
mod failover;
mod outcome;
mod prepared;
mod refusals;
mod reserve;
mod tracked;
mod waiting;

pub use applied::{rate_limit_headers, refusal_rate_limit_headers, AppliedLimit};
pub use builder::{ProviderFactory, RouterBuilder};
pub use decision::{Decision, SkipReason};

use crate::error::{RouteError, UpstreamError};
use crate::lease::Lease;
use crate::ledger::Ledger;
use crate::protocol::openai::RawRequest;
/// A response body: the whole body, or SSE bytes as they arrive (usage is reconciled when the
/// stream ends or is dropped).
pub use crate::provider::ReplyBody as ResponseBody;
use crate::provider::{Endpoint, Provider};
use crate::stats::Pool;
use crate::store::AnyStore;
use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderMap;
use llmux_core::config::{Config, MAX_OUTPUT_TOKENS};
use llmux_core::plan::{plan_pool, Bound};
use llmux_core::{ProviderId, TargetId, Usage};
use parking_lot::Mutex;
use prepared::Prepared;
use refusals::Outcomes;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct Inner {
    pub(crate) config: Arc<Config>,
    pools: HashMap<String, Arc<Pool>>,
    pub(crate) ledger: Arc<Ledger>,
    providers: HashMap<ProviderId, Arc<dyn Provider>>,
    /// Gateway keys of config and of the store, rebuilt by `refresh_keys`.
    keys: arc_swap::ArcSwap<KeyRing>,
    /// `[tiers.NAME] resources`, bound.
    tier_bounds: HashMap<String, Arc<[Bound]>>,
    /// Decrypts the store's secrets (set when a key has `secret = "store"`).
    master: Option<crate::secrets::MasterKey>,
    /// The decrypted secrets of keys with `secret = "store"`, by `provider/key`.
    stored_secrets: arc_swap::ArcSwap<HashMap<llmux_core::Subject, llmux_core::Secret>>,
    /// Model names not in config map to providers by prefix (`Router::from_env`).
    auto_models: bool,
    auto_pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Per OpenRouter key: the `used` its credit resource was last set to, from the credit
    /// reported then (see `credit.rs`).
    credit_set: Mutex<HashMap<llmux_core::Subject, u64>>,
}

pub use crate::keys::AuthorizedKey;
use crate::keys::{KeyRing, StoredKey};

/// One request to route.
#[derive(Debug, Clone)]
pub struct Request {
    pub endpoint: Endpoint,
    /// The OpenAI-shaped JSON body; `model` names the pool. (Empty for a request made by
    /// [`Request::from_json_bytes`], whose body is the bytes.)
    pub body: Map<String, Value>,
    raw: Option<Bytes>,
    /// The caller's tier; `None` = no tier filtering (unless the gateway key has one).
    pub tier: Option<String>,
    pub gateway_key: Option<Arc<AuthorizedKey>>,
    /// Wait up to this long for capacity instead of failing with `NoCapacity` (capped by the
    /// model's `queue.max_wait_secs` when it has a queue).
    pub max_wait: Option<std::time::Duration>,
}

impl Request {
    pub fn new(endpoint: Endpoint, body: Map<String, Value>) -> Request {
        Request {
            endpoint,
            body,
            raw: None,
            tier: None,
            gateway_key: None,
            max_wait: None,
        }
    }
    /// A request whose body is the JSON text `body`, as received (the gateway's path: the
    /// body is read where the router needs it and edited by splicing, never rebuilt). Invalid
    /// JSON is reported by [`Router::request`].
    pub fn from_json_bytes(endpoint: Endpoint, body: Bytes) -> Request {
        Request {
            endpoint,
            body: Map::new(),
            raw: Some(body),
            tier: None,
            gateway_key: None,
            max_wait: None,
        }
    }
    /// A chat completion request from a JSON value.
    pub fn chat(body: Value) -> Result<Request, RouteError> {
        Request::of(Endpoint::ChatCompletions, body)
    }
    /// An Anthropic Messages request from a JSON value: answered in that dialect (a stream as
    /// Anthropic events) whichever dialect the chosen target speaks.
    pub fn messages(body: Value) -> Result<Request, RouteError> {
        Request::of(Endpoint::Messages, body)
    }
    /// An OpenAI Responses request from a JSON value (OpenAI-family targets only).
    pub fn responses(body: Value) -> Result<Request, RouteError> {
        Request::of(Endpoint::Responses, body)
    }
    fn of(endpoint: Endpoint, body: Value) -> Result<Request, RouteError> {
        match body {
            Value::Object(m) => Ok(Request::new(endpoint, m)),
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
    /// How the target was chosen: every target passed over, and why.
    pub decision: Decision,
    /// Every limit the request was counted against, with the room left
    /// ([`rate_limit_headers`] turns them into answer headers).
    pub limits: Vec<AppliedLimit>,
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
            .field("store", &self.inner.ledger.store.kind())
            .field("models", &self.inner.pools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Router {
    pub fn builder(config: Config) -> RouterBuilder {
        RouterBuilder::new(config)
    }

    /// A router on `config`, with the store it names. Needs a tokio runtime.
    pub fn from_config(config: Config) -> Result<Router, RouteError> {
        Router::builder(config).build()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The router's clock, now.
    pub fn now(&self) -> llmux_core::Timestamp {
        self.inner.ledger.clock.now()
    }
    pub fn store(&self) -> &AnyStore {
        &self.inner.ledger.store
    }

    /// Model names clients may send.
    pub fn models(&self) -> Vec<String> {
        self.inner.pools.keys().cloned().collect()
    }

    /// Check a bearer token. While no gateway key exists (in config or in the store) and
    /// `require_keys` is off, every caller is let through.
    pub fn authorize(
        &self,
        bearer: Option<&str>,
    ) -> Result<Option<Arc<AuthorizedKey>>, RouteError> {
        let ring = self.inner.keys.load();
        if !ring.required {
            if !ring.loaded {
                // Keys may exist in a store not read yet: refuse rather than let all in.
                return Err(RouteError::Store(llmux_core::StoreError::Unavailable(
                    "the gateway keys in the store have not been read yet".into(),
                )));
            }
            return Ok(None);
        }
        let token = bearer.ok_or(RouteError::Unauthorized)?;
        ring.find(token).map(Some).ok_or(RouteError::Unauthorized)
    }

    /// Read and decrypt the store's secrets of keys with `secret = "store"` (the router also
    /// does this every [`crate::keys::KEY_REFRESH`]). A secret that cannot be decrypted is
    /// logged (never shown) and its key left out. Returns how many keys have one.
    pub async fn refresh_secrets(&self) -> Result<usize, RouteError> {
        use llmux_core::Records;
        let Some(master) = &self.inner.master else {
            return Ok(0);
        };
        let records = self
            .inner
            .ledger
            .store
            .list_records(llmux_core::records::SECRETS)
            .await?;
        let mut map = HashMap::new();
        for p in self.inner.config.providers.values() {
            for k in p.keys.iter().filter(|k| k.from_store) {
                let name = format!("{}/{}", p.id, k.id);
                let Some((_, record)) = records.iter().find(|(n, _)| *n == name) else {
                    continue;
                };
                match master.open(&name, record) {
                    Ok(secret) => {
                        map.insert(llmux_core::Subject::key(&p.id, &k.id), secret);
                    }
                    Err(e) => tracing::error!(error = %e, "a stored secret cannot be used"),
                }
            }
        }
        let n = map.len();
        self.inner.stored_secrets.store(Arc::new(map));
        Ok(n)
    }

    /// The secret of target `t`'s key: from config, or (for `secret = "store"`) as last read
    /// from the store.
    pub(crate) fn secret_of(
        &self,
        t: &llmux_core::plan::PlannedTarget,
    ) -> Option<llmux_core::Secret> {
        self.key_secret(&t.provider.keys[t.key_index], t.key_gate())
    }

    /// The secret of `key` (whose subject is `provider/key`): from the config, or the stored
    /// one last read (`None` until it has been read).
    pub(crate) fn key_secret(
        &self,
        key: &llmux_core::config::Key,
        subject: &llmux_core::Subject,
    ) -> Option<llmux_core::Secret> {
        if !key.from_store {
            return Some(key.secret.clone());
        }
        self.inner.stored_secrets.load().get(subject).cloned()
    }

    /// [`Router::authorize`], reading the store's gateway keys first if they have never been
    /// read (the gateway's path).
    pub async fn authorize_request(
        &self,
        bearer: Option<&str>,
    ) -> Result<Option<Arc<AuthorizedKey>>, RouteError> {
        self.keys_read().await?;
        self.authorize(bearer)
    }

    /// Read the store's gateway keys if they have never been read.
    async fn keys_read(&self) -> Result<(), RouteError> {
        if !self.inner.keys.load().loaded {
            self.refresh_keys().await?;
        }
        Ok(())
    }

    /// The live gateway key named `name` (of config or of the store), reading the store's keys
    /// first if they have never been read. `None`: there is no such key, or it was revoked.
    /// (A batch runs under the key that created it: this is how its runner checks the key.)
    pub async fn gateway_key_named(
        &self,
        name: &str,
    ) -> Result<Option<Arc<AuthorizedKey>>, RouteError> {
        self.keys_read().await?;
        Ok(self.inner.keys.load().named(name))
    }

    /// Read the store's gateway keys now and use them with config's (the router also does
    /// this every [`crate::keys::KEY_REFRESH`] by itself). Returns how many keys are live.
    pub async fn refresh_keys(&self) -> Result<usize, RouteError> {
        use llmux_core::Records;
        let records = self
            .inner
            .ledger
            .store
            .list_records(llmux_core::records::GATEWAY_KEYS)
            .await?;
        let stored: Vec<StoredKey> = crate::keys::parse_stored(&records);
        let live = stored.iter().filter(|k| k.revoked_ms.is_none()).count();
        let ring = KeyRing::build(&self.inner.config, Some(&stored));
        self.inner.keys.store(Arc::new(ring));
        Ok(live + self.inner.config.gateway_keys.len())
    }

    /// How long a batch item for `model` waits for its start slot (see `stats::Pacer`).
    pub(crate) fn pace(&self, model: &str) -> Duration {
        self.pool(model)
            .and_then(|p| p.pacer.as_ref().map(|pacer| pacer.slot(Instant::now())))
            .unwrap_or_default()
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
        let pool = llmux_core::config::auto_pool(&self.inner.config, model)?;
        let pool = Arc::new(Pool::new(plan_pool(&self.inner.config, &Arc::new(pool))));
        cache.insert(model.to_string(), pool.clone());
        Some(pool)
    }

    /// Reserve `estimate` on the first target of `model` with capacity, for callers that send
    /// the request with their own HTTP client.
    pub async fn acquire(&self, model: &str, estimate: Usage) -> Result<Lease, RouteError> {
        let pool = self
            .pool(model)
            .ok_or_else(|| RouteError::UnknownModel(model.to_string()))?;
        self.acquire_in(&pool, model, &estimate).await
    }

    async fn acquire_in(
        &self,
        pool: &Pool,
        model: &str,
        estimate: &Usage,
    ) -> Result<Lease, RouteError> {
        let now = self.inner.ledger.clock.now();
        let mut out = Outcomes::default();
        for i in self.candidates(pool, None, now, estimate).await? {
            match self.try_target(pool, i, estimate, now, None).await? {
                Ok((lease, _)) => return Ok(lease),
                Err(d) => out.deny(d),
            }
        }
        Err(Self::no_capacity(model, now, out))
    }

    /// [`Router::acquire`] that waits, until `deadline` at the latest, for a target with room
    /// (in the model's queue, in arrival order; see "Waiting instead of 429"). A request that
    /// can never fit, or that finds the queue full, fails at once.
    pub async fn acquire_wait(
        &self,
        model: &str,
        estimate: Usage,
        deadline: std::time::Instant,
    ) -> Result<Lease, RouteError> {
        let pool = self
            .pool(model)
            .ok_or_else(|| RouteError::UnknownModel(model.to_string()))?;
        let deadline = tokio::time::Instant::from_std(deadline);
        let wait = waiting::Wait {
            max: deadline.saturating_duration_since(tokio::time::Instant::now()),
            max_queued: pool
                .plan
                .pool
                .queue
                .map_or(llmux_core::config::QueueConfig::DEFAULT_MAX_QUEUED, |q| {
                    q.max_queued
                }),
            rank: 0,
            deadline: Some(deadline),
        };
        let mut ticket = None;
        let mut waiter = waiting::Waiter::new(&pool.queue, wait, &mut ticket);
        if waiter.full {
            return Err(waiter.queue_full(model, self.inner.ledger.clock.now()));
        }
        loop {
            let last = !waiter.turn(&mut ticket).await;
            let r = self.acquire_in(&pool, model, &estimate).await;
            let now = self.inner.ledger.clock.now();
            if last || !waiter.again(&r, now, &mut ticket) {
                return r;
            }
        }
    }

    /// Route one request: select, reserve, send with failover, reconcile in the background.
    pub async fn request(&self, req: Request) -> Result<Response, RouteError> {
        self.request_with_decision(req).await.0
    }

    /// [`Router::request`], with the routing decision also when it fails (a success carries
    /// its own in [`Response::decision`]).
    pub async fn request_with_decision(
        &self,
        req: Request,
    ) -> (Result<Response, RouteError>, Decision) {
        let mut decision = Decision::default();
        let r = self.route(req, &mut decision).await;
        if let Ok(resp) = &r {
            decision = resp.decision.clone();
        }
        (r, decision)
    }

    async fn route(&self, req: Request, decision: &mut Decision) -> Result<Response, RouteError> {
        let Request {
            endpoint,
            body,
            raw,
            tier,
            gateway_key,
            max_wait,
        } = req;
        // The body as bytes: read once, edited per attempt by splicing, never re-serialised.
        let (bytes, map) = match raw {
            Some(b) => (b, None),
            None => match serde_json::to_vec(&body) {
                Ok(v) => (Bytes::from(v), Some(body)),
                Err(e) => return Err(RouteError::BadRequest(e.to_string())),
            },
        };
        let mut parsed = RawRequest::parse(&bytes).map_err(|e| RouteError::BadRequest(e.0))?;
        let model = parsed.model.to_string();
        let key = gateway_key.as_deref();
        let allowed = |m: &str| key.is_none_or(|k| k.allows_model(m));
        if let Some(k) = key {
            for (whose, p) in k.policies() {
                if let Some(ms) = p.models.as_ref().filter(|ms| !ms.contains(&model)) {
                    return Err(RouteError::PolicyViolation(format!(
                        "model {model:?} is not allowed by the policy of {whose} (models: {})",
                        ms.join(", ")
                    )));
                }
                if let (Some(max), Some(asked)) = (p.max_tokens, parsed.max_tokens) {
                    if asked > max {
                        return Err(RouteError::PolicyViolation(format!(
                            "max_tokens {asked} is above the limit of {max} set by the policy of {whose} (max_tokens)"
                        )));
                    }
                }
            }
        }
        let pool = self
            .pool(&model)
            .ok_or_else(|| RouteError::UnknownModel(model.clone()))?;
        let tier = self.effective_tier(tier, key);
        // Output is reserved as asked, else as the model's `default_max_tokens` (capped by a
        // policy's `max_tokens`): never 0, or token and USD limits would ignore output.
        // Embeddings produce none.
        let policy_max = key.and_then(|k| k.policies().filter_map(|(_, p)| p.max_tokens).min());
        let max_out = match parsed.max_tokens {
            Some(n) => n,
            None if endpoint == Endpoint::Embeddings => 0,
            None => policy_max.map_or(pool.plan.pool.default_max_tokens, |m| {
                m.min(pool.plan.pool.default_max_tokens)
            }),
        };
        if max_out > MAX_OUTPUT_TOKENS {
            return Err(RouteError::BadRequest(format!(
                "max_tokens {max_out} is larger than any model allows ({MAX_OUTPUT_TOKENS})"
            )));
        }
        let estimate = Usage::new(parsed.input_tokens, max_out);
        if parsed.max_tokens.is_none() && policy_max.is_some() {
            // The policy capped what is reserved: the upstream is asked for no more.
            parsed.ask_cap = match endpoint {
                Endpoint::ChatCompletions => Some(("max_completion_tokens", max_out)),
                Endpoint::Completions | Endpoint::Messages => Some(("max_tokens", max_out)),
                Endpoint::Responses => Some(("max_output_tokens", max_out)),
                Endpoint::Embeddings => None,
            };
        }

        let mut chain = vec![pool.clone()];
        for f in &pool.plan.pool.fallback_models {
            if allowed(f) {
                if let Some(p) = self.pool(f) {
                    chain.push(p);
                }
            }
        }
        let extra = self.extra_bounds(key, tier.as_deref());
        let mut req = Prepared {
            model,
            endpoint,
            body: parsed,
            map,
            estimate,
            tier,
            key,
            extra,
            decision: Decision::default(),
            ticket: None,
        };
        let r = match self.waiting(&pool, max_wait, req.tier.as_deref()) {
            None => self.pass(&chain, &mut req).await,
            Some(wait) => self.pass_waiting(&chain, &mut req, wait).await,
        };
        *decision = std::mem::take(&mut req.decision);
        r
    }

    /// The bounds a request counts against beyond its target's and its pool's: its gateway
    /// key's and team's, and its tier's.
    fn extra_bounds(
        &self,
        key: Option<&AuthorizedKey>,
        tier: Option<&str>,
    ) -> Option<Arc<[Bound]>> {
        let own = key.map(|k| &k.bounds).filter(|b| !b.is_empty());
        let tier = tier
            .and_then(|t| self.inner.tier_bounds.get(t))
            .filter(|b| !b.is_empty());
        match (own, tier) {
            (None, None) => None,
            (Some(b), None) | (None, Some(b)) => Some(b.clone()),
            (Some(a), Some(b)) => Some(a.iter().chain(b.iter()).cloned().collect()),
        }
    }

    /// One pass over the chain; a token-limit refusal of the rough estimate is tried again
    /// with the exact count (the decision is the second pass's).
    async fn pass(
        &self,
        chain: &[Arc<Pool>],
        req: &mut Prepared<'_>,
    ) -> Result<Response, RouteError> {
        match self.send_with_failover(chain, req).await {
            Err(RouteError::NoCapacity { denial, .. })
                if refused_tokens(&denial) && self.count_exactly(&chain[0], req) =>
            {
                req.decision = Decision::default();
                self.send_with_failover(chain, req).await
            }
            other => other,
        }
    }

    /// Count the request's input tokens with the tokenizer of the pool's models, when every
    /// target is an OpenAI model of one encoding; true if that lowered the estimate.
    fn count_exactly(&self, pool: &Pool, req: &mut Prepared<'_>) -> bool {
        let mut encodings = pool
            .plan
            .targets
            .iter()
            .map(|t| crate::protocol::tokens::Encoding::for_model(&t.id.model));
        let Some(Some(encoding)) = encodings.next() else {
            return false;
        };
        if !encodings.all(|e| e == Some(encoding)) {
            return false;
        }
        let map = req.map.get_or_insert_with(|| req.body.to_map());
        let Some(exact) = encoding.input_tokens(map) else {
            return false;
        };
        metrics::counter!("llmux_exact_token_counts_total").increment(1);
        if exact >= req.estimate.input_tokens {
            return false;
        }
        req.estimate.input_tokens = exact;
        true
    }
}

/// Whether `denial` is a token (or money) limit that a smaller estimate might pass: request
/// counts reserve 1, cooldowns and concurrency do not depend on the estimate.
fn refused_tokens(denial: &llmux_core::store::Denial) -> bool {
    use llmux_core::store::DenialReason;
    matches!(
        denial.reason,
        DenialReason::Exhausted { amount, .. } | DenialReason::NeverFits { amount, .. } if amount > 1
    )
}
