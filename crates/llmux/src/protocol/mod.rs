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
pub mod tokens;
pub mod translate;
pub mod usage;

use crate::provider::{Dialect, Endpoint};
use bytes::Bytes;
use openai::RawRequest;
use serde_json::{Map, Value};
use translate::Untranslatable;

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

    /// The body for one attempt on a target of this wire serving `upstream_model`: the
    /// client's bytes with the model spliced in (and, for a chat or completions stream,
    /// `stream_options.include_usage`, so the stream reports usage), or the body translated.
    /// `map` is the body parsed, built on first need and kept for the next attempt.
    pub fn request_body(
        self,
        client: Endpoint,
        raw: &RawRequest<'_>,
        map: &mut Option<Map<String, Value>>,
        upstream_model: &str,
        default_max_tokens: u64,
    ) -> Result<Bytes, Untranslatable> {
        if self == Wire::Native {
            let include_usage =
                raw.stream && matches!(client, Endpoint::ChatCompletions | Endpoint::Completions);
            return Ok(Bytes::from(raw.write(upstream_model, include_usage)));
        }
        let map = map.get_or_insert_with(|| raw.to_map());
        let v = match self {
            Wire::ChatToMessages => {
                translate::chat_to_messages(map, upstream_model, default_max_tokens)?
            }
            _ => translate::messages_to_chat(map, upstream_model)?,
        };
        Ok(Bytes::from(v.to_string()))
    }

    /// A whole successful answer in the client's dialect (`None`: not the shape expected).
    /// `created`: unix seconds, for a chat answer made from a Messages one.
    pub fn answer_body(self, bytes: &Bytes, created: u64) -> Option<Bytes> {
        let out = match self {
            Wire::Native => return Some(bytes.clone()),
            Wire::ChatToMessages => {
                let v: Value = serde_json::from_slice(bytes).ok()?;
                translate::messages_response_to_chat(&v, created)?
            }
            Wire::MessagesToChat => {
                let v: Value = serde_json::from_slice(bytes).ok()?;
                translate::chat_response_to_messages(&v)?
            }
        };
        Some(Bytes::from(out.to_string()))
    }

    /// An upstream error answer in the envelope of `client`'s dialect.
    pub fn error_body(self, client: Endpoint, status: u16, bytes: Bytes) -> Bytes {
        let v = match (self, client.dialect()) {
            (Wire::Native, _) => return bytes,
            (_, Dialect::Anthropic) => translate::error_to_anthropic(status, &bytes),
            (_, Dialect::OpenAi) => translate::error_to_openai(status, &bytes),
        };
        Bytes::from(v.to_string())
    }
}
