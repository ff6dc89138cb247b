//! The failover loop: the targets of each pool of the chain in candidate order, within the
//! request's deadline, with full-jitter backoff between failed attempts; each attempt is
//! `attempt.rs`.

use super::attempt::{Sent, Step};
use super::decision::SkipReason;
use super::prepared::Prepared;
use super::refusals::{limit_window, policy_refuses, Outcomes};
use super::{Response, Router};
use crate::error::RouteError;
use crate::protocol::Wire;
use crate::stats::Pool;
use std::sync::Arc;
use std::time::Duration;

impl Router {
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
                let (lease, limits) = match self.try_target(pool, i, &estimate, now, extra).await? {
                    Ok(granted) => granted,
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
                    limits,
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
