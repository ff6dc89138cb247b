//! The limits an upstream announces on its answers: OpenAI's
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as durations: `6m0s`, `1s`,
//! `20ms`) and Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
//! {limit,remaining,reset}` (resets as RFC 3339 instants).

use super::parse_go_duration;
use http::HeaderMap;
use llmux_core::health::{Learned, LearnedMeasure};
use llmux_core::Timestamp;

/// The announced limits in `headers` at `now`, by [`LearnedMeasure::index`]. A limit counts only
/// with all three of its headers (limit, remaining, reset) readable.
pub fn announced_limits(headers: &HeaderMap, now: Timestamp) -> [Option<Learned>; 4] {
    let mut out = [None; 4];
    // Most answers announce nothing: one pass over the names tells.
    let (mut openai, mut anthropic) = (false, false);
    for name in headers.keys() {
        let n = name.as_str();
        openai |= n.starts_with("x-ratelimit-");
        anthropic |= n.starts_with("anthropic-ratelimit-");
    }
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let count = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let mut put = |m: LearnedMeasure, limit, remaining, reset_at: Option<Timestamp>| {
        if let (Some(limit), Some(remaining), Some(reset_at)) = (limit, remaining, reset_at) {
            // A reset in the past (a skewed clock) says nothing about the future.
            if reset_at > now {
                out[m.index()] = Some(Learned {
                    limit,
                    remaining,
                    reset_at: super::capped_reset(now, reset_at),
                });
            }
        }
    };
    if openai {
        for (m, [limit, remaining, reset]) in OPENAI {
            let reset = get(reset).and_then(parse_go_duration).map(|d| now.plus(d));
            put(m, count(limit), count(remaining), reset);
        }
    }
    if anthropic {
        for (m, [limit, remaining, reset]) in ANTHROPIC {
            let reset = get(reset)
                .and_then(|v| v.parse::<jiff::Timestamp>().ok())
                .map(|t| Timestamp(t.as_millisecond()));
            put(m, count(limit), count(remaining), reset);
        }
    }
    out
}

/// OpenAI's limit headers: limit, remaining, reset (a duration).
const OPENAI: [(LearnedMeasure, [&str; 3]); 2] = [
    (
        LearnedMeasure::Requests,
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
    ),
    (
        LearnedMeasure::Tokens,
        [
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ],
    ),
];

/// Anthropic's limit headers: limit, remaining, reset (an RFC 3339 instant).
const ANTHROPIC: [(LearnedMeasure, [&str; 3]); 4] = [
    (
        LearnedMeasure::Requests,
        [
            "anthropic-ratelimit-requests-limit",
            "anthropic-ratelimit-requests-remaining",
            "anthropic-ratelimit-requests-reset",
        ],
    ),
    (
        LearnedMeasure::Tokens,
        [
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ],
    ),
    (
        LearnedMeasure::InputTokens,
        [
            "anthropic-ratelimit-input-tokens-limit",
            "anthropic-ratelimit-input-tokens-remaining",
            "anthropic-ratelimit-input-tokens-reset",
        ],
    ),
    (
        LearnedMeasure::OutputTokens,
        [
            "anthropic-ratelimit-output-tokens-limit",
            "anthropic-ratelimit-output-tokens-remaining",
            "anthropic-ratelimit-output-tokens-reset",
        ],
    ),
];

/// Whether announced limits are worth writing to the store: one runs low (a fifth or less of
/// its limit left). Above that the upstream has room, and a write per answer would cost the
/// hot path a store round trip for nothing.
pub fn worth_learning(limits: &[Option<Learned>; 4]) -> bool {
    limits
        .iter()
        .flatten()
        .any(|l| l.remaining.saturating_mul(5) <= l.limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn reads_both_dialects_of_limit_headers() {
        let now = Timestamp(1_700_000_000_000);
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "3"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "900"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        let l = announced_limits(&h, now);
        assert_eq!(
            l[0],
            Some(Learned {
                limit: 60,
                remaining: 3,
                reset_at: now.plus_millis(360_000)
            })
        );
        assert_eq!(l[1].map(|x| x.reset_at), Some(now.plus_millis(20)));
        assert!(worth_learning(&l), "3 of 60 left is low");
        let a = headers(&[
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2023-11-14T22:14:00Z",
            ),
            // A limit missing its reset is ignored.
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
        ]);
        let l = announced_limits(&a, now);
        assert_eq!(
            l[LearnedMeasure::OutputTokens.index()].map(|x| (x.remaining, x.reset_at)),
            Some((7000, Timestamp(1_700_000_040_000)))
        );
        assert_eq!(l[0], None);
        assert!(!worth_learning(&l));
        assert_eq!(announced_limits(&HeaderMap::new(), now), [None; 4]);
    }

    #[test]
    fn a_reset_decades_ahead_is_capped_at_a_day() {
        let now = Timestamp(1_700_000_000_000);
        let day = now.plus(crate::provider::MAX_HINT);
        let a = headers(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2099-01-01T00:00:00Z"),
            ("x-ratelimit-limit-tokens", "1000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "900000h"),
        ]);
        let l = announced_limits(&a, now);
        assert_eq!(
            l[LearnedMeasure::Requests.index()].map(|x| x.reset_at),
            Some(day)
        );
        assert_eq!(
            l[LearnedMeasure::Tokens.index()].map(|x| x.reset_at),
            Some(day)
        );
    }
}
