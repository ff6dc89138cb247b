//! SSE stream translation, one upstream event at a time.

use serde_json::{json, Value};

use super::response::{
    anthropic_error_from_openai, finish_reason, openai_error_from_anthropic, stop_reason,
};
use crate::protocol::usage::{anthropic_usage_json, chat_usage_json, UsageShape, WireUsage};
use llmux_core::Usage;

/// Writes an OpenAI `data:` event.
fn write_data(out: &mut Vec<u8>, v: &Value) {
    out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
}

/// Writes an Anthropic event, named after its `type`.
fn write_event(out: &mut Vec<u8>, v: &Value) {
    let name = v.get("type").and_then(Value::as_str).unwrap_or("message");
    out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
}

/// A `tool_use` content block and the OpenAI tool call it became.
struct ToolBlock {
    block: u64,
    call: u64,
    args_sent: bool,
}

/// Turns an upstream Anthropic Messages stream into OpenAI `chat.completion.chunk`s.
pub struct AnthropicToChatStream {
    include_usage: bool,
    created: u64,
    id: String,
    model: String,
    /// The upstream's usage so far (`message_start`, then `message_delta`).
    usage: WireUsage,
    tools: Vec<ToolBlock>,
    stop_seen: bool,
    closed: bool,
}

impl AnthropicToChatStream {
    /// `model_fallback` names the model until `message_start` gives one.
    pub fn new(model_fallback: &str, include_usage: bool, created: u64) -> Self {
        AnthropicToChatStream {
            include_usage,
            created,
            id: String::new(),
            model: model_fallback.to_owned(),
            usage: WireUsage::default(),
            tools: Vec::new(),
            stop_seen: false,
            closed: false,
        }
    }

    /// Feeds one upstream event; the event's JSON `type` wins over `name`.
    pub fn event(&mut self, name: Option<&str>, data: &str, out: &mut Vec<u8>) {
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            self.event_value(name, &v, out);
        }
    }

    /// [`AnthropicToChatStream::event`] with the data already parsed.
    pub fn event_value(&mut self, name: Option<&str>, v: &Value, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(name)
            .unwrap_or("")
            .to_owned();
        match kind.as_str() {
            "message_start" => self.on_message_start(v, out),
            "content_block_start" => self.on_block_start(v, out),
            "content_block_delta" => self.on_block_delta(v, out),
            "content_block_stop" => self.on_block_stop(v, out),
            "message_delta" => self.on_message_delta(v, out),
            "message_stop" => {
                self.stop_seen = true;
                self.close(out);
            }
            "error" => {
                let err = openai_error_from_anthropic(v, None).unwrap_or_else(|| {
                    json!({"error": {"message": "upstream stream error",
                        "type": "server_error", "code": null}})
                });
                write_data(out, &err);
                self.closed = true;
            }
            _ => {}
        }
    }

    /// Upstream ended: closes the stream if `message_stop` was seen; idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.stop_seen && !self.closed {
            self.close(out);
        }
    }

    /// Whether the stream is closed (`[DONE]` or an error was written).
    pub fn done(&self) -> bool {
        self.closed
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": chat_usage_json(&self.usage.counts(UsageShape::Anthropic)),
            });
            write_data(out, &chunk);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.closed = true;
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut Vec<u8>) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        });
        write_data(out, &chunk);
    }

    fn on_message_start(&mut self, v: &Value, out: &mut Vec<u8>) {
        let msg = v.get("message").unwrap_or(&Value::Null);
        if let Some(id) = msg.get("id").and_then(Value::as_str) {
            self.id = id.to_owned();
        }
        if let Some(model) = msg.get("model").and_then(Value::as_str) {
            if !model.is_empty() {
                self.model = model.to_owned();
            }
        }
        if let Some(usage) = msg.get("usage") {
            if let Some(u) = WireUsage::from_value(usage) {
                self.usage.merge(&u);
            }
        }
        self.chunk(json!({"role": "assistant", "content": ""}), None, out);
    }

    fn on_block_start(&mut self, v: &Value, out: &mut Vec<u8>) {
        let block = v.get("content_block").unwrap_or(&Value::Null);
        if block.get("type").and_then(Value::as_str) != Some("tool_use") {
            return;
        }
        let call = self.tools.len() as u64;
        self.tools.push(ToolBlock {
            block: v.get("index").and_then(Value::as_u64).unwrap_or(0),
            call,
            args_sent: false,
        });
        let delta = json!({"tool_calls": [{
            "index": call,
            "id": block.get("id").cloned().unwrap_or(Value::Null),
            "type": "function",
            "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
        }]});
        self.chunk(delta, None, out);
    }

    fn tool_at(&mut self, v: &Value) -> Option<&mut ToolBlock> {
        let index = v.get("index").and_then(Value::as_u64)?;
        self.tools.iter_mut().rev().find(|t| t.block == index)
    }

    fn on_block_delta(&mut self, v: &Value, out: &mut Vec<u8>) {
        let delta = v.get("delta").unwrap_or(&Value::Null);
        match delta.get("type").and_then(Value::as_str) {
            Some("text_delta") => {
                let text = delta.get("text").and_then(Value::as_str).unwrap_or("");
                if !text.is_empty() {
                    self.chunk(json!({"content": text}), None, out);
                }
            }
            Some("input_json_delta") => {
                let part = delta
                    .get("partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if part.is_empty() {
                    return;
                }
                let Some(tool) = self.tool_at(v) else {
                    return;
                };
                tool.args_sent = true;
                let call = tool.call;
                let delta =
                    json!({"tool_calls": [{"index": call, "function": {"arguments": part}}]});
                self.chunk(delta, None, out);
            }
            _ => {}
        }
    }

    /// A tool call that streamed no arguments gets `{}` so clients can parse it.
    fn on_block_stop(&mut self, v: &Value, out: &mut Vec<u8>) {
        let Some(tool) = self.tool_at(v) else {
            return;
        };
        if tool.args_sent {
            return;
        }
        tool.args_sent = true;
        let call = tool.call;
        let delta = json!({"tool_calls": [{"index": call, "function": {"arguments": "{}"}}]});
        self.chunk(delta, None, out);
    }

    fn on_message_delta(&mut self, v: &Value, out: &mut Vec<u8>) {
        if let Some(usage) = v.get("usage") {
            if let Some(u) = WireUsage::from_value(usage) {
                self.usage.merge(&u);
            }
        }
        let stop = v
            .get("delta")
            .and_then(|d| d.get("stop_reason"))
            .and_then(Value::as_str);
        self.chunk(json!({}), Some(finish_reason(stop)), out);
    }
}

/// Which kind of content block is open in the Anthropic stream being written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text(u64),
    Tool(u64),
}

/// An OpenAI tool call and the `tool_use` block index it was given.
struct CallBlock {
    tool: u64,
    id: String,
    block: u64,
}

/// Turns an upstream OpenAI chat stream into Anthropic Messages events.
pub struct ChatToAnthropicStream {
    model_fallback: String,
    started: bool,
    closed: bool,
    next_index: u64,
    open: Option<Open>,
    calls: Vec<CallBlock>,
    stop_reason: Option<&'static str>,
    usage: Usage,
}

impl ChatToAnthropicStream {
    /// `model_fallback` names the model when chunks carry none.
    pub fn new(model_fallback: &str) -> Self {
        ChatToAnthropicStream {
            model_fallback: model_fallback.to_owned(),
            started: false,
            closed: false,
            next_index: 0,
            open: None,
            calls: Vec::new(),
            stop_reason: None,
            usage: Usage::default(),
        }
    }

    /// Feeds one upstream event: a JSON chunk or `[DONE]`.
    pub fn event(&mut self, name: Option<&str>, data: &str, out: &mut Vec<u8>) {
        if data.trim() == "[DONE]" {
            if !self.closed {
                self.close(out);
                self.closed = true;
            }
            return;
        }
        if let Ok(v) = serde_json::from_str::<Value>(data) {
            self.event_value(name, &v, out);
        }
    }

    /// [`ChatToAnthropicStream::event`] with a JSON chunk already parsed.
    pub fn event_value(&mut self, _name: Option<&str>, v: &Value, out: &mut Vec<u8>) {
        if self.closed {
            return;
        }
        if v.get("error").is_some_and(|e| !e.is_null()) {
            write_event(out, &anthropic_error_from_openai(v));
            self.closed = true;
            return;
        }
        self.start(v, out);
        if let Some(usage) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = WireUsage::from_value(usage)
                .unwrap_or_default()
                .counts(UsageShape::Chat);
        }
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first());
        if let Some(choice) = choice {
            self.on_choice(choice, out);
        }
    }

    /// Upstream ended: closes an opened message that was not closed; idempotent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.close(out);
    }

    /// Whether `message_stop` (or an error) was written, or the stream ended.
    pub fn done(&self) -> bool {
        self.closed
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = chunk
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(&self.model_fallback);
        let id = chunk.get("id").and_then(Value::as_str).unwrap_or("");
        write_event(
            out,
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if !self.started || self.closed {
            return;
        }
        self.close_block(out);
        let stop = self.stop_reason.unwrap_or("end_turn");
        write_event(
            out,
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": anthropic_usage_json(&self.usage)}),
        );
        write_event(out, &json!({"type": "message_stop"}));
        self.closed = true;
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if let Some(Open::Text(index) | Open::Tool(index)) = self.open.take() {
            write_event(out, &json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open_block(&mut self, block: Value, out: &mut Vec<u8>) -> u64 {
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        write_event(
            out,
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn on_choice(&mut self, choice: &Value, out: &mut Vec<u8>) {
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                self.on_text(text, out);
            }
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            self.on_tool_call(call, out);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(reason)));
        }
    }

    fn on_text(&mut self, text: &str, out: &mut Vec<u8>) {
        let index = match self.open {
            Some(Open::Text(index)) => index,
            _ => {
                let index = self.open_block(json!({"type": "text", "text": ""}), out);
                self.open = Some(Open::Text(index));
                index
            }
        };
        write_event(
            out,
            &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
        );
    }

    fn on_tool_call(&mut self, call: &Value, out: &mut Vec<u8>) {
        let tool = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let func = call.get("function");
        let known = self.calls.iter().rev().find(|c| c.tool == tool);
        let block = match (known, id) {
            (Some(c), Some(id)) if c.id == id => c.block,
            (Some(c), None) => c.block,
            (_, id) => {
                let id = id.map_or_else(|| format!("call_{tool}"), str::to_owned);
                let name = func.and_then(|f| f.get("name")).and_then(Value::as_str);
                let block = json!({"type": "tool_use", "id": id,
                    "name": name.unwrap_or(""), "input": {}});
                let index = self.open_block(block, out);
                self.open = Some(Open::Tool(index));
                self.calls.push(CallBlock {
                    tool,
                    id,
                    block: index,
                });
                index
            }
        };
        let args = func
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !args.is_empty() {
            write_event(
                out,
                &json!({"type": "content_block_delta", "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": args}}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
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
        let delta = |index: u64, d: Value| json!({"type": "content_block_delta", "index": index, "delta": d});
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
}
