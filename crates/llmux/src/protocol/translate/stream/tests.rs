use super::*;

/// Parses SSE output into (event name, data) pairs, checking the framing.
fn parse(out: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\n\n"), "{text:?}");
    text.split_terminator("\n\n")
        .map(|ev| {
            let mut name = None;
            let mut data = None;
            for line in ev.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                } else {
                    panic!("bad line {line:?}");
                }
            }
            (name, data.unwrap())
        })
        .collect()
}

fn feed_anthropic(s: &mut AnthropicToChatStream, events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let name = e["type"].as_str().unwrap().to_owned();
        s.event(Some(&name), &e.to_string(), &mut out);
    }
    out
}

fn anthropic_events() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message",
            "role": "assistant", "model": "claude-sonnet", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1,
                "cache_read_input_tokens": 300, "cache_creation_input_tokens": 40}}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
            "id": "toolu_9", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 42}}),
        json!({"type": "message_stop"}),
    ]
}

#[test]
fn anthropic_to_chat_full_sequence() {
    let mut s = AnthropicToChatStream::new("fallback", true, 1234);
    let mut out = feed_anthropic(&mut s, &anthropic_events());
    assert!(s.done());
    s.finish(&mut out);
    s.event(None, r#"{"type":"message_stop"}"#, &mut out);
    let events = parse(&out);
    assert!(events.iter().all(|(name, _)| name.is_none()));
    assert_eq!(events.last().unwrap().1, "[DONE]");
    assert_eq!(events.iter().filter(|(_, d)| d == "[DONE]").count(), 1);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["id"], json!("msg_01"));
        assert_eq!(c["object"], json!("chat.completion.chunk"));
        assert_eq!(c["created"], json!(1234));
        assert_eq!(c["model"], json!("claude-sonnet"));
    }
    let deltas: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"].get(0)).collect();
    assert_eq!(
        deltas[0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = deltas
        .iter()
        .filter_map(|d| d["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Let me look.");
    assert_eq!(
        deltas[3]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "toolu_9", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]})
    );
    let args: String = deltas
        .iter()
        .filter_map(|d| d["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let args: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert_eq!(deltas.len(), 7);
    let last = deltas.last().unwrap();
    assert_eq!(last["delta"], json!({}));
    assert_eq!(last["finish_reason"], json!("tool_calls"));
    assert!(deltas[..6].iter().all(|d| d["finish_reason"].is_null()));
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 352, "completion_tokens": 42, "total_tokens": 394,
            "prompt_tokens_details": {"cached_tokens": 300}})
    );
}

#[test]
fn anthropic_to_chat_without_usage_and_empty_tool_args() {
    let mut s = AnthropicToChatStream::new("fallback", false, 1);
    let out = feed_anthropic(
        &mut s,
        &[
            json!({"type": "message_start", "message": {"id": "m", "model": "", "usage": {}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 3}}),
            json!({"type": "message_stop"}),
        ],
    );
    let events = parse(&out);
    let datas: Vec<&str> = events.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(datas.len(), 5);
    let c: Vec<Value> = datas[..4]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(c[0]["model"], json!("fallback"));
    assert_eq!(
        c[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        json!("{}")
    );
    assert_eq!(c[3]["choices"][0]["finish_reason"], json!("length"));
    assert_eq!(datas[4], "[DONE]");
}

#[test]
fn anthropic_to_chat_error_and_garbage() {
    let mut s = AnthropicToChatStream::new("f", true, 1);
    let mut out = Vec::new();
    s.event(None, "not json", &mut out);
    s.event(Some("weird"), r#"{"type":"weird"}"#, &mut out);
    assert!(out.is_empty());
    s.event(
        Some("error"),
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        &mut out,
    );
    assert!(s.done());
    s.finish(&mut out);
    s.event(None, r#"{"type":"message_stop"}"#, &mut out);
    let events = parse(&out);
    assert_eq!(events.len(), 1);
    let v: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(
        v,
        json!({"error": {"message": "Overloaded", "type": "server_error", "code": "overloaded_error"}})
    );
}

#[test]
fn anthropic_to_chat_finish_without_stop_writes_nothing() {
    let mut s = AnthropicToChatStream::new("f", true, 1);
    let mut out = feed_anthropic(&mut s, &anthropic_events()[..5]);
    let len = out.len();
    s.finish(&mut out);
    assert_eq!(out.len(), len);
    assert!(!s.done());
}

fn chat_chunk(delta: Value, finish: Value) -> String {
    json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
    .to_string()
}

fn chat_chunks() -> Vec<String> {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut c = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            c["id"] = json!(id);
            c["type"] = json!("function");
            c["function"]["name"] = json!(name);
        }
        chat_chunk(json!({"tool_calls": [c]}), Value::Null)
    };
    vec![
        chat_chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chat_chunk(json!({"content": "Checking "}), Value::Null),
        chat_chunk(json!({"content": "both."}), Value::Null),
        call(0, Some("call_a"), Some("get_weather"), ""),
        call(0, None, None, "{\"city\":"),
        call(0, None, None, "\"Paris\"}"),
        call(1, Some("call_b"), Some("get_time"), "{\"tz\""),
        call(1, None, None, ":\"CET\"}"),
        chat_chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [], "usage": {"prompt_tokens": 500, "completion_tokens": 33, "total_tokens": 533,
                "prompt_tokens_details": {"cached_tokens": 400}}})
        .to_string(),
        "[DONE]".to_owned(),
    ]
}

fn anthropic_out(out: &[u8]) -> Vec<Value> {
    parse(out)
        .into_iter()
        .map(|(name, data)| {
            let v: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(name.as_deref(), v["type"].as_str());
            v
        })
        .collect()
}

#[test]
fn chat_to_anthropic_full_sequence() {
    let mut s = ChatToAnthropicStream::new("fallback");
    let mut out = Vec::new();
    for c in chat_chunks() {
        s.event(None, &c, &mut out);
    }
    assert!(s.done());
    s.finish(&mut out);
    s.event(None, "[DONE]", &mut out);
    let ev = anthropic_out(&out);
    let delta =
        |index: u64, d: Value| json!({"type": "content_block_delta", "index": index, "delta": d});
    let expected = vec![
        json!({"type": "message_start", "message": {"id": "chatcmpl-7", "type": "message",
            "role": "assistant", "model": "gpt-4o", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        delta(0, json!({"type": "text_delta", "text": "Checking "})),
        delta(0, json!({"type": "text_delta", "text": "both."})),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
            "id": "call_a", "name": "get_weather", "input": {}}}),
        delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "{\"city\":"}),
        ),
        delta(
            1,
            json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"}),
        ),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use",
            "id": "call_b", "name": "get_time", "input": {}}}),
        delta(
            2,
            json!({"type": "input_json_delta", "partial_json": "{\"tz\""}),
        ),
        delta(
            2,
            json!({"type": "input_json_delta", "partial_json": ":\"CET\"}"}),
        ),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 33, "input_tokens": 100, "cache_read_input_tokens": 400,
                "cache_creation_input_tokens": 0}}),
        json!({"type": "message_stop"}),
    ];
    assert_eq!(ev, expected);
}

#[test]
fn chat_to_anthropic_finish_closes_and_is_idempotent() {
    let mut s = ChatToAnthropicStream::new("fallback");
    let mut out = Vec::new();
    s.event(
        None,
        &json!({"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]}).to_string(),
        &mut out,
    );
    assert!(!s.done());
    s.finish(&mut out);
    s.finish(&mut out);
    assert!(s.done());
    let ev = anthropic_out(&out);
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(ev[0]["message"]["model"], json!("fallback"));
    assert_eq!(ev[4]["delta"]["stop_reason"], json!("end_turn"));
    assert_eq!(ev[4]["usage"]["output_tokens"], json!(0));
}

#[test]
fn chat_to_anthropic_finish_before_start_writes_nothing() {
    let mut s = ChatToAnthropicStream::new("f");
    let mut out = Vec::new();
    s.event(None, "garbage", &mut out);
    s.finish(&mut out);
    assert!(out.is_empty());
}

#[test]
fn chat_to_anthropic_error_chunk() {
    let mut s = ChatToAnthropicStream::new("f");
    let mut out = Vec::new();
    s.event(
        None,
        &chat_chunk(json!({"content": "a"}), Value::Null),
        &mut out,
    );
    let before = out.len();
    s.event(
        None,
        r#"{"error":{"message":"slow down","type":"rate_limit_error","code":null}}"#,
        &mut out,
    );
    assert!(s.done());
    s.finish(&mut out);
    s.event(None, "[DONE]", &mut out);
    let ev = anthropic_out(&out[before..]);
    assert_eq!(
        ev,
        vec![
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        ]
    );
}

#[test]
fn chat_to_anthropic_repeated_ids_continue_the_call() {
    let mut s = ChatToAnthropicStream::new("f");
    let mut out = Vec::new();
    for args in ["{\"a\":", "1}"] {
        let c = json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": args}}]});
        s.event(None, &chat_chunk(c, Value::Null), &mut out);
    }
    s.event(None, &chat_chunk(json!({}), json!("length")), &mut out);
    s.event(None, "[DONE]", &mut out);
    let ev = anthropic_out(&out);
    let starts = ev
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .count();
    assert_eq!(starts, 1);
    assert_eq!(
        ev[ev.len() - 2]["delta"]["stop_reason"],
        json!("max_tokens")
    );
}
