//! `RouterBuilder`: the store, the clock and custom providers, and building the runtime state
//! (pools, providers, gateway keys, the ledger) from a [`Config`].

use super::{AuthorizedKey, Inner, Router};
use crate::error::RouteError;
use crate::ledger::Ledger;
use crate::provider::anthropic::Anthropic;
use crate::provider::mock::MockProvider;
use crate::provider::openai::{http_client, OpenAiCompatible};
use crate::provider::Provider;
use crate::stats::Pool;
use crate::store::AnyStore;
use llmux_core::config::{Config, ProviderKind};
use llmux_core::plan::{gateway_key_bounds, plan_pool};
use llmux_core::{Clock, ProviderId, SystemClock};
use parking_lot::Mutex;
use std::collections::HashMap;
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

    pub(crate) fn new(config: Config) -> RouterBuilder {
        RouterBuilder {
            config,
            store: None,
            clock: Arc::new(SystemClock),
            providers: HashMap::new(),
            kinds: HashMap::new(),
            auto_models: false,
        }
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
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| RouteError::BadRequest("Router::build needs a tokio runtime".into()))?;
        let ledger = Ledger::start(store, self.clock, &rt);
        Ok(Router {
            inner: Arc::new(Inner {
                config,
                pools,
                ledger,
                providers,
                gateway_keys,
                auto_models: self.auto_models,
                auto_pools: Mutex::new(HashMap::new()),
            }),
        })
    }
}
