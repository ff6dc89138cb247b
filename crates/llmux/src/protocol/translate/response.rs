//! JSON response and error-body translation, and the mappings the streams share.

use crate::protocol::usage::{anthropic_usage_json, chat_usage_json, UsageShape, WireUsage};
use serde_json::{json, Map, Value};

/// OpenAI `finish_reason` for an Anthropic `stop_reason`.
pub(super) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic `stop_reason` for an OpenAI `finish_reason`.
pub(super) fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Translates a non-streamed Anthropic Messages response into an OpenAI `chat.completion`.
pub fn messages_response_to_chat(resp: &Value, created: u64) -> Option<Value> {
    let obj = resp.as_object()?;
    if obj
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "message")
    {
        return None;
    }
    let blocks = obj.get("content")?.as_array()?;
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(b.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => calls.push(tool_use_to_call(b)),
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if has_text { json!(text) } else { Value::Null },
    );
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    message.insert("refusal".into(), Value::Null);
    let usage = obj
        .get("usage")
        .and_then(WireUsage::from_value)
        .unwrap_or_default()
        .counts(UsageShape::Anthropic);
    let stop = obj.get("stop_reason").and_then(Value::as_str);
    Some(json!({
        "id": obj.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": created,
        "model": obj.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(stop),
        }],
        "usage": chat_usage_json(&usage),
    }))
}

fn tool_use_to_call(block: &Value) -> Value {
    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
    json!({
        "id": block.get("id").cloned().unwrap_or(Value::Null),
        "type": "function",
        "function": {
            "name": block.get("name").cloned().unwrap_or(Value::Null),
            "arguments": input.to_string(),
        },
    })
}

/// Translates a non-streamed OpenAI `chat.completion` into an Anthropic Messages response.
pub fn chat_response_to_messages(resp: &Value) -> Option<Value> {
    let obj = resp.as_object()?;
    let choice = obj.get("choices")?.as_array()?.first()?.as_object()?;
    let message = choice.get("message")?.as_object()?;
    let mut content = Vec::new();
    let text = message.get("content").and_then(Value::as_str).unwrap_or("");
    let refusal = message.get("refusal").and_then(Value::as_str).unwrap_or("");
    let text = if text.is_empty() { refusal } else { text };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        content.push(call_to_tool_use(call));
    }
    let usage = obj
        .get("usage")
        .and_then(WireUsage::from_value)
        .unwrap_or_default()
        .counts(UsageShape::Chat);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    Some(json!({
        "id": obj.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": obj.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": anthropic_usage_json(&usage),
    }))
}

fn call_to_tool_use(call: &Value) -> Value {
    let func = call.get("function");
    let args = func
        .and_then(|f| f.get("arguments"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let input = match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    };
    json!({
        "type": "tool_use",
        "id": call.get("id").cloned().unwrap_or(Value::Null),
        "name": func.and_then(|f| f.get("name")).cloned().unwrap_or(Value::Null),
        "input": input,
    })
}

/// OpenAI error `type` for an Anthropic error type, when there is one.
fn openai_type_for_anthropic(kind: &str) -> Option<&'static str> {
    match kind {
        "invalid_request_error" | "not_found_error" | "request_too_large" => {
            Some("invalid_request_error")
        }
        "authentication_error" => Some("authentication_error"),
        "permission_error" => Some("permission_error"),
        "rate_limit_error" => Some("rate_limit_error"),
        "overloaded_error" | "api_error" => Some("server_error"),
        _ => None,
    }
}

fn openai_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// Anthropic error type for an OpenAI error type (used where no status is known).
fn anthropic_type_for_openai(kind: Option<&str>) -> &'static str {
    match kind {
        Some("invalid_request_error") => "invalid_request_error",
        Some("authentication_error") => "authentication_error",
        Some("permission_error") => "permission_error",
        Some("rate_limit_error") => "rate_limit_error",
        _ => "api_error",
    }
}

/// The `error` member's message and type, if the body carries one.
fn error_parts(v: &Value) -> Option<(String, Option<&str>)> {
    match v.get("error")? {
        Value::String(s) => Some((s.clone(), None)),
        Value::Object(e) => {
            let message = e.get("message").and_then(Value::as_str)?;
            Some((message.to_owned(), e.get("type").and_then(Value::as_str)))
        }
        _ => None,
    }
}

/// The message used when the body carries no recognisable error.
fn fallback_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.trim().chars().take(200).collect();
    if snippet.is_empty() {
        format!("upstream answered {status}")
    } else {
        format!("upstream answered {status}: {snippet}")
    }
}

/// OpenAI error envelope for an Anthropic error value; `status` decides unknown types.
pub(super) fn openai_error_from_anthropic(v: &Value, status: Option<u16>) -> Option<Value> {
    let (message, kind) = error_parts(v)?;
    let by_status = status.map_or("server_error", openai_type_for_status);
    let openai_type = kind
        .and_then(openai_type_for_anthropic)
        .unwrap_or(by_status);
    Some(json!({"error": {"message": message, "type": openai_type, "code": kind}}))
}

/// Anthropic error envelope for an OpenAI error value seen in a stream (no status).
pub(super) fn anthropic_error_from_openai(v: &Value) -> Value {
    let (message, kind) =
        error_parts(v).unwrap_or_else(|| ("upstream stream error".to_owned(), None));
    json!({"type": "error", "error": {"type": anthropic_type_for_openai(kind), "message": message}})
}

/// Translates an upstream Anthropic error body (any non-2xx) into an OpenAI error envelope.
pub fn error_to_openai(status: u16, body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| openai_error_from_anthropic(&v, Some(status)))
        .unwrap_or_else(|| {
            json!({"error": {
                "message": fallback_message(status, body),
                "type": openai_type_for_status(status),
                "code": null,
            }})
        })
}

/// Translates an upstream OpenAI error body (any non-2xx) into an Anthropic error envelope.
pub fn error_to_anthropic(status: u16, body: &[u8]) -> Value {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| error_parts(&v).map(|(m, _)| m))
        .unwrap_or_else(|| fallback_message(status, body));
    json!({"type": "error", "error": {"type": crate::protocol::errors::anthropic_type(status), "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anthropic_resp(content: Value, stop: Value) -> Value {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": content, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5,
                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}})
    }

    #[test]
    fn messages_response_text_and_tools() {
        let resp = anthropic_resp(
            json!([
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris"}},
            ]),
            json!("tool_use"),
        );
        let out = messages_response_to_chat(&resp, 1700).unwrap();
        assert_eq!(
            out,
            json!({"id": "msg_1", "object": "chat.completion", "created": 1700, "model": "claude-x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Let me check.",
                    "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}}],
                    "refusal": null}, "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                    "prompt_tokens_details": {"cached_tokens": 100}}})
        );
    }

    #[test]
    fn messages_response_stop_reasons_and_empty_content() {
        for (stop, finish) in [
            (json!("end_turn"), "stop"),
            (json!("stop_sequence"), "stop"),
            (json!("max_tokens"), "length"),
            (json!("tool_use"), "tool_calls"),
            (json!("refusal"), "content_filter"),
            (json!("pause_turn"), "stop"),
            (json!("whatever"), "stop"),
            (Value::Null, "stop"),
        ] {
            let out = messages_response_to_chat(&anthropic_resp(json!([]), stop), 0).unwrap();
            assert_eq!(out["choices"][0]["finish_reason"], json!(finish));
            assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
            assert!(out["choices"][0]["message"].get("tool_calls").is_none());
        }
        assert!(messages_response_to_chat(&json!({"error": {}}), 0).is_none());
        assert!(messages_response_to_chat(&json!("x"), 0).is_none());
    }

    fn chat_resp(message: Value, finish: &str) -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 5, "model": "gpt-x",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 7, "total_tokens": 127,
                "prompt_tokens_details": {"cached_tokens": 100}}})
    }

    #[test]
    fn chat_response_text_and_tools() {
        let resp = chat_resp(
            json!({"role": "assistant", "content": "Sure.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"a\":1}"}},
                {"id": "call_2", "type": "function", "function": {"name": "bad", "arguments": "{nope"}},
            ]}),
            "tool_calls",
        );
        assert_eq!(
            chat_response_to_messages(&resp).unwrap(),
            json!({"id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "gpt-x",
                "content": [
                    {"type": "text", "text": "Sure."},
                    {"type": "tool_use", "id": "call_1", "name": "get", "input": {"a": 1}},
                    {"type": "tool_use", "id": "call_2", "name": "bad", "input": {}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 20, "output_tokens": 7,
                    "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0}})
        );
    }

    #[test]
    fn chat_response_stop_reasons() {
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
            ("other", "end_turn"),
        ] {
            let resp = chat_resp(json!({"role": "assistant", "content": ""}), finish);
            let out = chat_response_to_messages(&resp).unwrap();
            assert_eq!(out["stop_reason"], json!(stop));
            assert_eq!(out["content"], json!([]));
        }
        let resp = chat_resp(
            json!({"role": "assistant", "content": null, "refusal": "No."}),
            "stop",
        );
        let out = chat_response_to_messages(&resp).unwrap();
        assert_eq!(out["content"], json!([{"type": "text", "text": "No."}]));
        assert!(chat_response_to_messages(&json!({"choices": []})).is_none());
    }

    #[test]
    fn error_to_openai_maps_types() {
        for (kind, openai) in [
            ("invalid_request_error", "invalid_request_error"),
            ("authentication_error", "authentication_error"),
            ("permission_error", "permission_error"),
            ("not_found_error", "invalid_request_error"),
            ("rate_limit_error", "rate_limit_error"),
            ("overloaded_error", "server_error"),
            ("api_error", "server_error"),
        ] {
            let body =
                json!({"type": "error", "error": {"type": kind, "message": "m"}}).to_string();
            assert_eq!(
                error_to_openai(400, body.as_bytes()),
                json!({"error": {"message": "m", "type": openai, "code": kind}})
            );
        }
    }

    #[test]
    fn error_to_openai_non_json() {
        assert_eq!(
            error_to_openai(502, b"<html>Bad gateway</html>"),
            json!({"error": {"message": "upstream answered 502: <html>Bad gateway</html>",
                "type": "server_error", "code": null}})
        );
        assert_eq!(
            error_to_openai(429, b""),
            json!({"error": {"message": "upstream answered 429", "type": "rate_limit_error", "code": null}})
        );
        let long = "x".repeat(500);
        let out = error_to_openai(400, long.as_bytes());
        let msg = out["error"]["message"].as_str().unwrap();
        assert_eq!(msg.len(), "upstream answered 400: ".len() + 200);
        assert_eq!(out["error"]["type"], json!("invalid_request_error"));
    }

    #[test]
    fn error_to_anthropic_by_status() {
        let body =
            json!({"error": {"message": "bad", "type": "invalid_request_error", "code": null}});
        let body = body.to_string();
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (500, "api_error"),
            (418, "api_error"),
        ] {
            assert_eq!(
                error_to_anthropic(status, body.as_bytes()),
                json!({"type": "error", "error": {"type": kind, "message": "bad"}})
            );
        }
        assert_eq!(
            error_to_anthropic(500, b"oops"),
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream answered 500: oops"}})
        );
    }
}
