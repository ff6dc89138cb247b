//! A routing decision as data: which target answered, after how many attempts, and every
//! target passed over with its reason. The gateway renders it as the `x-llmux-decision`
//! header when a request asks (`x-llmux-decision: 1`); an admin API can list recent ones.

use llmux_core::store::{Denial, DenialReason};
use llmux_core::TargetId;
use std::fmt;
use std::sync::Arc;

/// Why a target did not answer a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A limit had no room: `limit:RESOURCE`.
    Limit(Arc<str>),
    Cooldown,
    BreakerOpen,
    Disabled,
    /// The target does not serve the request's tier.
    Tier,
    Budget,
    Policy,
    /// The attempt failed with this status (`failed:STATUS`; a lost connection is 502).
    Failed(u16),
    /// The attempt timed out (`failed:timeout`).
    Timeout,
}

impl SkipReason {
    /// The reason a store's denial gives.
    pub fn of(d: &Denial) -> SkipReason {
        match &d.reason {
            DenialReason::Exhausted { resource, .. } | DenialReason::NeverFits { resource, .. } => {
                SkipReason::Limit(resource.clone())
            }
            DenialReason::Cooldown => SkipReason::Cooldown,
            DenialReason::Disabled => SkipReason::Disabled,
            DenialReason::BreakerOpen => SkipReason::BreakerOpen,
            DenialReason::Concurrency { .. } => SkipReason::Limit(Arc::from("max_concurrent")),
            DenialReason::QueueFull { .. } => SkipReason::Limit(Arc::from("queue")),
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Limit(r) => write!(f, "limit:{r}"),
            SkipReason::Cooldown => f.write_str("cooldown"),
            SkipReason::BreakerOpen => f.write_str("breaker-open"),
            SkipReason::Disabled => f.write_str("disabled"),
            SkipReason::Tier => f.write_str("tier"),
            SkipReason::Budget => f.write_str("budget"),
            SkipReason::Policy => f.write_str("policy"),
            SkipReason::Failed(s) => write!(f, "failed:{s}"),
            SkipReason::Timeout => f.write_str("failed:timeout"),
        }
    }
}

/// One request's routing decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The target that answered (`None`: none did).
    pub picked: Option<TargetId>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Every target passed over, in the order they were, and why.
    pub skipped: Vec<(TargetId, SkipReason)>,
}

impl Decision {
    /// The `x-llmux-decision` header value:
    /// `picked=P/K/M; attempts=N; skipped=P/K/M:REASON,…` (`picked=none` when none answered).
    pub fn header_value(&self) -> String {
        let mut s = String::with_capacity(64 + 48 * self.skipped.len());
        match &self.picked {
            Some(t) => s.push_str(&format!("picked={t}")),
            None => s.push_str("picked=none"),
        }
        s.push_str(&format!("; attempts={}; skipped=", self.attempts));
        for (i, (t, why)) in self.skipped.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("{t}:{why}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmux_core::{KeyId, ProviderId};

    fn t(p: &str, k: &str, m: &str) -> TargetId {
        TargetId {
            provider: ProviderId::new(p),
            key: KeyId::new(k),
            model: Arc::from(m),
        }
    }

    #[test]
    fn renders_the_header_of_the_contract() {
        let d = Decision {
            picked: Some(t("b", "k1", "m")),
            attempts: 2,
            skipped: vec![
                (t("a", "k1", "m"), SkipReason::Limit(Arc::from("rpm"))),
                (t("a", "k2", "m"), SkipReason::BreakerOpen),
                (t("c", "k1", "m"), SkipReason::Failed(503)),
                (t("d", "k1", "m"), SkipReason::Timeout),
            ],
        };
        assert_eq!(
            d.header_value(),
            "picked=b/k1/m; attempts=2; skipped=a/k1/m:limit:rpm,a/k2/m:breaker-open,c/k1/m:failed:503,d/k1/m:failed:timeout"
        );
        assert_eq!(
            Decision::default().header_value(),
            "picked=none; attempts=0; skipped="
        );
    }
}
