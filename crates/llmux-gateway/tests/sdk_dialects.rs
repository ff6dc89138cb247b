//! The official `anthropic` and `openai` Python SDKs through the gateway, each to a target of
//! its own dialect and of the other, streamed and not, with a system prompt and tool calling;
//! and the OpenAI SDK's `responses.create`, streamed and not. Needs `python3` with both SDKs
//! (`.ci/run` installs them); without them the test is skipped locally and fails under `CI`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::MockUpstream;

const SCRIPT: &str = r#"
import sys, anthropic, openai
base = sys.argv[1]
ant = anthropic.Anthropic(base_url=base, api_key="gk-sdk", max_retries=0)
oai = openai.OpenAI(base_url=base + "/v1", api_key="gk-sdk", max_retries=0)
tools_ant = [{"name": "lookup", "description": "Look something up",
              "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
tools_oai = [{"type": "function", "function": {"name": "lookup", "description": "Look something up",
              "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]
hello = [{"role": "user", "content": "Say hello"}]

# Anthropic SDK -> Anthropic target (native), JSON and stream; cache tokens reported.
for model in ["claude", "gpt"]:
    m = ant.messages.create(model=model, max_tokens=64, system="Be brief.", messages=hello)
    assert m.content[0].text == "Hello from mock", m
    assert m.usage.output_tokens == 5, m.usage
    if model == "claude":
        assert m.usage.cache_read_input_tokens == 30, m.usage
    else:
        assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == 40, m.usage
    with ant.messages.stream(model=model, max_tokens=64, system="Be brief.", messages=hello) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello from mock", text
    assert final.usage.output_tokens == 5, final.usage

    # Tool calling: the call, then the result sent back.
    m = ant.messages.create(model=model, max_tokens=64, tools=tools_ant,
                            messages=[{"role": "user", "content": "find it"}])
    assert m.stop_reason == "tool_use", m
    call = [b for b in m.content if b.type == "tool_use"][0]
    assert call.name == "lookup" and call.input == {"q": "mock"}, call
    with ant.messages.stream(model=model, max_tokens=64, tools=tools_ant,
                             messages=[{"role": "user", "content": "find it"}]) as s:
        final = s.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"][0]
    assert streamed.input == {"q": "mock"} and final.stop_reason == "tool_use", final
    m = ant.messages.create(model=model, max_tokens=64, tools=tools_ant, messages=[
        {"role": "user", "content": "find it"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "lookup", "input": {"q": "mock"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "found"}]}])
    assert m.content[0].text == "Hello from mock", m

    # OpenAI SDK -> the same two targets.
    c = oai.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "Be brief."}] + hello)
    assert c.choices[0].message.content == "Hello from mock", c
    assert c.usage.prompt_tokens == 40 and c.usage.completion_tokens == 5, c.usage
    text, last = "", None
    for chunk in oai.chat.completions.create(model=model, stream=True,
            stream_options={"include_usage": True}, messages=hello):
        last = chunk
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "Hello from mock", text
    assert last.usage is not None and last.usage.completion_tokens == 5, last
    c = oai.chat.completions.create(model=model, tools=tools_oai,
                                    messages=[{"role": "user", "content": "find it"}])
    tc = c.choices[0].message.tool_calls[0]
    assert c.choices[0].finish_reason == "tool_calls", c
    assert tc.function.name == "lookup" and tc.function.arguments == '{"q":"mock"}', tc
    args = ""
    for chunk in oai.chat.completions.create(model=model, stream=True, tools=tools_oai,
            messages=[{"role": "user", "content": "find it"}]):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            args += d.function.arguments or ""
    assert args == '{"q":"mock"}', args

try:
    ant.messages.create(model="nope", max_tokens=8, messages=hello)
    raise SystemExit("expected NotFoundError")
except anthropic.NotFoundError as err:
    assert err.body["error"]["type"] == "not_found_error", err.body

# The Responses API, to the OpenAI-family target.
r = oai.responses.create(model="gpt", input="Say hello")
assert r.output_text == "Hello from mock", r
assert r.usage.input_tokens == 40, r.usage
kinds, text = [], ""
for ev in oai.responses.create(model="gpt", input="Say hello", stream=True):
    kinds.append(ev.type)
    if ev.type == "response.output_text.delta":
        text += ev.delta
assert kinds[-1] == "response.completed" and text == "Hello from mock", kinds
try:
    oai.responses.create(model="claude", input="Say hello")
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as err:
    assert "OpenAI-family" in err.body["message"], err.body
print("SDK-OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_and_openai_sdks_reach_targets_of_either_dialect() {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 5);
    mock.set_cache_usage(30, 0);
    let cfg = format!(
        "{}\n[[gateway_keys]]\nid = \"sdk\"\nsecret = \"gk-sdk\"\n",
        two_dialects(&mock)
    );
    let gw = start(&cfg).await;
    run_sdk_script(&gw, "anthropic", SCRIPT, &[format!("http://{}", gw.addr)]).await;
    assert!(mock.requests().len() >= 20, "every call reached the mock");
}
