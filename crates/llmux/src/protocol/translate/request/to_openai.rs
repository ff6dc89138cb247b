//! Anthropic Messages requests to OpenAI chat requests.

use super::*;

pub fn messages_to_chat(
    req: &Map<String, Value>,
    upstream_model: &str,
) -> Result<Value, Untranslatable> {
    check_allowed(req, MESSAGES_TOP, "", TO_OPENAI)?;
    let mut messages = Vec::new();
    if let Some(system) = get(req, "system") {
        let text = anthropic_system_text(system)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    anthropic_messages_to_chat(get(req, "messages"), &mut messages)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(upstream_model));
    out.insert("messages".into(), Value::Array(messages));
    if let Some(v) = get(req, "max_tokens") {
        let max = v.as_u64().ok_or_else(|| refuse_o("max_tokens"))?;
        out.insert("max_tokens".into(), json!(max));
    }
    anthropic_sampling_to_chat(req, &mut out)?;
    anthropic_tools_to_chat(req, &mut out)?;
    Ok(Value::Object(out))
}

fn anthropic_system_text(system: &Value) -> Result<String, Untranslatable> {
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                let b = b.as_object();
                if b.and_then(|b| get_str(b, "type")) != Some("text") {
                    return Err(refuse_o(&format!("system[{j}].type")));
                }
                let text = b.and_then(|b| get_str(b, "text"));
                texts.push(text.ok_or_else(|| refuse_o(&format!("system[{j}].text")))?);
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(refuse_o("system")),
    }
}

fn anthropic_sampling_to_chat(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Untranslatable> {
    if let Some(v) = get(req, "stop_sequences") {
        match v {
            Value::Array(a) if a.iter().all(Value::is_string) => {
                out.insert("stop".into(), v.clone());
            }
            _ => return Err(refuse_o("stop_sequences")),
        }
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = get(req, key) {
            if !v.is_number() {
                return Err(refuse_o(key));
            }
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(v) = get(req, "stream") {
        let stream = v.as_bool().ok_or_else(|| refuse_o("stream"))?;
        out.insert("stream".into(), json!(stream));
        if stream {
            out.insert("stream_options".into(), json!({"include_usage": true}));
        }
    }
    if let Some(meta) = get(req, "metadata") {
        let meta = meta.as_object().ok_or_else(|| refuse_o("metadata"))?;
        check_allowed(meta, &["user_id"], "metadata.", TO_OPENAI)?;
        if let Some(user) = get(meta, "user_id") {
            let user = user.as_str().ok_or_else(|| refuse_o("metadata.user_id"))?;
            out.insert("user".into(), json!(user));
        }
    }
    Ok(())
}

fn anthropic_tools_to_chat(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Untranslatable> {
    if let Some(tools) = get(req, "tools") {
        let tools = tools.as_array().ok_or_else(|| refuse_o("tools"))?;
        let converted = tools
            .iter()
            .enumerate()
            .map(|(i, t)| anthropic_tool_to_chat(t, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if !converted.is_empty() {
            out.insert("tools".into(), Value::Array(converted));
        }
    }
    let Some(choice) = get(req, "tool_choice") else {
        return Ok(());
    };
    let choice = choice.as_object().ok_or_else(|| refuse_o("tool_choice"))?;
    let mapped = match get_str(choice, "type") {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = get_str(choice, "name").ok_or_else(|| refuse_o("tool_choice.name"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(refuse_o("tool_choice.type")),
    };
    out.insert("tool_choice".into(), mapped);
    if get(choice, "disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        out.insert("parallel_tool_calls".into(), json!(false));
    }
    Ok(())
}

fn anthropic_tool_to_chat(tool: &Value, path: &str) -> Result<Value, Untranslatable> {
    let tool = tool.as_object().ok_or_else(|| refuse_o(path))?;
    if get_str(tool, "type").is_some_and(|t| t != "custom") {
        return Err(refuse_o(&format!("{path}.type")));
    }
    let name = get_str(tool, "name").ok_or_else(|| refuse_o(&format!("{path}.name")))?;
    let mut func = Map::new();
    func.insert("name".into(), json!(name));
    if let Some(d) = get(tool, "description") {
        func.insert("description".into(), d.clone());
    }
    let schema = get(tool, "input_schema")
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    func.insert("parameters".into(), schema);
    Ok(json!({"type": "function", "function": func}))
}

/// Appends the chat messages for each Anthropic message.
fn anthropic_messages_to_chat(
    msgs: Option<&Value>,
    out: &mut Vec<Value>,
) -> Result<(), Untranslatable> {
    let list = msgs
        .and_then(Value::as_array)
        .ok_or_else(|| refuse_o("messages"))?;
    for (i, m) in list.iter().enumerate() {
        let path = format!("messages[{i}]");
        let m = m.as_object().ok_or_else(|| refuse_o(&path))?;
        check_allowed(m, &["role", "content"], &format!("{path}."), TO_OPENAI)?;
        match get_str(m, "role") {
            Some("user") => anthropic_user_to_chat(get(m, "content"), &path, out)?,
            Some("assistant") => out.push(anthropic_assistant_to_chat(get(m, "content"), &path)?),
            _ => return Err(refuse_o(&format!("{path}.role"))),
        }
    }
    Ok(())
}

fn anthropic_user_to_chat(
    content: Option<&Value>,
    path: &str,
    out: &mut Vec<Value>,
) -> Result<(), Untranslatable> {
    let blocks = match content {
        Some(Value::String(s)) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(refuse_o(&format!("{path}.content"))),
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let b = b.as_object().ok_or_else(|| refuse_o(&bpath))?;
        match get_str(b, "type") {
            Some("text") => {
                let text = get_str(b, "text").ok_or_else(|| refuse_o(&format!("{bpath}.text")))?;
                parts.push(text_block(text));
            }
            Some("image") => parts.push(anthropic_image_to_chat(b, &bpath)?),
            Some("tool_result") => out.push(anthropic_tool_result_to_chat(b, &bpath)?),
            _ => return Err(refuse_o(&format!("{bpath}.type"))),
        }
    }
    if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

fn anthropic_image_to_chat(
    block: &Map<String, Value>,
    path: &str,
) -> Result<Value, Untranslatable> {
    let source = get(block, "source")
        .and_then(Value::as_object)
        .ok_or_else(|| refuse_o(&format!("{path}.source")))?;
    let url = match get_str(source, "type") {
        Some("base64") => {
            let media = get_str(source, "media_type");
            let data = get_str(source, "data");
            match (media, data) {
                (Some(m), Some(d)) => format!("data:{m};base64,{d}"),
                _ => return Err(refuse_o(&format!("{path}.source"))),
            }
        }
        Some("url") => get_str(source, "url")
            .ok_or_else(|| refuse_o(&format!("{path}.source.url")))?
            .to_owned(),
        _ => return Err(refuse_o(&format!("{path}.source.type"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

fn anthropic_tool_result_to_chat(
    block: &Map<String, Value>,
    path: &str,
) -> Result<Value, Untranslatable> {
    let id =
        get_str(block, "tool_use_id").ok_or_else(|| refuse_o(&format!("{path}.tool_use_id")))?;
    let mut text = match get(block, "content") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            let mut texts = Vec::new();
            for (k, item) in items.iter().enumerate() {
                let item = item.as_object();
                match item.and_then(|it| get_str(it, "type")) {
                    Some("text") => {
                        texts.push(item.and_then(|it| get_str(it, "text")).unwrap_or(""))
                    }
                    // OpenAI tool messages carry text only: an image would be lost.
                    _ => return Err(refuse_o(&format!("{path}.content[{k}].type"))),
                }
            }
            texts.join("\n\n")
        }
        Some(_) => return Err(refuse_o(&format!("{path}.content"))),
    };
    if get(block, "is_error").and_then(Value::as_bool) == Some(true) {
        text = format!("Error: {text}");
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": text}))
}

fn anthropic_assistant_to_chat(
    content: Option<&Value>,
    path: &str,
) -> Result<Value, Untranslatable> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(json!({"role": "assistant", "content": s})),
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(refuse_o(&format!("{path}.content"))),
    };
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bpath = format!("{path}.content[{j}]");
        let b = b.as_object().ok_or_else(|| refuse_o(&bpath))?;
        match get_str(b, "type") {
            Some("text") => {
                has_text = true;
                text.push_str(get_str(b, "text").unwrap_or(""));
            }
            Some("tool_use") => {
                let id = get_str(b, "id").ok_or_else(|| refuse_o(&format!("{bpath}.id")))?;
                let name = get_str(b, "name").ok_or_else(|| refuse_o(&format!("{bpath}.name")))?;
                let input = get(b, "input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            _ => return Err(refuse_o(&format!("{bpath}.type"))),
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), json!("assistant"));
    msg.insert(
        "content".into(),
        if has_text { json!(text) } else { Value::Null },
    );
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(msg))
}
