//! Provider adapters: how a request reaches an upstream. A provider is a trait object so
//! users can register their own kinds; the router only sees [`Call`] in and [`Reply`] out.

pub mod anthropic;
mod limits;
pub use limits::{announced_limits, worth_learning};
pub mod mock;
pub mod openai;

use crate::error::UpstreamError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use http::HeaderMap;
use llmux_core::{Secret, Usage};
use std::time::Duration;

/// The operations llmux routes: OpenAI's chat completions, completions, embeddings and
/// Responses, and Anthropic's Messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic Messages (`/v1/messages`).
    Messages,
    /// OpenAI Responses (`/v1/responses`).
    Responses,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
        Endpoint::Responses,
    ];

    /// The path below the provider's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/messages",
            Endpoint::Responses => "/responses",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }
    /// The gateway route that serves it.
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Messages => "/v1/messages",
            Endpoint::Responses => "/v1/responses",
        }
    }
    /// Position in [`Endpoint::ALL`], for per-endpoint tables.
    pub fn index(self) -> usize {
        self as usize
    }
    /// The dialect requests and answers of this endpoint are written in.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }
}

/// The wire dialect an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// The OpenAI family: chat completions, completions, embeddings, Responses.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// One upstream call.
#[derive(Clone, Debug)]
pub struct Call {
    pub endpoint: Endpoint,
    /// The JSON body to send, with `model` already set to the upstream model.
    pub body: Bytes,
    pub stream: bool,
    pub secret: Secret,
    /// Until the response head (and, for non-streamed answers, the whole body).
    pub timeout: Duration,
    /// Until the response head, if sooner (`first_token_timeout_secs`); the router bounds a
    /// stream's first chunk by it too.
    pub first_byte: Option<Duration>,
    /// Largest non-streamed answer to read; a larger one fails with
    /// [`UpstreamError::TooLarge`].
    pub max_response_bytes: usize,
}

/// A streamed body: chunks as they arrive from upstream.
pub type ByteStream = BoxStream<'static, Result<Bytes, UpstreamError>>;

pub enum ReplyBody {
    Full(Bytes),
    Stream(ByteStream),
}

impl std::fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ReplyBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// What the upstream answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: ReplyBody,
}

/// An upstream API. Users register their own with `RouterBuilder::provider_kind` and name the
/// kind in config.
pub trait Provider: Send + Sync + 'static {
    /// The dialect this upstream speaks: a request of the other one is translated for it.
    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }

    /// Send one call. Must not retry: the router does failover.
    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>>;

    /// What `request` (the OpenAI-shaped JSON body) will cost, reserved before sending.
    /// `None`: llmux's estimate (prompt length / 4 plus `max_tokens`).
    fn estimate_cost(&self, request: &serde_json::Map<String, serde_json::Value>) -> Option<Usage> {
        let _ = request;
        None
    }

    /// Whether [`Provider::estimate_cost`] is overridden. Leave it `true` when it is: llmux
    /// then builds the request map for it; the built-in providers answer `false`, so the
    /// gateway's path never builds one.
    fn has_own_estimate(&self) -> bool {
        true
    }

    /// What a whole (non-streamed) response body cost. `None`: read the OpenAI `usage` block.
    fn actual_cost(&self, body: &[u8]) -> Option<Usage> {
        let _ = body;
        None
    }
}

/// How long a 429 asks us to wait: the longest of `retry-after-ms`, `retry-after` (seconds or
/// an HTTP date), the `x-ratelimit-reset-*` durations (`"6ms"`, `"1m30s"`) and the RFC 3339
/// resets of the exhausted `anthropic-ratelimit-*` limits.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, std::time::SystemTime::now())
}

/// [`retry_after`] with the wall clock as a parameter (Anthropic's resets are instants).
pub fn retry_after_at(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = jiff::Timestamp::try_from(now).ok();
    let until =
        |at: jiff::Timestamp| now.and_then(|n| secs(n.duration_until(at).as_secs_f64().max(0.0)));
    let ms = get("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| secs(ms / 1000.0));
    let header = get("retry-after").and_then(|v| match v.trim().parse::<f64>() {
        Ok(s) => secs(s),
        // The other form of `retry-after`: an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`).
        Err(_) => jiff::fmt::rfc2822::parse(v.trim())
            .ok()
            .and_then(|at| until(at.timestamp())),
    });
    let openai = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|h| get(h).and_then(parse_go_duration))
        .max();
    let anthropic = ["requests", "tokens", "input-tokens", "output-tokens"]
        .iter()
        .filter(|l| get(&format!("anthropic-ratelimit-{l}-remaining")) == Some("0"))
        .filter_map(|l| get(&format!("anthropic-ratelimit-{l}-reset")))
        .filter_map(|v| v.trim().parse::<jiff::Timestamp>().ok())
        .filter_map(until)
        .max();
    [ms, header, openai, anthropic].into_iter().flatten().max()
}

/// Longest wait an upstream hint can impose (a day): every hinted or learned wait
/// (`retry-after(-ms)`, the `x-ratelimit-reset-*` durations, the `anthropic-ratelimit-*-reset`
/// instants) is capped here. NaN, infinite and negative hints are ignored rather than trusted.
pub const MAX_HINT: Duration = Duration::from_secs(86_400);
const MAX_HINT_SECS: f64 = MAX_HINT.as_secs() as f64;

/// An announced reset instant, at most [`MAX_HINT`] after `now`.
pub(crate) fn capped_reset(
    now: llmux_core::Timestamp,
    at: llmux_core::Timestamp,
) -> llmux_core::Timestamp {
    at.min(now.plus(MAX_HINT))
}

fn secs(s: f64) -> Option<Duration> {
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(MAX_HINT_SECS)))
}

/// Parse durations like `"1m30.5s"`, `"6ms"`, `"2h"`, `"0.5s"`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let value: f64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            's' => 1.0,
            _ => return None,
        };
        total += value * unit;
        any = true;
    }
    if !num.is_empty() {
        // A bare number means seconds.
        total += num.parse::<f64>().ok()?;
        any = true;
    }
    if any {
        secs(total)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_retry_hints() {
        assert_eq!(
            parse_go_duration("1m30.5s"),
            Some(Duration::from_millis(90_500))
        );
        assert_eq!(parse_go_duration("6ms"), Some(Duration::from_millis(6)));
        assert_eq!(parse_go_duration("x"), None);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", "2s".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        for bad in ["inf", "nan", "-5", "1e400"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", bad.parse().unwrap());
            assert!(
                retry_after(&h).is_none_or(|d| d <= Duration::from_secs(86_400)),
                "{bad}"
            );
        }
        let mut h = HeaderMap::new();
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        h.insert("anthropic-ratelimit-tokens-remaining", "0".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            "2023-11-14T22:13:40Z".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "5".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-reset",
            "2023-11-14T23:13:20Z".parse().unwrap(),
        );
        let mut dated = HeaderMap::new();
        dated.insert(
            "retry-after",
            "Tue, 14 Nov 2023 22:13:50 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_at(&dated, now), Some(Duration::from_secs(30)));
        dated.insert(
            "retry-after",
            "Tue, 14 Nov 2023 22:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after_at(&dated, now),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        assert_eq!(
            retry_after_at(&h, now),
            Some(Duration::from_secs(20)),
            "the exhausted limit's reset, 20 s after now; not the one with room left"
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset-tokens",
            "99999999999999999999999s".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(86_400)));
        // Several hints: the longest wins.
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", "500".parse().unwrap());
        h.insert("retry-after", "2".parse().unwrap());
        h.insert("x-ratelimit-reset-tokens", "5s".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(5)));
        h.insert("retry-after-ms", "9000".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(9)));
    }
}
