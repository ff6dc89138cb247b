//! Request translation: OpenAI chat requests to Anthropic Messages requests and back.

use serde_json::{json, Map, Value};

use super::Untranslatable;

const TO_ANTHROPIC: &str = "Anthropic Messages";
const TO_OPENAI: &str = "OpenAI Chat Completions";

/// Top-level members of an OpenAI chat request that have an Anthropic equivalent.
const CHAT_TOP: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "user",
    "n",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

/// Top-level members of an Anthropic Messages request that have an OpenAI equivalent.
const MESSAGES_TOP: &[&str] = &[
    "model",
    "max_tokens",
    "system",
    "messages",
    "stop_sequences",
    "temperature",
    "top_p",
    "stream",
    "metadata",
    "tools",
    "tool_choice",
];

fn refuse(path: &str, target: &str) -> Untranslatable {
    Untranslatable(format!("`{path}` cannot be translated to {target}"))
}

fn refuse_a(path: &str) -> Untranslatable {
    refuse(path, TO_ANTHROPIC)
}

fn refuse_o(path: &str) -> Untranslatable {
    refuse(path, TO_OPENAI)
}

/// A member, with `null` read as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn get_str<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    get(obj, key).and_then(Value::as_str)
}

/// Rejects the first non-null member of `obj` not named in `allowed`.
fn check_allowed(
    obj: &Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
    target: &str,
) -> Result<(), Untranslatable> {
    match obj
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(refuse(&format!("{prefix}{k}"), target)),
        None => Ok(()),
    }
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// Anthropic content being built for one message: a plain string or blocks.
enum Content {
    Text(String),
    Blocks(Vec<Value>),
}

impl Content {
    fn into_blocks(self) -> Vec<Value> {
        match self {
            Content::Text(s) if s.is_empty() => Vec::new(),
            Content::Text(s) => vec![text_block(&s)],
            Content::Blocks(b) => b,
        }
    }

    fn into_value(self) -> Value {
        match self {
            Content::Text(s) => Value::String(s),
            Content::Blocks(b) => Value::Array(b),
        }
    }
}

/// Appends a turn, merging it into the previous one when the role is the same.
fn push_turn(turns: &mut Vec<(&'static str, Content)>, role: &'static str, content: Content) {
    if let Some((last_role, last)) = turns.last_mut() {
        if *last_role == role {
            let mut blocks = std::mem::replace(last, Content::Blocks(Vec::new())).into_blocks();
            blocks.extend(content.into_blocks());
            *last = Content::Blocks(blocks);
            return;
        }
    }
    turns.push((role, content));
}

/// Translates an OpenAI chat request into an Anthropic Messages request for `upstream_model`.
pub fn chat_to_messages(
    req: &Map<String, Value>,
    upstream_model: &str,
    default_max_tokens: u64,
) -> Result<Value, Untranslatable> {
    check_allowed(req, CHAT_TOP, "", TO_ANTHROPIC)?;
    let max_key = if get(req, "max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match get(req, max_key) {
        None => default_max_tokens,
        Some(v) => v.as_u64().ok_or_else(|| refuse_a(max_key))?,
    };
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

/// Translates an Anthropic Messages request into an OpenAI chat request for `upstream_model`.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn to_a(v: Value) -> Result<Value, Untranslatable> {
        chat_to_messages(&obj(v), "claude-up", 4096)
    }

    fn to_o(v: Value) -> Result<Value, Untranslatable> {
        messages_to_chat(&obj(v), "gpt-up")
    }

    fn err(msg: &str) -> Result<Value, Untranslatable> {
        Err(Untranslatable(msg.to_owned()))
    }

    #[test]
    fn chat_minimal_uses_upstream_model_and_default_max_tokens() {
        let out = to_a(json!({"model": "alias", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(
            out.unwrap(),
            json!({"model": "claude-up", "max_tokens": 4096,
                "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn chat_system_and_developer_are_hoisted_and_joined() {
        let out = to_a(json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "hi", "name": "bob"},
        ]}))
        .unwrap();
        assert_eq!(out["system"], json!("be brief\n\na\n\nb"));
        assert_eq!(out["messages"], json!([{"role": "user", "content": "hi"}]));
    }

    #[test]
    fn chat_max_tokens_variants() {
        let base = |extra: Value| {
            let mut r = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            r.as_object_mut().unwrap().extend(obj(extra));
            to_a(r).unwrap()["max_tokens"].clone()
        };
        assert_eq!(base(json!({"max_tokens": 10})), json!(10));
        assert_eq!(
            base(json!({"max_completion_tokens": 20, "max_tokens": 10})),
            json!(20)
        );
        assert_eq!(
            base(json!({"max_completion_tokens": null, "max_tokens": 10})),
            json!(10)
        );
    }

    #[test]
    fn chat_sampling_stop_stream_user() {
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.5, "top_p": 0.9, "stop": "END", "stream": true,
            "stream_options": {"include_usage": true}, "user": "u-1", "n": 1}),
        )
        .unwrap();
        assert_eq!(out["temperature"], json!(0.5));
        assert_eq!(out["top_p"], json!(0.9));
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["stream"], json!(true));
        assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
        assert!(out.get("stream_options").is_none());
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "stop": ["a", "b"]}),
        )
        .unwrap();
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn chat_null_members_are_absent() {
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "user", "content": "x", "name": null}],
            "response_format": null, "seed": null, "tools": null, "temperature": null}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "claude-up", "max_tokens": 4096,
                "messages": [{"role": "user", "content": "x"}]})
        );
    }

    #[test]
    fn chat_unknown_members_are_untranslatable() {
        for key in [
            "response_format",
            "logprobs",
            "frequency_penalty",
            "presence_penalty",
            "seed",
            "logit_bias",
            "audio",
            "modalities",
            "reasoning_effort",
            "service_tier",
            "store",
            "functions",
            "metadata",
        ] {
            let out = to_a(json!({"model": "m", "messages": [], key: {"x": 1}}));
            assert_eq!(
                out,
                err(&format!(
                    "`{key}` cannot be translated to Anthropic Messages"
                ))
            );
        }
        let out = to_a(json!({"model": "m", "messages": [], "n": 2}));
        assert_eq!(out, err("`n` cannot be translated to Anthropic Messages"));
    }

    #[test]
    fn chat_user_images_url_and_base64() {
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]}]}),
        )
        .unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ])
        );
    }

    #[test]
    fn chat_user_unknown_part_names_the_path() {
        let out = to_a(json!({"model": "m", "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "input_audio", "input_audio": {}}]},
        ]}));
        assert_eq!(
            out,
            err("`messages[2].content[1].type` cannot be translated to Anthropic Messages")
        );
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png,AAAA"}}]}]}),
        );
        assert_eq!(
            out,
            err(
                "`messages[0].content[0].image_url.url` cannot be translated to Anthropic Messages"
            )
        );
    }

    #[test]
    fn chat_tool_calls_and_results_become_blocks() {
        let out = to_a(json!({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "thanks"},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "get", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
                    {"type": "text", "text": "thanks"},
                ]},
            ])
        );
    }

    #[test]
    fn chat_assistant_text_and_empty_text() {
        let out = to_a(json!({"model": "m", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "ok"}]},
            {"role": "assistant", "content": "more"},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"][1],
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "ok"}, {"type": "text", "text": "more"}]})
        );
    }

    #[test]
    fn chat_bad_arguments_and_roles_and_keys() {
        let out = to_a(json!({"model": "m", "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
        ]}));
        assert_eq!(
            out,
            err("`messages[1].tool_calls[1].function.arguments` cannot be translated to Anthropic Messages")
        );
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "function", "content": "x", "name": "f"}]}),
        );
        assert_eq!(
            out,
            err("`messages[0].role` cannot be translated to Anthropic Messages")
        );
        let out = to_a(
            json!({"model": "m", "messages": [{"role": "assistant", "content": "x", "audio": {"id": "1"}}]}),
        );
        assert_eq!(
            out,
            err("`messages[0].audio` cannot be translated to Anthropic Messages")
        );
        let out = to_a(json!({"model": "m", "messages": [{"role": "assistant", "refusal": "no"}]}));
        assert_eq!(
            out,
            err("`messages[0].refusal` cannot be translated to Anthropic Messages")
        );
    }

    #[test]
    fn chat_tools_and_tool_choice() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [
            {"type": "function", "function": {"name": "get", "description": "Get it",
                "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true}},
            {"type": "function", "function": {"name": "bare"}},
        ]});
        let with = |extra: Value| {
            let mut r = base.clone();
            r.as_object_mut().unwrap().extend(obj(extra));
            to_a(r)
        };
        let out = with(json!({})).unwrap();
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get", "description": "Get it",
                    "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}},
                {"name": "bare", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert!(out.get("tool_choice").is_none());
        let choice = |extra: Value| with(extra).unwrap()["tool_choice"].clone();
        assert_eq!(
            choice(json!({"tool_choice": "auto"})),
            json!({"type": "auto"})
        );
        assert_eq!(
            choice(json!({"tool_choice": "none"})),
            json!({"type": "none"})
        );
        assert_eq!(
            choice(json!({"tool_choice": "required"})),
            json!({"type": "any"})
        );
        assert_eq!(
            choice(json!({"tool_choice": {"type": "function", "function": {"name": "get"}}})),
            json!({"type": "tool", "name": "get"})
        );
        assert_eq!(
            choice(json!({"parallel_tool_calls": false})),
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            choice(json!({"tool_choice": "required", "parallel_tool_calls": false})),
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(choice(json!({"parallel_tool_calls": true})), Value::Null);
        let out = with(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}));
        assert_eq!(
            out,
            err("`tools[0].type` cannot be translated to Anthropic Messages")
        );
    }

    #[test]
    fn messages_minimal_and_system() {
        let out = to_o(json!({"model": "claude", "max_tokens": 100,
            "system": [{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                       {"type": "text", "text": "b"}],
            "messages": [{"role": "user", "content": "hi"}]}))
        .unwrap();
        assert_eq!(
            out,
            json!({"model": "gpt-up", "messages": [
                {"role": "system", "content": "a\n\nb"},
                {"role": "user", "content": "hi"}], "max_tokens": 100})
        );
        let out = to_o(json!({"model": "c", "system": "sys", "messages": []})).unwrap();
        assert_eq!(
            out["messages"],
            json!([{"role": "system", "content": "sys"}])
        );
    }

    #[test]
    fn messages_sampling_stream_metadata() {
        let out = to_o(json!({"model": "c", "max_tokens": 5, "messages": [],
            "stop_sequences": ["X"], "temperature": 0.2, "top_p": 0.7, "stream": true,
            "metadata": {"user_id": "u"}}))
        .unwrap();
        assert_eq!(out["stop"], json!(["X"]));
        assert_eq!(out["temperature"], json!(0.2));
        assert_eq!(out["top_p"], json!(0.7));
        assert_eq!(out["stream"], json!(true));
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["user"], json!("u"));
        let out = to_o(json!({"model": "c", "messages": [], "stream": false})).unwrap();
        assert_eq!(out["stream"], json!(false));
        assert!(out.get("stream_options").is_none());
    }

    #[test]
    fn messages_untranslatable_members() {
        for key in [
            "top_k",
            "thinking",
            "service_tier",
            "container",
            "mcp_servers",
        ] {
            let out = to_o(json!({"model": "c", "messages": [], key: 1}));
            assert_eq!(
                out,
                err(&format!(
                    "`{key}` cannot be translated to OpenAI Chat Completions"
                ))
            );
        }
        let out = to_o(json!({"model": "c", "messages": [], "metadata": {"user_id": "u", "x": 1}}));
        assert_eq!(
            out,
            err("`metadata.x` cannot be translated to OpenAI Chat Completions")
        );
        let out = to_o(json!({"model": "c", "messages": [], "tools": [
            {"name": "f", "input_schema": {}}, {"type": "web_search_20250305", "name": "web_search"}]}));
        assert_eq!(
            out,
            err("`tools[1].type` cannot be translated to OpenAI Chat Completions")
        );
        let out = to_o(json!({"model": "c", "messages": [
            {"role": "user", "content": [{"type": "document", "source": {}}]}]}));
        assert_eq!(
            out,
            err("`messages[0].content[0].type` cannot be translated to OpenAI Chat Completions")
        );
        let out = to_o(
            json!({"model": "c", "messages": [{"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]}]}),
        );
        assert_eq!(
            out,
            err("`messages[1].content[0].type` cannot be translated to OpenAI Chat Completions")
        );
    }

    #[test]
    fn messages_null_members_are_absent() {
        let out = to_o(
            json!({"model": "c", "messages": [], "top_k": null, "thinking": null,
            "metadata": null, "system": null}),
        )
        .unwrap();
        assert_eq!(out, json!({"model": "gpt-up", "messages": []}));
    }

    #[test]
    fn messages_images_both_sources() {
        let out = to_o(json!({"model": "c", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "see", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
        ]}]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([{"role": "user", "content": [
                {"type": "text", "text": "see"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ]}])
        );
    }

    #[test]
    fn an_image_in_a_tool_result_is_refused_not_dropped() {
        let e = to_o(json!({"model": "c", "messages": [
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "text", "text": "see"}, {"type": "image", "source": {}}]}]},
        ]}))
        .unwrap_err();
        assert_eq!(
            e.0,
            "`messages[0].content[0].content[1].type` cannot be translated to OpenAI Chat Completions"
        );
    }

    #[test]
    fn messages_tool_use_and_results() {
        let out = to_o(json!({"model": "c", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "also this"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "sunny"},
                    {"type": "text", "text": "warm"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom", "is_error": true},
            ]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t3", "name": "n", "input": {}}]},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function",
                        "function": {"name": "get", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny\n\nwarm"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
                {"role": "user", "content": [{"type": "text", "text": "also this"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "t3", "type": "function", "function": {"name": "n", "arguments": "{}"}}]},
            ])
        );
    }

    #[test]
    fn messages_tools_and_tool_choice() {
        let base = json!({"model": "c", "messages": [], "tools": [
            {"name": "get", "description": "Get", "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"}},
            {"type": "custom", "name": "other", "input_schema": {"type": "object", "properties": {}}},
        ]});
        let with = |extra: Value| {
            let mut r = base.clone();
            r.as_object_mut().unwrap().extend(obj(extra));
            to_o(r).unwrap()
        };
        let out = with(json!({}));
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "function": {"name": "get", "description": "Get",
                    "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "other",
                    "parameters": {"type": "object", "properties": {}}}},
            ])
        );
        assert_eq!(
            with(json!({"tool_choice": {"type": "auto"}}))["tool_choice"],
            json!("auto")
        );
        assert_eq!(
            with(json!({"tool_choice": {"type": "any"}}))["tool_choice"],
            json!("required")
        );
        assert_eq!(
            with(json!({"tool_choice": {"type": "none"}}))["tool_choice"],
            json!("none")
        );
        let out = with(json!({"tool_choice": {"type": "tool", "name": "get",
            "disable_parallel_tool_use": true}}));
        assert_eq!(
            out["tool_choice"],
            json!({"type": "function", "function": {"name": "get"}})
        );
        assert_eq!(out["parallel_tool_calls"], json!(false));
    }
}
