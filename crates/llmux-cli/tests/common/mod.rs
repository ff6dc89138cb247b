//! Shared support for the CLI tests: run the real `llmux` binary and talk HTTP/1.1 to it
//! over loopback with std only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One chat request; returns the status, or `None` when the connection failed.
pub fn chat(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
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

/// A serving gateway, killed when the test ends (even when it fails).
pub struct Serving(pub std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `llmux serve --config CFG`, once it accepts connections on `port`.
pub fn serve(cfg: &Path, port: u16) -> Serving {
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("llmux"))
        .args(["serve", "--config"])
        .arg(cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut serving = Serving(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // What answers must be this gateway: one that could not bind the port exits, and another
    // process's listener there would make every later check fail for the wrong reason.
    std::thread::sleep(Duration::from_millis(50));
    let exited = serving.0.try_wait().ok().flatten();
    assert!(
        exited.is_none(),
        "the gateway exited ({exited:?}): port {port} is held by another process"
    );
    serving
}

/// `n` requests at once, spread over `ports`: (200s, 429s). Any other answer fails the test.
pub fn burst(ports: &[u16], n: usize) -> (usize, usize) {
    // A burst that straddles a minute boundary meets two `minutely` windows: start it well
    // inside one.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if secs > 55.0 {
        std::thread::sleep(Duration::from_secs_f64(60.5 - secs));
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let port = ports[i % ports.len()];
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                chat(port)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for h in handles {
        match h.join().unwrap() {
            Some(200) => ok += 1,
            Some(429) => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (ok, limited)
}

/// `llmux show-state SUBJECT --json --config CFG`, which must succeed.
pub fn show_state_json(cfg: &Path, subject: &str) -> serde_json::Value {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("llmux"))
        .args(["show-state", subject, "--json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Wait (up to 10 s) until `rpm` of `demo/k1` settles at `used` with nothing reserved.
pub fn wait_rpm_settled(cfg: &Path, used: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = show_state_json(cfg, "demo/k1");
        let rpm = &v["subjects"][0]["resources"]["rpm"];
        if rpm["used"] == used && rpm["reserved"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Make the config at `cfg` price model `x` at 1,000 USD per 1M tokens (a cent for the mock's
/// 7 + 3 tokens) and reserve 3 output tokens, so each estimate (8 + 3) covers the usage.
pub fn price_x(cfg: &Path) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = if text.contains("default_max_tokens = 1\n") {
        text.replace("default_max_tokens = 1\n", "default_max_tokens = 3\n")
    } else {
        text.replace("[models.m]\n", "[models.m]\ndefault_max_tokens = 3\n")
    };
    std::fs::write(
        cfg,
        format!("{text}\n[prices.\"x\"]\ninput = 1000\noutput = 1000\n"),
    )
    .unwrap();
}

/// Wait (up to 10 s) until `resource` (USD) of `demo/k1` settles with nothing reserved, and
/// return what it used.
pub fn settled_usd(cfg: &Path, resource: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = show_state_json(cfg, "demo/k1");
        let r = &v["subjects"][0]["resources"][resource];
        if r["reserved"].as_f64() == Some(0.0) {
            return r["used"].as_f64().unwrap();
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
