//! What a request costs: the estimate reserved before sending, the usage reported after, and
//! how each maps onto a resource's unit ([`Measure`]).

use serde::Serialize;

/// What one unit of a resource counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Requests,
    /// Input plus output tokens.
    Tokens,
    /// Input tokens, cache reads and writes included.
    InputTokens,
    OutputTokens,
    /// Input tokens read from the upstream's prompt cache.
    CacheReadTokens,
    /// Input tokens written to the upstream's prompt cache.
    CacheWriteTokens,
    /// Output tokens spent on reasoning (part of the output).
    ReasoningTokens,
    /// Micro-USD (1 USD = 1_000_000).
    CostMicroUsd,
}

impl Measure {
    pub const UNITS: [&'static str; 8] = [
        "requests",
        "tokens",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost_usd",
    ];

    pub fn parse_unit(s: &str) -> Option<Measure> {
        Some(match s {
            "requests" => Measure::Requests,
            "tokens" => Measure::Tokens,
            "input_tokens" => Measure::InputTokens,
            "output_tokens" => Measure::OutputTokens,
            "cache_read_tokens" => Measure::CacheReadTokens,
            "cache_write_tokens" => Measure::CacheWriteTokens,
            "reasoning_tokens" => Measure::ReasoningTokens,
            "cost_usd" => Measure::CostMicroUsd,
            _ => return None,
        })
    }

    /// The unit a resource name implies: `rpm`/`rpd`/`requests…` count requests, `tpm`/`tpd`/
    /// `tokens…` tokens, `input_*`/`output_*` one side, `cache_read_*`/`cache_write_*`/
    /// `reasoning_*` those parts of the ledger, `cost…`/`budget…` money. Anything else counts
    /// requests unless the resource sets `unit`.
    pub fn from_name(name: &str) -> Measure {
        let n = name.to_ascii_lowercase();
        if n.starts_with("cache_read") {
            Measure::CacheReadTokens
        } else if n.starts_with("cache_write") {
            Measure::CacheWriteTokens
        } else if n.starts_with("reasoning") {
            Measure::ReasoningTokens
        } else if n.starts_with("input_") || n.starts_with("itp") {
            Measure::InputTokens
        } else if n.starts_with("output_") || n.starts_with("otp") {
            Measure::OutputTokens
        } else if n.starts_with("tp") || n.starts_with("token") {
            Measure::Tokens
        } else if n.starts_with("cost") || n.starts_with("budget") || n.ends_with("usd") {
            Measure::CostMicroUsd
        } else {
            Measure::Requests
        }
    }

    /// Config `value` in this unit (USD becomes micro-USD).
    pub fn capacity_from_value(self, value: f64) -> u64 {
        match self {
            Measure::CostMicroUsd => (value * 1_000_000.0).round() as u64,
            _ => value as u64,
        }
    }
}

/// Token counts of one request, the normalised ledger of every dialect: estimated before,
/// reported after. `input_tokens` counts every prompt token, cache reads and writes included
/// (as OpenTelemetry counts them; Anthropic's own `input_tokens` leaves them out);
/// `reasoning_tokens` are part of `output_tokens`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_micro_usd: u64,
}

impl Usage {
    pub fn new(input_tokens: u64, output_tokens: u64) -> Usage {
        Usage {
            input_tokens,
            output_tokens,
            ..Usage::default()
        }
    }

    /// The amount of `measure` this usage represents (one request).
    pub fn amount(&self, measure: Measure) -> u64 {
        match measure {
            Measure::Requests => 1,
            Measure::Tokens => self.input_tokens.saturating_add(self.output_tokens),
            Measure::InputTokens => self.input_tokens,
            Measure::OutputTokens => self.output_tokens,
            Measure::CacheReadTokens => self.cache_read_tokens,
            Measure::CacheWriteTokens => self.cache_write_tokens,
            Measure::ReasoningTokens => self.reasoning_tokens,
            Measure::CostMicroUsd => self.cost_micro_usd,
        }
    }
}

/// A cheap token estimate for text: about four bytes a token, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// What one image in a prompt is reserved as, in input tokens, unless it asks for low detail.
/// Images are not text: their base64 or URL says nothing of their cost. Both dialects price
/// an image by its pixels (OpenAI: 85 + 170 per 512 px tile, 765 for 1024x1024; Anthropic:
/// width x height / 750, at most about 1,600), so this is the upper end of either rule.
pub const IMAGE_TOKENS: u64 = 1_600;
/// An OpenAI image with `"detail": "low"`: a flat 85 tokens.
pub const LOW_DETAIL_IMAGE_TOKENS: u64 = 85;

/// The tokens of one image given as `image_url` (OpenAI chat's `{"url", "detail"}` object, or
/// the Responses API's URL string).
pub fn image_url_tokens(detail: Option<&str>) -> u64 {
    if detail == Some("low") {
        LOW_DETAIL_IMAGE_TOKENS
    } else {
        IMAGE_TOKENS
    }
}

/// Members of a request body whose text is prompt, besides `messages`: completion `prompt`,
/// embeddings and Responses `input`, Anthropic `system`, Responses `instructions`, and tool
/// definitions.
pub const PROMPT_FIELDS: [&str; 5] = ["prompt", "input", "system", "instructions", "tools"];

/// Estimate the input tokens of a request body of any dialect (chat and Anthropic `messages`
/// and the [`PROMPT_FIELDS`]): text length plus a small per-message overhead.
pub fn estimate_input_tokens(body: &serde_json::Map<String, serde_json::Value>) -> u64 {
    input_tokens_with(body, &estimate_tokens)
}

/// [`estimate_input_tokens`] with each string counted by `text` (a real tokenizer, say):
/// 4 tokens per message and 3 per request, images by their rule, `role` and `type` values
/// not counted.
pub fn input_tokens_with(
    body: &serde_json::Map<String, serde_json::Value>,
    text: &dyn Fn(&str) -> u64,
) -> u64 {
    fn tokens(v: &serde_json::Value, text: &dyn Fn(&str) -> u64) -> u64 {
        match v {
            serde_json::Value::String(s) => text(s),
            serde_json::Value::Array(a) => a.iter().map(|v| tokens(v, text)).sum(),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "type")
                .map(|(k, v)| match (k.as_str(), v) {
                    ("image_url", v) => image_url_tokens(v.get("detail").and_then(|d| d.as_str())),
                    // An Anthropic image (or document) block's `source`.
                    ("source", serde_json::Value::Object(_)) => IMAGE_TOKENS,
                    _ => tokens(v, text),
                })
                .sum(),
            _ => 0,
        }
    }
    let mut total = 0;
    if let Some(serde_json::Value::Array(msgs)) = body.get("messages") {
        total += msgs.iter().map(|m| 4 + tokens(m, text)).sum::<u64>() + 3;
    }
    for field in PROMPT_FIELDS {
        if let Some(v) = body.get(field) {
            total += tokens(v, text);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_imply_units() {
        assert_eq!(Measure::from_name("rpm"), Measure::Requests);
        assert_eq!(Measure::from_name("tpm"), Measure::Tokens);
        assert_eq!(Measure::from_name("input_tpm"), Measure::InputTokens);
        assert_eq!(Measure::from_name("cost_usd"), Measure::CostMicroUsd);
        assert_eq!(
            Measure::from_name("cache_read_tpm"),
            Measure::CacheReadTokens
        );
        assert_eq!(
            Measure::from_name("cache_write_tpd"),
            Measure::CacheWriteTokens
        );
        assert_eq!(
            Measure::parse_unit("reasoning_tokens"),
            Some(Measure::ReasoningTokens)
        );
        assert_eq!(Measure::from_name("anything"), Measure::Requests);
        assert_eq!(Measure::CostMicroUsd.capacity_from_value(1.5), 1_500_000);
    }

    #[test]
    fn images_count_by_their_rule_not_their_bytes() {
        let data = format!("data:image/png;base64,{}", "A".repeat(400_000));
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(400_000)}},
        ]}]});
        let n = estimate_input_tokens(body.as_object().unwrap());
        assert_eq!(
            n,
            3 + 4 + IMAGE_TOKENS + LOW_DETAIL_IMAGE_TOKENS + IMAGE_TOKENS
        );
    }

    #[test]
    fn estimates_chat_messages() {
        let body: serde_json::Value = serde_json::json!({
            "messages": [{"role": "user", "content": "12345678"}]
        });
        assert_eq!(estimate_input_tokens(body.as_object().unwrap()), 4 + 2 + 3);
    }
}
