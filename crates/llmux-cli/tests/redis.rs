//! Several `llmux serve` processes on one Redis share one exact truth, and a Redis outage is
//! handled by the declared policy, without panics, with recovery when Redis returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{
    burst, chat, free_port, price_x, serve, settled_usd, show_state_json, wait_rpm_settled, Serving,
};
use llmux_testkit::redis::RedisServer;
use std::path::Path;
use std::time::{Duration, Instant};

fn write_config(
    dir: &Path,
    name: &str,
    port: u16,
    url: &str,
    prefix: &str,
    policy: &str,
    resources: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
listen = "127.0.0.1:{port}"
on_store_error = "{policy}"
[store]
kind = "redis"
url = "{url}"
prefix = "{prefix}"
[providers.demo]
kind = "mock"
mock = {{ prompt_tokens = 7, completion_tokens = 3 }}
[[providers.demo.keys]]
id = "k1"
resources = [{resources}]
[models.m]
# Requests send no max_tokens: reserve 1 output token, below what the mock reports.
default_max_tokens = 1
targets = [{{ provider = "demo", model = "x" }}]
"#
        ),
    )
    .unwrap();
    path
}

fn show_state(cfg: &Path) -> serde_json::Value {
    show_state_json(cfg, "demo/k1")
}

fn three_gateways(
    server: &RedisServer,
    prefix: &str,
    resources: &str,
) -> (
    tempfile::TempDir,
    Vec<Serving>,
    Vec<u16>,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    let mut first = None;
    for i in 0..3 {
        let port = free_port();
        let cfg = write_config(
            dir.path(),
            &format!("gw{i}"),
            port,
            server.url(),
            prefix,
            "fail-closed",
            resources,
        );
        if resources.contains("usd") {
            price_x(&cfg);
        }
        procs.push(serve(&cfg, port));
        ports.push(port);
        first.get_or_insert(cfg);
    }
    (dir, procs, ports, first.unwrap())
}

#[test]
fn three_gateways_on_one_redis_admit_exactly_rpm_100_of_400() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = format!("rpm{}", std::process::id());
    let (_dir, _procs, ports, cfg) = three_gateways(
        &server,
        &prefix,
        r#"{ name = "rpm", value = 100, period = "minutely" }"#,
    );
    assert_eq!(burst(&ports, 400), (100, 300));
    wait_rpm_settled(&cfg, 100);
}

/// 200 requests over three gateways against a $0.20 budget of cent-sized requests whose
/// estimates cover their usage: spend never passes the budget.
#[test]
fn three_gateways_on_one_redis_hold_a_hard_usd_budget() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = format!("usd{}", std::process::id());
    let (_dir, _procs, ports, cfg) = three_gateways(
        &server,
        &prefix,
        r#"{ name = "budget_usd", value = 0.2, period = "monthly" }"#,
    );
    let (ok, limited) = burst(&ports, 200);
    assert_eq!(ok + limited, 200);
    assert!((10..=20).contains(&ok), "{ok} served");
    let spent = settled_usd(&cfg, "budget_usd");
    assert!((spent - ok as f64 * 0.01).abs() < 1e-9, "{spent} for {ok}");
    assert!(spent <= 0.2 + 1e-9, "spent {spent} of 0.2");
}

#[test]
fn three_gateways_share_a_token_limit_with_reconciliation() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = format!("tpm{}", std::process::id());
    // Each request estimates about 9 tokens (8 in, default_max_tokens 1 out) and reports
    // 7 + 3 = 10.
    // 1000 tokens admit at most 100 requests at once; reconciled, exactly 1000 are used.
    let (_dir, _procs, ports, cfg) = three_gateways(
        &server,
        &prefix,
        r#"{ name = "tpm", value = 1000, period = "minutely" }"#,
    );
    let (ok, limited) = burst(&ports, 400);
    assert_eq!(ok + limited, 400);
    assert!(ok >= 100, "at least capacity/actual requests fit: {ok}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut used = 0;
    while Instant::now() < deadline {
        let v = show_state(&cfg);
        let tpm = &v["subjects"][0]["resources"]["tpm"];
        used = tpm["used"].as_u64().unwrap();
        if tpm["reserved"] == 0 && used == ok as u64 * 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        used,
        ok as u64 * 10,
        "every admitted request reconciled to its reported usage"
    );
    // Reservations were checked against the limit: the estimates admitted never exceeded it.
    assert!(ok as u64 * 8 <= 1000 + 8, "{ok} admitted");
    // Now the counter is past capacity (reported usage exceeded the estimates): nothing more fits.
    if used >= 1000 {
        assert_eq!(chat(ports[0]), Some(429));
    }
}

#[test]
fn a_redis_outage_follows_the_policy_and_service_resumes() {
    let Some(mut server) = RedisServer::start_owned() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (closed_port, open_port) = (free_port(), free_port());
    let prefix = format!("out{}", std::process::id());
    let res = r#"{ name = "rpm", value = 1000, period = "minutely" }"#;
    let closed = write_config(
        dir.path(),
        "closed",
        closed_port,
        server.url(),
        &prefix,
        "fail-closed",
        res,
    );
    let open = write_config(
        dir.path(),
        "open",
        open_port,
        server.url(),
        &prefix,
        "fail-open",
        res,
    );
    let mut gw_closed = serve(&closed, closed_port);
    let mut gw_open = serve(&open, open_port);
    assert_eq!(chat(closed_port), Some(200));
    assert_eq!(chat(open_port), Some(200));

    server.stop();
    for _ in 0..5 {
        assert_eq!(
            chat(closed_port),
            Some(503),
            "fail-closed refuses while redis is down"
        );
        assert_eq!(
            chat(open_port),
            Some(200),
            "fail-open serves while redis is down"
        );
    }
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while chat(closed_port) != Some(200) {
        assert!(Instant::now() < deadline, "service did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(chat(open_port), Some(200));
    // Neither process died.
    assert!(gw_closed.0.try_wait().unwrap().is_none());
    assert!(gw_open.0.try_wait().unwrap().is_none());
}

#[test]
fn a_gateway_starts_while_redis_is_down_and_recovers() {
    let Some(mut server) = RedisServer::start_owned() else {
        return;
    };
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        "late",
        port,
        server.url(),
        "late",
        "fail-closed",
        r#"{ name = "rpm", value = 10, period = "minutely" }"#,
    );
    let _gw = serve(&cfg, port);
    assert_eq!(chat(port), Some(503));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while chat(port) != Some(200) {
        assert!(Instant::now() < deadline, "never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_429_seen_by_one_replica_cools_the_key_for_all() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cool{}", std::process::id());
    let (a_port, b_port) = (free_port(), free_port());
    let res = r#"{ name = "rpm", value = 1000, period = "minutely" }"#;
    let a = write_config(
        dir.path(),
        "a",
        a_port,
        server.url(),
        &prefix,
        "fail-closed",
        res,
    );
    let b = write_config(
        dir.path(),
        "b",
        b_port,
        server.url(),
        &prefix,
        "fail-closed",
        res,
    );
    // Replica A's upstream answers 429 (retry-after 30 s) from its first request on.
    let text = std::fs::read_to_string(&a).unwrap().replace(
        "mock = { prompt_tokens = 7, completion_tokens = 3 }",
        "mock = { prompt_tokens = 7, completion_tokens = 3, rate_limit_after = 0, retry_after_secs = 30 }",
    );
    std::fs::write(&a, text).unwrap();
    let _a = serve(&a, a_port);
    let _b = serve(&b, b_port);
    assert_eq!(chat(b_port), Some(200), "B serves before the 429");
    assert_eq!(
        chat(a_port),
        Some(429),
        "A's upstream refused: the key cools down"
    );
    // B never called its upstream for this: the shared cooldown refuses it.
    assert_eq!(chat(b_port), Some(429));
    let v = show_state(&b);
    let secs = v["subjects"][0]["cooldown_secs"].as_u64().unwrap();
    assert!((25..=30).contains(&secs), "{v}");
}
