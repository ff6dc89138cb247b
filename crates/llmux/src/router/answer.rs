//! The answer of a successful attempt: the headers passed on to the client, the body settled
//! (whole, or as a tracked stream) and translated back when the request was, and the first
//! chunk a `first_token_timeout_secs` waits for.

use super::tracked::Tracked;
use super::ResponseBody;
use crate::lease::Lease;
use crate::protocol::translate::{AnthropicToChatStream, ChatToAnthropicStream};
use crate::protocol::usage::{usage_of_body, UsageShape};
use crate::protocol::Wire;
use crate::provider::{Endpoint, Provider, ReplyBody};
use crate::sse::{Translator, UsageScanner};
use crate::stats::TargetStats;
use http::HeaderMap;
use std::time::{Duration, Instant};

pub(super) fn client_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let name = k.as_str();
        if name == "content-type"
            || name == "x-request-id"
            || name == "request-id"
            || name.starts_with("openai-")
        {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// What the answer of a successful attempt is turned into for the client.
pub(super) struct Answering<'a> {
    pub(super) client: Endpoint,
    pub(super) wire: Wire,
    /// The upstream model, named in a translated answer that names none.
    pub(super) model: &'a str,
    /// Unix seconds, for a translated answer's `created`.
    pub(super) created: u64,
    pub(super) client_wants_usage: bool,
}

/// The answer of a successful attempt: a whole body settles its lease now (its reported usage,
/// else the estimate); a stream settles it when it ends, breaks, stalls or is dropped. A
/// translated request's answer is translated back.
pub(super) fn settle_success(
    body: ReplyBody,
    provider: &dyn Provider,
    stats: &TargetStats,
    lease: Lease,
    started: Instant,
    (idle, deadline): (Duration, Option<tokio::time::Instant>),
    to: &Answering<'_>,
) -> Result<ResponseBody, String> {
    let shape = UsageShape::of(to.wire.upstream(to.client));
    match body {
        ReplyBody::Full(bytes) => {
            let latency = started.elapsed();
            stats.record_ok(Some(latency));
            let reported = provider
                .actual_cost(&bytes)
                .or_else(|| usage_of_body(shape, &bytes));
            let usage = stats.observe_usage(reported, lease.estimate());
            lease.complete_detached(usage, latency);
            // An answer that cannot be translated is an upstream failure; the gateway gives
            // it its status and envelope.
            match to.wire.answer_body(&bytes, to.created) {
                Some(b) => Ok(ResponseBody::Full(b)),
                None => Err("the upstream's answer could not be translated to this API".into()),
            }
        }
        ReplyBody::Stream(s) => {
            stats.record_ok(None);
            let mut scanner = UsageScanner::new(shape, !to.client_wants_usage);
            match to.wire {
                Wire::Native => {}
                Wire::ChatToMessages => {
                    let t = AnthropicToChatStream::new(to.model, to.client_wants_usage, to.created);
                    scanner = scanner.translating(Translator::ToChat(t));
                }
                Wire::MessagesToChat => {
                    let t = ChatToAnthropicStream::new(to.model);
                    scanner = scanner.translating(Translator::ToMessages(t));
                }
            }
            let tracked = Tracked::new(s, scanner, lease, idle, to.client).until(deadline);
            Ok(ResponseBody::Stream(Box::pin(tracked)))
        }
    }
}

/// Wait up to `left` for the stream's first chunk and put it back in front: an error if none
/// comes (a timeout of `within`) or the stream ends or breaks first.
pub(super) async fn first_chunk(
    s: &mut crate::provider::ByteStream,
    left: Duration,
    within: Duration,
) -> Result<(), crate::error::UpstreamError> {
    use crate::error::UpstreamError;
    use futures_util::StreamExt;
    let first = match tokio::time::timeout(left, s.next()).await {
        Err(_) => return Err(UpstreamError::Timeout(within.as_secs().max(1))),
        Ok(None) => {
            return Err(UpstreamError::Body(
                "the stream ended before its first byte".into(),
            ))
        }
        Ok(Some(Err(e))) => return Err(e),
        Ok(Some(Ok(chunk))) => chunk,
    };
    let rest = std::mem::replace(s, futures_util::stream::empty().boxed());
    *s = futures_util::stream::once(async move { Ok(first) })
        .chain(rest)
        .boxed();
    Ok(())
}
