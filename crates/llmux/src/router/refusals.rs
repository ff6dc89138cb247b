//! Why targets did not take a request: what the failover loop learned (`Outcomes`: the
//! denial that frees up first, whether it is a budget and its window, a policy rule, the last
//! upstream failure), the policy rules that skip a target, prices, and the error all that
//! comes to when nothing answered.

use super::{AuthorizedKey, Router};
use crate::error::RouteError;
use llmux_core::plan::{Bound, PlannedTarget};
use llmux_core::store::{Denial, DenialReason};
use llmux_core::{Measure, Timestamp, Usage, Window};

/// What the failover loop learned so far.
#[derive(Default)]
pub(super) struct Outcomes {
    pub(super) attempts: u32,
    /// The denial that frees up first.
    pub(super) denial: Option<Denial>,
    /// The last upstream failure: (message, timeout?).
    pub(super) failure: Option<(String, bool)>,
    /// Why a target could not take the request at all (its dialect cannot express it).
    pub(super) unservable: Option<String>,
    /// Attempts that failed upstream (for the backoff before the next).
    pub(super) failed_attempts: u32,
    /// The kept denial is a hard USD budget, whose window ends then.
    pub(super) budget_ends: Option<Timestamp>,
    /// The length of the kept denial's window, when it is a configured limit.
    pub(super) window_secs: Option<u64>,
    /// What the kept denial's limit counts, when it is a configured limit.
    pub(super) measure: Option<Measure>,
    /// A policy rule that kept a target out (reported when no limit was hit either).
    pub(super) policy: Option<String>,
}

impl Outcomes {
    pub(super) fn deny(&mut self, d: Denial) {
        self.deny_in(d, None);
    }

    /// [`Outcomes::deny`], knowing the denying limit's window and what it counts (a USD
    /// budget frees up only when that window ends).
    pub(super) fn deny_in(&mut self, d: Denial, limit: Option<(Window, Measure)>) {
        let ends = limit.and_then(|(w, m)| (m == Measure::CostMicroUsd).then_some(w.end));
        // A budget frees up when its window ends, whatever its reservations do.
        let at = |d: &Denial, ends: Option<Timestamp>| ends.or(d.retry_at);
        let better = match (&self.denial, at(&d, ends)) {
            (None, _) => true,
            (Some(old), Some(t)) => at(old, self.budget_ends).is_none_or(|o| t < o),
            (Some(_), None) => false,
        };
        if better {
            self.denial = Some(d);
            self.budget_ends = ends;
            self.window_secs = limit
                .map(|(w, _)| (w.end.0.saturating_sub(w.start.0).max(0) as u64).div_ceil(1000));
            self.measure = limit.map(|(_, m)| m);
        }
    }
}

/// The rule of `key`'s (or its team's) policy that keeps target `t` from a request
/// estimated at `estimate`: `providers`, or `max_cost_usd_per_request` at the target's price.
pub(super) fn policy_refuses(
    key: &AuthorizedKey,
    t: &PlannedTarget,
    estimate: &Usage,
) -> Option<String> {
    for (whose, p) in key.policies() {
        if let Some(ps) = &p.providers {
            if !ps.iter().any(|x| x == t.id.provider.as_str()) {
                return Some(format!(
                    "provider {:?} is not allowed by the policy of {whose} (providers: {})",
                    t.id.provider.as_str(),
                    ps.join(", ")
                ));
            }
        }
        if let Some(max) = p.max_cost_micro_usd {
            let cost = priced(t, estimate).cost_micro_usd;
            if cost > max {
                return Some(format!(
                    "the estimated cost ${:.6} on {} is above the limit of ${:.6} set by the policy of {whose} (max_cost_usd_per_request)",
                    cost as f64 / 1e6,
                    t.id,
                    max as f64 / 1e6
                ));
            }
        }
    }
    None
}

/// `usage` with its cost at target `t`'s price (without a price, as it came).
pub(super) fn priced(t: &PlannedTarget, usage: &Usage) -> Usage {
    t.price.map_or(*usage, |p| p.priced(usage))
}

/// The window of the configured limit that made denial `d` (of the target's, the pool's or
/// the request's bounds), and whether it counts USD.
pub(super) fn limit_window<'a>(
    mut bounds: impl Iterator<Item = &'a Bound>,
    d: &Denial,
    now: Timestamp,
) -> Option<(Window, Measure)> {
    let resource = match &d.reason {
        DenialReason::Exhausted { resource, .. } | DenialReason::NeverFits { resource, .. } => {
            resource
        }
        _ => return None,
    };
    bounds
        .find(|b| b.subject == d.subject && b.resource.name == *resource)
        .map(|b| (b.window(now), b.resource.measure))
}

impl Router {
    pub(super) fn no_capacity(model: &str, now: Timestamp, out: Outcomes) -> RouteError {
        if out.denial.is_none() {
            if let Some(rule) = out.policy {
                return RouteError::PolicyViolation(rule);
            }
        }
        match out.denial {
            Some(d) => RouteError::NoCapacity {
                model: model.to_string(),
                retry_after_secs: out
                    .budget_ends
                    .or(d.retry_at)
                    .map(|t| now.secs_until_ceil(t).max(1)),
                denial: Box::new(d),
                budget: out.budget_ends.is_some(),
                window_secs: out.window_secs,
                measure: out.measure,
            },
            None => RouteError::UnknownModel(model.to_string()),
        }
    }
}
