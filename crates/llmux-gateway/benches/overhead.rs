//! What the gateway adds: latency (p50/p99) at a fixed rate and throughput at saturation, of
//! requests through llmux (sqlite store by default) against the same requests sent straight to
//! a fast upstream and through a bare hyper proxy (the floor), measured in one run.
//!
//! cargo bench -p llmux-gateway --bench overhead
//! Knobs: BENCH_RATE (1000 req/s), BENCH_SECS (5), BENCH_CONC (32), BENCH_STORES
//! (comma-separated rows: sqlite, redis, memory; default sqlite,redis — redis starts its own
//! redis-server, or uses LLMUX_TEST_REDIS_URL).
//!
//! The upstream, the gateway and the load generator each run on their own single-threaded
//! runtime (own OS thread). Pinned as in ../shared/bench when the machine has two CPUs or
//! more: the gateway (its runtime and the threads it starts) alone on CPU 1, the load
//! generator and the upstream on CPU 0; `BENCH_PIN=0` leaves scheduling to the kernel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
const REQUEST: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say hello in one word."}],"max_tokens":16}"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A one-worker runtime whose threads run on `cpu` (when pinning).
fn single_runtime(name: &str, cpu: Option<usize>) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || {
            if let Some(id) = cpu {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
        })
        .enable_all()
        .build()
        .unwrap()
}

/// A fast upstream: a fixed chat completion for every request.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The floor: a bare hyper proxy that reads the body, parses the JSON (as any gateway must, to
/// read `model`) and forwards it over a pooled connection. What any proxy hop costs here.
async fn floor_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let uri: Arc<str> = format!("http://{upstream}/v1/chat/completions").into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (client, uri) = (client.clone(), uri.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (client, uri) = (client.clone(), uri.clone());
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map_err(std::io::Error::other)?
                            .to_bytes();
                        let _: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let up = hyper::Request::post(&*uri)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .unwrap();
                        client.request(up).await.map_err(std::io::Error::other)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn one(client: &HttpClient, uri: &str) -> bool {
    let req = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
        .unwrap();
    match client.request(req).await {
        Ok(resp) => {
            let ok = resp.status() == 200;
            ok && resp.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Open loop at `rate` req/s for `secs`: latency of each request in µs.
async fn fixed_rate(client: &HttpClient, uri: &str, rate: u64, secs: u64) -> (Vec<u64>, u64) {
    let total = rate * secs;
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (client, uri, errors) = (client.clone(), uri.to_string(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // From the actual send: tokio's timer has 1 ms granularity, so the scheduled
            // instant would add up to 1 ms of noise to both paths.
            let sent = Instant::now();
            if !one(&client, &uri).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            sent.elapsed().as_micros() as u64
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort_unstable();
    (lat, errors.load(Ordering::Relaxed))
}

/// Closed loop with `conc` workers for `secs`: requests per second.
async fn saturate(client: &HttpClient, uri: &str, conc: u64, secs: u64) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (client, uri, done, errors) = (
            client.clone(),
            uri.to_string(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if one(&client, &uri).await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        errors.load(Ordering::Relaxed),
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let rate = env_u64("BENCH_RATE", 1000);
    let secs = env_u64("BENCH_SECS", 5);
    let conc = env_u64("BENCH_CONC", 32);
    let stores = std::env::var("BENCH_STORES").unwrap_or_else(|_| "sqlite,redis".into());

    let pin = env_u64("BENCH_PIN", 1) == 1
        && std::thread::available_parallelism().map_or(0, |n| n.get()) >= 2;
    let (load_cpu, gateway_cpu) = if pin {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let up_rt = single_runtime("bench-upstream", load_cpu);
    let up = up_rt.block_on(upstream());

    let dir = tempfile::tempdir().unwrap();
    // A redis-server of the bench's own (or LLMUX_TEST_REDIS_URL), when the redis row is asked.
    let redis = stores
        .split(',')
        .any(|s| s == "redis")
        .then(llmux_testkit::redis::RedisServer::start)
        .flatten();
    let gw_rt = single_runtime("bench-gateway", gateway_cpu);
    // Set up on the gateway's worker thread, so threads the store starts share its CPU.
    let floor = gw_rt.block_on(async { tokio::spawn(floor_proxy(up)).await.unwrap() });
    let mut paths = vec![
        (
            "direct".to_string(),
            format!("http://{up}/v1/chat/completions"),
        ),
        (
            "floor".to_string(),
            format!("http://{floor}/v1/chat/completions"),
        ),
    ];
    for store in stores.split(',') {
        let store_cfg = match store {
            "memory" => "kind = \"memory\"".to_string(),
            "sqlite" => format!(
                "kind = \"sqlite\"\npath = \"{}\"",
                dir.path().join("bench.db").display()
            ),
            "redis" => match &redis {
                Some(r) => format!(
                    "kind = \"redis\"\nurl = \"{}\"\nprefix = \"bench{}\"",
                    r.url(),
                    std::process::id()
                ),
                None => {
                    eprintln!("no redis-server: skipping the redis row");
                    continue;
                }
            },
            other => panic!("unknown store {other:?} in BENCH_STORES"),
        };
        let config = format!(
            r#"
[store]
{store_cfg}
[providers.mock]
kind = "openai-compatible"
base_url = "http://{up}/v1"
[[providers.mock.keys]]
id = "k1"
secret = "sk-mock-upstream"
resources = [{{ name = "rpm", value = 1000000000, period = "minutely" }},
             {{ name = "tpm", value = 1000000000000, period = "minutely" }}]
[models.bench]
targets = [{{ provider = "mock", model = "gpt-4o-mini" }}]
"#
        );
        let gw = gw_rt.block_on(async {
            tokio::spawn(async move {
                let config = llmux::Config::from_toml_str(&config, &|_| None).unwrap();
                let router = llmux::Router::from_config(config).unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(llmux_gateway::serve(
                    router,
                    listener,
                    std::future::pending(),
                ));
                addr
            })
            .await
            .unwrap()
        });
        paths.push((
            format!("llmux ({store})"),
            format!("http://{gw}/v1/chat/completions"),
        ));
    }

    let load = single_runtime("bench-load", load_cpu);
    load.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        // Warm up every path (connections, store pages, scripts).
        for (_, uri) in &paths {
            let _ = fixed_rate(&client, uri, rate, 1).await;
        }
        let mut rows = Vec::new();
        for (name, uri) in &paths {
            let (lat, e1) = fixed_rate(&client, uri, rate, secs).await;
            let (sat, e2) = saturate(&client, uri, conc, secs).await;
            rows.push((name, percentile(&lat, 0.5), percentile(&lat, 0.99), sat, e1 + e2));
        }
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        println!("llmux overhead bench: {rate} req/s for {secs} s, saturation c={conc}");
        println!(
            "machine: {cpus} cpus, {}; {}",
            cpu_model(),
            if pin {
                "gateway pinned to CPU 1, load and upstream to CPU 0"
            } else {
                "not pinned"
            }
        );
        println!();
        println!("| path | p50 µs | p99 µs | added p50 | added p99 | req/s c={conc} | of direct | errors |");
        println!("|---|---|---|---|---|---|---|---|");
        let (_, dp50, dp99, dsat, _) = rows[0];
        for (name, p50, p99, sat, errors) in &rows {
            println!(
                "| {name} | {p50} | {p99} | {} | {} | {sat:.0} | {:.0}% | {errors} |",
                *p50 as i64 - dp50 as i64,
                *p99 as i64 - dp99 as i64,
                100.0 * sat / dsat.max(1.0)
            );
        }
    });
    drop(gw_rt);
    drop(up_rt);
}
