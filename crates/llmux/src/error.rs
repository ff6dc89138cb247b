//! Errors of the engine. Each carries what a caller needs to answer its client and never a
//! secret; only the gateway maps them to HTTP.

use llmux_core::store::Denial;
use llmux_core::StoreError;

/// Why an upstream call failed before a usable answer arrived.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream timed out after {0} s")]
    Timeout(u64),
    /// The request never left: connecting (DNS, TCP, TLS) failed.
    #[error("upstream connection failed: {0}")]
    Connect(String),
    /// The connection failed after the request was sent: the upstream may have done the work.
    #[error("upstream connection lost after the request was sent: {0}")]
    Reset(String),
    #[error("upstream stream broke: {0}")]
    Body(String),
    /// The upstream's answer is larger than `max_response_bytes`.
    #[error("upstream answer larger than {0} bytes")]
    TooLarge(usize),
}

/// Why the router could not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("invalid or missing gateway key")]
    Unauthorized,
    #[error("model {0:?} does not exist or is not available to this key")]
    UnknownModel(String),
    /// No target had capacity. `denial` is the limit that frees up last among those hit on the
    /// best candidate, so waiting `retry_after_secs` is enough for it.
    #[error("{}", no_capacity_message(model, denial, *retry_after_secs, *budget))]
    NoCapacity {
        model: String,
        denial: Box<Denial>,
        retry_after_secs: Option<u64>,
        /// The limit hit is a hard USD budget: it frees up when its window ends, and
        /// `retry_after_secs` counts to then.
        budget: bool,
        /// The length of the limit's window in seconds, when it is a configured limit (the
        /// `w` of `RateLimit-Policy`).
        window_secs: Option<u64>,
        /// What that limit counts, when it is a configured limit (which `x-ratelimit-*`
        /// headers name it).
        measure: Option<llmux_core::Measure>,
    },
    /// A gateway key's or team's policy refuses the request; the message names the rule.
    #[error("{0}")]
    PolicyViolation(String),
    /// Every attempt failed upstream.
    #[error("upstream failed after {attempts} attempt(s): {message}")]
    Upstream {
        attempts: u32,
        timeout: bool,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a `NoCapacity` says: the limit, and when to try again, or that it never fits.
fn no_capacity_message(
    model: &str,
    denial: &Denial,
    retry_after_secs: Option<u64>,
    budget: bool,
) -> String {
    use llmux_core::store::DenialReason;
    let limit = denial.limit();
    if let DenialReason::NeverFits {
        capacity, amount, ..
    } = &denial.reason
    {
        return format!(
            "model {model:?}: the request needs {amount} of limit {limit}, which holds {capacity} in all: it can never fit"
        );
    }
    match (retry_after_secs, budget) {
        (Some(s), true) => format!(
            "no capacity for model {model:?}: budget {limit} is spent until its window ends in {s} s"
        ),
        (Some(s), false) => {
            format!("no capacity for model {model:?}: limit {limit} reached; retry in {s} s")
        }
        (None, _) => format!("no capacity for model {model:?}: limit {limit} reached"),
    }
}

impl RouteError {
    /// How long until capacity returns, for a `NoCapacity` that says (`None` otherwise, and
    /// for a request that can never fit).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RouteError::NoCapacity {
                retry_after_secs: Some(s),
                ..
            } => Some(std::time::Duration::from_secs(*s)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmux_core::store::DenialReason;
    use llmux_core::Subject;

    fn refusal(reason: DenialReason, retry: Option<u64>, budget: bool) -> RouteError {
        RouteError::NoCapacity {
            model: "m".into(),
            denial: Box::new(Denial {
                subject: Subject::key(
                    &llmux_core::ProviderId::new("p"),
                    &llmux_core::KeyId::new("k"),
                ),
                reason,
                retry_at: None,
            }),
            retry_after_secs: retry,
            budget,
            window_secs: None,
            measure: None,
        }
    }

    #[test]
    fn a_refusal_says_when_to_retry_or_that_it_never_fits() {
        let exhausted = DenialReason::Exhausted {
            resource: "rpm".into(),
            capacity: 10,
            used: 10,
            reserved: 0,
            amount: 1,
        };
        let e = refusal(exhausted.clone(), Some(7), false);
        assert_eq!(
            e.to_string(),
            "no capacity for model \"m\": limit p/k:rpm reached; retry in 7 s"
        );
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
        let e = refusal(exhausted, Some(30), true);
        assert!(
            e.to_string()
                .contains("is spent until its window ends in 30 s"),
            "{e}"
        );
        let never = DenialReason::NeverFits {
            resource: "tpm".into(),
            capacity: 100,
            amount: 500,
        };
        let e = refusal(never, None, false);
        assert!(
            e.to_string()
                .contains("needs 500 of limit p/k:tpm, which holds 100 in all: it can never fit"),
            "{e}"
        );
        assert_eq!(e.retry_after(), None);
    }
}
