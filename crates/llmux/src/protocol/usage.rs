//! Usage as each dialect reports it, normalised into one [`Usage`] ledger.
//!
//! - OpenAI chat, completions, embeddings: `prompt_tokens` (cache reads included, as
//!   `prompt_tokens_details.cached_tokens`), `completion_tokens` (reasoning included, as
//!   `completion_tokens_details.reasoning_tokens`).
//! - OpenAI Responses: `input_tokens` (cache reads included, `input_tokens_details`),
//!   `output_tokens` (`output_tokens_details.reasoning_tokens`).
//! - Anthropic: `input_tokens` *excludes* `cache_read_input_tokens` and
//!   `cache_creation_input_tokens`; the ledger's input adds them back.

use crate::provider::Endpoint;
use llmux_core::Usage;
use serde::Deserialize;

/// How an upstream endpoint reports usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageShape {
    Chat,
    Anthropic,
    Responses,
}

impl UsageShape {
    /// The shape of what `upstream` answers.
    pub fn of(upstream: Endpoint) -> UsageShape {
        match upstream {
            Endpoint::Messages => UsageShape::Anthropic,
            Endpoint::Responses => UsageShape::Responses,
            _ => UsageShape::Chat,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

/// A `usage` object of any dialect, every field optional.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
}

impl WireUsage {
    /// `v` as a usage object (`None`: not an object, or not one of usage counts).
    pub fn from_value(v: &serde_json::Value) -> Option<WireUsage> {
        v.is_object()
            .then(|| WireUsage::deserialize(v).ok())
            .flatten()
    }

    /// The ledger, if the object holds the fields `shape` must report.
    pub fn normalize(&self, shape: UsageShape) -> Option<Usage> {
        let required = match shape {
            UsageShape::Chat => self.prompt_tokens,
            UsageShape::Responses | UsageShape::Anthropic => self.input_tokens,
        };
        required.map(|_| self.counts(shape))
    }

    /// The ledger, counts the object does not report taken as 0 (usage carried across
    /// dialects, where a missing count is no reason to drop the others).
    pub fn counts(&self, shape: UsageShape) -> Usage {
        let cached = |d: Option<Details>| d.and_then(|d| d.cached_tokens).unwrap_or(0);
        let reasoning = |d: Option<Details>| d.and_then(|d| d.reasoning_tokens).unwrap_or(0);
        match shape {
            UsageShape::Chat => Usage {
                input_tokens: self.prompt_tokens.unwrap_or(0),
                output_tokens: self.completion_tokens.unwrap_or(0),
                cache_read_tokens: cached(self.prompt_tokens_details),
                reasoning_tokens: reasoning(self.completion_tokens_details),
                ..Usage::default()
            },
            UsageShape::Responses => Usage {
                input_tokens: self.input_tokens.unwrap_or(0),
                output_tokens: self.output_tokens.unwrap_or(0),
                cache_read_tokens: cached(self.input_tokens_details),
                reasoning_tokens: reasoning(self.output_tokens_details),
                ..Usage::default()
            },
            UsageShape::Anthropic => {
                let read = self.cache_read_input_tokens.unwrap_or(0);
                let write = self.cache_creation_input_tokens.unwrap_or(0);
                Usage {
                    input_tokens: self
                        .input_tokens
                        .unwrap_or(0)
                        .saturating_add(read)
                        .saturating_add(write),
                    output_tokens: self.output_tokens.unwrap_or(0),
                    cache_read_tokens: read,
                    cache_write_tokens: write,
                    ..Usage::default()
                }
            }
        }
    }

    /// `later` over `self`: each field `later` reports replaces this one (Anthropic's
    /// `message_delta` usage is cumulative over `message_start`'s).
    pub fn merge(&mut self, later: &WireUsage) {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            prompt_tokens,
            completion_tokens,
            input_tokens,
            output_tokens,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            prompt_tokens_details,
            completion_tokens_details,
            input_tokens_details,
            output_tokens_details
        );
    }
}

/// The `"usage": {…}` object of a JSON body, found without parsing the rest: matching braces
/// from its opening one (the block holds numbers and small objects, no strings with braces).
fn usage_object(body: &[u8]) -> Option<&[u8]> {
    let key = b"\"usage\"";
    let at = memchr::memmem::rfind(body, key)?;
    let rest = &body[at + key.len()..];
    let open = rest.iter().position(|b| !b" \t\r\n:".contains(b))?;
    if rest[open] != b'{' {
        return None;
    }
    let mut depth = 0usize;
    for (i, b) in rest[open..].iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[open..=open + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Usage from a whole (non-streamed) JSON body of `shape`: its top-level `usage`.
pub fn usage_of_body(shape: UsageShape, body: &[u8]) -> Option<Usage> {
    if let Some(obj) = usage_object(body) {
        if let Some(u) = serde_json::from_slice::<WireUsage>(obj)
            .ok()
            .and_then(|w| w.normalize(shape))
        {
            return Some(u);
        }
    }
    // The slow path: the last `"usage"` was not the top-level block (a key inside a tool
    // call's arguments, say).
    #[derive(Deserialize)]
    struct Body {
        usage: Option<WireUsage>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()?
        .usage?
        .normalize(shape)
}

/// The ledger as an OpenAI chat `usage` object (cache reads are part of `prompt_tokens`).
pub fn chat_usage_json(u: &Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens.saturating_add(u.output_tokens),
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
    })
}

/// The ledger as an Anthropic `usage` object (`input_tokens` leaves the cache tokens out).
pub fn anthropic_usage_json(u: &Usage) -> serde_json::Value {
    let uncached = u
        .input_tokens
        .saturating_sub(u.cache_read_tokens)
        .saturating_sub(u.cache_write_tokens);
    serde_json::json!({
        "output_tokens": u.output_tokens,
        "input_tokens": uncached,
        "cache_read_input_tokens": u.cache_read_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    })
}

/// Usage from one SSE event's data, as it stands after the event. Anthropic streams report
/// usage in two halves: `message_start` (input, cache) then `message_delta` (output); only
/// the second makes it complete, so a stream cut between them has no known usage.
#[derive(Debug, Default)]
pub struct StreamUsage {
    acc: WireUsage,
    complete: bool,
}

impl StreamUsage {
    /// Read `data` (an event's JSON) of a stream of `shape`.
    pub fn event(&mut self, shape: UsageShape, data: &serde_json::Value) {
        let usage = |v: Option<&serde_json::Value>| v.and_then(WireUsage::from_value);
        match shape {
            UsageShape::Chat => {
                if let Some(u) = usage(data.get("usage")) {
                    self.acc = u;
                    self.complete = true;
                }
            }
            UsageShape::Responses => {
                if let Some(u) = usage(data.get("response").and_then(|r| r.get("usage"))) {
                    self.acc = u;
                    self.complete = true;
                }
            }
            UsageShape::Anthropic => match data.get("type").and_then(|t| t.as_str()) {
                Some("message_start") => {
                    if let Some(u) = usage(data.get("message").and_then(|m| m.get("usage"))) {
                        self.acc = u;
                    }
                }
                Some("message_delta") => {
                    if let Some(u) = usage(data.get("usage")) {
                        self.acc.merge(&u);
                        self.complete = true;
                    }
                }
                _ => {}
            },
        }
    }

    /// The usage, once the stream reported all of it.
    pub fn get(&self, shape: UsageShape) -> Option<Usage> {
        if self.complete {
            self.acc.normalize(shape)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_dialect_normalises_into_one_ledger() {
        let chat = br#"{"id":"x","usage":{"prompt_tokens":50,"completion_tokens":20,"prompt_tokens_details":{"cached_tokens":30},"completion_tokens_details":{"reasoning_tokens":8}}}"#;
        let want = Usage {
            input_tokens: 50,
            output_tokens: 20,
            cache_read_tokens: 30,
            reasoning_tokens: 8,
            ..Usage::default()
        };
        assert_eq!(usage_of_body(UsageShape::Chat, chat), Some(want));
        let responses = br#"{"usage":{"input_tokens":50,"input_tokens_details":{"cached_tokens":30},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":8},"total_tokens":70},"user":null}"#;
        assert_eq!(usage_of_body(UsageShape::Responses, responses), Some(want));
        // Anthropic leaves cache tokens out of input_tokens: the ledger adds them back.
        let anthropic = br#"{"type":"message","content":[{"type":"tool_use","input":{"usage":{"a":1}}}],"usage":{"input_tokens":12,"cache_read_input_tokens":30,"cache_creation_input_tokens":8,"output_tokens":20}}"#;
        let u = usage_of_body(UsageShape::Anthropic, anthropic).unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.output_tokens
            ),
            (50, 30, 8, 20)
        );
        assert_eq!(usage_of_body(UsageShape::Chat, b"not json"), None);
        assert_eq!(
            usage_of_body(UsageShape::Anthropic, br#"{"usage":{}}"#),
            None
        );
        let in_args = br#"{"usage":{"input_tokens":1,"output_tokens":2},"content":[{"input":{"usage":{"x":1}}}]}"#;
        assert_eq!(
            usage_of_body(UsageShape::Anthropic, in_args),
            Some(Usage::new(1, 2)),
            "a usage key inside a tool call does not hide the real one"
        );
    }

    #[test]
    fn anthropic_stream_usage_needs_both_halves() {
        let mut s = StreamUsage::default();
        let shape = UsageShape::Anthropic;
        s.event(shape, &json!({"type": "message_start", "message": {"usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": 1}}}));
        assert_eq!(s.get(shape), None, "cut after message_start: unknown");
        s.event(
            shape,
            &json!({"type": "message_delta", "usage": {"output_tokens": 42}}),
        );
        let u = s.get(shape).unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.output_tokens),
            (110, 100, 42)
        );
        let mut s = StreamUsage::default();
        s.event(
            UsageShape::Responses,
            &json!({"type": "response.created", "response": {"usage": null}}),
        );
        assert_eq!(s.get(UsageShape::Responses), None);
        s.event(UsageShape::Responses, &json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}}));
        assert_eq!(s.get(UsageShape::Responses), Some(Usage::new(3, 4)));
    }
}
