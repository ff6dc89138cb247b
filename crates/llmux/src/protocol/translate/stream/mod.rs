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
mod tests;
