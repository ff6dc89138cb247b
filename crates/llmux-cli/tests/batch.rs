//! `llmux batch run`: paced by the limits (no 429 from the upstream), resumable after
//! `kill -9` without sending a finished item again, exit codes 0 / 2 / 4, `batch status`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use llmux_testkit::{Behavior, MockUpstream};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path, base: &str) -> PathBuf {
    let path = dir.join("llmux.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[store]
kind = "sqlite"
path = "{db}"
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "sk-1"
resources = [{{ name = "rps", value = 20, period = "secondly" }}]
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
[models.broken]
max_attempts = 1
fallback_on = []
targets = [{{ provider = "up", model = "always-500" }}]
"#,
            db = dir.join("s.db").display()
        ),
    )
    .unwrap();
    path
}

fn input(dir: &Path, n: usize, model: &str) -> PathBuf {
    let path = dir.join(format!("in-{model}-{n}.jsonl"));
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"custom_id": format!("item-{i}"), "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 5,
                         "messages": [{"role": "user", "content": format!("n {i}")}]}})
            .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn batch(cfg: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("llmux"));
    c.arg("batch")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("LLMUX_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn output_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Upstream requests per wall-clock second.
fn per_second(mock: &MockUpstream) -> BTreeMap<i64, usize> {
    let mut m = BTreeMap::new();
    for r in mock.requests() {
        *m.entry(r.at_ms.div_euclid(1000)).or_default() += 1;
    }
    m
}

#[test]
fn a_batch_is_paced_by_the_limits_and_resumes_after_kill_9() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock.base_url());
    let inp = input(dir.path(), 120, "m");
    let out = dir.path().join("out.jsonl");
    let args = [
        "run",
        inp.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--concurrency",
        "40",
    ];
    // First run: killed (-9) about half way.
    let mut child = batch(&cfg, &args).spawn().unwrap();
    let started = Instant::now();
    while mock.request_count() < 60 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the batch did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let first = mock.request_count();
    let before = if out.exists() {
        output_lines(&out).len()
    } else {
        0
    };
    assert!(before < 120, "killed before the end ({before} lines)");
    // Rerun: finishes, sending none of the items that have a line.
    let o = batch(&cfg, &args).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let lines = output_lines(&out);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for l in &lines {
        *seen
            .entry(l["custom_id"].as_str().unwrap().to_string())
            .or_default() += 1;
        assert_eq!(l["response"]["status_code"], 200, "{l}");
        assert!(l["error"].is_null(), "{l}");
        assert!(l["response"]["body"]["choices"].is_array(), "{l}");
    }
    assert_eq!(seen.len(), 120, "every item answered");
    assert!(
        seen.values().all(|&n| n == 1),
        "each item once in the output"
    );
    // Sent twice: at most the items in flight at the kill.
    let sent = mock.request_count();
    assert!(
        sent >= 120 && sent - 120 <= 40,
        "{sent} upstream requests ({first} before the kill)"
    );
    // Paced: never more than 20 in a second, and no 429 reached the upstream's log.
    let ps = per_second(&mock);
    assert!(ps.values().all(|&n| n <= 20), "{ps:?}");

    let o = batch(&cfg, &["status", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["state"], "completed", "{v}");
    assert_eq!(
        (v[0]["done"].as_u64(), v[0]["pending"].as_u64()),
        (Some(120), Some(0)),
        "{v}"
    );
}

#[test]
fn bad_lines_exit_2_and_failed_items_exit_4_with_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock.base_url());
    let out = dir.path().join("out.jsonl");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"custom_id\":\"a\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\n{\"custom_id\":\"b\",\"url\":\"/v1/nope\",\"body\":{\"model\":\"m\"}}\n",
    )
    .unwrap();
    let o = batch(
        &cfg,
        &["run", bad.to_str().unwrap(), "-o", out.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("line 2: url \"/v1/nope\""),
        "{}",
        text(&o)
    );
    assert_eq!(
        mock.request_count(),
        0,
        "nothing is sent when a line is bad"
    );

    mock.set_default(Behavior::Status {
        status: 500,
        retry_after_secs: None,
    });
    // Two items, tried twice each: four failures stay below the breaker's five.
    let inp = input(dir.path(), 2, "broken");
    let o = batch(
        &cfg,
        &[
            "run",
            inp.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--max-retries",
            "1",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    let lines = output_lines(&out);
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(l["error"]["message"].is_string(), "{l}");
    }
    assert_eq!(mock.request_count(), 4, "each item tried twice");
}

/// One HTTP/1.1 request to `llmux serve` on `port`: (status, body).
fn http(port: u16, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A batch created on a gateway that is killed (-9) half way is finished by the next gateway
/// on the same store: every item once in the output file.
#[test]
fn a_gateway_batch_survives_kill_9_of_its_gateway() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock.base_url());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("listen = \"127.0.0.1:{port}\"\n{text}")).unwrap();
    let serve = || {
        let child = Command::new(assert_cmd::cargo::cargo_bin("llmux"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "no gateway");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let mut first = serve();
    // 60 items at 20 a second: 3 s of work.
    let jsonl = std::fs::read_to_string(input(dir.path(), 60, "m")).unwrap();
    let id = create_batch(port, &jsonl);
    let started = Instant::now();
    while mock.request_count() < 25 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the batch did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    let _ = first.wait();
    let at_kill = mock.request_count();
    assert!(at_kill < 60, "killed half way ({at_kill} sent)");
    let mut second = serve();
    let batch = wait_completed(port, &id, 30);
    let ids = output_ids(port, &batch);
    assert_eq!(ids.len(), 60, "each item once");
    assert_eq!(batch["request_counts"]["completed"], 60, "{batch}");
    // Sent twice: at most the items in flight at the kill (the runner's 16).
    assert!(mock.request_count() <= 60 + 16, "{}", mock.request_count());
    let _ = second.kill();
    let _ = second.wait();
}

/// `llmux serve` on `cfg` with `listen` set to a free port: (child, port).
fn serve_on_free_port(cfg: &Path, name: &str) -> (std::process::Child, u16) {
    let port = common_free_port();
    let text = std::fs::read_to_string(cfg).unwrap();
    let path = cfg.with_file_name(format!("{name}.toml"));
    std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{text}")).unwrap();
    let child = Command::new(assert_cmd::cargo::cargo_bin("llmux"))
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "no gateway");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn common_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `custom_id`s the upstream was sent, with how many times each.
fn sent_counts(mock: &MockUpstream) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for r in mock.requests() {
        if let Some(n) = r.body["messages"][0]["content"].as_str() {
            *out.entry(n.to_string()).or_default() += 1;
        }
    }
    out
}

/// Two gateways serve one sqlite file. A batch made on the first runs there alone (the second
/// sends nothing of it); after `kill -9` of the first, the second takes it over once its lease
/// lapses and finishes it: every `custom_id` once in the output, and only the items in flight
/// at the kill sent twice.
#[test]
fn a_batch_runs_on_one_of_two_gateways_and_the_other_takes_it_over_after_kill_9() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock.base_url());
    let (mut first, port_a) = serve_on_free_port(&cfg, "a");
    let (mut second, port_b) = serve_on_free_port(&cfg, "b");
    // 80 items at 20 a second: 4 s of work.
    let jsonl = std::fs::read_to_string(input(dir.path(), 80, "m")).unwrap();
    let id = create_batch(port_a, &jsonl);
    // Past the second gateway's first looks (at start and every 2 s), before the end.
    let started = Instant::now();
    while mock.request_count() < 50 {
        assert!(started.elapsed() < Duration::from_secs(20), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let twice: Vec<_> = sent_counts(&mock)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(twice.is_empty(), "sent twice while both ran: {twice:?}");
    first.kill().unwrap();
    let _ = first.wait();
    let at_kill = mock.request_count();
    assert!(at_kill < 80, "killed before the end ({at_kill} sent)");
    let batch = wait_completed(port_b, &id, 40);
    let ids = output_ids(port_b, &batch);
    assert_eq!(ids.len(), 80, "each item once");
    // Sent twice: at most the items in flight at the kill (the runner's 16).
    assert!(mock.request_count() <= 80 + 16, "{}", mock.request_count());
    let _ = second.kill();
    let _ = second.wait();
}

/// Upload `jsonl` to the gateway on `port` and start a batch on it; the batch's id.
fn create_batch(port: u16, jsonl: &str) -> String {
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\ncontent-type: application/jsonl\r\n\r\n");
    body.extend_from_slice(jsonl.as_bytes());
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let (status, file) = http(
        port,
        "POST",
        "/v1/files",
        "multipart/form-data; boundary=XyZ",
        &body,
    );
    assert_eq!(status, 200, "{file}");
    let file: serde_json::Value = serde_json::from_str(&file).unwrap();
    let req = serde_json::json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"});
    let (status, batch) = http(
        port,
        "POST",
        "/v1/batches",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{batch}");
    serde_json::from_str::<serde_json::Value>(&batch).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Poll batch `id` on `port` until it is `completed` (within `secs`).
fn wait_completed(port: u16, id: &str, secs: u64) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (_, b) = http(
            port,
            "GET",
            &format!("/v1/batches/{id}"),
            "application/json",
            b"",
        );
        let b: serde_json::Value = serde_json::from_str(&b).unwrap();
        if b["status"] == "completed" {
            return b;
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "{b}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `custom_id`s of a finished batch's output file, sorted; an id answered twice fails.
fn output_ids(port: u16, batch: &serde_json::Value) -> Vec<String> {
    let out = batch["output_file_id"].as_str().unwrap();
    let (status, text) = http(
        port,
        "GET",
        &format!("/v1/files/{out}/content"),
        "application/json",
        b"",
    );
    assert_eq!(status, 200);
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an item answered twice: {text}");
    ids
}
