//! One attempt and the failover loop: reserve on a target (one atomic store call), send, settle
//! by the [`outcome`](super::outcome) rule, and move on to the next target or fallback model.

use super::applied::AppliedLimit;
use super::decision::{Decision, SkipReason};
use super::outcome::{classify, Outcome};
use super::refusals::{limit_window, policy_refuses, priced, Outcomes};
use super::tracked::Tracked;
use super::{AuthorizedKey, Response, ResponseBody, Router};
use crate::error::RouteError;
use crate::lease::{Grant, Lease};
use crate::ledger::Ledger;
use crate::protocol::errors::error_body;
use crate::protocol::openai::RawRequest;
use crate::protocol::translate::{AnthropicToChatStream, ChatToAnthropicStream};
use crate::protocol::usage::{usage_of_body, UsageShape};
use crate::protocol::Wire;
use crate::provider::{announced_limits, worth_learning, Call, Endpoint, Provider, ReplyBody};
use crate::sse::{Translator, UsageScanner};
use crate::stats::{Pool, PoolSlot, TargetStats};
use bytes::Bytes;
use http::HeaderMap;
use llmux_core::config::OnStoreError;
use llmux_core::health::{GateUse, HealthOp};
use llmux_core::plan::{Bound, PlannedTarget};
use llmux_core::store::{Admission, Denial, DenialReason, LeaseId, Reserve, Reserved, Store};
use llmux_core::time::secs_to_millis;
use llmux_core::{Subject, Timestamp, Usage};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A settle that failed in the store: the reservation expires with its lease; the request
/// goes on (failover, or the upstream's answer) rather than failing on bookkeeping.
fn log_settle(r: Result<(), llmux_core::StoreError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "could not settle a reservation; it expires with its lease");
    }
}

/// A reserve the store may be working on: dropped before the answer arrives (the caller went
/// away, or the store call failed after it may have been applied), it releases the lease by
/// the id the caller chose.
struct PendingGrant<'a> {
    id: LeaseId,
    ledger: &'a Ledger,
    /// Still unanswered by the shared store.
    store: bool,
}

impl Drop for PendingGrant<'_> {
    fn drop(&mut self) {
        if self.store {
            self.ledger.release_later(self.id, false);
        }
    }
}

fn client_headers(h: &HeaderMap) -> HeaderMap {
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

/// What the failover loop needs of the request, parsed once.
pub(super) struct Prepared<'a> {
    pub(super) model: String,
    pub(super) endpoint: Endpoint,
    pub(super) body: RawRequest<'a>,
    /// The body as a map, for providers with their own estimate (built on first need).
    pub(super) map: Option<Map<String, Value>>,
    pub(super) estimate: Usage,
    pub(super) tier: Option<String>,
    pub(super) key: Option<&'a AuthorizedKey>,
    /// The key's, team's and tier's bounds (see `Router::extra_bounds`).
    pub(super) extra: Option<Arc<[Bound]>>,
    /// The decision so far: every target passed over, and the attempts made.
    pub(super) decision: Decision,
    /// Its place among the model's waiters, given up once a target admits it.
    pub(super) ticket: Option<super::waiting::Ticket>,
}

impl Router {
    /// Try to reserve `usage` on target `i` of `pool`.
    pub(super) async fn try_target(
        &self,
        pool: &Pool,
        i: usize,
        usage: &Usage,
        now: Timestamp,
        extra: Option<&Arc<[Bound]>>,
    ) -> Result<Result<Lease, Denial>, RouteError> {
        let t = &pool.plan.targets[i];
        let usage = &priced(t, usage);
        let Some(secret) = self.secret_of(t) else {
            // `secret = "store"` with no stored secret (yet): the key cannot be used.
            return Ok(Err(Denial {
                subject: t.key_gate().clone(),
                reason: DenialReason::Disabled,
                retry_at: None,
            }));
        };
        let slot = match pool.plan.pool.max_concurrent {
            None => None,
            Some(max) => match PoolSlot::take(pool, max) {
                Some(slot) => Some(slot),
                None => {
                    return Ok(Err(Denial {
                        subject: Subject::model(&pool.plan.pool.name),
                        reason: DenialReason::Concurrency {
                            max_concurrent: max,
                        },
                        retry_at: Some(now.plus_millis(1000)),
                    }))
                }
            },
        };
        let bounds = pool.bounds[i].clone();
        let extra = extra.cloned();
        let all = bounds.iter().chain(extra.iter().flat_map(|e| e.iter()));
        let mut ls = Vec::with_capacity(bounds.len() + extra.as_ref().map_or(0, |e| e.len()));
        ls.extend(all.map(|b| b.line(usage, now)));
        let ledger = &self.inner.ledger;
        // The id is ours before the store sees the call: if this future is dropped while the
        // store works, `pending` releases whatever it may have granted.
        let id = LeaseId::random(&mut rand::rng());
        let mut pending = PendingGrant {
            id,
            ledger,
            store: true,
        };
        let health = &t.provider.health;
        let windows: Vec<llmux_core::Window> = ls.iter().map(|l| l.window).collect();
        let reserve = Reserve {
            lease: id,
            now,
            lease_ttl_ms: secs_to_millis(self.inner.config.lease_ttl_secs),
            lines: ls,
            gates: t.gates.clone(),
            health: GateUse {
                learned: [
                    1,
                    usage.input_tokens.saturating_add(usage.output_tokens),
                    usage.input_tokens,
                    usage.output_tokens,
                ],
                probes: health.breaker.half_open_probes,
                open_ms: secs_to_millis(health.breaker.open_secs),
            },
        };
        // Fail-open keeps a copy for the process-local store; fail-closed needs none.
        let fail_open =
            (self.inner.config.on_store_error == OnStoreError::FailOpen).then(|| reserve.clone());
        let (reserved, local) = match (ledger.store.reserve_with_room(reserve).await, fail_open) {
            (Ok(a), _) => (a, false),
            (Err(e), Some(copy)) => {
                tracing::error!(error = %e, "store unreachable: serving fail-open, counting in this process only");
                metrics::counter!("llmux_store_errors_total", "policy" => "fail-open").increment(1);
                // What this process saw of cooldowns and disabled keys still holds.
                for g in &t.gates {
                    if let Some(until) = ledger.local_gate(g, now) {
                        return Ok(Err(Denial {
                            subject: g.clone(),
                            reason: DenialReason::Cooldown,
                            retry_at: Some(until),
                        }));
                    }
                }
                (
                    Reserved::without_room(ledger.reserve_locally(copy).await?),
                    true,
                )
            }
            (Err(e), None) => {
                metrics::counter!("llmux_store_errors_total", "policy" => "fail-closed")
                    .increment(1);
                return Err(e.into());
            }
        };
        // The store answered: a grant becomes a `Lease`, which settles it; a denial holds
        // nothing. (When it failed instead, `pending` still releases there, in case it
        // applied the reserve before failing.)
        if !local {
            pending.store = false;
        }
        let applied = AppliedLimit::of(
            bounds.iter().chain(extra.iter().flat_map(|e| e.iter())),
            &windows,
            &reserved.room,
        );
        let admission = reserved.admission;
        if let Admission::Probe(_) = admission {
            // 2: half-open, probing (as this process last saw it).
            metrics::gauge!("llmux_breaker_state", "target" => pool.stats[i].label.clone())
                .set(2.0);
        }
        match admission {
            Admission::Denied(d) => {
                metrics::counter!("llmux_rejections_total", "limit" => d.limit()).increment(1);
                Ok(Err(d))
            }
            Admission::Granted(id) | Admission::Probe(id) => Ok(Ok(Lease::granted(
                Grant {
                    id,
                    target: t.id.clone(),
                    secret,
                    key_subject: t.key_gate().clone(),
                    bounds,
                    extra,
                    estimate: *usage,
                    stats: pool.stats[i].clone(),
                    price: t.price,
                    slot,
                    local,
                    target_gate: t.target_gate().clone(),
                    health: *health,
                    probe: matches!(admission, Admission::Probe(_)),
                    applied,
                },
                ledger.clone(),
            ))),
        }
    }

    /// Try the targets of each pool of `chain` in candidate order until one answers, within
    /// the requested model's `deadline_secs`.
    pub(super) async fn send_with_failover(
        &self,
        chain: &[Arc<Pool>],
        req: &mut Prepared<'_>,
    ) -> Result<Response, RouteError> {
        let deadline = chain
            .first()
            .and_then(|p| p.plan.pool.deadline_secs)
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let Some(at) = deadline else {
            return self.failover(chain, req, None).await;
        };
        // Each attempt is bounded by what is left, so the deadline ends it as a timeout (its
        // reservation settled as such); this bound is the last resort, a little later.
        let grace = Duration::from_millis(250);
        match tokio::time::timeout_at(at + grace, self.failover(chain, req, deadline)).await {
            Ok(r) => r,
            Err(_) => Err(deadline_exceeded(req, 0)),
        }
    }

    async fn failover(
        &self,
        chain: &[Arc<Pool>],
        req: &mut Prepared<'_>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response, RouteError> {
        let first_now = self.inner.ledger.clock.now();
        let mut out = Outcomes::default();
        'chain: for pool in chain {
            let mut tried = 0u32;
            let candidates = self
                .candidates(pool, req.tier.as_deref(), first_now, &req.estimate)
                .await?;
            if req.tier.is_some() && candidates.len() < pool.plan.targets.len() {
                for (i, t) in pool.plan.targets.iter().enumerate() {
                    if !candidates.contains(&i) {
                        req.decision.skipped.push((t.id.clone(), SkipReason::Tier));
                    }
                }
            }
            for i in candidates {
                if tried >= pool.plan.pool.max_attempts {
                    break;
                }
                let target = &pool.plan.targets[i];
                let Some(provider) = self.inner.providers.get(&target.id.provider).cloned() else {
                    return Err(RouteError::UnknownModel(req.model.clone()));
                };
                let wire = match Wire::between(req.endpoint, provider.dialect()) {
                    Ok(w) => w,
                    Err(why) => {
                        out.unservable.get_or_insert(why);
                        continue;
                    }
                };
                // A translated request asks for the output reserved: one number on every wire.
                let body = wire.request_body(
                    req.endpoint,
                    &req.body,
                    &mut req.map,
                    &target.id.model,
                    req.estimate.output_tokens,
                );
                let payload = match body {
                    Ok(p) => p,
                    Err(why) => {
                        out.unservable = Some(why.0);
                        continue;
                    }
                };
                let estimate = if provider.has_own_estimate() {
                    let map = req.map.get_or_insert_with(|| req.body.to_map());
                    provider.estimate_cost(map).unwrap_or(req.estimate)
                } else {
                    req.estimate
                };
                if let Some(rule) = req.key.and_then(|k| policy_refuses(k, target, &estimate)) {
                    req.decision
                        .skipped
                        .push((target.id.clone(), SkipReason::Policy));
                    out.policy.get_or_insert(rule);
                    continue;
                }
                // Full jitter after a failed attempt, before reserving again.
                if out.failed_attempts > 0 {
                    let ceiling = pool.plan.pool.retry.ceiling_ms(out.failed_attempts);
                    let wait = Duration::from_millis(rand::random_range(0..=ceiling));
                    let wake = tokio::time::Instant::now() + wait;
                    tokio::time::sleep_until(deadline.map_or(wake, |d| wake.min(d))).await;
                }
                let left = match deadline {
                    Some(d) => match d.checked_duration_since(tokio::time::Instant::now()) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => {
                            out.failure = Some((deadline_message(chain), true));
                            break 'chain;
                        }
                    },
                    None => None,
                };
                // Read per attempt: an earlier attempt may have waited for a timeout.
                let now = self.inner.ledger.clock.now();
                let extra = req.extra.as_ref();
                let lease = match self.try_target(pool, i, &estimate, now, extra).await? {
                    Ok(l) => l,
                    Err(d) => {
                        let bounds = pool.bounds[i]
                            .iter()
                            .chain(extra.into_iter().flat_map(|e| e.iter()));
                        let limit = limit_window(bounds, &d, now);
                        let why = match limit {
                            Some((_, llmux_core::Measure::CostMicroUsd)) => SkipReason::Budget,
                            _ => SkipReason::of(&d),
                        };
                        req.decision.skipped.push((target.id.clone(), why));
                        out.deny_in(d, limit);
                        continue;
                    }
                };
                // Admitted: the next waiter may try.
                req.ticket = None;
                tried += 1;
                out.attempts += 1;
                req.decision.attempts += 1;
                let call = Sent {
                    wire,
                    payload,
                    lease,
                    left,
                    deadline,
                };
                match self
                    .attempt(pool, i, &provider, call, req, now, &mut out)
                    .await?
                {
                    Step::Answer(mut r) => {
                        r.decision.skipped = std::mem::take(&mut req.decision.skipped);
                        return Ok(r);
                    }
                    Step::Next => out.failed_attempts += 1,
                    Step::Stop => break 'chain,
                }
            }
        }
        if let Some((message, timeout)) = out.failure.take() {
            return Err(RouteError::Upstream {
                attempts: out.attempts,
                timeout,
                message,
            });
        }
        if out.denial.is_none() {
            if let Some(why) = out.unservable.take() {
                return Err(RouteError::BadRequest(why));
            }
        }
        if let Some(d) = &out.denial {
            metrics::counter!("llmux_no_capacity_total", "model" => req.model.clone(), "limit" => d.limit()).increment(1);
        }
        // Seconds until capacity frees up, counted from now, when the client hears it.
        Err(Self::no_capacity(
            &req.model,
            self.inner.ledger.clock.now(),
            out,
        ))
    }

    /// Send to target `i` under `lease` and settle by the outcome.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
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
        let mut lease = lease;
        let limits = std::mem::take(&mut lease.applied);
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
        let (status, body) = settle_success(
            reply.body,
            provider.as_ref(),
            stats,
            lease,
            started,
            (Duration::from_secs(idle), deadline),
            &answer_to,
        );
        Ok(answer(status, headers, body, out))
    }
}

impl Router {
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

/// What the answer of a successful attempt is turned into for the client.
struct Answering<'a> {
    client: Endpoint,
    wire: Wire,
    /// The upstream model, named in a translated answer that names none.
    model: &'a str,
    /// Unix seconds, for a translated answer's `created`.
    created: u64,
    client_wants_usage: bool,
}

/// The answer of a successful attempt: a whole body settles its lease now (its reported usage,
/// else the estimate); a stream settles it when it ends, breaks, stalls or is dropped. A
/// translated request's answer is translated back.
fn settle_success(
    body: ReplyBody,
    provider: &dyn Provider,
    stats: &TargetStats,
    lease: Lease,
    started: Instant,
    (idle, deadline): (Duration, Option<tokio::time::Instant>),
    to: &Answering<'_>,
) -> (u16, ResponseBody) {
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
            match to.wire.answer_body(&bytes, to.created) {
                Some(b) => (200, ResponseBody::Full(b)),
                None => {
                    let msg = "the upstream's answer could not be translated to this API";
                    let e = error_body(to.client, 502, "upstream_error", "upstream_error", msg);
                    (502, ResponseBody::Full(Bytes::from(e.to_string())))
                }
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
            (200, ResponseBody::Stream(Box::pin(tracked)))
        }
    }
}

/// An attempt about to be sent: its wire, its body, its reservation, and what is left of the
/// request's deadline.
struct Sent {
    wire: Wire,
    payload: Bytes,
    lease: Lease,
    left: Option<Duration>,
    deadline: Option<tokio::time::Instant>,
}

/// Wait up to `left` for the stream's first chunk and put it back in front: an error if none
/// comes (a timeout of `within`) or the stream ends or breaks first.
async fn first_chunk(
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

/// The error of a request whose `deadline_secs` passed.
fn deadline_exceeded(req: &Prepared<'_>, attempts: u32) -> RouteError {
    RouteError::Upstream {
        attempts,
        timeout: true,
        message: format!("model {:?}: the request's deadline passed", req.model),
    }
}

fn deadline_message(chain: &[Arc<Pool>]) -> String {
    let secs = chain
        .first()
        .and_then(|p| p.plan.pool.deadline_secs)
        .unwrap_or(0);
    format!("the request's deadline of {secs} s passed")
}

fn count_status(label: &str, status: u16) {
    metrics::counter!("llmux_upstream_requests_total", "target" => label.to_string(), "outcome" => status.to_string()).increment(1);
}

/// What the failover loop does after an attempt. (Returned once per attempt: a box would cost
/// an allocation on every request for nothing.)
#[allow(clippy::large_enum_variant)]
enum Step {
    Answer(Response),
    Next,
    /// A timeout on a model that does not fall back on timeouts.
    Stop,
}
