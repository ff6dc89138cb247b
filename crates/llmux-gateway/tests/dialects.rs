//! Dialects end to end over loopback: Anthropic Messages native and translated both ways,
//! the Responses API, each route's error envelope, and the usage ledger (cache tokens included)
//! counted into token limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::{Behavior, MockUpstream};
use serde_json::{json, Value};

fn sse_data(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

fn messages_body(model: &str, stream: bool) -> String {
    json!({"model": model, "max_tokens": 100, "stream": stream,
        "system": "Be brief.", "messages": [{"role": "user", "content": "Say hello"}]})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_native_passes_through_and_counts_cache_tokens() {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 5);
    mock.set_cache_usage(100, 20);
    let gw = start(&two_dialects(&mock)).await;
    let r = post(gw.addr, "/v1/messages", messages_body("claude", false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("x-llmux-target"),
        Some("claude/k1/claude-sonnet-4-5")
    );
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "Hello from mock");
    let seen = &mock.requests()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "sk-ant-1");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(seen.authorization.is_none(), "no bearer to Anthropic");
    assert_eq!(seen.body["model"], "claude-sonnet-4-5");
    assert_eq!(seen.body["system"], "Be brief.");
    // The ledger: input 10 + cache read 100 + cache write 20, output 5.
    let r = &gw.router;
    eventually(|| async { counter(r, "claude/k1", "tpm").await == (135, 0) }).await;
    assert_eq!(counter(r, "claude/k1", "input_tpm").await, (130, 0));
    assert_eq!(counter(r, "claude/k1", "cache_read_tpm").await, (100, 0));

    let s = post(gw.addr, "/v1/messages", messages_body("claude", true), &[]).await;
    assert_eq!(s.status, 200);
    let text = s.text();
    for name in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(text.contains(&format!("event: {name}\n")), "{text}");
    }
    eventually(|| async { counter(r, "claude/k1", "tpm").await == (270, 0) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_reaches_an_anthropic_target_translated() {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 5);
    mock.set_cache_usage(30, 0);
    let gw = start(&two_dialects(&mock)).await;
    let body = json!({"model": "claude", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"}]});
    let r = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 40, "{v}");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 30);
    let seen = &mock.requests()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.body["system"], "Be brief.");
    assert_eq!(
        seen.body["messages"],
        json!([{"role": "user", "content": "Say hello"}])
    );
    assert_eq!(
        seen.body["max_tokens"], 4096,
        "default_max_tokens when none is asked"
    );

    // Streamed, with usage asked for: chunks of the chat dialect, ending with [DONE].
    let body = json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say hello"}]});
    let s = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(s.status, 200);
    let text = s.text();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = sse_data(&text);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello from mock");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);
    let r = &gw.router;
    eventually(|| async { counter(r, "claude/k1", "tpm").await == (90, 0) }).await;

    // A field Anthropic cannot take is refused, named.
    let body = json!({"model": "claude", "logprobs": true, "messages": [{"role": "user", "content": "x"}]});
    let e = post(gw.addr, "/v1/chat/completions", body.to_string(), &[]).await;
    assert_eq!(e.status, 400);
    let msg = e.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("`logprobs`"), "{msg}");
    assert_eq!(
        mock.request_count(),
        2,
        "nothing sent for the refused request"
    );

    // An Anthropic error answer reaches the OpenAI client in its own envelope.
    mock.push(Behavior::Status {
        status: 400,
        retry_after_secs: None,
    });
    let e = post(gw.addr, "/v1/chat/completions", chat("claude"), &[]).await;
    assert_eq!(e.status, 400);
    assert_eq!(
        e.json()["error"]["type"],
        "invalid_request_error",
        "{}",
        e.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_reach_an_openai_target_translated_with_tools() {
    let mock = MockUpstream::start().await;
    let gw = start(&two_dialects(&mock)).await;
    let tools = json!([{"name": "lookup", "description": "Look up", "input_schema":
        {"type": "object", "properties": {"q": {"type": "string"}}}}]);
    let body = json!({"model": "gpt", "max_tokens": 50, "system": "Use tools.", "tools": tools,
        "messages": [{"role": "user", "content": "find it"}]});
    let r = post(
        gw.addr,
        "/v1/messages",
        body.to_string(),
        &[("x-api-key", "ignored")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(v["content"][0]["name"], "lookup");
    assert_eq!(v["content"][0]["input"], json!({"q": "mock"}));
    let seen = &mock.requests()[0];
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-oa-1"));
    assert_eq!(
        seen.body["messages"][0],
        json!({"role": "system", "content": "Use tools."})
    );
    assert_eq!(seen.body["tools"][0]["function"]["name"], "lookup");

    // The tool result goes back as a `tool` message; the stream comes back as Anthropic events.
    let body = json!({"model": "gpt", "max_tokens": 50, "stream": true, "tools": tools,
        "messages": [
            {"role": "user", "content": "find it"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_mock", "name": "lookup", "input": {"q": "mock"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_mock", "content": "found"}]}]});
    let s = post(gw.addr, "/v1/messages", body.to_string(), &[]).await;
    assert_eq!(s.status, 200);
    let seen = &mock.requests()[1];
    assert_eq!(
        seen.body["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_mock", "content": "found"})
    );
    assert_eq!(seen.body["stream_options"]["include_usage"], true);
    let events = sse_data(&s.text());
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"message_start"));
    assert_eq!(types.last(), Some(&"message_stop"));
    let text: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello from mock");
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 5);
    let r = &gw.router;
    eventually(|| async { counter(r, "gpt/k1", "tpm").await == (30, 0) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_reaches_openai_targets_only() {
    let mock = MockUpstream::start().await;
    mock.set_usage(7, 3);
    let gw = start(&two_dialects(&mock)).await;
    let body = json!({"model": "gpt", "input": "Say hello", "max_output_tokens": 20});
    let r = post(gw.addr, "/v1/responses", body.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["output"][0]["content"][0]["text"],
        "Hello from mock"
    );
    assert_eq!(mock.requests()[0].path, "/v1/responses");
    assert_eq!(mock.requests()[0].body["model"], "gpt-4o-mini");
    let rt = &gw.router;
    eventually(|| async { counter(rt, "gpt/k1", "tpm").await == (10, 0) }).await;

    let body = json!({"model": "gpt", "input": "Say hello", "stream": true});
    let s = post(gw.addr, "/v1/responses", body.to_string(), &[]).await;
    let text = s.text();
    assert!(text.contains("event: response.completed\n"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    eventually(|| async { counter(rt, "gpt/k1", "tpm").await == (20, 0) }).await;

    let body = json!({"model": "claude", "input": "Say hello"});
    let e = post(gw.addr, "/v1/responses", body.to_string(), &[]).await;
    assert_eq!(e.status, 400);
    let msg = e.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("/v1/responses") && msg.contains("OpenAI-family"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_route_answers_in_anthropic_envelopes() {
    let mock = MockUpstream::start().await;
    let cfg = format!(
        "{}\n[[gateway_keys]]\nid = \"team\"\nsecret = \"gk-team\"\n",
        two_dialects(&mock)
    );
    let gw = start(&cfg).await;
    let e = post(gw.addr, "/v1/messages", messages_body("claude", false), &[]).await;
    assert_eq!(e.status, 401);
    assert_eq!(
        e.json(),
        json!({"type": "error", "error": {"type": "authentication_error",
            "message": "invalid or missing gateway key"}})
    );
    let key = [("x-api-key", "gk-team")];
    let e = post(gw.addr, "/v1/messages", messages_body("nope", false), &key).await;
    assert_eq!(e.status, 404);
    assert_eq!(e.json()["error"]["type"], "not_found_error");
    let ok = post(
        gw.addr,
        "/v1/messages",
        messages_body("claude", false),
        &key,
    )
    .await;
    assert_eq!(ok.status, 200);
    let bearer = [("authorization", "Bearer gk-team")];
    let ok = post(
        gw.addr,
        "/v1/messages",
        messages_body("claude", false),
        &bearer,
    )
    .await;
    assert_eq!(ok.status, 200);

    // A stream that breaks ends with Anthropic's error event, and no message_stop.
    mock.push(Behavior::BreakStreamAfter(1));
    let s = post(gw.addr, "/v1/messages", messages_body("claude", true), &key).await;
    let text = s.text();
    assert!(text.contains("event: error\n"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    let last = sse_data(&text).pop().unwrap();
    assert_eq!(last["error"]["type"], "api_error");

    // A 429 upstream with Anthropic's headers cools the key like an OpenAI one.
    mock.push(Behavior::RateLimited {
        retry_after_secs: 30,
    });
    let e = post(
        gw.addr,
        "/v1/messages",
        messages_body("claude", false),
        &key,
    )
    .await;
    assert_eq!(e.status, 429, "{}", e.text());
    assert_eq!(e.json()["type"], "error");
    let again = post(
        gw.addr,
        "/v1/messages",
        messages_body("claude", false),
        &key,
    )
    .await;
    assert_eq!(again.status, 429);
    assert!(again.header("retry-after").unwrap().parse::<u64>().unwrap() >= 25);
}
