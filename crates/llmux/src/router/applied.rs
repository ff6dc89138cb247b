//! The limits that applied to a request, as the answer reports them: llmux's own
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (the tightest request and token limit)
//! and the IETF `RateLimit-Policy` / `RateLimit` fields listing every limit.

use http::HeaderName;
use llmux_core::config::{Enforce, SOFT_MARGIN};
use llmux_core::plan::Bound;
use llmux_core::{Measure, Subject, Timestamp, Window};
use std::fmt::Write;
use std::sync::Arc;

/// One limit a granted request was counted against, with the room left after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedLimit {
    pub subject: Subject,
    pub resource: Arc<str>,
    pub measure: Measure,
    pub capacity: u64,
    /// Room left in the window, this request's reservation taken.
    pub remaining: u64,
    /// A soft limit this request went past (it was served anyway).
    pub exceeded: bool,
    /// The window's length and end.
    pub window_ms: i64,
    pub resets_at: Timestamp,
}

impl AppliedLimit {
    /// The limits of `bounds` (in the order of the reservation's lines, with their windows),
    /// given the room the store reported.
    pub(crate) fn of<'a>(
        bounds: impl Iterator<Item = &'a Bound>,
        windows: &[Window],
        room: &[u64],
    ) -> Vec<AppliedLimit> {
        bounds
            .zip(windows)
            .zip(room)
            .map(|((b, w), &room)| AppliedLimit {
                subject: b.subject.clone(),
                resource: b.resource.name.clone(),
                measure: b.resource.measure,
                capacity: b.resource.capacity,
                remaining: b.resource.shown(room),
                exceeded: b.resource.enforce == Enforce::Soft && room < SOFT_MARGIN,
                window_ms: w.end.0.saturating_sub(w.start.0),
                resets_at: w.end,
            })
            .collect()
    }
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const BUDGET_EXCEEDED: HeaderName = HeaderName::from_static("x-llmux-budget-exceeded");

/// The `x-ratelimit-{limit,remaining,reset}-*` trio that reports a limit counting `m`: the
/// `-requests` one for requests, the `-tokens` one for tokens (all, input or output); none for
/// other measures.
fn trio(m: Measure) -> Option<[HeaderName; 3]> {
    match m {
        Measure::Requests => Some([LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS]),
        Measure::Tokens | Measure::InputTokens | Measure::OutputTokens => {
            Some([LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS])
        }
        _ => None,
    }
}

/// llmux's `x-ratelimit-{limit,remaining,reset}-*` for a refusal: the limit that refused (what
/// it counts, its capacity and the room it had), resetting in `reset_ms` (when it could
/// admit). None for a limit that counts neither requests nor tokens.
pub fn refusal_rate_limit_headers(
    measure: Measure,
    capacity: u64,
    remaining: u64,
    reset_ms: i64,
) -> Vec<(HeaderName, String)> {
    let Some([limit, left, reset]) = trio(measure) else {
        return Vec::new();
    };
    vec![
        (limit, capacity.to_string()),
        (left, remaining.to_string()),
        (reset, go_duration(reset_ms)),
    ]
}

/// The answer headers for `limits` at `now`: `(name, value)` pairs, none when no limit applied.
/// Built on every answer, so without per-header allocations beyond the values themselves.
pub fn rate_limit_headers(limits: &[AppliedLimit], now: Timestamp) -> Vec<(HeaderName, String)> {
    if limits.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(8);
    // The tightest request limit and the tightest token limit, each under its trio.
    for family in [Measure::Requests, Measure::Tokens] {
        let names = trio(family);
        let tightest = limits
            .iter()
            .filter(|l| trio(l.measure) == names)
            .min_by_key(|l| (l.remaining, l.resets_at));
        let (Some(l), Some([limit, remaining, reset])) = (tightest, names) else {
            continue;
        };
        out.push((limit, l.capacity.to_string()));
        out.push((remaining, l.remaining.to_string()));
        out.push((reset, go_duration(l.resets_at.0.saturating_sub(now.0))));
    }
    let mut policy = String::with_capacity(48 * limits.len());
    let mut state = String::with_capacity(48 * limits.len());
    for (i, l) in limits.iter().enumerate() {
        if i > 0 {
            policy.push_str(", ");
            state.push_str(", ");
        }
        let w = (l.window_ms.max(0) as u64).div_ceil(1000);
        let t = now.secs_until_ceil(l.resets_at);
        push_name(&mut policy, l);
        let _ = write!(policy, ";q={};w={w}", l.capacity);
        push_name(&mut state, l);
        let _ = write!(state, ";r={};t={t}", l.remaining);
    }
    out.push((RATELIMIT_POLICY, policy));
    out.push((RATELIMIT, state));
    // Soft limits this request went past: `SUBJECT:RESOURCE`, comma-separated.
    let mut exceeded = String::new();
    for l in limits.iter().filter(|l| l.exceeded) {
        if !exceeded.is_empty() {
            exceeded.push_str(", ");
        }
        let _ = write!(exceeded, "{}:{}", l.subject, l.resource);
    }
    if !exceeded.is_empty() {
        out.push((BUDGET_EXCEEDED, exceeded));
    }
    out
}

/// `"SUBJECT:RESOURCE"` as a structured-field string: quotes and backslashes escaped.
fn push_name(out: &mut String, l: &AppliedLimit) {
    out.push('"');
    let _ = write!(Escaped(out), "{}:{}", l.subject, l.resource);
    out.push('"');
}

/// Writes into a structured-field string, escaping quotes and backslashes.
struct Escaped<'a>(&'a mut String);

impl Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for c in s.chars() {
            if c == '"' || c == '\\' {
                self.0.push('\\');
            }
            self.0.push(c);
        }
        Ok(())
    }
}

/// `ms` as OpenAI writes its resets: `20ms` below a second, else `1s`, `6m0s`, `2h0m0s`
/// (whole seconds, rounded up).
pub(crate) fn go_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = (ms as u64).div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(
        subject: &str,
        resource: &str,
        m: Measure,
        cap: u64,
        left: u64,
        w: i64,
    ) -> AppliedLimit {
        AppliedLimit {
            subject: Subject::new(subject),
            resource: Arc::from(resource),
            measure: m,
            capacity: cap,
            remaining: left,
            exceeded: false,
            window_ms: w,
            resets_at: Timestamp(w),
        }
    }

    #[test]
    fn reports_the_tightest_limits_and_every_policy() {
        let ls = vec![
            limit("mock-a/k1", "rpm", Measure::Requests, 60, 59, 60_000),
            limit(
                "mock-a",
                "tpm-monthly",
                Measure::Tokens,
                1_000_000,
                999_000,
                2_592_000_000,
            ),
            limit("mock-a", "rpd", Measure::Requests, 100, 3, 86_400_000),
        ];
        let h = rate_limit_headers(&ls, Timestamp(30_000));
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-ratelimit-limit-requests"), Some("100"));
        assert_eq!(get("x-ratelimit-remaining-requests"), Some("3"));
        assert_eq!(get("x-ratelimit-reset-requests"), Some("23h59m30s"));
        assert_eq!(get("x-ratelimit-remaining-tokens"), Some("999000"));
        assert_eq!(
            get("ratelimit-policy"),
            Some(
                r#""mock-a/k1:rpm";q=60;w=60, "mock-a:tpm-monthly";q=1000000;w=2592000, "mock-a:rpd";q=100;w=86400"#
            )
        );
        assert_eq!(
            get("ratelimit"),
            Some(
                r#""mock-a/k1:rpm";r=59;t=30, "mock-a:tpm-monthly";r=999000;t=2591970, "mock-a:rpd";r=3;t=86370"#
            )
        );
        assert!(rate_limit_headers(&[], Timestamp(0)).is_empty());
        let odd = [limit("a\"b", "r\\m", Measure::Requests, 1, 0, 1000)];
        let h = rate_limit_headers(&odd, Timestamp(0));
        assert_eq!(h[4].1, r#""a\"b:r\\m";r=0;t=1"#);
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(go_duration(20), "20ms");
        assert_eq!(go_duration(1000), "1s");
        assert_eq!(go_duration(1001), "2s");
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(-5), "0ms");
    }
}
