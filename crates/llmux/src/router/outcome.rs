//! What one upstream attempt came to, and so how its reservation settles. Pure: the rule is
//! written once here and the failover loop applies it.
//!
//! The rule: a request that never left (a connect error) gives its reservation back; one that
//! left and came back with an error status counts one request and no tokens (the upstream
//! answered, and billed nothing); one that left and was lost (timeout, reset, broken body)
//! commits the estimate, because the upstream may have done the work; a success commits the
//! usage it reports, else the estimate. A 429 gives the reservation back and cools the key.

use crate::error::UpstreamError;
use crate::provider::{retry_after, Reply};
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Below 400: the answer goes to the client.
    Success,
    /// 429: release, and cool the key down for the hint (1 s without one).
    RateLimited { retry_after: Option<Duration> },
    /// 401: the key is refused; disable it.
    KeyRefused,
    /// 403: the key is refused for this model; disable it for the model.
    ModelRefused,
    /// Any other error status: one request, no tokens.
    Failed { status: u16 },
    /// The request never left: release.
    NotSent,
    /// Lost after the request left: commit the estimate.
    Lost { timeout: bool },
}

pub(crate) fn classify(result: &Result<Reply, UpstreamError>) -> Outcome {
    match result {
        Ok(r) if r.status < 400 => Outcome::Success,
        Ok(r) => match r.status {
            429 => Outcome::RateLimited {
                retry_after: retry_after(&r.headers),
            },
            401 => Outcome::KeyRefused,
            403 => Outcome::ModelRefused,
            status => Outcome::Failed { status },
        },
        Err(UpstreamError::Connect(_)) => Outcome::NotSent,
        Err(UpstreamError::Timeout(_)) => Outcome::Lost { timeout: true },
        Err(UpstreamError::Reset(_) | UpstreamError::Body(_) | UpstreamError::TooLarge(_)) => {
            Outcome::Lost { timeout: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ReplyBody;
    use bytes::Bytes;

    fn reply(
        status: u16,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Reply, UpstreamError> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        Ok(Reply {
            status,
            headers: h,
            body: ReplyBody::Full(Bytes::new()),
        })
    }

    #[test]
    fn each_result_settles_by_the_one_rule() {
        assert_eq!(classify(&reply(200, &[])), Outcome::Success);
        assert_eq!(
            classify(&reply(429, &[("retry-after", "7")])),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(classify(&reply(401, &[])), Outcome::KeyRefused);
        assert_eq!(classify(&reply(403, &[])), Outcome::ModelRefused);
        assert_eq!(classify(&reply(503, &[])), Outcome::Failed { status: 503 });
        let err = |e: UpstreamError| classify(&Err(e));
        assert_eq!(
            err(UpstreamError::Connect("refused".into())),
            Outcome::NotSent
        );
        assert_eq!(
            err(UpstreamError::Timeout(5)),
            Outcome::Lost { timeout: true }
        );
        assert_eq!(
            err(UpstreamError::Reset("reset".into())),
            Outcome::Lost { timeout: false }
        );
        assert_eq!(
            err(UpstreamError::Body("cut".into())),
            Outcome::Lost { timeout: false }
        );
        assert_eq!(
            err(UpstreamError::TooLarge(1)),
            Outcome::Lost { timeout: false }
        );
    }
}
