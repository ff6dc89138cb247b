//! The OpenAI request family (chat completions, completions, embeddings) as raw bytes.
//!
//! [`RawRequest::parse`] reads the top-level members once, keeping each value as a borrowed
//! slice of the body (so the body's JSON is validated, but nothing is built that is not read):
//! `model`, `stream`, `max_tokens`, `stream_options`, and the prompt text for the estimate,
//! counted by a visitor that allocates nothing for unescaped strings. [`RawRequest::write`]
//! writes the body for one attempt: the original bytes with the `model` value (and, for a
//! stream, `stream_options`) spliced in.

use llmux_core::usage::{estimate_tokens, image_url_tokens, IMAGE_TOKENS, PROMPT_FIELDS};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Why a body is not a request the router can take (the message names what is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadBody(pub String);

/// A top-level member: its key and its value as written.
type Member<'a> = (Cow<'a, str>, &'a RawValue);

/// What the router reads of one request body, borrowing from it.
pub struct RawRequest<'a> {
    body: &'a [u8],
    members: Vec<Member<'a>>,
    /// The pool the client names.
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// The output cap: the largest of `max_tokens`, `max_completion_tokens` (chat) and
    /// `max_output_tokens` (Responses) given. What a policy checks, the estimate reserves and
    /// a translated request asks for.
    pub max_tokens: Option<u64>,
    /// An output cap to add to a body that gives none (`(field, tokens)`): set by the router
    /// when a policy's `max_tokens` caps what is reserved, so that the upstream is asked for
    /// no more than that.
    pub ask_cap: Option<(&'static str, u64)>,
    /// Whether the client asked for the usage chunk itself (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// Input tokens: text length / 4 plus a small per-message overhead (as
    /// [`llmux_core::usage::estimate_input_tokens`] counts them).
    pub input_tokens: u64,
}

/// The fields that cap a request's output tokens.
const OUTPUT_CAPS: [&str; 3] = ["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// How deep a request body's JSON may nest (objects and arrays).
pub const MAX_JSON_DEPTH: usize = 128;

/// Refuse JSON nested deeper than [`MAX_JSON_DEPTH`] (strings skipped, escapes honoured).
fn check_depth(text: &[u8]) -> Result<(), BadBody> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(bad(format!(
                        "the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn bad(msg: impl Into<String>) -> BadBody {
    BadBody(msg.into())
}

impl<'a> RawRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<RawRequest<'a>, BadBody> {
        let text = std::str::from_utf8(body).map_err(|e| bad(format!("invalid JSON body: {e}")))?;
        check_depth(body)?;
        let members = {
            let mut de = serde_json::Deserializer::from_str(text);
            let m = de
                .deserialize_any(MembersVisitor)
                .map_err(|e| bad(format!("invalid JSON body: {e}")))?;
            de.end()
                .map_err(|e| bad(format!("invalid JSON body: {e}")))?;
            m
        };
        let last = |name: &str| {
            members
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| *v)
        };
        let model = match last("model") {
            None => return Err(bad("`model` is required")),
            Some(v) => match serde_json::from_str::<Cow<'a, str>>(v.get()) {
                Ok(m) if !m.is_empty() => m,
                _ => return Err(bad("`model` must be a non-empty string")),
            },
        };
        let stream = last("stream").is_some_and(|v| v.get() == "true");
        // The output cap: the larger of those given, so that a policy, the estimate and every
        // wire read one number whichever field a client uses (`null` is no cap).
        let mut max_tokens = None::<u64>;
        for k in OUTPUT_CAPS {
            let Some(v) = last(k).filter(|v| v.get() != "null") else {
                continue;
            };
            let n = serde_json::from_str::<u64>(v.get()).map_err(|_| {
                bad(format!(
                    "`{k}` must be a whole number of tokens, not {}",
                    v.get()
                ))
            })?;
            max_tokens = Some(max_tokens.map_or(n, |m| m.max(n)));
        }
        let client_wants_usage = last("stream_options")
            .and_then(|v| serde_json::from_str::<StreamOptions>(v.get()).ok())
            .is_some_and(|o| o.include_usage == Some(true));
        let mut input_tokens = 0;
        if let Some(v) = last("messages") {
            if v.get().starts_with('[') {
                let mut de = serde_json::Deserializer::from_str(v.get());
                input_tokens += MessagesTokens.deserialize(&mut de).unwrap_or(0);
            }
        }
        for field in PROMPT_FIELDS {
            if let Some(v) = last(field) {
                input_tokens += text_tokens(v);
            }
        }
        Ok(RawRequest {
            body,
            members,
            model,
            stream,
            max_tokens,
            ask_cap: None,
            client_wants_usage,
            input_tokens,
        })
    }

    /// The body for one attempt: `model` set to the upstream model, and, when
    /// `include_usage`, `stream_options.include_usage = true` (so a stream reports usage).
    pub fn write(&self, upstream_model: &str, include_usage: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 48);
        let mut at = 0;
        let offset = |v: &RawValue| v.get().as_ptr() as usize - self.body.as_ptr() as usize;
        let mut has_options = false;
        for (k, v) in &self.members {
            let replacement = match &**k {
                "model" => serde_json::to_vec(upstream_model).ok(),
                "stream_options" if include_usage => {
                    has_options = true;
                    Some(with_include_usage(v))
                }
                _ => None,
            };
            if let Some(r) = replacement {
                let start = offset(v);
                out.extend_from_slice(&self.body[at..start]);
                out.extend_from_slice(&r);
                at = start + v.get().len();
            }
        }
        let cap = self.ask_cap.filter(|_| self.max_tokens.is_none());
        if (include_usage && !has_options) || cap.is_some() {
            // Before the closing brace of the top-level object.
            let close = self
                .body
                .iter()
                .rposition(|&b| b == b'}')
                .unwrap_or(self.body.len());
            out.extend_from_slice(&self.body[at..close]);
            if include_usage && !has_options {
                out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
            }
            if let Some((field, n)) = cap {
                out.extend_from_slice(format!(",\"{field}\":{n}").as_bytes());
            }
            at = close;
        }
        out.extend_from_slice(&self.body[at..]);
        out
    }

    /// The body as a JSON map (for provider plug-ins that estimate their own cost).
    pub fn to_map(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_slice(self.body).unwrap_or_default()
    }
}

/// `stream_options` with `include_usage` set; other options kept as given.
fn with_include_usage(v: &RawValue) -> Vec<u8> {
    let mut m: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(v.get()).unwrap_or_default();
    m.insert("include_usage".into(), serde_json::Value::Bool(true));
    serde_json::to_vec(&m).unwrap_or_else(|_| br#"{"include_usage":true}"#.to_vec())
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// The top-level object's members, in order.
struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<Member<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(8);
        while let Some(k) = map.next_key::<Key<'de>>()? {
            out.push((k.0, map.next_value::<&'de RawValue>()?));
        }
        Ok(out)
    }
}

/// A key, borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Token estimate of any JSON value: the text of its strings, skipping `role` and `type`
/// values (as `estimate_input_tokens` does).
#[derive(Clone, Copy)]
struct TextTokens;

impl<'de> DeserializeSeed<'de> for TextTokens {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextTokens {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
        Ok(estimate_tokens(s))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 0u64;
        while let Some(t) = seq.next_element_seed(TextTokens)? {
            total = total.saturating_add(t);
        }
        Ok(total)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut total = 0u64;
        while let Some(k) = map.next_key::<Key<'de>>()? {
            let t = match &*k.0 {
                "role" | "type" => {
                    map.next_value::<IgnoredAny>()?;
                    0
                }
                // Images count by their rule, never by the length of their data.
                "image_url" => image_url_tokens(low_detail(map.next_value()?).then_some("low")),
                "source" => {
                    // An Anthropic image block's `source` is an object; anything else is text.
                    let v: &'de RawValue = map.next_value()?;
                    if v.get().starts_with('{') {
                        IMAGE_TOKENS
                    } else {
                        text_tokens(v)
                    }
                }
                _ => map.next_value_seed(TextTokens)?,
            };
            total = total.saturating_add(t);
        }
        Ok(total)
    }
}

/// Whether an `image_url` member (OpenAI chat's `{"url", "detail"}`, or the Responses API's
/// URL string) asks for `"detail": "low"`. Only `detail` is read; the URL is skipped.
fn low_detail(v: &RawValue) -> bool {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an image URL object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut low = false;
            while let Some(k) = map.next_key::<Key<'de>>()? {
                if k.0 == "detail" {
                    low = map.next_value::<serde_json::Value>()?.as_str() == Some("low");
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(low)
        }
    }
    v.get().starts_with('{')
        && serde_json::Deserializer::from_str(v.get())
            .deserialize_map(V)
            .unwrap_or(false)
}

/// [`TextTokens`] of a raw value.
fn text_tokens(v: &RawValue) -> u64 {
    TextTokens
        .deserialize(&mut serde_json::Deserializer::from_str(v.get()))
        .unwrap_or(0)
}

/// Chat `messages`: 4 tokens of overhead per message plus its text, plus 3.
struct MessagesTokens;

impl<'de> DeserializeSeed<'de> for MessagesTokens {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MessagesTokens {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut total = 3u64;
        while let Some(t) = seq.next_element_seed(TextTokens)? {
            total = total.saturating_add(4).saturating_add(t);
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmux_core::usage::estimate_input_tokens;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn parse(v: &Value) -> RawRequest<'static> {
        let text: &'static [u8] = Box::leak(serde_json::to_vec(v).unwrap().into_boxed_slice());
        RawRequest::parse(text).unwrap()
    }

    #[test]
    fn bodies_nested_deeper_than_the_limit_are_refused() {
        let deep = |n: usize| format!(r#"{{"model":"m","x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(RawRequest::parse(deep(MAX_JSON_DEPTH - 1).as_bytes()).is_ok());
        let e = RawRequest::parse(deep(MAX_JSON_DEPTH).as_bytes())
            .err()
            .unwrap();
        assert!(e.0.contains("deeper than 128 levels"), "{}", e.0);
        assert!(RawRequest::parse(deep(5000).as_bytes()).is_err());
        // Brackets inside strings (escaped quotes too) are text, not nesting.
        let s = format!(
            r#"{{"model":"m","x":"{}\"{}"}}"#,
            "[".repeat(500),
            "{".repeat(500)
        );
        assert!(RawRequest::parse(s.as_bytes()).is_ok());
    }

    #[test]
    fn reads_the_fields_the_router_needs() {
        let r = parse(
            &json!({"model": "fast", "stream": true, "max_completion_tokens": 9,
            "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hello"}]}),
        );
        assert_eq!(
            (&*r.model, r.stream, r.max_tokens, r.client_wants_usage),
            ("fast", true, Some(9), true)
        );
        // Both caps given: the larger is the one policy, estimate and translation use.
        let r = parse(&json!({"model": "m\u{e9}", "max_tokens": 3, "max_completion_tokens": 9}));
        assert_eq!(
            (&*r.model, r.stream, r.max_tokens, r.client_wants_usage),
            ("m\u{e9}", false, Some(9), false)
        );
        let r = parse(&json!({"model": "m", "max_tokens": null, "max_completion_tokens": 4}));
        assert_eq!(r.max_tokens, Some(4));
        for bad in [
            r#"{"model":"m","max_tokens":1e9}"#,
            r#"{"model":"m","max_completion_tokens":"5"}"#,
        ] {
            let e = RawRequest::parse(bad.as_bytes()).err().unwrap();
            assert!(e.0.contains("whole number of tokens"), "{}", e.0);
        }
    }

    #[test]
    fn bad_bodies_are_named() {
        let e = |b: &str| RawRequest::parse(b.as_bytes()).err().unwrap().0;
        assert!(e("{").starts_with("invalid JSON body"), "{}", e("{"));
        assert!(e("[1]").starts_with("invalid JSON body"));
        assert!(e(r#"{"a":1} x"#).starts_with("invalid JSON body"));
        assert_eq!(e(r#"{"messages":[]}"#), "`model` is required");
        assert_eq!(e(r#"{"model":""}"#), "`model` must be a non-empty string");
        assert_eq!(e(r#"{"model":7}"#), "`model` must be a non-empty string");
    }

    #[test]
    fn write_splices_model_and_stream_options_and_keeps_the_rest() {
        let body = br#"{ "model" : "fast", "messages":[{"role":"user","content":"hi \"q\""}], "n": 1.50 }"#;
        let r = RawRequest::parse(body).unwrap();
        let out = String::from_utf8(r.write("gpt-4o", false)).unwrap();
        assert_eq!(
            out,
            r#"{ "model" : "gpt-4o", "messages":[{"role":"user","content":"hi \"q\""}], "n": 1.50 }"#
        );
        let out: Value = serde_json::from_slice(&r.write("a\"b", true)).unwrap();
        assert_eq!(out["model"], "a\"b");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}"#;
        let out: Value =
            serde_json::from_slice(&RawRequest::parse(body).unwrap().write("u", true)).unwrap();
        assert_eq!(
            out["stream_options"],
            json!({"include_usage": true, "x": 1})
        );
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z ]{0,40}",
            "\\PC{0,20}",
            Just("quote \" and \\ and \n".to_string())
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            text().prop_map(Value::String),
            any::<i64>().prop_map(|i| json!(i)),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("role".to_string()),
                        Just("type".to_string()),
                        Just("image_url".to_string()),
                        Just("detail".to_string()),
                        Just("source".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The raw estimate equals the one over the parsed body, and the written body is the
        /// parsed one with `model` (and `stream_options`) changed.
        #[test]
        fn raw_path_agrees_with_the_parsed_body(messages in prop::collection::vec(value(), 0..5),
                                                 prompt in prop::option::of(value()),
                                                 model in text().prop_filter("non-empty", |m| !m.is_empty()),
                                                 stream in any::<bool>()) {
            let mut body = json!({"model": model, "messages": messages});
            if let Some(p) = prompt { body["prompt"] = p; }
            if stream { body["stream"] = json!(true); }
            let map = body.as_object().unwrap().clone();
            let r = parse(&body);
            prop_assert_eq!(r.input_tokens, estimate_input_tokens(&map));
            let written: Value = serde_json::from_slice(&r.write("up/stream", stream)).unwrap();
            let mut want = map.clone();
            want.insert("model".into(), json!("up/stream"));
            if stream { want.insert("stream_options".into(), json!({"include_usage": true})); }
            prop_assert_eq!(written, Value::Object(want));
        }
    }
}
