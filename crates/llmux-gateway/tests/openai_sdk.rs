//! The official `openai` Python SDK pointed at the gateway: chat, streaming (with and without
//! usage), embeddings, models, and the SDK's own error classes for 404 and 429.
//! Needs `python3` with `openai` installed (`.ci/run` installs it); without it the test is
//! skipped locally and fails under `CI`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::MockUpstream;

const SCRIPT: &str = r#"
import sys, openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="gk-sdk", max_retries=0)

r = client.chat.completions.with_raw_response.create(
    model="m", messages=[{"role": "user", "content": "Say hello"}])
assert r.headers["x-llmux-target"] == "up/k1/gpt-4o-mini", r.headers
c = r.parse()
assert c.choices[0].message.content == "Hello from mock", c
assert c.usage.total_tokens == 15, c.usage

text = ""
chunks = 0
for chunk in client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "Say hello"}]):
    chunks += 1
    assert chunk.usage is None, chunk
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text == "Hello from mock", text
assert chunks >= 4, chunks

last = None
for chunk in client.chat.completions.create(
        model="m", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello"}]):
    last = chunk
assert last.usage is not None and last.usage.prompt_tokens == 10, last

e = client.embeddings.create(model="m", input=["a", "b"])
assert len(e.data) == 2, e

assert [m.id for m in client.models.list()] == ["limited", "m"]

try:
    client.chat.completions.create(model="nope", messages=[])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as err:
    assert err.body["code"] == "model_not_found", err.body

client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "x"}])
try:
    client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected RateLimitError")
except openai.RateLimitError as err:
    assert int(err.response.headers["retry-after"]) >= 1
print("SDK-OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_against_the_gateway() {
    let mock = MockUpstream::start().await;
    let cfg = format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.up]
kind = "openai-compatible"
base_url = "{}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
[providers.small]
kind = "mock"
[[providers.small.keys]]
id = "k1"
resources = [{{ name = "rpm", value = 1, period = "minutely" }}]
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
[models.limited]
targets = [{{ provider = "small", model = "tiny" }}]
[[gateway_keys]]
id = "sdk"
secret = "gk-sdk"
"#,
        mock.base_url()
    );
    let gw = start(&cfg).await;
    let base = format!("http://{}/v1", gw.addr);
    run_sdk_script(&gw, "openai", SCRIPT, &[base]).await;
}
