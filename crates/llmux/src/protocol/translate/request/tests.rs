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
        err("`messages[0].content[0].image_url.url` cannot be translated to Anthropic Messages")
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
