//! Reserving on one target: the lines of every resource that applies, one atomic store call
//! (fail-open to this process's store when configured), cancel safe through the caller-chosen
//! lease id (`PendingGrant`).

use super::applied::AppliedLimit;
use super::refusals::priced;
use super::Router;
use crate::error::RouteError;
use crate::lease::{Grant, Lease};
use crate::ledger::Ledger;
use crate::stats::{Pool, PoolSlot};
use llmux_core::config::OnStoreError;
use llmux_core::health::GateUse;
use llmux_core::plan::Bound;
use llmux_core::store::{Admission, Denial, DenialReason, LeaseId, Reserve, Reserved, Store};
use llmux_core::time::secs_to_millis;
use llmux_core::{Subject, Timestamp, Usage};
use std::sync::Arc;

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

impl Router {
    /// Try to reserve `usage` on target `i` of `pool`: the lease, beside the limits it was
    /// counted against (with the room left, for the answer's headers).
    pub(super) async fn try_target(
        &self,
        pool: &Pool,
        i: usize,
        usage: &Usage,
        now: Timestamp,
        extra: Option<&Arc<[Bound]>>,
    ) -> Result<Result<(Lease, Vec<AppliedLimit>), Denial>, RouteError> {
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
            Admission::Granted(id) | Admission::Probe(id) => Ok(Ok((
                Lease::granted(
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
                    },
                    ledger.clone(),
                ),
                applied,
            ))),
        }
    }
}
