//! `llmux keys …` and `llmux secrets …` against a serving gateway (the real binary): keys take
//! effect, are revoked and rotated within seconds; stored secrets are encrypted and used; no
//! secret reaches a log, an error, a listing or the store in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{free_port, Serving};
use llmux_testkit::MockUpstream;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const UPSTREAM_ENV_SECRET: &str = "sk-upstream-from-env-7f3a9c";
const STORED_SECRET: &str = "sk-upstream-stored-41d2e8";
const STORED_SECRET_2: &str = "sk-upstream-stored-second-9b7c";
const MASTER: &str = "8f2c1e5a9d0b3c7e6f1a2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80";

fn llmux(cfg: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("llmux"));
    c.args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("LLMUX_CONFIG")
        .env_remove("LLMUX_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A chat request with optional bearer: (status, body).
fn ask(port: u16, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let auth = bearer
        .map(|b| format!("authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out)
}

/// Ask until the answer is `want` (up to 5 s: the gateway re-reads the store every 2 s).
fn until(port: u16, bearer: Option<&str>, want: u16) {
    let started = Instant::now();
    loop {
        let (status, out) = ask(port, bearer);
        if status == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still {status}, not {want}, after 5 s: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_config(dir: &Path, port: u16, base: &str, secret: &str) -> PathBuf {
    let path = dir.join("llmux.toml");
    std::fs::write(
        &path,
        format!(
            r#"
listen = "127.0.0.1:{port}"
tier_order = ["free", "pro"]
[store]
kind = "sqlite"
path = "{db}"
[providers.up]
kind = "openai-compatible"
base_url = "{base}"
[[providers.up.keys]]
id = "k1"
secret = "{secret}"
[models.m]
targets = [{{ provider = "up", model = "gpt-4o-mini" }}]
"#,
            db = dir.join("s.db").display()
        ),
    )
    .unwrap();
    path
}

/// `llmux serve` with `env`, its stderr (debug logs) kept in `log`.
fn serve_logged(cfg: &Path, port: u16, env: &[(&str, &str)], log: &Path) -> Serving {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("llmux"));
    c.args(["serve", "--config"])
        .arg(cfg)
        .env_remove("LLMUX_MASTER_KEY")
        .env("LLMUX_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    let serving = Serving(c.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    serving
}

/// Every file of the store (database and WAL) as bytes.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("s.db") {
            all.extend(std::fs::read(p).unwrap());
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn keys_created_rotated_and_revoked_reach_a_serving_gateway() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, &mock.base_url(), "${UP_KEY}");
    let env = [("UP_KEY", UPSTREAM_ENV_SECRET)];
    let log = dir.path().join("serve.log");
    let _gw = serve_logged(&cfg, port, &env, &log);
    let mut outputs = Vec::new();

    // No key yet: open.
    assert_eq!(ask(port, None).0, 200);
    let created = llmux(
        &cfg,
        &[
            "keys", "create", "--name", "app", "--tier", "pro", "--models", "m", "--rpm", "50",
            "--json",
        ],
        &env,
        None,
    );
    assert!(created.status.success(), "{}", text(&created));
    let v: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let first = v["secret"].as_str().unwrap().to_string();
    assert!(first.starts_with("sk-llmux-"), "{v}");
    assert_eq!(
        (v["name"].as_str(), v["tier"].as_str()),
        (Some("app"), Some("pro"))
    );
    until(port, None, 401);
    assert_eq!(ask(port, Some(&first)).0, 200);
    assert_eq!(ask(port, Some("sk-llmux-wrong")).0, 401);

    let listed = llmux(&cfg, &["keys", "list", "--json"], &env, None);
    assert!(listed.status.success(), "{}", text(&listed));
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(v[0]["name"], "app");
    assert_eq!(v[0]["rpm"], 50);
    assert_eq!(v[0]["revoked"], false);
    assert!(
        v[0].get("secret").is_none() && v[0].get("hash").is_none(),
        "{v}"
    );
    outputs.push(text(&listed));
    let listed = llmux(&cfg, &["keys", "list"], &env, None);
    assert!(text(&listed).contains("app: active"), "{}", text(&listed));
    outputs.push(text(&listed));

    let rotated = llmux(&cfg, &["keys", "rotate", "app"], &env, None);
    assert!(rotated.status.success(), "{}", text(&rotated));
    let second = String::from_utf8_lossy(&rotated.stdout).trim().to_string();
    assert!(second.starts_with("sk-llmux-") && second != first);
    until(port, Some(&first), 401);
    assert_eq!(ask(port, Some(&second)).0, 200);

    let revoked = llmux(&cfg, &["keys", "revoke", "app"], &env, None);
    assert!(revoked.status.success(), "{}", text(&revoked));
    outputs.push(text(&revoked));
    until(port, Some(&second), 401);
    // Revoking the last key does not open the gateway.
    assert_eq!(ask(port, None).0, 401);

    // Bad arguments exit 2 naming what is wrong; an unknown key exits 1.
    for (args, code, says) in [
        (vec!["keys", "revoke", "nope"], 1, "no gateway key \"nope\""),
        (vec!["keys", "create", "--name", "app"], 2, "exists already"),
        (vec!["keys", "create", "--name", "bad name"], 2, "--name"),
        (
            vec!["keys", "create", "--name", "g", "--tier", "gold"],
            2,
            "unknown tier \"gold\"",
        ),
        (
            vec!["keys", "create", "--name", "g", "--models", "zz"],
            2,
            "unknown model \"zz\"",
        ),
        (
            vec!["keys", "create", "--name", "g", "--budget-usd", "-1"],
            2,
            "--budget-usd",
        ),
    ] {
        let o = llmux(&cfg, &args, &env, None);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
        outputs.push(text(&o));
    }

    // Neither a gateway key nor the upstream secret in clear: in the store, the logs, or any
    // output but the one that made the key.
    let store = store_bytes(dir.path());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("listening"), "the log has lines: {logs}");
    for secret in [first.as_str(), second.as_str(), UPSTREAM_ENV_SECRET] {
        assert!(!contains(&store, secret), "{secret} is in the store");
        assert!(!logs.contains(secret), "{secret} is in the log");
        for o in &outputs {
            assert!(!o.contains(secret), "{secret} is in {o}");
        }
    }
    // The upstream got its own key, never a gateway key.
    let seen = mock.requests();
    assert!(seen
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {UPSTREAM_ENV_SECRET}"))));
}

#[test]
fn stored_secrets_are_encrypted_used_and_replaced_while_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, &mock.base_url(), "store");
    let master = [("LLMUX_MASTER_KEY", MASTER)];

    // Without the master key the config is refused, naming what is missing.
    let o = llmux(&cfg, &["check-config"], &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("providers.up.keys[0].secret") && text(&o).contains("LLMUX_MASTER_KEY"),
        "{}",
        text(&o)
    );
    let o = llmux(
        &cfg,
        &["check-config"],
        &[("LLMUX_MASTER_KEY", "abc")],
        None,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("64 hex characters"), "{}", text(&o));

    let mut outputs = Vec::new();
    let set = llmux(
        &cfg,
        &["secrets", "set", "up/k1"],
        &master,
        Some(&format!("{STORED_SECRET}\n")),
    );
    assert!(set.status.success(), "{}", text(&set));
    outputs.push(text(&set));
    let o = llmux(&cfg, &["secrets", "set", "up/k9"], &master, Some("x"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let list = llmux(&cfg, &["secrets", "list", "--json"], &master, None);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v[0]["name"], "up/k1");
    assert_eq!(v[0]["used_by_config"], true);
    outputs.push(text(&list));

    let log = dir.path().join("serve.log");
    let gw = serve_logged(&cfg, port, &master, &log);
    assert_eq!(ask(port, None).0, 200);
    let auth = |i: usize| mock.requests()[i].authorization.clone().unwrap();
    assert_eq!(auth(0), format!("Bearer {STORED_SECRET}"));

    // A new secret reaches the serving gateway within seconds.
    let set = llmux(
        &cfg,
        &["secrets", "set", "up/k1"],
        &master,
        Some(STORED_SECRET_2),
    );
    assert!(set.status.success(), "{}", text(&set));
    let started = Instant::now();
    loop {
        assert_eq!(ask(port, None).0, 200);
        let n = mock.request_count();
        if auth(n - 1) == format!("Bearer {STORED_SECRET_2}") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "old secret still used"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);

    // With the wrong master key the secret cannot be read: the key is not used, and nothing
    // of the secret shows.
    let wrong = MASTER.replace("8f2c", "0000");
    let wrong_env = [("LLMUX_MASTER_KEY", wrong.as_str())];
    let log2 = dir.path().join("serve-wrong.log");
    let _gw = serve_logged(&cfg, port, &wrong_env, &log2);
    let (status, body) = ask(port, None);
    assert_eq!(status, 429, "{body}");
    outputs.push(body);

    let del = llmux(&cfg, &["secrets", "delete", "up/k1"], &master, None);
    assert!(del.status.success(), "{}", text(&del));
    let del = llmux(&cfg, &["secrets", "delete", "up/k1"], &master, None);
    assert_eq!(del.status.code(), Some(1), "{}", text(&del));

    let store = store_bytes(dir.path());
    let logs = std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(&log2).unwrap();
    assert!(logs.contains("cannot"), "the wrong key is logged: {logs}");
    for secret in [STORED_SECRET, STORED_SECRET_2, MASTER] {
        assert!(!contains(&store, secret), "{secret} is in the store");
        assert!(!logs.contains(secret), "{secret} is in the log");
        for o in &outputs {
            assert!(!o.contains(secret), "{secret} is in {o}");
        }
    }
}

/// A key the upstream refuses (401) is disabled; `show-state` says why, and `reset-state`
/// enables it again.
#[test]
fn show_state_says_why_a_key_is_disabled_and_reset_state_enables_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start());
    mock.push(llmux_testkit::Behavior::Status {
        status: 401,
        retry_after_secs: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port, &mock.base_url(), "sk-refused");
    let _gw = serve_logged(&cfg, port, &[], &dir.path().join("serve.log"));
    let (status, body) = ask(port, None);
    assert_eq!(status, 502, "{body}");
    let state = |json: bool| {
        let args: &[&str] = if json {
            &["show-state", "up/k1", "--json"]
        } else {
            &["show-state", "up/k1"]
        };
        let o = llmux(&cfg, args, &[], None);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let v: serde_json::Value = serde_json::from_str(&state(true)).unwrap();
    let k = &v["subjects"][0];
    assert_eq!(k["disabled"], true, "{v}");
    let why = k["disabled_reason"].as_str().unwrap();
    assert!(
        why.contains("answered 401") && why.contains("the key is refused"),
        "{why}"
    );
    assert!(state(false).contains("disabled: the upstream answered 401"));
    // Disabled: refused without a call upstream.
    assert_eq!(ask(port, None).0, 429);
    assert_eq!(mock.request_count(), 1);
    let o = llmux(&cfg, &["reset-state", "up/k1"], &[], None);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&state(true)).unwrap();
    assert_eq!(v["subjects"][0]["disabled"], false, "{v}");
    assert!(v["subjects"][0]["disabled_reason"].is_null(), "{v}");
    let started = Instant::now();
    while ask(port, None).0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused after reset-state"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
