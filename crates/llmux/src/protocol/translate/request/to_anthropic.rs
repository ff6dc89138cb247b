//! OpenAI chat requests to Anthropic Messages requests.

use super::*;

/// Translates an OpenAI chat request into an Anthropic Messages request for `upstream_model`.
pub fn chat_to_messages(
    req: &Map<String, Value>,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Value, Untranslatable> {
    check_allowed(req, CHAT_TOP, "", TO_ANTHROPIC)?;
    // The larger of the two caps given (as the router reads them), else the default.
    let mut max_tokens = None::<u64>;
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = get(req, key) {
            let n = v.as_u64().ok_or_else(|| refuse_a(key))?;
            max_tokens = Some(max_tokens.map_or(n, |m| m.max(n)));
        }
    }
    let max_tokens = max_tokens.unwrap_or(default_max_tokens);
    let (system, messages) = chat_messages_to_anthropic(get(req, "messages"))?;
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("max_tokens".into(), json!(max_tokens));
    if let Some(system) = system {
        out.insert("system".into(), Value::String(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    chat_sampling_to_anthropic(req, &mut out)?;
    chat_tools_to_anthropic(req, &mut out)?;
    Ok(Value::Object(out))
}

/// Sampling, stop, stream and user members of a chat request.
fn chat_sampling_to_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Untranslatable> {
    for key in ["temperature", "top_p"] {
        if let Some(v) = get(req, key) {
            if !v.is_number() {
                return Err(refuse_a(key));
            }
            out.insert(key.into(), v.clone());
        }
    }
    match get(req, "stop") {
        None => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            out.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(refuse_a("stop")),
    }
    if let Some(v) = get(req, "stream") {
        out.insert(
            "stream".into(),
            json!(v.as_bool().ok_or_else(|| refuse_a("stream"))?),
        );
    }
    if let Some(v) = get(req, "user") {
        let user = v.as_str().ok_or_else(|| refuse_a("user"))?;
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(n) = get(req, "n") {
        if n.as_u64() != Some(1) {
            return Err(refuse_a("n"));
        }
    }
    Ok(())
}

/// `tools`, `tool_choice` and `parallel_tool_calls` of a chat request.
fn chat_tools_to_anthropic(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Untranslatable> {
    if let Some(tools) = get(req, "tools") {
        let tools = tools.as_array().ok_or_else(|| refuse_a("tools"))?;
        let converted = tools
            .iter()
            .enumerate()
            .map(|(i, t)| chat_tool_to_anthropic(t, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if !converted.is_empty() {
            out.insert("tools".into(), Value::Array(converted));
        }
    }
    let mut choice = match get(req, "tool_choice") {
        None => None,
        Some(v) => Some(chat_tool_choice_to_anthropic(v)?),
    };
    match get(req, "parallel_tool_calls") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
            if let Some(obj) = c.as_object_mut() {
                if obj.get("type").and_then(Value::as_str) != Some("none") {
                    obj.insert("disable_parallel_tool_use".into(), json!(true));
                }
            }
        }
        Some(_) => return Err(refuse_a("parallel_tool_calls")),
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }
    Ok(())
}

fn chat_tool_to_anthropic(tool: &Value, path: &str) -> Result<Value, Untranslatable> {
    let tool = tool.as_object().ok_or_else(|| refuse_a(path))?;
    if get_str(tool, "type") != Some("function") {
        return Err(refuse_a(&format!("{path}.type")));
    }
    let func = get(tool, "function")
        .and_then(Value::as_object)
        .ok_or_else(|| refuse_a(&format!("{path}.function")))?;
    let name = get_str(func, "name").ok_or_else(|| refuse_a(&format!("{path}.function.name")))?;
    let mut out = Map::new();
    out.insert("name".into(), json!(name));
    if let Some(d) = get(func, "description") {
        out.insert("description".into(), d.clone());
    }
    let schema = get(func, "parameters")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    out.insert("input_schema".into(), schema);
    Ok(Value::Object(out))
}

fn chat_tool_choice_to_anthropic(v: &Value) -> Result<Value, Untranslatable> {
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            _ => Err(refuse_a("tool_choice")),
        },
        Value::Object(o) if get_str(o, "type") == Some("function") => {
            let name = get(o, "function")
                .and_then(Value::as_object)
                .and_then(|f| get_str(f, "name"))
                .ok_or_else(|| refuse_a("tool_choice.function.name"))?;
            Ok(json!({"type": "tool", "name": name}))
        }
        Value::Object(_) => Err(refuse_a("tool_choice.type")),
        _ => Err(refuse_a("tool_choice")),
    }
}

/// Splits chat messages into the Anthropic `system` text and merged turns.
fn chat_messages_to_anthropic(
    msgs: Option<&Value>,
) -> Result<(Option<String>, Vec<Value>), Untranslatable> {
    let list = msgs
        .and_then(Value::as_array)
        .ok_or_else(|| refuse_a("messages"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Content)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = m.as_object().ok_or_else(|| refuse_a(&path))?;
        let prefix = format!("{path}.");
        match get_str(m, "role") {
            Some("system") | Some("developer") => {
                check_allowed(m, &["role", "content", "name"], &prefix, TO_ANTHROPIC)?;
                system.push(chat_system_text(get(m, "content"), &path)?);
            }
            Some("user") => {
                check_allowed(m, &["role", "content", "name"], &prefix, TO_ANTHROPIC)?;
                push_turn(&mut turns, "user", chat_user_content(m, &path)?);
            }
            Some("assistant") => {
                let allowed = ["role", "content", "name", "tool_calls"];
                check_allowed(m, &allowed, &prefix, TO_ANTHROPIC)?;
                let blocks = chat_assistant_blocks(m, &path)?;
                if !blocks.is_empty() {
                    push_turn(&mut turns, "assistant", Content::Blocks(blocks));
                }
            }
            Some("tool") => {
                let allowed = ["role", "content", "tool_call_id"];
                check_allowed(m, &allowed, &prefix, TO_ANTHROPIC)?;
                let block = chat_tool_result(m, &path)?;
                push_turn(&mut turns, "user", Content::Blocks(vec![block]));
            }
            _ => return Err(refuse_a(&format!("{path}.role"))),
        }
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    let messages = turns
        .into_iter()
        .map(|(role, c)| json!({"role": role, "content": c.into_value()}))
        .collect();
    Ok((system, messages))
}

/// Text parts of a chat content array, each checked to be `text`.
fn chat_text_parts(parts: &[Value], path: &str) -> Result<Vec<String>, Untranslatable> {
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let p = p.as_object();
            match p.and_then(|p| get_str(p, "type")) {
                Some("text") => p
                    .and_then(|p| get_str(p, "text"))
                    .map(str::to_owned)
                    .ok_or_else(|| refuse_a(&format!("{path}.content[{j}].text"))),
                _ => Err(refuse_a(&format!("{path}.content[{j}].type"))),
            }
        })
        .collect()
}

fn chat_system_text(content: Option<&Value>, path: &str) -> Result<String, Untranslatable> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => Ok(chat_text_parts(parts, path)?.join("\n\n")),
        _ => Err(refuse_a(&format!("{path}.content"))),
    }
}

fn chat_user_content(m: &Map<String, Value>, path: &str) -> Result<Content, Untranslatable> {
    match get(m, "content") {
        Some(Value::String(s)) => Ok(Content::Text(s.clone())),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| chat_user_part(p, &format!("{path}.content[{j}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Content::Blocks),
        _ => Err(refuse_a(&format!("{path}.content"))),
    }
}

fn chat_user_part(part: &Value, path: &str) -> Result<Value, Untranslatable> {
    let part = part.as_object().ok_or_else(|| refuse_a(path))?;
    match get_str(part, "type") {
        Some("text") => get_str(part, "text")
            .map(text_block)
            .ok_or_else(|| refuse_a(&format!("{path}.text"))),
        Some("image_url") => {
            let url = match get(part, "image_url") {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(Value::Object(o)) => get_str(o, "url"),
                _ => None,
            };
            let url_path = format!("{path}.image_url.url");
            let url = url.ok_or_else(|| refuse_a(&url_path))?;
            Ok(json!({"type": "image", "source": image_source(url, &url_path)?}))
        }
        _ => Err(refuse_a(&format!("{path}.type"))),
    }
}

/// Anthropic image source for an OpenAI image URL (a `data:` URL becomes base64).
fn image_source(url: &str, path: &str) -> Result<Value, Untranslatable> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Ok(json!({"type": "url", "url": url}));
    };
    let (header, data) = rest.split_once(',').ok_or_else(|| refuse_a(path))?;
    let media_type = header
        .strip_suffix(";base64")
        .ok_or_else(|| refuse_a(path))?;
    Ok(json!({"type": "base64", "media_type": media_type, "data": data}))
}

fn chat_assistant_blocks(m: &Map<String, Value>, path: &str) -> Result<Vec<Value>, Untranslatable> {
    let mut blocks = Vec::new();
    match get(m, "content") {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => blocks.push(text_block(s)),
        Some(Value::Array(parts)) => {
            for text in chat_text_parts(parts, path)? {
                if !text.is_empty() {
                    blocks.push(text_block(&text));
                }
            }
        }
        Some(_) => return Err(refuse_a(&format!("{path}.content"))),
    }
    if let Some(calls) = get(m, "tool_calls") {
        let calls = calls
            .as_array()
            .ok_or_else(|| refuse_a(&format!("{path}.tool_calls")))?;
        for (k, call) in calls.iter().enumerate() {
            blocks.push(chat_tool_call(call, &format!("{path}.tool_calls[{k}]"))?);
        }
    }
    Ok(blocks)
}

fn chat_tool_call(call: &Value, path: &str) -> Result<Value, Untranslatable> {
    let call = call.as_object().ok_or_else(|| refuse_a(path))?;
    if get_str(call, "type").is_some_and(|t| t != "function") {
        return Err(refuse_a(&format!("{path}.type")));
    }
    let id = get_str(call, "id").ok_or_else(|| refuse_a(&format!("{path}.id")))?;
    let func = get(call, "function")
        .and_then(Value::as_object)
        .ok_or_else(|| refuse_a(&format!("{path}.function")))?;
    let name = get_str(func, "name").ok_or_else(|| refuse_a(&format!("{path}.function.name")))?;
    let args_path = format!("{path}.function.arguments");
    let input = match get(func, "arguments") {
        None => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => return Err(refuse_a(&args_path)),
        },
        Some(_) => return Err(refuse_a(&args_path)),
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn chat_tool_result(m: &Map<String, Value>, path: &str) -> Result<Value, Untranslatable> {
    let id = get_str(m, "tool_call_id").ok_or_else(|| refuse_a(&format!("{path}.tool_call_id")))?;
    let content = match get(m, "content") {
        None => Value::String(String::new()),
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => Value::Array(
            chat_text_parts(parts, path)?
                .iter()
                .map(|t| text_block(t))
                .collect(),
        ),
        Some(_) => return Err(refuse_a(&format!("{path}.content"))),
    };
    Ok(json!({"type": "tool_result", "tool_use_id": id, "content": content}))
}
