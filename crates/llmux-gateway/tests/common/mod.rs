//! Shared support for the gateway's end-to-end tests: a gateway on 127.0.0.1:0 and a small
//! HTTP client over loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use llmux::Router;
use serde_json::Value;
use std::net::SocketAddr;

pub struct Gateway {
    pub addr: SocketAddr,
    pub router: Router,
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a gateway on `config`; `{DB}` in it becomes a fresh sqlite path.
pub async fn start(config: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("llmux.db");
    let text = config.replace("{DB}", db.to_str().unwrap());
    let config = llmux::Config::from_toml_str(&text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let router = Router::from_config(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r = router.clone();
    let task = tokio::spawn(async move {
        llmux_gateway::serve(r, listener, std::future::pending())
            .await
            .unwrap();
    });
    Gateway {
        addr,
        router,
        dir,
        task,
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Incoming) {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client()
        .request(b.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status.as_u16(), parts.headers, body)
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Resp {
    let (status, headers, body) = send(addr, "POST", path, body, headers).await;
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    get_with(addr, path, &[]).await
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let (status, headers, body) = send(addr, "GET", path, Bytes::new(), headers).await;
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn chat(model: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
        .to_string()
}

pub fn chat_stream(model: &str, include_usage: bool) -> String {
    let mut v = serde_json::json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say hello"}]});
    if include_usage {
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v.to_string()
}

/// The stored counter of `resource` on `subject`: (used, reserved).
pub async fn counter(router: &Router, subject: &str, resource: &str) -> (u64, u64) {
    use llmux_core::store::StoreAdmin;
    let states = router.store().snapshot(subject).await.unwrap();
    let s = states
        .iter()
        .find(|s| s.subject == subject)
        .unwrap_or_else(|| panic!("no state for {subject}"));
    let c = s
        .resources
        .iter()
        .find(|(n, _)| n == resource)
        .unwrap_or_else(|| panic!("no {resource} on {subject}"))
        .1;
    (c.used, c.reserved)
}

/// Wait until `f` holds (background reconciles are asynchronous), up to 5 s.
pub async fn eventually<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

/// Run the Python `script` (which prints `SDK-OK` when every check held) with `args`, if
/// `python3` has `module` (`.ci/run` installs the SDKs: under `CI` a missing one fails).
pub async fn run_sdk_script(gw: &Gateway, module: &str, script: &str, args: &[String]) {
    let have = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but python3 with the {module} package is missing"
        );
        eprintln!("skipped: python3 with the `{module}` package is not installed");
        return;
    }
    let path = gw.dir.path().join(format!("{module}_sdk.py"));
    std::fs::write(&path, script).unwrap();
    let out = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SDK-OK"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

/// Two upstreams on one mock: `claude` (kind anthropic) and `gpt` (openai-compatible), with
/// token limits on both keys.
pub fn two_dialects(mock: &llmux_testkit::MockUpstream) -> String {
    format!(
        r#"
[store]
kind = "sqlite"
path = "{{DB}}"
[providers.claude]
kind = "anthropic"
base_url = "{url}"
[[providers.claude.keys]]
id = "k1"
secret = "sk-ant-1"
resources = [{{ name = "tpm", value = 100000, period = "minutely" }},
             {{ name = "input_tpm", value = 100000, period = "minutely" }},
             {{ name = "cache_read_tpm", value = 100000, period = "minutely" }}]
[providers.gpt]
kind = "openai-compatible"
base_url = "{url}"
[[providers.gpt.keys]]
id = "k1"
secret = "sk-oa-1"
resources = [{{ name = "tpm", value = 100000, period = "minutely" }}]
[models.claude]
targets = [{{ provider = "claude", model = "claude-sonnet-4-5" }}]
[models.gpt]
targets = [{{ provider = "gpt", model = "gpt-4o-mini" }}]
"#,
        url = mock.base_url()
    )
}
