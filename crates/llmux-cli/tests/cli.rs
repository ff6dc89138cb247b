//! The real `llmux` binary: exit codes 0/1/2, problems listed with their paths, `show-state
//! --json`, and usage surviving `kill -9` of a serving gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use assert_cmd::Command;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

fn llmux() -> Command {
    let mut c = Command::cargo_bin("llmux").unwrap();
    c.env_remove("LLMUX_CONFIG");
    c
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let path = dir.join("llmux.toml");
    std::fs::write(
        &path,
        format!(
            r#"
listen = "127.0.0.1:{port}"
[store]
kind = "sqlite"
path = "{db}"
[providers.demo]
kind = "mock"
[[providers.demo.keys]]
id = "k1"
secret = "sk-very-secret"
resources = [{{ name = "rpm", value = 100, period = "minutely" }}]
[models.m]
targets = [{{ provider = "demo", model = "x" }}]
"#,
            db = dir.join("state.db").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 4000);
    let out = llmux()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[providers.openai]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
[[providers.openai.keys]]
id = "k1"
secret = "${LLMUX_TEST_SURELY_UNSET}"
resources = [{ name = "rpm", value = 60, period = "minutely" }, { name = "tpm", value = 0, period = "montly" }]
[models.fast]
strategy = "fastest"
targets = [{ provider = "openai", model = "gpt-4o-mini" }]
"#,
    )
    .unwrap();
    let out = llmux()
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env_remove("LLMUX_TEST_SURELY_UNSET")
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("bad.toml"), "names the file: {err}");
    for want in [
        "providers.openai.keys[0].resources[1].period: unknown period \"montly\"; expected one of",
        "providers.openai.keys[0].resources[1].value: must be greater than 0",
        "providers.openai.keys[0].secret: environment variable LLMUX_TEST_SURELY_UNSET is not set",
        "models.fast.strategy: unknown strategy \"fastest\"",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn a_missing_config_or_bad_argument_exits_2() {
    let out = llmux()
        .args(["check-config", "--config", "/nonexistent/llmux.toml"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("/nonexistent/llmux.toml"), "{err}");
    llmux().args(["show-state"]).assert().code(2);
    llmux().args(["no-such-command"]).assert().code(2);
}

#[test]
fn show_state_of_an_unknown_subject_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), 4000);
    llmux()
        .args(["show-state", "nope", "--config"])
        .arg(&cfg)
        .assert()
        .code(1);
    llmux()
        .args(["show-state", "demo/k9", "--config"])
        .arg(&cfg)
        .assert()
        .code(1);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chat(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn usage_survives_kill_9_of_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let bin = assert_cmd::cargo::cargo_bin("llmux");
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..7 {
        assert_eq!(chat(port), Some(200));
    }
    // The reconcile is asynchronous; wait until the CLI (another process) sees it, then kill.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = llmux()
            .args(["show-state", "demo/k1", "--json", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["subjects"][0]["resources"]["rpm"]["used"] == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "usage never reached 7: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let out = llmux()
        .args(["show-state", "demo/k1", "--json", "--config"])
        .arg(&cfg)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(!stdout.contains("sk-very-secret"));
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rpm = &v["subjects"][0]["resources"]["rpm"];
    assert_eq!(rpm["used"], 7, "{v}");
    assert_eq!(rpm["reserved"], 0, "{v}");
    assert_eq!(rpm["capacity"], 100, "{v}");
    assert!(rpm["ttl_secs"].as_u64().unwrap() <= 60, "{v}");

    let out = llmux()
        .args(["show-state", "demo", "--config"])
        .arg(&cfg)
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains("rpm: used 7 + reserved 0 of 100"), "{text}");
}
