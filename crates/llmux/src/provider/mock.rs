//! The `mock` provider: answers in-process, shaped like OpenAI, so demos and offline tests need
//! no keys. Configurable latency, token usage, error rate, and "429 after N requests".

use super::{Call, Endpoint, Provider, Reply, ReplyBody};
use crate::error::UpstreamError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http::HeaderMap;
use llmux_core::config::MockSettings;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct MockProvider {
    settings: MockSettings,
    served: Arc<AtomicU64>,
}

impl MockProvider {
    pub fn new(settings: MockSettings) -> Self {
        MockProvider {
            settings,
            served: Arc::new(AtomicU64::new(0)),
        }
    }
}

fn json_reply(status: u16, v: &Value, extra: &[(&'static str, String)]) -> Reply {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    for (k, val) in extra {
        if let Ok(val) = http::HeaderValue::from_str(val) {
            headers.insert(*k, val);
        }
    }
    Reply {
        status,
        headers,
        body: ReplyBody::Full(Bytes::from(v.to_string())),
    }
}

/// A Responses API answer: a JSON `response`, or its typed SSE events ending with
/// `response.completed` (no `[DONE]`).
fn responses_reply(content: &str, model: &str, tokens: (u64, u64), n: u64, stream: bool) -> Reply {
    let (input, output) = tokens;
    let id = format!("resp_mock{n}");
    let item_id = format!("msg_mock{n}");
    let created_at = 1_700_000_000 + n;
    let text = json!({"type": "output_text", "text": content, "annotations": []});
    let item = json!({"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [text]});
    let response = |status: &str, output_items: Value, usage: Value| {
        json!({"id": id, "object": "response", "created_at": created_at, "status": status,
            "model": model, "output": output_items, "parallel_tool_calls": true,
            "tool_choice": "auto", "tools": [], "usage": usage})
    };
    let usage = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output});
    if !stream {
        return json_reply(200, &response("completed", json!([item]), usage), &[]);
    }
    let mut events = vec![
        json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)}),
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
            "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ];
    for word in content.split_inclusive(' ') {
        events.push(
            json!({"type": "response.output_text.delta", "item_id": item_id,
            "output_index": 0, "content_index": 0, "delta": word}),
        );
    }
    events.extend([
        json!({"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
            "content_index": 0, "text": content}),
        json!({"type": "response.content_part.done", "item_id": item_id, "output_index": 0,
            "content_index": 0, "part": text}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": response("completed", json!([item]), usage)}),
    ]);
    let frames = events.into_iter().enumerate().map(|(i, mut e)| {
        e["sequence_number"] = json!(i);
        let name = e["type"].as_str().unwrap_or_default().to_string();
        Ok(Bytes::from(format!("event: {name}\ndata: {e}\n\n")))
    });
    sse_reply(futures_util::stream::iter(frames).boxed())
}

fn sse_reply(stream: super::ByteStream) -> Reply {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    Reply {
        status: 200,
        headers,
        body: ReplyBody::Stream(stream),
    }
}

fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code}})
}

impl Provider for MockProvider {
    fn has_own_estimate(&self) -> bool {
        false
    }

    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
        let s = self.settings.clone();
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(async move {
            if s.latency_ms > 0 {
                let wait = Duration::from_millis(s.latency_ms);
                if wait >= call.timeout {
                    tokio::time::sleep(call.timeout).await;
                    return Err(UpstreamError::Timeout(call.timeout.as_secs()));
                }
                tokio::time::sleep(wait).await;
            }
            if s.rate_limit_after.is_some_and(|limit| n > limit) {
                return Ok(json_reply(
                    429,
                    &error_body(
                        "mock rate limit reached",
                        "rate_limit_error",
                        "rate_limit_exceeded",
                    ),
                    &[("retry-after", s.retry_after_secs.to_string())],
                ));
            }
            if s.error_rate > 0.0 && rand::random::<f64>() < s.error_rate {
                return Ok(json_reply(
                    500,
                    &error_body("mock upstream error", "server_error", "mock_error"),
                    &[],
                ));
            }
            let body: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("mock")
                .to_string();
            let prompt_tokens = s.prompt_tokens.unwrap_or_else(|| {
                body.as_object()
                    .map(llmux_core::usage::estimate_input_tokens)
                    .unwrap_or(0)
            });
            let completion_tokens = match call.endpoint {
                Endpoint::Embeddings => 0,
                _ => s.completion_tokens,
            };
            let usage = json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            });
            let id = format!("mock-{n}");
            let created = 1_700_000_000 + n;
            match call.endpoint {
                Endpoint::Messages => Ok(json_reply(
                    404,
                    &error_body(
                        "the mock speaks the OpenAI dialect; Messages requests reach it translated",
                        "invalid_request_error",
                        "not_found",
                    ),
                    &[],
                )),
                Endpoint::Responses => Ok(responses_reply(
                    &s.content,
                    &model,
                    (prompt_tokens, completion_tokens),
                    n,
                    call.stream,
                )),
                Endpoint::Embeddings => {
                    let inputs = match body.get("input") {
                        Some(Value::Array(a)) => a.len().max(1),
                        _ => 1,
                    };
                    let data: Vec<Value> = (0..inputs)
                        .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.0, 0.5, 1.0]}))
                        .collect();
                    Ok(json_reply(
                        200,
                        &json!({
                            "object": "list", "data": data, "model": model,
                            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                        }),
                        &[],
                    ))
                }
                endpoint if call.stream => {
                    let include_usage = body
                        .pointer("/stream_options/include_usage")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let chat = endpoint == Endpoint::ChatCompletions;
                    let object = if chat {
                        "chat.completion.chunk"
                    } else {
                        "text_completion"
                    };
                    let usage_field = if include_usage {
                        Value::Null
                    } else {
                        Value::Bool(false)
                    };
                    let chunk = |choice: Value| {
                        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
                        if include_usage {
                            v["usage"] = usage_field.clone();
                        }
                        format!("data: {v}\n\n")
                    };
                    let mut events = Vec::new();
                    if chat {
                        events.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})));
                    }
                    for word in s.content.split_inclusive(' ') {
                        events.push(chunk(if chat {
                            json!({"index": 0, "delta": {"content": word}, "finish_reason": null})
                        } else {
                            json!({"index": 0, "text": word, "finish_reason": null})
                        }));
                    }
                    events.push(chunk(if chat {
                        json!({"index": 0, "delta": {}, "finish_reason": "stop"})
                    } else {
                        json!({"index": 0, "text": "", "finish_reason": "stop"})
                    }));
                    if include_usage {
                        let v = json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage});
                        events.push(format!("data: {v}\n\n"));
                    }
                    events.push("data: [DONE]\n\n".to_string());
                    let stream =
                        futures_util::stream::iter(events.into_iter().map(|e| Ok(Bytes::from(e))));
                    Ok(sse_reply(stream.boxed()))
                }
                Endpoint::ChatCompletions => Ok(json_reply(
                    200,
                    &json!({
                        "id": id, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": s.content}, "finish_reason": "stop"}],
                        "usage": usage,
                    }),
                    &[],
                )),
                Endpoint::Completions => Ok(json_reply(
                    200,
                    &json!({
                        "id": id, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": s.content, "finish_reason": "stop"}],
                        "usage": usage,
                    }),
                    &[],
                )),
            }
        })
    }
}
