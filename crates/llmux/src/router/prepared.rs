//! A request as the failover loop takes it: parsed once, with its estimate, tier, key and the
//! decision so far.

use super::decision::Decision;
use super::AuthorizedKey;
use crate::protocol::openai::RawRequest;
use crate::provider::Endpoint;
use llmux_core::plan::Bound;
use llmux_core::Usage;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What the failover loop needs of the request, parsed once.
pub(super) struct Prepared<'a> {
    pub(super) model: String,
    pub(super) endpoint: Endpoint,
    pub(super) body: RawRequest<'a>,
    /// The body as a map, for providers with their own estimate (built on first need).
    pub(super) map: Option<Map<String, Value>>,
    pub(super) estimate: Usage,
    pub(super) tier: Option<String>,
    pub(super) key: Option<&'a AuthorizedKey>,
    /// The key's, team's and tier's bounds (see `Router::extra_bounds`).
    pub(super) extra: Option<Arc<[Bound]>>,
    /// The decision so far: every target passed over, and the attempts made.
    pub(super) decision: Decision,
    /// Its place among the model's waiters, given up once a target admits it.
    pub(super) ticket: Option<crate::queue::Ticket>,
}
