//! How each upstream outcome settles its reservation, what a 401/403 disables and for how
//! long, and streams that stall: against a scripted provider, on the memory store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use llmux::core::store::StoreAdmin;
use llmux::{Call, Config, Provider, Reply, ReplyBody, Request, RouteError, Router, UpstreamError};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// What the scripted upstream does for one call.
#[derive(Clone)]
enum Step {
    Status(u16),
    Err(UpstreamError),
    /// A 200 SSE answer that sends one chunk and then nothing, forever.
    StallAfterOneChunk,
}

/// Answers calls from a script (then 200s), recording the upstream model of each call.
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Step>>>,
    models: Arc<Mutex<Vec<String>>>,
}

const OK_BODY: &str = r#"{"object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;

impl Provider for Scripted {
    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        self.models
            .lock()
            .push(body["model"].as_str().unwrap().to_string());
        let step = self.script.lock().pop_front();
        Box::pin(async move {
            let full = |status: u16, text: &str| Reply {
                status,
                headers: Default::default(),
                body: ReplyBody::Full(Bytes::from(text.to_string())),
            };
            match step {
                None => Ok(full(200, OK_BODY)),
                Some(Step::Status(s)) => Ok(full(s, r#"{"error":{"message":"no"}}"#)),
                Some(Step::Err(e)) => Err(e),
                Some(Step::StallAfterOneChunk) => {
                    let first = futures_util::stream::once(async {
                        Ok(Bytes::from(
                            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
                        ))
                    });
                    Ok(Reply {
                        status: 200,
                        headers: Default::default(),
                        body: ReplyBody::Stream(
                            first.chain(futures_util::stream::pending()).boxed(),
                        ),
                    })
                }
            }
        })
    }
}

const CONFIG: &str = r#"
[store]
kind = "memory"
[providers.p]
kind = "mock"
[[providers.p.keys]]
id = "k1"
resources = [{ name = "rpm", value = 100, period = "minutely" },
             { name = "tpm", value = 100000, period = "minutely" }]
[models.m]
max_attempts = 1
default_max_tokens = 50
stream_idle_timeout_secs = 1
targets = [{ provider = "p", model = "x" }]
[models.other]
max_attempts = 1
targets = [{ provider = "p", model = "y" }]
"#;

fn router(up: &Scripted) -> Router {
    let config = Config::from_toml_str(CONFIG, &|_| None).unwrap();
    Router::builder(config)
        .provider("p", up.clone())
        .build()
        .unwrap()
}

fn chat(model: &str) -> Request {
    Request::chat(
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}),
    )
    .unwrap()
}

async fn counter(r: &Router, resource: &str) -> (u64, u64) {
    let s = r.store().snapshot("p/k1").await.unwrap();
    s.iter()
        .find(|s| s.subject == "p/k1")
        .and_then(|s| s.resources.iter().find(|(n, _)| n == resource))
        .map_or((0, 0), |(_, c)| (c.used, c.reserved))
}

/// Wait until `p/k1`'s `resource` reads `want` (commits of the gateway path are detached).
async fn settles(r: &Router, resource: &str, want: (u64, u64)) {
    for _ in 0..200 {
        if counter(r, resource).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{resource} is {:?}, expected {want:?}",
        counter(r, resource).await
    );
}

#[tokio::test]
async fn each_outcome_settles_by_one_rule() {
    let up = Scripted::default();
    let r = router(&up);
    // The request's estimate: prompt tokens + default_max_tokens (50).
    let estimate = llmux::core::usage::estimate_input_tokens(&chat("m").body) + 50;
    // A connect error: the request never left, so everything is given back.
    up.script
        .lock()
        .push_back(Step::Err(UpstreamError::Connect("refused".into())));
    assert!(matches!(
        r.request(chat("m")).await,
        Err(RouteError::Upstream { .. })
    ));
    settles(&r, "rpm", (0, 0)).await;
    settles(&r, "tpm", (0, 0)).await;
    // A timeout: the request left and the upstream may have done the work: the estimate
    // stays (it committed 0 tokens before).
    up.script
        .lock()
        .push_back(Step::Err(UpstreamError::Timeout(5)));
    assert!(matches!(
        r.request(chat("m")).await,
        Err(RouteError::Upstream { timeout: true, .. })
    ));
    settles(&r, "rpm", (1, 0)).await;
    settles(&r, "tpm", (estimate, 0)).await;
    // A reset after sending, and a broken body, likewise (the reservation was given back).
    up.script
        .lock()
        .push_back(Step::Err(UpstreamError::Reset("reset".into())));
    up.script
        .lock()
        .push_back(Step::Err(UpstreamError::Body("cut".into())));
    for _ in 0..2 {
        assert!(r.request(chat("m")).await.is_err());
    }
    settles(&r, "rpm", (3, 0)).await;
    settles(&r, "tpm", (3 * estimate, 0)).await;
    // An error status: one request, no tokens.
    up.script.lock().push_back(Step::Status(500));
    assert!(r.request(chat("m")).await.is_err());
    settles(&r, "rpm", (4, 0)).await;
    settles(&r, "tpm", (3 * estimate, 0)).await;
    // A success: the reported usage.
    assert_eq!(r.request(chat("m")).await.unwrap().status, 200);
    settles(&r, "tpm", (3 * estimate + 5, 0)).await;
}

#[tokio::test]
async fn a_403_disables_the_key_for_that_model_only_and_reset_is_honoured_at_once() {
    let up = Scripted::default();
    let r = router(&up);
    up.script.lock().push_back(Step::Status(403));
    assert!(r.request(chat("m")).await.is_err());
    // The key still serves the other model…
    assert_eq!(r.request(chat("other")).await.unwrap().status, 200);
    // …but not the refused one.
    match r.request(chat("m")).await {
        Err(RouteError::NoCapacity { denial, .. }) => {
            assert_eq!(denial.limit(), "p/k1/x:disabled")
        }
        other => panic!("expected the target to be disabled, got {other:?}"),
    }
    // A 401 disables the key for every model.
    up.script.lock().push_back(Step::Status(401));
    assert!(r.request(chat("other")).await.is_err());
    match r.request(chat("other")).await {
        Err(RouteError::NoCapacity { denial, .. }) => assert_eq!(denial.limit(), "p/k1:disabled"),
        other => panic!("expected the key to be disabled, got {other:?}"),
    }
    // reset-state re-enables both, honoured on the very next request (a local cache kept the
    // key out for 60 s before).
    r.store().reset("p/k1").await.unwrap();
    assert_eq!(r.request(chat("other")).await.unwrap().status, 200);
    assert_eq!(r.request(chat("m")).await.unwrap().status, 200);
    assert_eq!(up.models.lock().as_slice(), ["x", "y", "y", "y", "x"]);
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event_and_settles() {
    let up = Scripted::default();
    let r = router(&up);
    up.script.lock().push_back(Step::StallAfterOneChunk);
    let req = Request::chat(serde_json::json!({
        "model": "m", "stream": true, "messages": [{"role": "user", "content": "hello"}]
    }))
    .unwrap();
    let resp = r.request(req).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.bytes())
        .await
        .expect("the stream outlived stream_idle_timeout_secs")
        .unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("data: {\"choices\""), "{text}");
    assert!(
        text.ends_with("\n\ndata: {\"error\":{\"code\":\"upstream_stream_stalled\",\"message\":\"the upstream sent nothing for 1 s\",\"type\":\"upstream_error\"}}\n\n"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"));
    // No usage came: the estimate is committed and nothing stays reserved.
    settles(&r, "rpm", (1, 0)).await;
}
