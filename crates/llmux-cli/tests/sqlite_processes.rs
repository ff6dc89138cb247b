//! Several `llmux serve` processes on one SQLite file share one exact truth, and the CLI acts
//! on the file while they are busy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{
    burst, free_port, price_x, serve, settled_usd, show_state_json, wait_rpm_settled, Serving,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn three_gateways(dir: &Path, rpm: u64) -> (Vec<Serving>, Vec<u16>, PathBuf) {
    gateways(
        dir,
        3,
        &format!("{{ name = \"rpm\", value = {rpm}, period = \"minutely\" }}"),
    )
}

fn gateways(dir: &Path, n: usize, resources: &str) -> (Vec<Serving>, Vec<u16>, PathBuf) {
    let db = dir.join("shared.db");
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    let mut first = None;
    for i in 0..n {
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
resources = [{resources}]
[models.m]
targets = [{{ provider = "demo", model = "x" }}]
"#,
                db.display()
            ),
        )
        .unwrap();
        if resources.contains("usd") {
            price_x(&cfg);
        }
        procs.push(serve(&cfg, port));
        ports.push(port);
        first.get_or_insert(cfg);
    }
    (procs, ports, first.unwrap())
}

fn rpm_state(cfg: &Path) -> serde_json::Value {
    show_state_json(cfg, "demo/k1")["subjects"][0]["resources"]["rpm"].clone()
}

#[test]
fn three_gateways_on_one_sqlite_file_admit_exactly_rpm_100_of_400() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, ports, cfg) = three_gateways(dir.path(), 100);
    assert_eq!(burst(&ports, 400), (100, 300));
    wait_rpm_settled(&cfg, 100);
}

/// Two processes on one file against a $0.20 budget of cent-sized requests whose estimates
/// cover their usage: spend never passes the budget.
#[test]
fn two_gateways_on_one_sqlite_file_hold_a_hard_usd_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (_procs, ports, cfg) = gateways(
        dir.path(),
        2,
        r#"{ name = "budget_usd", value = 0.2, period = "monthly" }"#,
    );
    let (ok, limited) = burst(&ports, 200);
    assert_eq!(ok + limited, 200);
    assert!((10..=20).contains(&ok), "{ok} served");
    let spent = settled_usd(&cfg, "budget_usd");
    assert!((spent - ok as f64 * 0.01).abs() < 1e-9, "{spent} for {ok}");
    assert!(spent <= 0.2 + 1e-9, "spent {spent} of 0.2");
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
    wait_rpm_settled(&cfg, 600);
}
