//! Translation between the OpenAI Chat Completions and Anthropic Messages dialects:
//! requests, JSON responses, error bodies and SSE streams, both directions.
//!
//! Usage is only carried across into the other dialect's shape; accounting is the caller's.

mod request;
mod response;
mod stream;

pub use request::{chat_to_messages, messages_to_chat};
pub use response::{
    chat_response_to_messages, error_to_anthropic, error_to_openai, messages_response_to_chat,
};
pub use stream::{AnthropicToChatStream, ChatToAnthropicStream};

/// Why a request cannot be translated: names the field (JSON path like
/// `messages[2].content[0].type`) and the target dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untranslatable(pub String);

impl std::fmt::Display for Untranslatable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untranslatable {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,.!?\n]{1,20}"
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(|n| json!(n)),
            text().prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(Value::Null),
            proptest::collection::vec(any::<i32>(), 0..3).prop_map(|v| json!(v)),
        ]
    }

    fn object() -> impl Strategy<Value = Value> {
        proptest::collection::vec(("[a-z]{1,6}", leaf()), 0..4)
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
    }

    /// A tool: name, description, parameters.
    fn tool() -> impl Strategy<Value = (String, Option<String>, Option<Value>)> {
        let params = proptest::collection::vec("[a-z]{1,6}", 0..3).prop_map(|keys| {
            let props: Map<String, Value> = keys
                .into_iter()
                .map(|k| (k, json!({"type": "string"})))
                .collect();
            json!({"type": "object", "properties": props})
        });
        (
            "[a-z_]{1,10}",
            proptest::option::of(text()),
            proptest::option::of(params),
        )
    }

    /// A tool call: name, arguments, result text.
    type Call = (String, Value, String);
    /// A normalized chat message: role, texts, tool calls (id, name, arguments), tool_call_id.
    type NormMessage = (
        String,
        Vec<String>,
        Vec<(String, String, Value)>,
        Option<String>,
    );

    /// One user turn, then rounds of tool calls with their results, then a final answer.
    #[derive(Debug, Clone)]
    struct Unit {
        user: Result<String, Vec<String>>,
        rounds: Vec<(Option<String>, Vec<Call>)>,
        answer: String,
    }

    fn unit() -> impl Strategy<Value = Unit> {
        let user = prop_oneof![
            text().prop_map(Ok),
            proptest::collection::vec(text(), 1..3).prop_map(Err),
        ];
        let call = ("[a-z_]{1,8}", object(), text());
        let round = (
            proptest::option::of(text()),
            proptest::collection::vec(call, 1..3),
        );
        (user, proptest::collection::vec(round, 0..3), text()).prop_map(|(user, rounds, answer)| {
            Unit {
                user,
                rounds,
                answer,
            }
        })
    }

    fn build(
        system: Option<String>,
        units: &[Unit],
        tools: &[(String, Option<String>, Option<Value>)],
        extra: Map<String, Value>,
    ) -> Map<String, Value> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(json!({"role": "system", "content": s}));
        }
        for (u, unit) in units.iter().enumerate() {
            let content = match &unit.user {
                Ok(s) => json!(s),
                Err(parts) => parts
                    .iter()
                    .map(|t| json!({"type": "text", "text": t}))
                    .collect(),
            };
            messages.push(json!({"role": "user", "content": content}));
            for (r, (said, calls)) in unit.rounds.iter().enumerate() {
                let id = |k: usize| format!("call_{u}_{r}_{k}");
                let tool_calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(k, (name, args, _))| {
                        json!({"id": id(k), "type": "function",
                        "function": {"name": name, "arguments": args.to_string()}})
                    })
                    .collect();
                messages
                    .push(json!({"role": "assistant", "content": said, "tool_calls": tool_calls}));
                for (k, (_, _, result)) in calls.iter().enumerate() {
                    messages
                        .push(json!({"role": "tool", "tool_call_id": id(k), "content": result}));
                }
            }
            messages.push(json!({"role": "assistant", "content": unit.answer}));
        }
        let mut req = Map::new();
        req.insert("model".into(), json!("alias"));
        req.insert("messages".into(), Value::Array(messages));
        let tools: Vec<Value> = tools
            .iter()
            .map(|(name, desc, params)| {
                json!({"type": "function",
                "function": {"name": name, "description": desc, "parameters": params}})
            })
            .collect();
        if !tools.is_empty() {
            req.insert("tools".into(), Value::Array(tools));
        }
        req.extend(extra);
        req
    }

    /// Role, texts, tool calls (id, name, parsed arguments) and tool_call_id of a chat message.
    fn norm_message(m: &Value) -> NormMessage {
        let texts = match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(parts) => parts
                .iter()
                .map(|p| p["text"].as_str().unwrap().to_owned())
                .collect(),
            _ => Vec::new(),
        };
        let calls = m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let args = c["function"]["arguments"].as_str().unwrap();
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["function"]["name"].as_str().unwrap().to_owned(),
                    serde_json::from_str::<Value>(args).unwrap(),
                )
            })
            .collect();
        (
            m["role"].as_str().unwrap().to_owned(),
            texts,
            calls,
            m["tool_call_id"].as_str().map(str::to_owned),
        )
    }

    fn norm_tool(t: &Value) -> (Value, Value, Value) {
        let f = &t["function"];
        let params = if f["parameters"].is_null() {
            json!({"type": "object", "properties": {}})
        } else {
            f["parameters"].clone()
        };
        (f["name"].clone(), f["description"].clone(), params)
    }

    fn norm(req: &Map<String, Value>) -> Value {
        let messages: Vec<_> = req["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(norm_message)
            .collect();
        let tools: Vec<_> = req
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(norm_tool)
            .collect();
        json!({
            "messages": format!("{messages:?}"),
            "tools": format!("{tools:?}"),
            "max_tokens": req.get("max_tokens"),
            "stop": req.get("stop"),
            "temperature": req.get("temperature"),
            "tool_choice": req.get("tool_choice"),
        })
    }

    fn extras() -> impl Strategy<Value = Map<String, Value>> {
        let choice = prop_oneof![
            Just(None),
            Just(Some(json!("auto"))),
            Just(Some(json!("required"))),
            Just(Some(json!("none"))),
            "[a-z]{1,5}".prop_map(|n| Some(json!({"type": "function", "function": {"name": n}}))),
        ];
        (
            1u64..100_000,
            proptest::option::of(proptest::collection::vec(text(), 1..3)),
            proptest::option::of(0u8..=10),
            choice,
        )
            .prop_map(|(max, stop, temp, choice)| {
                let mut m = Map::new();
                m.insert("max_tokens".into(), json!(max));
                if let Some(stop) = stop {
                    m.insert("stop".into(), json!(stop));
                }
                if let Some(t) = temp {
                    m.insert("temperature".into(), json!(f64::from(t) / 10.0));
                }
                if let Some(c) = choice {
                    m.insert("tool_choice".into(), c);
                }
                m
            })
    }

    proptest! {
        #[test]
        fn chat_roundtrip_through_messages(
            system in proptest::option::of(text()),
            units in proptest::collection::vec(unit(), 1..4),
            tools in proptest::collection::vec(tool(), 0..3),
            extra in extras(),
        ) {
            let req = build(system, &units, &tools, extra);
            let anthropic = chat_to_messages(&req, "claude-up", 1024).unwrap();
            let back = messages_to_chat(anthropic.as_object().unwrap(), "gpt-up").unwrap();
            let back = back.as_object().unwrap();
            prop_assert_eq!(&back["model"], &json!("gpt-up"));
            prop_assert_eq!(norm(&req), norm(back));
        }
    }

    #[test]
    fn untranslatable_displays_its_reason() {
        let e = Untranslatable("`seed` cannot be translated to Anthropic Messages".into());
        assert_eq!(e.to_string(), e.0);
    }
}
