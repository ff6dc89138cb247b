//! `RouterBuilder`: the store, the clock and custom providers, and building the runtime state
//! (pools, providers, gateway keys, the ledger) from a [`Config`].

use super::{Inner, Router};
use crate::error::RouteError;
use crate::keys::KeyRing;
use crate::ledger::Ledger;
use crate::provider::anthropic::Anthropic;
use crate::provider::mock::MockProvider;
use crate::provider::openai::{http_client, OpenAiCompatible};
use crate::provider::Provider;
use crate::secrets::MasterKey;
use crate::stats::Pool;
use crate::store::AnyStore;
use llmux_core::config::{Config, ProviderKind};
use llmux_core::plan::{plan_pool, tier_bounds};
use llmux_core::{Clock, ProviderId, SystemClock};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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
    /// Decrypts the store's secrets (`secret = "store"`); default: `$LLMUX_MASTER_KEY`.
    master_key: Option<MasterKey>,
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

    /// The key that decrypts stored secrets (instead of `$LLMUX_MASTER_KEY`).
    pub fn master_key(mut self, key: MasterKey) -> Self {
        self.master_key = Some(key);
        self
    }

    pub(crate) fn new(config: Config) -> RouterBuilder {
        RouterBuilder {
            config,
            store: None,
            clock: Arc::new(SystemClock),
            providers: HashMap::new(),
            kinds: HashMap::new(),
            auto_models: false,
            master_key: None,
        }
    }

    pub(crate) fn auto_models(mut self, on: bool) -> Self {
        self.auto_models = on;
        self
    }

    /// Open the store and start the background reconciler. Needs a tokio runtime.
    pub fn build(self) -> Result<Router, RouteError> {
        let config = Arc::new(self.config);
        let stored_secrets = config
            .providers
            .values()
            .any(|p| p.keys.iter().any(|k| k.from_store));
        let master = match (self.master_key, stored_secrets) {
            (Some(k), _) => Some(k),
            (None, false) => None,
            (None, true) => match crate::env::master_key_from_env() {
                Some(Ok(k)) => Some(k),
                Some(Err(e)) => return Err(RouteError::BadRequest(e.to_string())),
                None => {
                    return Err(RouteError::BadRequest(format!(
                        "a key has secret = \"store\", which needs ${}",
                        llmux_core::config::MASTER_KEY_VAR
                    )))
                }
            },
        };
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
                ProviderKind::Anthropic => Arc::new(Anthropic::new(
                    p.base_url.as_deref().unwrap_or_default(),
                    p.anthropic_version
                        .as_deref()
                        .unwrap_or(llmux_core::config::DEFAULT_ANTHROPIC_VERSION),
                    http.clone(),
                )),
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
        let keys = arc_swap::ArcSwap::from_pointee(KeyRing::build(&config, None));
        let tier_bounds = config
            .tier_resources
            .keys()
            .map(|t| (t.clone(), tier_bounds(&config, t).into()))
            .collect();
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| RouteError::BadRequest("Router::build needs a tokio runtime".into()))?;
        let ledger = Ledger::start(store, self.clock, &rt);
        let router = Router {
            inner: Arc::new(Inner {
                config,
                pools,
                ledger,
                providers,
                keys,
                tier_bounds,
                master,
                stored_secrets: arc_swap::ArcSwap::from_pointee(HashMap::new()),
                auto_models: self.auto_models,
                auto_pools: Mutex::new(HashMap::new()),
                credit_set: Mutex::new(HashMap::new()),
            }),
        };
        // Capacity states, forecasts and the targets that will not last their window.
        let weak = Arc::downgrade(&router.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(super::capacity::CAPACITY_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = (Router { inner }).refresh_capacity().await {
                    tracing::debug!(error = %e, "could not read the counters for capacity states");
                }
            }
        });
        // OpenRouter keys' remaining credit (see `credit`), read now and every minute.
        if router.tracks_credit() {
            let weak = Arc::downgrade(&router.inner);
            // The providers' pooled client: one TLS set-up and connection pool for all.
            let client = http.clone();
            rt.spawn(async move {
                let mut tick = tokio::time::interval(super::credit::CREDIT_REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    if let Err(e) = (Router { inner }).refresh_credit(&client).await {
                        tracing::warn!(error = %e, "could not set the OpenRouter keys' credit");
                    }
                }
            });
        }
        // Keys created, revoked or rotated in the store reach this router within
        // `KEY_REFRESH`; the task ends with the router.
        let weak = Arc::downgrade(&router.inner);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(crate::keys::KEY_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let router = Router { inner };
                if let Err(e) = router.refresh_keys().await {
                    tracing::warn!(error = %e, "could not read the gateway keys in the store; keeping those known");
                }
                if let Err(e) = router.refresh_secrets().await {
                    tracing::warn!(error = %e, "could not read the stored secrets; keeping those known");
                }
            }
        });
        Ok(router)
    }
}

impl Router {
    /// A router on the config file at `path`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Router, RouteError> {
        let config = crate::env::load_config(path.as_ref())
            .map_err(|e| RouteError::BadRequest(e.to_string()))?;
        Router::from_config(config)
    }

    /// A router with no config file: providers come from `OPENAI_API_KEY`,
    /// `ANTHROPIC_API_KEY` and `OPENROUTER_API_KEY`, state lives in memory, and a model name
    /// picks its provider (`gpt-*`, `o1…`, `text-embedding-*` → openai; `claude-*` →
    /// anthropic; `vendor/model` → openrouter).
    pub fn from_env() -> Result<Router, RouteError> {
        Router::from_env_with(&crate::env::process_env)
    }

    /// [`Router::from_env`] with the environment as a parameter.
    pub fn from_env_with(env: &dyn Fn(&str) -> Option<String>) -> Result<Router, RouteError> {
        let mut text = String::from("[store]\nkind = \"memory\"\n");
        for (name, var) in [
            ("openai", "OPENAI_API_KEY"),
            ("anthropic", "ANTHROPIC_API_KEY"),
            ("openrouter", "OPENROUTER_API_KEY"),
        ] {
            if env(var).is_some_and(|v| !v.is_empty()) {
                text.push_str(&format!(
                    "[providers.{name}]\nkind = \"{name}\"\n[[providers.{name}.keys]]\nid = \"env\"\nsecret = \"${{{var}}}\"\n"
                ));
            }
        }
        let config = Config::from_toml_str(&text, env)
            .map_err(|issues| RouteError::BadRequest(issues.to_string()))?;
        Router::builder(config).auto_models(true).build()
    }
}
