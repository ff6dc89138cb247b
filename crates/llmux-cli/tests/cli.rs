//! The real `llmux` binary: exit codes 0/1/2, problems listed with their paths, `show-state
//! --json`, and usage surviving `kill -9` of a serving gateway.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use assert_cmd::Command;
use common::{chat, free_port, serve};
use std::path::Path;
use std::time::{Duration, Instant};

fn llmux() -> Command {
    let mut c = Command::cargo_bin("llmux").unwrap();
    c.env_remove("LLMUX_CONFIG");
    c
}

fn write_config(dir: &Path, port: u16) -> std::path::PathBuf {
    write_config_rpm(dir, port, 100)
}

fn write_config_rpm(dir: &Path, port: u16, rpm: u64) -> std::path::PathBuf {
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
resources = [{{ name = "rpm", value = {rpm}, period = "minutely" }}]
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

fn json_state(cfg: &Path, subject: &str) -> serde_json::Value {
    let out = llmux()
        .args(["show-state", subject, "--json", "--config"])
        .arg(cfg)
        .assert()
        .success();
    serde_json::from_slice(&out.get_output().stdout).unwrap()
}

fn run_ok(cfg: &Path, args: &[&str]) -> String {
    let out = llmux()
        .args(args)
        .arg("--config")
        .arg(cfg)
        .assert()
        .success();
    String::from_utf8_lossy(&out.get_output().stdout).into_owned()
}

/// Wait until `demo/k1`'s rpm shows `used` and nothing reserved.
fn wait_for_rpm(cfg: &Path, used: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json_state(cfg, "demo/k1");
        let rpm = &v["subjects"][0]["resources"]["rpm"];
        if rpm["used"] == used && rpm["reserved"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "rpm never reached {used}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mutations_while_serving_are_seen_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config_rpm(dir.path(), port, 10);
    let _gw = serve(&cfg, port);
    assert_eq!(chat(port), Some(200));
    // The reconcile is asynchronous: let it land before overwriting the counter.
    wait_for_rpm(&cfg, 1);
    // Use up the key from the CLI: the running gateway refuses the next request.
    let out = run_ok(&cfg, &["set-resource-used", "demo/k1", "rpm", "10"]);
    assert!(out.contains("used 10"), "{out}");
    assert_eq!(chat(port), Some(429));
    // Give 3 back: exactly 3 more are admitted.
    run_ok(&cfg, &["adjust-resource-used", "demo/k1", "rpm", "-3"]);
    let statuses: Vec<_> = (0..4).map(|_| chat(port)).collect();
    assert_eq!(statuses, [Some(200), Some(200), Some(200), Some(429)]);
    wait_for_rpm(&cfg, 10);
    // reset-state --dry-run changes nothing; reset-state clears.
    let out = run_ok(&cfg, &["reset-state", "demo", "--dry-run"]);
    assert!(out.contains("rpm: used 10"), "{out}");
    assert_eq!(chat(port), Some(429));
    run_ok(&cfg, &["reset-state", "demo"]);
    assert_eq!(chat(port), Some(200));
    let v = json_state(&cfg, "demo/k1");
    let rpm = &v["subjects"][0]["resources"]["rpm"];
    // The request after the reset may still be reconciling.
    assert!(
        rpm["used"].as_u64().unwrap() + rpm["reserved"].as_u64().unwrap() == 1,
        "{v}"
    );
}

#[test]
fn set_score_and_set_ttl_show_up_and_a_usage_change_ends_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config_rpm(dir.path(), port, 10);
    run_ok(&cfg, &["set-score", "demo/k1", "0.2"]);
    run_ok(&cfg, &["set-resource-ttl", "demo/k1", "rpm", "7200"]);
    let v = json_state(&cfg, "demo/k1");
    let s = &v["subjects"][0];
    assert_eq!(s["score"], 0.2, "{v}");
    assert_eq!(s["score_override"], 0.2, "{v}");
    let ttl = s["resources"]["rpm"]["ttl_secs"].as_u64().unwrap();
    assert!((7100..=7200).contains(&ttl), "{v}");
    llmux()
        .args(["set-score", "demo/k1", "1.5", "--config"])
        .arg(&cfg)
        .assert()
        .code(2);
    llmux()
        .args(["set-score", "nope", "0.5", "--config"])
        .arg(&cfg)
        .assert()
        .code(1);
    llmux()
        .args(["set-resource-ttl", "demo/k1", "tpm", "5", "--config"])
        .arg(&cfg)
        .assert()
        .code(1);

    let _gw = serve(&cfg, port);
    assert_eq!(chat(port), Some(200));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = json_state(&cfg, "demo/k1");
        let s = &v["subjects"][0];
        if s["score_override"].is_null() {
            // Computed again: 1 of 10 used in the window set above.
            assert_eq!(s["score"], 0.9, "{v}");
            assert!(
                s["resources"]["rpm"]["ttl_secs"].as_u64().unwrap() > 7000,
                "{v}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "override never ended: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sync_config_takes_new_capacities_and_keeps_usage() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_rpm(dir.path(), 4000, 10);
    run_ok(&cfg, &["set-resource-used", "demo/k1", "rpm", "4"]);
    write_config_rpm(dir.path(), 4000, 25);
    let out = run_ok(&cfg, &["sync-config", "--provider", "demo"]);
    assert!(out.contains("rpm: used 4 + reserved 0 of 25"), "{out}");
    let v = json_state(&cfg, "demo/k1");
    assert_eq!(v["subjects"][0]["resources"]["rpm"]["capacity"], 25);
    assert_eq!(v["subjects"][0]["resources"]["rpm"]["used"], 4);
    llmux()
        .args(["sync-config", "--provider", "zzz", "--config"])
        .arg(&cfg)
        .assert()
        .code(1);
    llmux()
        .args(["adjust-resource-used", "demo/k1", "rpm", "x", "--config"])
        .arg(&cfg)
        .assert()
        .code(2);
}

#[test]
fn usage_survives_kill_9_of_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let mut gw = serve(&cfg, port);
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
    gw.0.kill().unwrap(); // SIGKILL
    gw.0.wait().unwrap();

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

#[test]
fn cost_resources_are_shown_and_set_in_usd() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("llmux.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nkind = \"sqlite\"\npath = \"{}\"\n[providers.demo]\nkind = \"mock\"\n[[providers.demo.keys]]\nid = \"k1\"\nresources = [{{ name = \"budget\", value = 50, period = \"monthly\" }}]\n[models.m]\ntargets = [{{ provider = \"demo\", model = \"x\" }}]\n",
            dir.path().join("s.db").display()
        ),
    )
    .unwrap();
    let out = run_ok(&cfg, &["set-resource-used", "demo/k1", "budget", "2.5"]);
    assert!(
        out.contains("used $2.500000") && out.contains("of $50.000000"),
        "{out}"
    );
    let v = json_state(&cfg, "demo/k1");
    let b = &v["subjects"][0]["resources"]["budget"];
    assert_eq!(
        (
            b["unit"].as_str(),
            b["used"].as_f64(),
            b["capacity"].as_f64()
        ),
        (Some("usd"), Some(2.5), Some(50.0)),
        "{v}"
    );
    assert_eq!(b["remaining"].as_f64(), Some(47.5));
}
