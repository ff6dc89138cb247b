//! The answers of the chat (with tool calls and cache tokens), Anthropic Messages and OpenAI
//! Responses endpoints of the mock.

use super::{build, insert, Ctx, CONTENT_PIECES};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

/// The arguments of a mock tool call, streamed in these pieces.
pub(crate) const TOOL_ARGUMENT_PIECES: [&str; 2] = ["{\"q\":", "\"mock\"}"];

fn tool_arguments() -> String {
    TOOL_ARGUMENT_PIECES.concat()
}

/// OpenAI chat usage: cache reads are part of `prompt_tokens`.
pub(crate) fn chat_usage(ctx: &Ctx) -> Value {
    let (read, _) = ctx.cache;
    let p = ctx.prompt_tokens + read;
    let c = ctx.completion_tokens;
    let mut u = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    if read > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": read});
    }
    u
}

pub(crate) fn chat_json(ctx: &Ctx) -> Value {
    let (message, finish) = match ctx.tool_call() {
        Some(name) => (
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_mock", "type": "function",
                 "function": {"name": name, "arguments": tool_arguments()}}]}),
            "tool_calls",
        ),
        None => (
            json!({"role": "assistant", "content": CONTENT_PIECES.concat(), "refusal": null}),
            "stop",
        ),
    };
    json!({
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": chat_usage(ctx),
    })
}

/// Anthropic usage: `input_tokens` leaves the cache tokens out.
fn anthropic_usage(ctx: &Ctx, output: u64) -> Value {
    let (read, write) = ctx.cache;
    json!({"input_tokens": ctx.prompt_tokens, "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read, "output_tokens": output})
}

pub(crate) fn anthropic_json(ctx: &Ctx) -> Value {
    let (content, stop) = match ctx.tool_call() {
        Some(name) => (
            json!([{"type": "tool_use", "id": "toolu_mock", "name": name, "input": {"q": "mock"}}]),
            "tool_use",
        ),
        None => (
            json!([{"type": "text", "text": CONTENT_PIECES.concat()}]),
            "end_turn",
        ),
    };
    json!({"id": ctx.id, "type": "message", "role": "assistant", "model": ctx.model,
        "content": content, "stop_reason": stop, "stop_sequence": null,
        "usage": anthropic_usage(ctx, ctx.completion_tokens)})
}

fn event(data: &Value) -> Bytes {
    let name = data["type"].as_str().unwrap_or_default();
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `message_start`, a ping, one content block (`pieces` deltas of text, or of a tool call's
/// arguments), then, if `complete`, `content_block_stop`, `message_delta` and `message_stop`.
pub(crate) fn anthropic_events(ctx: &Ctx, pieces: usize, complete: bool) -> Vec<Bytes> {
    let tool = ctx.tool_call();
    let mut out = vec![
        event(
            &json!({"type": "message_start", "message": {"id": ctx.id, "type": "message",
            "role": "assistant", "model": ctx.model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": anthropic_usage(ctx, 1)}}),
        ),
        event(&json!({"type": "ping"})),
    ];
    let block = match &tool {
        Some(name) => json!({"type": "tool_use", "id": "toolu_mock", "name": name, "input": {}}),
        None => json!({"type": "text", "text": ""}),
    };
    out.push(event(
        &json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    let pieces = match tool {
        Some(_) => pieces.min(TOOL_ARGUMENT_PIECES.len()),
        None => pieces,
    };
    for i in 0..pieces {
        let delta = match &tool {
            Some(_) => json!({"type": "input_json_delta",
                "partial_json": TOOL_ARGUMENT_PIECES[i % TOOL_ARGUMENT_PIECES.len()]}),
            None => json!({"type": "text_delta", "text": CONTENT_PIECES[i % CONTENT_PIECES.len()]}),
        };
        out.push(event(
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ));
    }
    if complete {
        let stop = if tool.is_some() {
            "tool_use"
        } else {
            "end_turn"
        };
        out.push(event(&json!({"type": "content_block_stop", "index": 0})));
        out.push(event(&json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": ctx.completion_tokens}})));
        out.push(event(&json!({"type": "message_stop"})));
    }
    out
}

fn responses_usage(ctx: &Ctx) -> Value {
    let (read, _) = ctx.cache;
    let input = ctx.prompt_tokens + read;
    let output = ctx.completion_tokens;
    json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": read},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output})
}

fn response_object(ctx: &Ctx, status: &str, output: Value, usage: Value) -> Value {
    json!({"id": ctx.id, "object": "response", "created_at": ctx.created, "status": status,
        "model": ctx.model, "output": output, "parallel_tool_calls": true,
        "tool_choice": "auto", "tools": [], "usage": usage})
}

fn message_item(ctx: &Ctx, text: &str) -> Value {
    json!({"type": "message", "id": format!("msg_{}", ctx.id), "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

pub(crate) fn responses_json(ctx: &Ctx) -> Value {
    let item = message_item(ctx, &CONTENT_PIECES.concat());
    response_object(ctx, "completed", json!([item]), responses_usage(ctx))
}

/// `response.created`, the item and part opened, `pieces` text deltas, then, if `complete`,
/// the closing events and `response.completed` (with usage). No `[DONE]`.
pub(crate) fn responses_events(ctx: &Ctx, pieces: usize, complete: bool) -> Vec<Bytes> {
    let item_id = format!("msg_{}", ctx.id);
    let mut events = vec![
        json!({"type": "response.created",
            "response": response_object(ctx, "in_progress", json!([]), Value::Null)}),
        json!({"type": "response.output_item.added", "output_index": 0, "item": {"type": "message",
            "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    let mut text = String::new();
    for i in 0..pieces {
        let piece = CONTENT_PIECES[i % CONTENT_PIECES.len()];
        text.push_str(piece);
        events.push(
            json!({"type": "response.output_text.delta", "item_id": item_id,
            "output_index": 0, "content_index": 0, "delta": piece}),
        );
    }
    if complete {
        let item = message_item(ctx, &text);
        events.extend([
            json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
                "content_index": 0, "text": text}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
            json!({"type": "response.completed", "response":
                response_object(ctx, "completed", json!([item]), responses_usage(ctx))}),
        ]);
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e["sequence_number"] = json!(i);
            event(&e)
        })
        .collect()
}

/// An Anthropic-shaped error answer.
pub(crate) fn anthropic_error(
    status: StatusCode,
    retry_after_secs: Option<u64>,
    mut h: HeaderMap,
) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind,
        "message": format!("mock upstream error: {status}")}});
    insert(&mut h, "content-type", "application/json");
    if let Some(secs) = retry_after_secs {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    build(status, h, Body::from(body.to_string()))
}

/// A 429 as Anthropic sends it: `retry-after` and `anthropic-ratelimit-*` (RFC 3339 resets).
pub(crate) fn anthropic_rate_limited(retry_after_secs: u64) -> Response {
    let reset = std::time::SystemTime::now() + std::time::Duration::from_secs(retry_after_secs);
    let reset = jiff::Timestamp::try_from(reset)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", reset.as_str()),
        ("anthropic-ratelimit-tokens-limit", "40000"),
        ("anthropic-ratelimit-tokens-remaining", "0"),
        ("anthropic-ratelimit-tokens-reset", reset.as_str()),
    ] {
        insert(&mut h, name, value);
    }
    anthropic_error(StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs), h)
}
