//! One attempt: send under the lease, then settle by the [`outcome`](super::outcome) rule (a
//! success becomes the answer in `answer.rs`; a 429 cools the key; a 401/403 disables it; a
//! failure moves on), and learn the limits the answer announced.

use super::answer::{client_headers, first_chunk, settle_success, Answering};
use super::applied::AppliedLimit;
use super::decision::{Decision, SkipReason};
use super::outcome::{classify, Outcome};
use super::prepared::Prepared;
use super::refusals::Outcomes;
use super::{Response, ResponseBody, Router};
use crate::error::RouteError;
use crate::lease::Lease;
use crate::protocol::Wire;
use crate::provider::{announced_limits, worth_learning, Call, Provider, ReplyBody};
use crate::stats::{Pool, TargetStats};
use bytes::Bytes;
use http::HeaderMap;
use llmux_core::health::HealthOp;
use llmux_core::plan::PlannedTarget;
use llmux_core::store::{Denial, DenialReason, Store};
use llmux_core::Timestamp;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A settle that failed in the store: the reservation expires with its lease; the request
/// goes on (failover, or the upstream's answer) rather than failing on bookkeeping.
fn log_settle(r: Result<(), llmux_core::StoreError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "could not settle a reservation; it expires with its lease");
    }
}

/// An attempt about to be sent: its wire, its body, its reservation, and what is left of the
/// request's deadline.
pub(super) struct Sent {
    pub(super) wire: Wire,
    pub(super) payload: Bytes,
    pub(super) lease: Lease,
    /// The limits it was counted against (the answer's headers).
    pub(super) limits: Vec<AppliedLimit>,
    pub(super) left: Option<Duration>,
    pub(super) deadline: Option<tokio::time::Instant>,
}

/// What the failover loop does after an attempt. (Returned once per attempt: a box would cost
/// an allocation on every request for nothing.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    Answer(Response),
    Next,
    /// A timeout on a model that does not fall back on timeouts.
    Stop,
}

impl Router {
    /// Send to target `i` under `lease` and settle by the outcome.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempt(
        &self,
        pool: &Pool,
        i: usize,
        provider: &Arc<dyn Provider>,
        sent: Sent,
        req: &mut Prepared<'_>,
        now: Timestamp,
        out: &mut Outcomes,
    ) -> Result<Step, RouteError> {
        let Sent {
            wire,
            payload,
            mut lease,
            limits,
            left,
            deadline,
        } = sent;
        let target = &pool.plan.targets[i];
        let stats = &pool.stats[i];
        let timeout_secs = pool
            .plan
            .pool
            .timeout_secs
            .or(target.provider.timeout_secs)
            .unwrap_or(self.inner.config.request_timeout_secs);
        let mut timeout = Duration::from_secs(timeout_secs);
        if let Some(left) = left {
            timeout = timeout.min(left);
        }
        let first_byte = pool
            .plan
            .pool
            .first_token_timeout_secs
            .map(|s| Duration::from_secs(s).min(timeout));
        let call = Call {
            endpoint: wire.upstream(req.endpoint),
            body: payload,
            stream: req.body.stream,
            secret: lease.secret().clone(),
            timeout,
            first_byte,
            max_response_bytes: self.inner.config.max_response_bytes,
        };
        let started = Instant::now();
        let label = &stats.label;
        let fallback_on = &pool.plan.pool.fallback_on;
        // From here the upstream may see it: a caller that goes away now still counts it.
        lease.mark_sent();
        let mut result = provider.send(call).await;
        if let (Some(within), Ok(reply)) = (first_byte, &mut result) {
            // No byte of a streamed answer by `first_token_timeout_secs`: the next target
            // (nothing has reached the client yet).
            if let ReplyBody::Stream(s) = &mut reply.body {
                let left = within.saturating_sub(started.elapsed());
                if let Err(e) = first_chunk(s, left, within).await {
                    result = Err(e);
                }
            }
        }
        let outcome = classify(&result);
        if let Ok(reply) = &result {
            stats.record_first_byte(started.elapsed());
            self.learn_limits(target, stats, &reply.headers, reply.status);
        }
        let client = req.endpoint;
        let answer = move |status: u16, headers: HeaderMap, body: ResponseBody, out: &Outcomes| {
            let body = match body {
                // An error answer of the other dialect, in the client's envelope.
                ResponseBody::Full(b) if status >= 400 => {
                    ResponseBody::Full(wire.error_body(client, status, b))
                }
                b => b,
            };
            Step::Answer(Response {
                target: target.id.clone(),
                target_header: stats.header.clone(),
                attempts: out.attempts,
                status,
                headers,
                body,
                decision: Decision {
                    picked: Some(target.id.clone()),
                    attempts: out.attempts,
                    skipped: Vec::new(),
                },
                limits,
            })
        };
        let reply = match (outcome, result) {
            (outcome, Err(e)) => {
                let timeout = outcome == Outcome::Lost { timeout: true };
                metrics::counter!("llmux_upstream_requests_total", "target" => label.clone(), "outcome" => if timeout { "timeout" } else { "error" }).increment(1);
                tracing::info!(target = %label, error = %e, "upstream attempt failed");
                let mut lease = lease;
                lease.stats.record_failure(now);
                if outcome == Outcome::NotSent {
                    // The request never left: give the reservation back (the target is
                    // still unhealthy: it counts for its breaker).
                    lease.report(false);
                    log_settle(lease.release().await);
                } else {
                    // It left: the upstream may have done the work, so the estimate stays.
                    log_settle(lease.lost().await);
                }
                out.failure = Some((format!("{label}: {e}"), timeout));
                let why = if timeout {
                    SkipReason::Timeout
                } else {
                    SkipReason::Failed(502)
                };
                req.decision.skipped.push((target.id.clone(), why));
                return Ok(if timeout && !fallback_on.timeout {
                    Step::Stop
                } else {
                    Step::Next
                });
            }
            (Outcome::Success, Ok(reply)) => reply,
            (Outcome::RateLimited { retry_after }, Ok(reply)) => {
                count_status(label, 429);
                let subject = lease.key_subject().clone();
                let (until, settled) = lease.cool_down(retry_after).await;
                log_settle(settled);
                tracing::info!(target = %label, retry_after_ms = until.0 - now.0, "upstream 429: key cooling down");
                if fallback_on.status(429) {
                    req.decision
                        .skipped
                        .push((target.id.clone(), SkipReason::Failed(429)));
                    out.deny(Denial {
                        subject,
                        reason: DenialReason::Cooldown,
                        retry_at: Some(until),
                    });
                    return Ok(Step::Next);
                }
                return Ok(answer(429, client_headers(&reply.headers), reply.body, out));
            }
            (o @ (Outcome::KeyRefused | Outcome::ModelRefused), Ok(reply)) => {
                // 401: the key is refused everywhere; 403: only for this model.
                let subject = if o == Outcome::KeyRefused {
                    target.key_gate().clone()
                } else {
                    target.target_gate().clone()
                };
                count_status(label, reply.status);
                tracing::warn!(target = %label, status = reply.status, %subject, "upstream refused the key: disabling it");
                let mut lease = lease;
                lease.neutral();
                log_settle(lease.failed().await);
                self.inner.ledger.note_local_disable(&subject, now);
                let why = format!(
                    "the upstream answered {} at {} ({})",
                    reply.status,
                    now.rfc3339(),
                    if o == Outcome::KeyRefused {
                        "the key is refused"
                    } else {
                        "the key is refused for this model"
                    }
                );
                let store = &self.inner.ledger.store;
                let disabled = store.set_disabled(subject.clone(), true).await;
                let noted = llmux_core::Records::put_record(
                    store,
                    llmux_core::records::DISABLED,
                    subject.as_str(),
                    &why,
                )
                .await;
                if let Err(e) = disabled.and(noted) {
                    tracing::error!(error = %e, "could not record the disabled key in the store");
                }
                out.failure = Some((format!("{label} answered {}", reply.status), false));
                req.decision
                    .skipped
                    .push((target.id.clone(), SkipReason::Failed(reply.status)));
                return Ok(Step::Next);
            }
            (_, Ok(reply)) => {
                let status = reply.status;
                count_status(label, status);
                let mut lease = lease;
                if status < 500 {
                    // The request's fault, not the target's.
                    lease.neutral();
                }
                log_settle(lease.failed().await);
                if fallback_on.status(status) {
                    out.failure = Some((format!("{label} answered {status}"), false));
                    req.decision
                        .skipped
                        .push((target.id.clone(), SkipReason::Failed(status)));
                    return Ok(Step::Next);
                }
                // Not a failover status: the client gets the upstream's answer.
                return Ok(answer(
                    status,
                    client_headers(&reply.headers),
                    reply.body,
                    out,
                ));
            }
        };
        let headers = client_headers(&reply.headers);
        let idle = pool
            .plan
            .pool
            .stream_idle_timeout_secs
            .unwrap_or(timeout_secs);
        let answer_to = Answering {
            client,
            wire,
            model: &target.id.model,
            created: u64::try_from(now.0 / 1000).unwrap_or(0),
            client_wants_usage: req.body.client_wants_usage,
        };
        let settled = settle_success(
            reply.body,
            provider.as_ref(),
            stats,
            lease,
            started,
            (Duration::from_secs(idle), deadline),
            &answer_to,
        );
        match settled {
            Ok(body) => Ok(answer(200, headers, body, out)),
            Err(message) => Err(RouteError::Upstream {
                attempts: out.attempts,
                timeout: false,
                message: format!("{label}: {message}"),
            }),
        }
    }

    /// Learn the limits the upstream announced on its answer (`discover_limits`): written to
    /// the key's flags when one runs low, or on a 429, in the background.
    /// A key this process wrote low limits for hears of the recovery too (the answers of
    /// requests in flight), so the low figures do not hold it back until their reset.
    fn learn_limits(
        &self,
        target: &PlannedTarget,
        stats: &TargetStats,
        headers: &HeaderMap,
        status: u16,
    ) {
        if !target.provider.health.discover_limits {
            return;
        }
        let now = self.inner.ledger.clock.now();
        let limits = announced_limits(headers, now);
        if limits.iter().all(Option::is_none) {
            return;
        }
        let low = status == 429 || worth_learning(&limits);
        let until = limits.iter().flatten().map(|l| l.reset_at).max();
        if low || stats.wrote_low_limits(now) {
            stats.note_low_limits(if low { until } else { None });
            self.inner
                .ledger
                .health_later(target.key_gate().clone(), HealthOp::Learned(limits));
        }
    }
}

fn count_status(label: &str, status: u16) {
    metrics::counter!("llmux_upstream_requests_total", "target" => label.to_string(), "outcome" => status.to_string()).increment(1);
}
