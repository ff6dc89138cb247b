//! The one place that knows the HTTP status of each error. The body is the client dialect's
//! envelope (`llmux::protocol::errors`): OpenAI's `{"error": {"message", "type", "code"}}`,
//! or Anthropic's `{"type": "error", "error": {"type", "message"}}` on `/v1/messages`. The
//! `code` doubles as the metrics label.

use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode};
use llmux::core::store::DenialReason;
use llmux::protocol::errors::error_body;
use llmux::{Endpoint, RouteError};

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    PayloadTooLarge {
        limit: usize,
    },
    /// An upload past `[files]` `max_file_mb` or `quota_mb_per_key`: the message names it.
    FileTooLarge(String),
    Unauthorized,
    NotFound(String),
    /// A file or batch that does not exist (`no such …`).
    NoSuch(String),
    Route(RouteError),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        ApiError::Route(e)
    }
}

impl ApiError {
    /// Status, OpenAI `type`, and `code`.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::BadRequest(_) => (S::BAD_REQUEST, "invalid_request_error", "invalid_request"),
            ApiError::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
            ),
            ApiError::FileTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "file_too_large",
            ),
            ApiError::Unauthorized => (S::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
            ApiError::NotFound(_) | ApiError::NoSuch(_) => {
                (S::NOT_FOUND, "invalid_request_error", "not_found")
            }
            ApiError::Route(e) => match e {
                RouteError::BadRequest(_) => {
                    (S::BAD_REQUEST, "invalid_request_error", "invalid_request")
                }
                RouteError::Unauthorized => {
                    (S::UNAUTHORIZED, "authentication_error", "invalid_api_key")
                }
                RouteError::UnknownModel(_) => {
                    (S::NOT_FOUND, "invalid_request_error", "model_not_found")
                }
                RouteError::NoCapacity { budget: true, .. } => (
                    S::TOO_MANY_REQUESTS,
                    "insufficient_quota",
                    "budget_exceeded",
                ),
                RouteError::NoCapacity { .. } => {
                    (S::TOO_MANY_REQUESTS, "rate_limit_error", "no_capacity")
                }
                RouteError::PolicyViolation(_) => {
                    (S::FORBIDDEN, "permission_error", "policy_violation")
                }
                RouteError::Upstream { timeout: true, .. } => {
                    (S::GATEWAY_TIMEOUT, "upstream_error", "upstream_timeout")
                }
                RouteError::Upstream { .. } => (S::BAD_GATEWAY, "upstream_error", "upstream_error"),
                RouteError::Store(_) => {
                    (S::SERVICE_UNAVAILABLE, "server_error", "store_unavailable")
                }
            },
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m) => m.clone(),
            ApiError::PayloadTooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ApiError::FileTooLarge(m) => m.clone(),
            ApiError::Unauthorized => RouteError::Unauthorized.to_string(),
            ApiError::NotFound(p) => format!("no route for {p}"),
            ApiError::NoSuch(what) => format!("no such {what}"),
            ApiError::Route(e) => e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(Endpoint::ChatCompletions)
    }
}

impl ApiError {
    /// The answer to a client of `client`'s route, in its dialect's envelope.
    pub fn render(self, client: Endpoint) -> Response {
        let (status, kind, code) = self.parts();
        let mut body = error_body(client, status.as_u16(), kind, code, &self.message());
        let openai = client.dialect() == llmux::Dialect::OpenAi;
        let mut extra: Vec<(HeaderName, String)> = Vec::new();
        if let ApiError::Route(e) = &self {
            match e {
                RouteError::NoCapacity {
                    denial,
                    retry_after_secs,
                    budget,
                    window_secs,
                    measure,
                    ..
                } => {
                    let limit = denial.limit();
                    if openai {
                        body["error"]["limit"] = serde_json::Value::String(limit.clone());
                    }
                    // The limit that denied it, as the IETF fields name limits.
                    let name = format!("\"{}\"", limit.replace('\\', "\\\\").replace('"', "\\\""));
                    if let DenialReason::Exhausted { capacity, .. }
                    | DenialReason::NeverFits { capacity, .. } = &denial.reason
                    {
                        let w = window_secs.map(|w| format!(";w={w}")).unwrap_or_default();
                        extra.push((
                            HeaderName::from_static("ratelimit-policy"),
                            format!("{name};q={capacity}{w}"),
                        ));
                    }
                    // llmux's own counters, as on every answer: here the limit that refused.
                    let room = match &denial.reason {
                        DenialReason::Exhausted {
                            capacity,
                            used,
                            reserved,
                            ..
                        } => Some((
                            *capacity,
                            capacity.saturating_sub(used.saturating_add(*reserved)),
                        )),
                        DenialReason::NeverFits { capacity, .. } => Some((*capacity, *capacity)),
                        _ => None,
                    };
                    if let (Some(m), Some((capacity, left))) = (measure, room) {
                        let reset_ms = retry_after_secs.map_or(0, |s| s.saturating_mul(1000));
                        let reset_ms = i64::try_from(reset_ms).unwrap_or(i64::MAX);
                        extra.extend(llmux::refusal_rate_limit_headers(
                            *m, capacity, left, reset_ms,
                        ));
                    }
                    let t = retry_after_secs
                        .map(|s| format!(";t={s}"))
                        .unwrap_or_default();
                    extra.push((
                        HeaderName::from_static("ratelimit"),
                        format!("{name};r=0{t}"),
                    ));
                    extra.push((HeaderName::from_static("x-llmux-limit"), limit));
                    // A hard budget frees up only when its window ends: no `retry-after`
                    // invites an earlier retry (`RateLimit`'s `t` says when).
                    if let Some(s) = retry_after_secs.filter(|_| !*budget) {
                        if openai {
                            body["error"]["retry_after"] = s.into();
                        }
                        extra.push((HeaderName::from_static("retry-after"), s.to_string()));
                    }
                }
                RouteError::Upstream { attempts, .. } => {
                    extra.push((
                        HeaderName::from_static("x-llmux-attempts"),
                        attempts.to_string(),
                    ));
                }
                RouteError::Store(err) => tracing::error!(error = %err, "store failure"),
                _ => {}
            }
        }
        let mut resp = (status, axum::Json(body)).into_response();
        for (k, v) in extra {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(k, v);
            }
        }
        resp
    }
}
