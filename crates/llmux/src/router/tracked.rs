//! `Tracked`: a streamed answer that reconciles its lease when it ends, breaks, stalls or is
//! dropped. A stream that breaks or stalls (no chunk for `idle`) ends with an in-band SSE
//! error event and no `[DONE]`, never a silent truncation.

use crate::error::UpstreamError;
use crate::lease::Lease;
use crate::protocol::errors::stream_error_event;
use crate::provider::{ByteStream, Endpoint};
use crate::sse::UsageScanner;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub(crate) struct Tracked {
    inner: ByteStream,
    scanner: UsageScanner,
    lease: Option<Lease>,
    started: Instant,
    /// Longest wait for the next chunk.
    idle: Duration,
    /// When the last chunk came; the timer is moved on lazily (not reset per chunk).
    last_chunk: tokio::time::Instant,
    idle_timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    /// The stream broke or stalled: it settles as a failure for the target's health.
    broken: bool,
    /// Whose dialect the error event is written in.
    client: Endpoint,
    /// The request's `deadline_secs`: the stream ends with an error event then.
    deadline: Option<tokio::time::Instant>,
}

impl Tracked {
    pub(crate) fn new(
        inner: ByteStream,
        scanner: UsageScanner,
        lease: Lease,
        idle: Duration,
        client: Endpoint,
    ) -> Self {
        Tracked {
            inner,
            scanner,
            lease: Some(lease),
            started: Instant::now(),
            idle,
            last_chunk: tokio::time::Instant::now(),
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            done: false,
            broken: false,
            client,
            deadline: None,
        }
    }

    /// End the stream at `deadline` (if any) with an error event.
    pub(crate) fn until(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        if let Some(d) = deadline {
            self.deadline = Some(d);
            let first = (tokio::time::Instant::now() + self.idle).min(d);
            self.idle_timer.as_mut().reset(first);
        }
        self
    }

    fn settle(&mut self) {
        if let Some(lease) = self.lease.take() {
            // A stream that ended without usage (or broke) commits the estimate: tokens that
            // cannot be proved unused are never given back.
            let usage = lease
                .stats
                .observe_usage(self.scanner.usage(), lease.estimate());
            if self.broken {
                lease.broken_detached(usage);
            } else {
                lease.complete_detached(usage, self.started.elapsed());
            }
        }
    }

    /// End the stream with the client dialect's error event, on a line of its own.
    fn error_event(&mut self, message: &str, code: &str) -> Bytes {
        self.done = true;
        // A stream that broke or stalled counts against the target's breaker and its success
        // rate (its usage is still committed).
        self.broken = true;
        self.settle();
        let event = stream_error_event(self.client, message, code);
        let sep = if self.scanner.mid_event() { "\n\n" } else { "" };
        Bytes::from(format!("{sep}{event}"))
    }
}

impl Stream for Tracked {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.inner.poll_next_unpin(cx) {
                Poll::Pending => {
                    if self.idle_timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let now = tokio::time::Instant::now();
                    if self.deadline.is_some_and(|d| d <= now) {
                        tracing::warn!("the request's deadline passed mid-stream");
                        let e = "the request's deadline passed before the stream ended";
                        return Poll::Ready(Some(Ok(self.error_event(e, "deadline_exceeded"))));
                    }
                    let mut due = self.last_chunk + self.idle;
                    if due > now {
                        // A chunk came since the timer was set: wait from that chunk.
                        if let Some(d) = self.deadline {
                            due = due.min(d);
                        }
                        self.idle_timer.as_mut().reset(due);
                        continue;
                    }
                    let idle = self.idle.as_secs();
                    tracing::warn!(idle_secs = idle, "upstream stream stalled");
                    let e = format!("the upstream sent nothing for {idle} s");
                    return Poll::Ready(Some(Ok(self.error_event(&e, "upstream_stream_stalled"))));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    self.last_chunk = tokio::time::Instant::now();
                    if let Some(out) = self.scanner.feed(chunk) {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    let event = self.error_event(
                        "the upstream stream ended unexpectedly",
                        "upstream_stream_broken",
                    );
                    return Poll::Ready(Some(Ok(event)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let rest = self.scanner.finish();
                    self.settle();
                    return Poll::Ready(rest.map(Ok));
                }
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.settle();
    }
}
