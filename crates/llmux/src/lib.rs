//! llmux as a library: the same engine as the gateway, in-process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let router = llmux::Router::from_path("examples/quickstart.toml")?;
//! let req = llmux::Request::chat(serde_json::json!({
//!     "model": "fast",
//!     "messages": [{"role": "user", "content": "Hello"}]
//! }))?;
//! let resp = router.request(req).await?;
//! let target = resp.target.clone();
//! println!("{target} answered: {}", resp.json().await?);
//! # Ok(()) }
//! ```
//!
//! Callers with their own HTTP client use [`Router::acquire`] and settle the [`Lease`].

pub mod batch;
pub mod blocking;
mod env;
pub mod error;
pub mod keys;
mod lease;
mod ledger;
pub mod protocol;
pub mod provider;
mod queue;
mod router;
pub mod secrets;
pub mod sse;
mod stats;
pub mod store;

pub use env::{load_config, load_config_with, process_env, ConfigError};
pub use error::{RouteError, UpstreamError};
pub use lease::Lease;
pub use llmux_core::{self as core, Config, Secret, TargetId, Usage};
pub use provider::{Call, Provider, Reply, ReplyBody};
pub use provider::{Dialect, Endpoint};
pub use router::{
    rate_limit_headers, refusal_rate_limit_headers, AppliedLimit, AuthorizedKey, Decision,
    ProviderFactory, Request, Response, ResponseBody, Router, RouterBuilder, SkipReason,
};
pub use store::AnyStore;
