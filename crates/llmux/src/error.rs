//! Errors of the engine. Each carries what a caller needs to answer its client and never a
//! secret; only the gateway maps them to HTTP.

use llmux_core::store::Denial;
use llmux_core::StoreError;

/// Why an upstream call failed before a usable answer arrived.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream timed out after {0} s")]
    Timeout(u64),
    /// The request never left: connecting (DNS, TCP, TLS) failed.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// The connection failed after the request was sent: the upstream may have done the work.
    #[error("upstream connection lost after the request was sent: {0}")]
    Reset(String),
    #[error("upstream stream broke: {0}")]
    Body(String),
    /// The upstream's answer is larger than `max_response_bytes`.
    #[error("upstream answer larger than {0} bytes")]
    TooLarge(usize),
}

/// Why the router could not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("invalid or missing gateway key")]
    Unauthorized,
    #[error("model {0:?} does not exist or is not available to this key")]
    UnknownModel(String),
    /// No target had capacity. `denial` is the limit that frees up last among those hit on the
    /// best candidate, so waiting `retry_after_secs` is enough for it.
    #[error("no capacity for model {model:?}: limit {limit} reached", limit = denial.limit())]
    NoCapacity {
        model: String,
        denial: Box<Denial>,
        retry_after_secs: Option<u64>,
        /// The limit hit is a hard USD budget: it frees up when its window ends, and
        /// `retry_after_secs` counts to then.
        budget: bool,
        /// The length of the limit's window in seconds, when it is a configured limit (the
        /// `w` of `RateLimit-Policy`).
        window_secs: Option<u64>,
        /// What that limit counts, when it is a configured limit (which `x-ratelimit-*`
        /// headers name it).
        measure: Option<llmux_core::Measure>,
    },
    /// A gateway key's or team's policy refuses the request; the message names the rule.
    #[error("{0}")]
    PolicyViolation(String),
    /// Every attempt failed upstream.
    #[error("upstream failed after {attempts} attempt(s): {message}")]
    Upstream {
        attempts: u32,
        timeout: bool,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}
