//! Several `llmux serve` processes on one SQLite file share one exact truth, and the CLI acts
//! on the file while they are busy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{chat, free_port, serve, Serving};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn three_gateways(dir: &Path, rpm: u64) -> (Vec<Serving>, Vec<u16>, PathBuf) {
    let db = dir.join("shared.db");
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    let mut first = None;
    for i in 0..3 {
        let port = free_port();
        let cfg = dir.join(format!("gw{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                r#"
listen = "127.0.0.1:{port}"
[store]
kind = "sqlite"
path = "{}"
[providers.demo]
kind = "mock"
mock = {{ prompt_tokens = 7, completion_tokens = 3 }}
[[providers.demo.keys]]
id = "k1"
resources = [{{ name = "rpm", value = {rpm}, period = "minutely" }}]
[models.m]
targets = [{{ provider = "demo", model = "x" }}]
"#,
                db.display()
            ),
        )
        .unwrap();
        procs.push(serve(&cfg, port));
        ports.push(port);
        first.get_or_insert(cfg);
    }
    (procs, ports, first.unwrap())
}

/// `n` requests at once, spread over `ports`: (200s, 429s). Anything else fails the test.
fn burst(ports: &[u16], n: usize) -> (usize, usize) {
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

fn rpm_state(cfg: &Path) -> serde_json::Value {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("llmux"))
        .args(["show-state", "demo/k1", "--json", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["subjects"][0]["resources"]["rpm"].clone()
}

#[test]
fn three_gateways_on_one_sqlite_file_admit_exactly_rpm_100_of_400() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, ports, cfg) = three_gateways(dir.path(), 100);
    assert_eq!(burst(&ports, 400), (100, 300));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rpm = rpm_state(&cfg);
        if rpm["used"] == 100 && rpm["reserved"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{rpm}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Busy gateways hold the write lock only briefly: every request of a sustained load on three
/// processes is answered, and the CLI reads the file meanwhile.
#[test]
fn three_busy_gateways_and_the_cli_share_one_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, ports, cfg) = three_gateways(dir.path(), 1_000_000);
    let cli = {
        let cfg = cfg.clone();
        std::thread::spawn(move || {
            for _ in 0..5 {
                let started = Instant::now();
                let rpm = rpm_state(&cfg);
                assert!(rpm["used"].as_u64().is_some(), "{rpm}");
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "show-state waited {:?}",
                    started.elapsed()
                );
            }
        })
    };
    for _ in 0..4 {
        assert_eq!(burst(&ports, 150), (150, 0));
    }
    cli.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rpm = rpm_state(&cfg);
        if rpm["used"] == 600 && rpm["reserved"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{rpm}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
