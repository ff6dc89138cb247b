//! A blocking mirror of the async API for threaded programs, as `reqwest::blocking` does:
//! the router runs on its own runtime.

use crate::error::{RouteError, UpstreamError};
use crate::router::{Request, Router as AsyncRouter};
use llmux_core::{Config, StoreError, Usage};
use std::sync::Arc;
use std::time::Duration;

/// A [`crate::Router`] driven from synchronous code.
#[derive(Clone)]
pub struct Router {
    rt: Arc<tokio::runtime::Runtime>,
    inner: AsyncRouter,
}

/// A blocking lease; see [`crate::Lease`].
pub struct Lease {
    rt: Arc<tokio::runtime::Runtime>,
    inner: crate::Lease,
}

/// A whole (non-streamed or collected) answer.
#[derive(Debug)]
pub struct Response {
    pub target: String,
    pub attempts: u32,
    pub status: u16,
    pub body: bytes::Bytes,
}

impl Router {
    pub fn from_config(config: Config) -> Result<Router, RouteError> {
        Router::on_runtime(|| AsyncRouter::from_config(config))
    }

    /// [`crate::Router::from_env`]: no config file; providers from the `*_API_KEY` variables.
    pub fn from_env() -> Result<Router, RouteError> {
        Router::on_runtime(AsyncRouter::from_env)
    }

    fn on_runtime(
        make: impl FnOnce() -> Result<AsyncRouter, RouteError>,
    ) -> Result<Router, RouteError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RouteError::BadRequest(format!("cannot start a runtime: {e}")))?;
        let inner = {
            let _guard = rt.enter();
            make()?
        };
        Ok(Router {
            rt: Arc::new(rt),
            inner,
        })
    }

    /// [`crate::Router::batch`]: every item's result, in completion order.
    pub fn batch(
        &self,
        items: Vec<crate::batch::BatchItem>,
        opts: crate::batch::BatchOptions,
    ) -> Vec<crate::batch::BatchResult> {
        use futures_util::StreamExt;
        self.rt
            .block_on(self.inner.batch(items, opts).collect::<Vec<_>>())
    }

    /// A blocking router on the config file at `path`.
    pub fn from_path(path: impl AsRef<std::path::Path>) -> Result<Router, RouteError> {
        let config =
            crate::load_config(path.as_ref()).map_err(|e| RouteError::BadRequest(e.to_string()))?;
        Router::from_config(config)
    }

    /// Route a request and collect its answer.
    pub fn request(&self, req: Request) -> Result<Response, RouteError> {
        self.rt.block_on(async {
            let r = self.inner.request(req).await?;
            let (target, attempts, status) = (r.target.to_string(), r.attempts, r.status);
            let body = r
                .bytes()
                .await
                .map_err(|e: UpstreamError| RouteError::Upstream {
                    attempts,
                    timeout: false,
                    message: e.to_string(),
                })?;
            Ok(Response {
                target,
                attempts,
                status,
                body,
            })
        })
    }

    pub fn acquire(&self, model: &str, estimate: Usage) -> Result<Lease, RouteError> {
        let inner = self.rt.block_on(self.inner.acquire(model, estimate))?;
        Ok(Lease {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// [`crate::Router::acquire_wait`]: waits (until `deadline`) for a target with room.
    pub fn acquire_wait(
        &self,
        model: &str,
        estimate: Usage,
        deadline: std::time::Instant,
    ) -> Result<Lease, RouteError> {
        let inner = self
            .rt
            .block_on(self.inner.acquire_wait(model, estimate, deadline))?;
        Ok(Lease {
            rt: self.rt.clone(),
            inner,
        })
    }
}

impl Lease {
    pub fn target(&self) -> String {
        self.inner.target().to_string()
    }
    pub fn secret(&self) -> &llmux_core::Secret {
        self.inner.secret()
    }
    pub fn complete(self, usage: Usage, latency: Duration) -> Result<(), StoreError> {
        self.rt
            .clone()
            .block_on(self.inner.complete(usage, latency))
    }
    pub fn rate_limited(self, retry_after: Option<Duration>) -> Result<(), StoreError> {
        self.rt
            .clone()
            .block_on(self.inner.rate_limited(retry_after))
    }
    pub fn failed(self) -> Result<(), StoreError> {
        self.rt.clone().block_on(self.inner.failed())
    }
}
