//! The Batch API keeps every promise of a direct request: items are admitted under the key
//! that made the batch (policy, budget), files and batches are their key's alone, a revoked
//! key's batch stops, a batch runs on one gateway of a store at a time, and uploads stay within
//! their limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use llmux_core::Records;
use llmux_testkit::{Behavior, MockUpstream};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A provider priced at 1,000 USD per 1M tokens (each answer of 10 + 10 tokens: $0.02), the
/// models `m` and `other`, and config keys: `narrow` (model `m` only), `budget` ($0.2 a
/// month), `a` and `b` (no limits).
fn config(base: &str, store: &str) -> String {
    format!(
        r#"
[store]
{store}
[prices."gpt-4o-mini"]
input = 1000
output = 1000
[files]
max_file_mb = 1
quota_mb_per_key = 2
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
[models.other]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
[[gateway_keys]]
id = "narrow"
secret = "gk-narrow"
models = ["m"]
[[gateway_keys]]
id = "budget"
secret = "gk-budget"
resources = [{{ name = "budget", value = 0.2, period = "monthly" }}]
[[gateway_keys]]
id = "a"
secret = "gk-a"
[[gateway_keys]]
id = "b"
secret = "gk-b"
"#
    )
}

const SQLITE: &str = "kind = \"sqlite\"\npath = \"{DB}\"";

fn line(id: &str, model: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 10,
                 "messages": [{"role": "user", "content": format!("item {id}")}]}})
    .to_string()
}

fn lines(prefix: &str, n: usize, model: &str) -> String {
    (0..n)
        .map(|i| line(&format!("{prefix}{i}"), model))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Any request with a bearer token and a body of `content_type`.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Resp {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// `POST /v1/files` (purpose `batch`) as `token`.
async fn upload(addr: SocketAddr, token: &str, content: &str) -> Resp {
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\ncontent-type: application/jsonl\r\n\r\n");
    body.extend_from_slice(content.as_bytes());
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    request(
        addr,
        "POST",
        "/v1/files",
        token,
        "multipart/form-data; boundary=XyZ",
        body,
    )
    .await
}

/// Upload `content` and start a batch on it as `token`: (file id, batch id).
async fn submit(addr: SocketAddr, token: &str, content: &str) -> (String, String) {
    let f = upload(addr, token, content).await;
    assert_eq!(f.status, 200, "{}", f.text());
    let file = f.json()["id"].as_str().unwrap().to_string();
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
        "completion_window": "24h"});
    let b = request(
        addr,
        "POST",
        "/v1/batches",
        token,
        "application/json",
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert!(b.json().get("owner").is_none(), "{}", b.text());
    (file, b.json()["id"].as_str().unwrap().to_string())
}

async fn get_as(addr: SocketAddr, path: &str, token: &str) -> Resp {
    request(addr, "GET", path, token, "application/json", Vec::new()).await
}

/// Poll batch `id` until it ends (within `secs`).
async fn finished(addr: SocketAddr, token: &str, id: &str, secs: u64) -> Value {
    let started = Instant::now();
    loop {
        let b = get_as(addr, &format!("/v1/batches/{id}"), token)
            .await
            .json();
        if ["completed", "failed", "cancelled", "expired"].contains(&b["status"].as_str().unwrap())
        {
            return b;
        }
        assert!(started.elapsed().as_secs() < secs, "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every output line of a finished batch, its output file's and its error file's.
async fn output(addr: SocketAddr, token: &str, b: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for f in ["output_file_id", "error_file_id"] {
        if let Some(id) = b[f].as_str() {
            let r = get_as(addr, &format!("/v1/files/{id}/content"), token).await;
            assert_eq!(r.status, 200, "{}", r.text());
            out.extend(r.text().lines().map(|l| serde_json::from_str(l).unwrap()));
        }
    }
    out
}

/// What the upstream was asked, by `custom_id` (each item's prompt names it).
fn sent_ids(mock: &MockUpstream) -> Vec<String> {
    mock.requests()
        .iter()
        .filter_map(|r| r.body["messages"][0]["content"].as_str())
        .filter_map(|c| c.strip_prefix("item "))
        .map(str::to_string)
        .collect()
}

/// A key allowed only model `m` gets `policy_violation` lines for its `other` items, and
/// none of them reaches the upstream; a key with a $0.2 budget spends at most that through a
/// batch of 12 items of $0.02 each, the rest `budget_exceeded` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_items_are_admitted_under_the_key_that_made_the_batch() {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 10);
    let gw = start(&config(&mock.base_url(), SQLITE)).await;
    let content = format!("{}\n{}", lines("m", 3, "m"), lines("o", 3, "other"));
    let (_, id) = submit(gw.addr, "gk-narrow", &content).await;
    let b = finished(gw.addr, "gk-narrow", &id, 20).await;
    let out = output(gw.addr, "gk-narrow", &b).await;
    assert_eq!(out.len(), 6, "{out:?}");
    for l in &out {
        let other = l["custom_id"].as_str().unwrap().starts_with('o');
        if other {
            assert_eq!(l["error"]["code"], "policy_violation", "{l}");
        } else {
            assert!(l["error"].is_null(), "{l}");
        }
    }
    let mut sent = sent_ids(&mock);
    sent.sort();
    assert_eq!(sent, ["m0", "m1", "m2"]);

    let before = mock.request_count();
    let (_, id) = submit(gw.addr, "gk-budget", &lines("u", 12, "m")).await;
    let b = finished(gw.addr, "gk-budget", &id, 30).await;
    let out = output(gw.addr, "gk-budget", &b).await;
    let served = out.iter().filter(|l| l["error"].is_null()).count();
    assert!(
        (1..=10).contains(&served),
        "{served} served of a $0.2 budget"
    );
    for l in out.iter().filter(|l| !l["error"].is_null()) {
        assert_eq!(l["error"]["code"], "budget_exceeded", "{l}");
    }
    assert_eq!(mock.request_count() - before, served);
    let router = gw.router.clone();
    eventually(|| {
        let router = router.clone();
        async move {
            let (used, reserved) = counter(&router, "gateway-key:budget", "budget").await;
            reserved == 0 && used == served as u64 * 20_000
        }
    })
    .await;
}

/// Key `b` gets 404 for each of key `a`'s files and batches on every route, and sees none of
/// them listed; `a` deletes its own file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_batches_are_their_keys_alone() {
    let mock = MockUpstream::start().await;
    let gw = start(&config(&mock.base_url(), SQLITE)).await;
    let (file, batch) = submit(gw.addr, "gk-a", &lines("a", 2, "m")).await;
    let b = finished(gw.addr, "gk-a", &batch, 20).await;
    let out = b["output_file_id"].as_str().unwrap().to_string();
    let addr = gw.addr;
    for f in [&file, &out] {
        for (method, path) in [
            ("GET", format!("/v1/files/{f}")),
            ("GET", format!("/v1/files/{f}/content")),
            ("DELETE", format!("/v1/files/{f}")),
        ] {
            let r = request(addr, method, &path, "gk-b", "application/json", Vec::new()).await;
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            let mine = request(addr, "GET", &path, "gk-a", "application/json", Vec::new()).await;
            assert_eq!(mine.status, 200, "{path}: {}", mine.text());
        }
    }
    for (method, path) in [
        ("GET", format!("/v1/batches/{batch}")),
        ("POST", format!("/v1/batches/{batch}/cancel")),
    ] {
        let r = request(addr, method, &path, "gk-b", "application/json", Vec::new()).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    // Nor can `b` run a batch on `a`'s file.
    let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions"});
    let r = request(
        addr,
        "POST",
        "/v1/batches",
        "gk-b",
        "application/json",
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let theirs = get_as(addr, "/v1/batches", "gk-b").await.json();
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0, "{theirs}");
    let theirs = get_as(addr, "/v1/files", "gk-b").await.json();
    assert_eq!(theirs["data"].as_array().unwrap().len(), 0, "{theirs}");
    let mine = get_as(addr, "/v1/batches", "gk-a").await.json();
    assert_eq!(mine["data"][0]["id"], batch.as_str(), "{mine}");
    let mine = get_as(addr, "/v1/files", "gk-a").await.json();
    assert_eq!(mine["data"].as_array().unwrap().len(), 2, "{mine}");
    assert!(mine["data"][0].get("owner").is_none(), "{mine}");
    // Deleted: gone with its content.
    let path = format!("/v1/files/{file}");
    let r = request(
        addr,
        "DELETE",
        &path,
        "gk-a",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(get_as(addr, &path, "gk-a").await.status, 404);
    let content = get_as(addr, &format!("{path}/content"), "gk-a").await;
    assert_eq!(content.status, 404);
    let chunks = gw
        .router
        .store()
        .list_records(&format!("file_chunks:{file}"))
        .await
        .unwrap();
    assert!(chunks.is_empty(), "{chunks:?}");
}

/// An upload past `max_file_mb`, or past the key's `quota_mb_per_key`, is 413 naming the
/// limit, and leaves nothing behind; a bad line is 400 naming its number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stay_within_their_limits() {
    let mock = MockUpstream::start().await;
    let gw = start(&config(&mock.base_url(), SQLITE)).await;
    let one = line("x", "m");
    // ~1.2 MiB: past max_file_mb = 1.
    let n = (1_250_000 / (one.len() + 1)) + 1;
    let big = lines("x", n, "m");
    let r = upload(gw.addr, "gk-a", &big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("max_file_mb"), "{}", r.text());
    // ~0.9 MiB each: two fit the quota of 2 MiB, the third does not.
    let n = 900_000 / (one.len() + 1);
    for _ in 0..2 {
        let r = upload(gw.addr, "gk-a", &lines("y", n, "m")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = upload(gw.addr, "gk-a", &lines("y", n, "m")).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("quota_mb_per_key"), "{}", r.text());
    // Another key has a quota of its own.
    assert_eq!(
        upload(gw.addr, "gk-b", &lines("y", n, "m")).await.status,
        200
    );
    let bad = format!("{}\nnot json\n", line("z", "m"));
    let r = upload(gw.addr, "gk-b", &bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("line 2"), "{}", r.text());
    let files = gw.router.store().list_records("files").await.unwrap();
    assert_eq!(files.len(), 3, "refused uploads leave no file");
}

/// A stored key is revoked while its batch runs: within the key refresh interval nothing more
/// is sent for it, and its unfinished items end with `key_revoked` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_batch_stops_sending() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behavior::Delay(Duration::from_millis(300)));
    let gw = start(&config(&mock.base_url(), SQLITE)).await;
    let secret = "sk-llmux-0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut key = json!({"name": "stored", "hash": llmux::keys::hash_hex(secret), "hint": "cdef",
        "created_ms": 0});
    let store = gw.router.store().clone();
    store
        .put_record("gateway_keys", "stored", &key.to_string())
        .await
        .unwrap();
    gw.router.refresh_keys().await.unwrap();
    let (_, id) = submit(gw.addr, secret, &lines("r", 200, "m")).await;
    let started = Instant::now();
    while mock.request_count() < 20 {
        assert!(started.elapsed().as_secs() < 10, "the batch did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    key["revoked_ms"] = json!(1);
    store
        .put_record("gateway_keys", "stored", &key.to_string())
        .await
        .unwrap();
    // The key refresh (2 s) and the runner's check (1 s), then what was in flight ends.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = mock.request_count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mock.request_count(), sent, "sent after the revocation");
    assert!(sent < 200, "{sent}");
    let b = store.get_record("batches", &id).await.unwrap().unwrap();
    let b: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(b["status"], "cancelled", "{b}");
    assert_eq!(b["errors"]["data"][0]["code"], "key_revoked", "{b}");
    let out = store
        .list_records(&format!("batch_out:{id}"))
        .await
        .unwrap();
    assert_eq!(out.len(), 200);
    let revoked = out
        .iter()
        .filter(|(_, l)| {
            serde_json::from_str::<Value>(l).unwrap()["error"]["code"] == "key_revoked"
        })
        .count();
    assert!(revoked > 0 && revoked <= 200 - 20, "{revoked}");
}

/// Two gateways on one store: a batch of 50 slow items (about 4 s of work) made on the
/// first is run there only, though the second starts while it runs (and looks for batches to
/// run at start and every 2 s); the upstream sees each `custom_id` once.
async fn one_runner_per_batch(store: &str) {
    let mock = MockUpstream::start().await;
    mock.set_default(Behavior::Delay(Duration::from_millis(1000)));
    let cfg = config(&mock.base_url(), store);
    let first = start(&cfg).await;
    let db = first.dir.path().join("llmux.db");
    let (_, id) = submit(first.addr, "gk-a", &lines("s", 50, "m")).await;
    let second = start(&cfg.replace("{DB}", db.to_str().unwrap())).await;
    let b = finished(second.addr, "gk-a", &id, 60).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["request_counts"]["completed"], 50, "{b}");
    let mut sent = sent_ids(&mock);
    sent.sort();
    let n = sent.len();
    sent.dedup();
    assert_eq!(
        n,
        50,
        "each item sent once: {n} requests for {} items",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_on_one_gateway_of_a_sqlite_file() {
    one_runner_per_batch(SQLITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_on_one_gateway_of_a_redis() {
    let Some(redis) = llmux_testkit::redis::RedisServer::start() else {
        return;
    };
    let prefix = format!("bt{:x}", rand::random::<u32>());
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"",
        redis.url()
    );
    one_runner_per_batch(&store).await;
}

/// A key with a hard budget for 20 requests submits a 60-item batch while 60 direct requests
/// with the same key arrive at once (spread over the gateways): what is spent in all never
/// passes the budget by more than one request's estimate error, and the stored counter is
/// exactly what was spent.
async fn budget_holds_across_batch_and_direct(store: &str, gateways: usize) {
    let mock = MockUpstream::start().await;
    mock.set_usage(10, 10);
    let cfg = config(&mock.base_url(), store).replace("value = 0.2,", "value = 0.4,");
    let first = start(&cfg).await;
    let db = first.dir.path().join("llmux.db");
    let mut gws = vec![first];
    for _ in 1..gateways {
        gws.push(start(&cfg.replace("{DB}", db.to_str().unwrap())).await);
    }
    let (_, id) = submit(gws[0].addr, "gk-budget", &lines("b", 60, "m")).await;
    let direct: Vec<_> = (0..60)
        .map(|i| {
            let addr = gws[i % gws.len()].addr;
            tokio::spawn(async move {
                let body = json!({"model": "m", "max_tokens": 10,
                    "messages": [{"role": "user", "content": format!("direct {i}")}]});
                post(
                    addr,
                    "/v1/chat/completions",
                    body.to_string(),
                    &[("authorization", "Bearer gk-budget")],
                )
                .await
                .status
            })
        })
        .collect();
    let mut direct_ok = 0u64;
    for t in direct {
        match t.await.unwrap() {
            200 => direct_ok += 1,
            429 => {}
            s => panic!("direct request answered {s}"),
        }
    }
    let b = finished(gws[0].addr, "gk-budget", &id, 60).await;
    let out = output(gws[0].addr, "gk-budget", &b).await;
    assert_eq!(out.len(), 60);
    let batch_ok = out.iter().filter(|l| l["error"].is_null()).count() as u64;
    for l in out.iter().filter(|l| !l["error"].is_null()) {
        assert_eq!(l["error"]["code"], "budget_exceeded", "{l}");
    }
    let served = batch_ok + direct_ok;
    assert_eq!(mock.request_count() as u64, served);
    let spent = served * 20_000;
    assert!(
        spent <= 400_000 + 20_000,
        "spent ${} of $0.40 ({batch_ok} batch items, {direct_ok} direct)",
        spent as f64 / 1e6
    );
    assert!(served >= 10, "{served} served");
    let router = gws[0].router.clone();
    eventually(|| {
        let router = router.clone();
        async move { counter(&router, "gateway-key:budget", "budget").await == (spent, 0) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_a_batch_and_direct_requests_on_sqlite() {
    budget_holds_across_batch_and_direct(SQLITE, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_holds_across_a_batch_and_direct_requests_on_two_redis_replicas() {
    let Some(redis) = llmux_testkit::redis::RedisServer::start() else {
        return;
    };
    let prefix = format!("bb{:x}", rand::random::<u32>());
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nprefix = \"{prefix}\"",
        redis.url()
    );
    budget_holds_across_batch_and_direct(&store, 2).await;
}

/// A batch cancelled while items are with the upstream: those items still count (their
/// estimate is committed, not released), so the key's counter equals what the upstream saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batchs_items_in_flight_still_count() {
    let mock = MockUpstream::start().await;
    mock.set_default(Behavior::Delay(Duration::from_secs(3)));
    let cfg = config(&mock.base_url(), SQLITE).replace(
        "secret = \"sk-1\"\n",
        "secret = \"sk-1\"\nresources = [{ name = \"requests\", value = 1000, period = \"hourly\" }]\n",
    );
    let gw = start(&cfg).await;
    let (_, id) = submit(gw.addr, "gk-a", &lines("c", 40, "m")).await;
    let started = Instant::now();
    while mock.request_count() < 16 {
        assert!(started.elapsed().as_secs() < 10, "the batch did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = format!("/v1/batches/{id}/cancel");
    let r = request(
        gw.addr,
        "POST",
        &path,
        "gk-a",
        "application/json",
        Vec::new(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let b = finished(gw.addr, "gk-a", &id, 10).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    let seen = mock.request_count() as u64;
    let router = gw.router.clone();
    eventually(|| {
        let router = router.clone();
        async move { counter(&router, "up/k1", "requests").await == (seen, 0) }
    })
    .await;
}
