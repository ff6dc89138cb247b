//! Request dialects: what the router reads from a request body, how it edits the body for
//! one attempt (without parsing or re-serialising what it does not touch), how each dialect
//! reports usage, and how a request of one dialect reaches a target of the other.
//!
//! - `openai`: [`openai::RawRequest`], the body kept as bytes, read by visitors and edited by
//!   splicing. Every dialect's request is read by it (the fields differ, the rule is one).
//! - `usage`: each dialect's usage block, normalised into one ledger.
//! - `errors`: each dialect's error envelope and in-band stream error event.

pub mod errors;
pub mod openai;
pub mod translate;
pub mod usage;

use crate::provider::{Dialect, Endpoint};

/// How a request of the client's endpoint reaches an upstream of a provider's dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// The upstream speaks the client's dialect: the body goes as written, model spliced.
    Native,
    /// OpenAI chat translated to Anthropic Messages, and the answer back.
    ChatToMessages,
    /// Anthropic Messages translated to OpenAI chat, and the answer back.
    MessagesToChat,
}

impl Wire {
    /// The way from `client` to an upstream of `upstream`, or why there is none.
    pub fn between(client: Endpoint, upstream: Dialect) -> Result<Wire, String> {
        match (client, upstream) {
            (Endpoint::Messages, Dialect::Anthropic) => Ok(Wire::Native),
            (Endpoint::ChatCompletions, Dialect::Anthropic) => Ok(Wire::ChatToMessages),
            (Endpoint::Messages, Dialect::OpenAi) => Ok(Wire::MessagesToChat),
            (e, Dialect::Anthropic) => Err(format!(
                "{} is served only by OpenAI-family targets (openai, openrouter, openai-compatible), and this model has none that could take the request",
                e.route()
            )),
            (_, Dialect::OpenAi) => Ok(Wire::Native),
        }
    }

    /// The endpoint called upstream for a request of `client`.
    pub fn upstream(self, client: Endpoint) -> Endpoint {
        match self {
            Wire::Native => client,
            Wire::ChatToMessages => Endpoint::Messages,
            Wire::MessagesToChat => Endpoint::ChatCompletions,
        }
    }
}
