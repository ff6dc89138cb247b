//! Candidate ordering: the pool's strategy over its targets, by tier (the request's tier
//! first, then each lower one), with the stores' scores for the `score` strategy.

use super::{AuthorizedKey, Router};
use crate::error::RouteError;
use crate::stats::Pool;
use llmux_core::config::{OnStoreError, Strategy};
use llmux_core::plan::lines;
use llmux_core::select::{order, Candidate};
use llmux_core::store::Store;
use llmux_core::{Subject, Timestamp, Usage};
use std::sync::atomic::Ordering;

impl Router {
    /// The tier a request runs at: a gateway key's tier caps what the caller may ask for (a
    /// lower tier may be requested, never a higher one); without a key, the requested tier.
    pub(super) fn effective_tier(
        &self,
        asked: Option<String>,
        key: Option<&AuthorizedKey>,
    ) -> Option<String> {
        let Some(cap) = key.and_then(|k| k.key.tier.clone()) else {
            return asked;
        };
        let order = &self.inner.config.tier_order;
        let rank = |t: &str| order.iter().position(|x| x == t);
        match asked {
            Some(a) if rank(&a).zip(rank(&cap)).is_some_and(|(a, c)| a <= c) => Some(a),
            _ => Some(cap),
        }
    }

    /// Candidate target indices of `pool` in the order to try: the request's tier first, then
    /// each lower tier; without a tier, every target.
    pub(super) async fn candidates(
        &self,
        pool: &Pool,
        tier: Option<&str>,
        now: Timestamp,
        estimate: &Usage,
    ) -> Result<Vec<usize>, RouteError> {
        let targets = &pool.plan.targets;
        if targets.len() == 1 && tier.is_none() {
            return Ok(vec![0]);
        }
        let scores = self.scores(pool, now).await?;
        let strategy = pool.plan.pool.strategy;
        let priced = matches!(strategy, Strategy::Cost | Strategy::Objective);
        let turn = pool.turn.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        let ordered = |subset: &[usize], rng: &mut rand::rngs::ThreadRng| -> Vec<usize> {
            let cands: Vec<Candidate> = subset
                .iter()
                .map(|&i| {
                    let mut c =
                        pool.stats[i].candidate(targets[i].weight, targets[i].priority, now);
                    if let Some(s) = &scores {
                        c.score *= s[i];
                    }
                    if priced {
                        c.cost = targets[i].price.map(|p| p.cost_micro_usd(estimate) as f64);
                    }
                    c
                })
                .collect();
            let mut v: Vec<usize> = order(strategy, &cands, turn, rng, &pool.plan.pool.objective)
                .into_iter()
                .map(|j| subset[j])
                .collect();
            // Targets whose long quotas last their window go first (but for `priority`,
            // whose order the operator chose); a stable sort keeps the strategy's order.
            if strategy != Strategy::Priority {
                v.sort_by_key(|&i| pool.stats[i].short.load(Ordering::Relaxed));
            }
            v
        };
        let all: Vec<usize> = (0..targets.len()).collect();
        let Some(tier) = tier else {
            return Ok(ordered(&all, &mut rng));
        };
        let tier_order = &self.inner.config.tier_order;
        let Some(pos) = tier_order.iter().position(|t| t == tier) else {
            return Ok(ordered(&all, &mut rng));
        };
        let mut out = Vec::new();
        for t in tier_order[..=pos].iter().rev() {
            let subset: Vec<usize> = all
                .iter()
                .copied()
                .filter(|&i| !out.contains(&i))
                .filter(|&i| {
                    targets[i]
                        .provider
                        .tiers
                        .as_ref()
                        .is_none_or(|ts| ts.iter().any(|x| x == t))
                })
                .collect();
            out.extend(ordered(&subset, &mut rng));
        }
        Ok(out)
    }

    /// For the `score` strategy: each target's stored score, the lower of its provider's and
    /// its key's (remaining capacity fraction, 0 while cooling down or disabled, or an
    /// operator's override). One store round trip; other strategies skip it.
    async fn scores(&self, pool: &Pool, now: Timestamp) -> Result<Option<Vec<f64>>, RouteError> {
        if pool.plan.pool.strategy != Strategy::Score {
            return Ok(None);
        }
        let mut subjects: Vec<(Subject, Vec<llmux_core::Line>)> = Vec::new();
        for t in &pool.plan.targets {
            for g in &t.gates {
                if subjects.iter().any(|(s, _)| s == g) {
                    continue;
                }
                let bounds = t.bounds.iter().filter(|b| &b.subject == g);
                subjects.push((g.clone(), lines(bounds, &Usage::default(), now)));
            }
        }
        let names: Vec<Subject> = subjects.iter().map(|(s, _)| s.clone()).collect();
        let values = match self.inner.ledger.store.scores(now, subjects).await {
            Ok(v) => v,
            Err(e) if self.inner.config.on_store_error == OnStoreError::FailOpen => {
                tracing::error!(error = %e, "store unreachable: scoring on local figures only");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let of = |s: &Subject| names.iter().position(|n| n == s).map_or(1.0, |i| values[i]);
        Ok(Some(
            pool.plan
                .targets
                .iter()
                .map(|t| t.gates.iter().map(of).fold(1.0, f64::min))
                .collect(),
        ))
    }
}
