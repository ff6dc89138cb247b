//! Each dialect's error envelope and the in-band event that ends a broken stream.
//!
//! - OpenAI (chat, completions, embeddings, Responses): `{"error": {"message", "type", "code"}}`.
//! - Anthropic: `{"type": "error", "error": {"type", "message"}}`, the type named by status.

use crate::provider::{Dialect, Endpoint};
use serde_json::{json, Value};

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The error body a client of `client` expects. `kind` and `code` are OpenAI's `type` and
/// `code`; Anthropic's envelope names its type by `status`.
pub fn error_body(client: Endpoint, status: u16, kind: &str, code: &str, message: &str) -> Value {
    match client.dialect() {
        Dialect::OpenAi => json!({"error": {"message": message, "type": kind, "code": code}}),
        Dialect::Anthropic => json!({"type": "error", "error": {
            "type": anthropic_type(status), "message": message,
        }}),
    }
}

/// The SSE event that ends a stream of `client` which broke or stalled upstream (no
/// `[DONE]`, no `message_stop`, no `response.completed` follows it).
pub fn stream_error_event(client: Endpoint, message: &str, code: &str) -> String {
    match client {
        Endpoint::Messages => {
            let data = json!({"type": "error", "error": {"type": "api_error", "message": message}});
            format!("event: error\ndata: {data}\n\n")
        }
        Endpoint::Responses => {
            let data = json!({"type": "error", "code": code, "message": message, "param": null});
            format!("event: error\ndata: {data}\n\n")
        }
        _ => {
            let data =
                json!({"error": {"message": message, "type": "upstream_error", "code": code}});
            format!("data: {data}\n\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_follow_the_client_dialect() {
        let v = error_body(
            Endpoint::Messages,
            429,
            "rate_limit_error",
            "no_capacity",
            "m",
        );
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "m"}})
        );
        let v = error_body(Endpoint::Responses, 400, "invalid_request_error", "x", "m");
        assert_eq!(v["error"]["code"], "x");
        let e = stream_error_event(Endpoint::Messages, "broke", "upstream_stream_broken");
        assert!(
            e.starts_with("event: error\ndata: {") && e.ends_with("}\n\n"),
            "{e}"
        );
        let e = stream_error_event(Endpoint::ChatCompletions, "broke", "c");
        assert!(e.starts_with("data: {\"error\""), "{e}");
    }
}
