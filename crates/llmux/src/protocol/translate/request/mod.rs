//! Request translation: OpenAI chat requests to Anthropic Messages requests (`to_anthropic`)
//! and back (`to_openai`), over the helpers here.

use serde_json::{json, Map, Value};

use super::Untranslatable;

#[cfg(test)]
mod tests;
mod to_anthropic;
mod to_openai;

pub use to_anthropic::chat_to_messages;
pub use to_openai::messages_to_chat;

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
