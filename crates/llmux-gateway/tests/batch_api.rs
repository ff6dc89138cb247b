//! The OpenAI Batch API on the gateway: the official Python SDK's files.create →
//! batches.create → poll → files.content round trip. (A batch surviving a restart of the
//! gateway process: `llmux-cli/tests/batch.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use llmux_testkit::MockUpstream;

const SCRIPT: &str = r#"
import json, sys, time, tempfile, os
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="gk-sdk", max_retries=0)
path = os.path.join(tempfile.mkdtemp(), "in.jsonl")
with open(path, "w") as f:
    for i in range(12):
        f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                            "body": {"model": "m", "max_tokens": 5,
                                     "messages": [{"role": "user", "content": f"hello {i}"}]}}) + "\n")
up = client.files.create(file=open(path, "rb"), purpose="batch")
assert up.id.startswith("file-") and up.purpose == "batch", up
assert client.files.retrieve(up.id).bytes == os.path.getsize(path)
batch = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"job": "sdk"})
assert batch.status in ("validating", "in_progress"), batch
deadline = time.time() + 30
while batch.status not in ("completed", "failed", "cancelled", "expired"):
    assert time.time() < deadline, batch
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)
assert batch.status == "completed", batch
assert batch.request_counts.total == 12 and batch.request_counts.completed == 12, batch.request_counts
assert batch.metadata == {"job": "sdk"}, batch.metadata
lines = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
assert sorted(l["custom_id"] for l in lines) == sorted(f"req-{i}" for i in range(12)), lines
assert all(l["response"]["status_code"] == 200 for l in lines), lines
assert lines[0]["response"]["body"]["choices"][0]["message"]["content"], lines[0]
assert batch.id in [b.id for b in client.batches.list().data]
try:
    client.batches.retrieve("batch_nope")
    raise SystemExit("expected 404")
except openai.NotFoundError:
    pass
try:
    client.files.create(file=open(path, "rb"), purpose="fine-tune")
    raise SystemExit("expected 400")
except openai.BadRequestError:
    pass
print("SDK-OK")
"#;

fn config(base: &str, rps: u32) -> String {
    format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
resources = [{{ name = "rps", value = {rps}, period = "secondly" }}]
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
[[gateway_keys]]
id = "sdk"
secret = "gk-sdk"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_batch_workflow_runs_against_the_gateway() {
    let mock = MockUpstream::start().await;
    let gw = start(&config(&mock.base_url(), 5)).await;
    let base = format!("http://{}/v1", gw.addr);
    run_sdk_script(&gw, "openai", SCRIPT, &[base]).await;
}

/// A cancelled batch stops sending: `cancelling`, then `cancelled` with the lines finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_stops_sending() {
    use llmux_core::Records;
    let mock = MockUpstream::start().await;
    let gw = start(&config(&mock.base_url(), 2)).await;
    let auth = [("authorization", "Bearer gk-sdk")];
    let lines: Vec<String> = (0..30)
        .map(|i| {
            serde_json::json!({"custom_id": format!("c{i}"), "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
            .to_string()
        })
        .collect();
    let store = gw.router.store().clone();
    store
        .put_record("file_content", "file-x", &lines.join("\n"))
        .await
        .unwrap();
    let r = post(
        gw.addr,
        "/v1/batches",
        r#"{"input_file_id":"file-x","endpoint":"/v1/chat/completions","completion_window":"24h"}"#,
        &auth,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let r = post(gw.addr, &format!("/v1/batches/{id}/cancel"), "", &auth).await;
    assert_eq!(r.json()["status"], "cancelling", "{}", r.text());
    let started = std::time::Instant::now();
    let b = loop {
        let r = post(gw.addr, &format!("/v1/batches/{id}/cancel"), "", &auth).await;
        let b = r.json();
        if b["status"] == "cancelled" {
            break b;
        }
        assert!(started.elapsed().as_secs() < 10, "{b}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let done = b["request_counts"]["completed"].as_u64().unwrap();
    assert!(done < 30, "{b}");
    let sent = mock.request_count();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(mock.request_count(), sent, "nothing sent after the cancel");
    let r = post(gw.addr, "/v1/batches/batch_nope/cancel", "", &auth).await;
    assert_eq!(r.status, 404);
}

/// A batch not finished within its `completion_window` ends `expired`: the items answered keep
/// their lines, every other item gets a `batch_expired` error line, and nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_its_completion_window_expires() {
    use llmux_core::Records;
    let mock = MockUpstream::start().await;
    // One request a minute: the first item is answered, the other two wait past the window.
    let cfg = config(&mock.base_url(), 1).replace(
        r#"{ name = "rps", value = 1, period = "secondly" }"#,
        r#"{ name = "rpm", value = 1, period = "minutely" }"#,
    );
    let gw = start(&cfg).await;
    let auth = [("authorization", "Bearer gk-sdk")];
    let lines: Vec<String> = (0..3)
        .map(|i| {
            serde_json::json!({"custom_id": format!("e{i}"), "url": "/v1/chat/completions",
                "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})
            .to_string()
        })
        .collect();
    let store = gw.router.store().clone();
    store
        .put_record("file_content", "file-e", &lines.join("\n"))
        .await
        .unwrap();
    let bad = post(
        gw.addr,
        "/v1/batches",
        r#"{"input_file_id":"file-e","endpoint":"/v1/chat/completions","completion_window":"soon"}"#,
        &auth,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("completion_window"), "{}", bad.text());
    let r = post(
        gw.addr,
        "/v1/batches",
        r#"{"input_file_id":"file-e","endpoint":"/v1/chat/completions","completion_window":"2s"}"#,
        &auth,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(
        b["expires_at"].as_i64().unwrap() - b["created_at"].as_i64().unwrap(),
        2
    );
    let id = b["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let b = loop {
        let b = get_with(gw.addr, &format!("/v1/batches/{id}"), &auth)
            .await
            .json();
        if b["status"] == "expired" {
            break b;
        }
        assert_eq!(b["status"], "in_progress", "{b}");
        assert!(started.elapsed().as_secs() < 10, "{b}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(b["expired_at"].as_i64().is_some(), "{b}");
    assert_eq!(b["request_counts"]["completed"], 1, "{b}");
    assert_eq!(b["request_counts"]["failed"], 2, "{b}");
    let errors = get_with(
        gw.addr,
        &format!("/v1/files/{}/content", b["error_file_id"].as_str().unwrap()),
        &auth,
    )
    .await
    .text();
    let errors: Vec<serde_json::Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors
        .iter()
        .all(|l| l["error"]["code"] == "batch_expired" && l["response"].is_null()));
    let sent = mock.request_count();
    assert_eq!(sent, 1);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(mock.request_count(), sent, "nothing sent after it expired");
}
