//! End-to-end tests of `MockUpstream` through a real HTTP client.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llmux_testkit::{Behavior, MockUpstream};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    mock: &MockUpstream,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> Response<Incoming> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{}{}", mock.base_url(), path));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).unwrap();
    timeout(WAIT, client().request(req))
        .await
        .expect("response in time")
        .expect("response")
}

async fn post(mock: &MockUpstream, path: &str, body: Value) -> Response<Incoming> {
    send(mock, "POST", path, Some("Bearer sk-test"), Some(body)).await
}

async fn json_body(resp: Response<Incoming>) -> Value {
    let bytes = timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    serde_json::from_slice(&bytes).expect("JSON body")
}

/// Reads SSE events (the text after `data: `) from a streamed body, frame by frame.
struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

impl Sse {
    fn new(resp: Response<Incoming>) -> Sse {
        Sse {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, `Ok(None)` at the clean end of the body, `Err` if the body broke.
    /// Cancel-safe: a cancelled call loses no data.
    async fn next(&mut self) -> Result<Option<String>, hyper::Error> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(event).unwrap();
                let data = text.trim_end().strip_prefix("data: ").unwrap();
                return Ok(Some(data.to_string()));
            }
            match self.body.frame().await {
                None => {
                    assert!(self.buf.is_empty(), "trailing bytes: {:?}", self.buf);
                    return Ok(None);
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn next_in_time(&mut self) -> Result<Option<String>, hyper::Error> {
        timeout(WAIT, self.next()).await.expect("event in time")
    }

    /// All events up to the clean end of the body.
    async fn all(mut self) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(e) = self.next_in_time().await.expect("body intact") {
            events.push(e);
        }
        events
    }
}

fn parse(event: &str) -> Value {
    serde_json::from_str(event).expect("JSON event")
}

fn header<'a>(resp: &'a Response<Incoming>, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("header {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn chat_json_answer_with_usage() {
    let mock = MockUpstream::start().await;
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    assert!(mock.base_url().ends_with("/v1"));
    assert_eq!(mock.addr().ip().to_string(), "127.0.0.1");
    mock.set_usage(12, 7);
    let resp = post(
        &mock,
        "/chat/completions",
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(header(&resp, "x-ratelimit-limit-requests"), "10000");
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "9999");
    assert_eq!(header(&resp, "x-ratelimit-reset-requests"), "6ms");
    for name in [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ] {
        assert!(resp.headers().contains_key(name), "{name}");
    }
    let v = json_body(resp).await;
    assert_eq!(v["id"], "chatcmpl-mock-1");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19})
    );
}

#[tokio::test]
async fn chat_stream_with_include_usage_ends_with_usage_chunk_and_done() {
    let mock = MockUpstream::start().await;
    let resp = post(
        &mock,
        "/chat/completions",
        json!({"model": "gpt-4o-mini", "messages": [], "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    let events = Sse::new(resp).all().await;
    assert_eq!(events.len(), 7, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..6].iter().map(|e| parse(e)).collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], "chatcmpl-mock-1");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from mock");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    for c in &chunks[..5] {
        assert!(c["usage"].is_null() && c.get("usage").is_some(), "{c}");
    }
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage_chunk() {
    let mock = MockUpstream::start().await;
    let resp = post(
        &mock,
        "/chat/completions",
        json!({"model": "gpt-4o-mini", "messages": [], "stream": true}),
    )
    .await;
    let events = Sse::new(resp).all().await;
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    for e in &events[..5] {
        let c = parse(e);
        assert!(c.get("usage").is_none(), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn legacy_completions_json_and_stream() {
    let mock = MockUpstream::start().await;
    let v =
        json_body(post(&mock, "/completions", json!({"model": "m", "prompt": "x"})).await).await;
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Hello from mock");
    assert_eq!(v["usage"]["total_tokens"], 15);

    let resp = post(
        &mock,
        "/completions",
        json!({"model": "m", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = Sse::new(resp).all().await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| parse(e))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello from mock");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 10);
}

#[tokio::test]
async fn embeddings_and_models() {
    let mock = MockUpstream::start().await;
    mock.set_usage(4, 0);
    let v = json_body(
        post(
            &mock,
            "/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
        )
        .await,
    )
    .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["embedding"], json!([0.1, 0.2, 0.3]));
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));

    let v =
        json_body(post(&mock, "/embeddings", json!({"model": "e", "input": "one"})).await).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);

    let resp = send(&mock, "GET", "/models", None, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json_body(resp).await;
    assert_eq!(v["data"][0]["id"], "gpt-4o-mini");
    assert_eq!(mock.request_count(), 3);
}

#[tokio::test]
async fn status_behavior_sets_retry_after_and_error_body() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::Status {
        status: 503,
        retry_after_secs: Some(7),
    });
    mock.push(Behavior::Status {
        status: 400,
        retry_after_secs: None,
    });
    let body = json!({"model": "m", "messages": []});

    let resp = post(&mock, "/chat/completions", body.clone()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&resp, "retry-after"), "7");
    let v = json_body(resp).await;
    assert!(v["error"]["message"].is_string());
    assert!(v["error"]["type"].is_string());
    assert!(v["error"]["code"].is_string());

    let resp = post(&mock, "/chat/completions", body.clone()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("retry-after").is_none());
    assert_eq!(
        json_body(resp).await["error"]["type"],
        "invalid_request_error"
    );

    // Queue empty: back to the default.
    let resp = post(&mock, "/chat/completions", body.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);

    mock.set_default(Behavior::RateLimited {
        retry_after_secs: 3,
    });
    for _ in 0..2 {
        let resp = post(&mock, "/embeddings", json!({"input": "x"})).await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&resp, "retry-after"), "3");
        assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "0");
        assert_eq!(header(&resp, "x-ratelimit-reset-requests"), "3s");
        assert_eq!(header(&resp, "x-ratelimit-remaining-tokens"), "0");
        assert_eq!(header(&resp, "x-ratelimit-reset-tokens"), "3s");
        assert_eq!(
            json_body(resp).await["error"]["code"],
            "rate_limit_exceeded"
        );
    }
}

#[tokio::test]
async fn delay_behavior_waits_before_answering() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::Delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let resp = post(&mock, "/chat/completions", json!({"model": "m"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn gated_stream_releases_one_chunk_per_permit() {
    let mock = MockUpstream::start().await;
    let gate = Arc::new(Semaphore::new(0));
    mock.push(Behavior::GatedStream(gate.clone()));
    let resp = post(
        &mock,
        "/chat/completions",
        json!({"model": "m", "stream": true}),
    )
    .await;
    let mut sse = Sse::new(resp);

    let first = parse(&sse.next_in_time().await.unwrap().unwrap());
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    // No permit yet: the second chunk must not arrive.
    assert!(
        timeout(Duration::from_millis(300), sse.next())
            .await
            .is_err(),
        "second chunk arrived before a permit"
    );

    gate.add_permits(1);
    let second = parse(&sse.next_in_time().await.unwrap().unwrap());
    assert_eq!(second["choices"][0]["delta"]["content"], "Hello");
    assert!(timeout(Duration::from_millis(200), sse.next())
        .await
        .is_err());

    // Release the rest: 2 content chunks, the finish chunk and [DONE].
    gate.add_permits(4);
    let rest = sse.all().await;
    assert_eq!(rest.len(), 4, "{rest:?}");
    assert_eq!(rest.last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn gated_stream_does_not_gate_json_answers() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::GatedStream(Arc::new(Semaphore::new(0))));
    let v = json_body(post(&mock, "/chat/completions", json!({"model": "m"})).await).await;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock");
}

#[tokio::test]
async fn break_stream_after_ends_with_body_error() {
    let mock = MockUpstream::start().await;
    mock.push(Behavior::BreakStreamAfter(2));
    let resp = post(
        &mock,
        "/chat/completions",
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = Sse::new(resp);
    let mut events = Vec::new();
    let err = loop {
        match sse.next_in_time().await {
            Ok(Some(e)) => events.push(e),
            Ok(None) => panic!("stream ended cleanly after {events:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(events.len(), 3, "{events:?}"); // role chunk + 2 content chunks
    assert!(events.iter().all(|e| e != "[DONE]"));
    assert_eq!(parse(&events[2])["choices"][0]["delta"]["content"], " from");
    // hyper reports the cut chunked body (e.g. "unexpected EOF during chunk size line").
    assert!(!err.is_user(), "{err:?}");

    // A non-stream request gets a cut body.
    mock.push(Behavior::BreakStreamAfter(0));
    let resp = post(&mock, "/chat/completions", json!({"model": "m"})).await;
    assert!(timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .is_err());

    // The mock still serves after the broken connections.
    let resp = post(&mock, "/chat/completions", json!({"model": "m"})).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_are_recorded_with_authorization() {
    let mock = MockUpstream::start().await;
    post(
        &mock,
        "/chat/completions",
        json!({"model": "a", "messages": []}),
    )
    .await;
    send(
        &mock,
        "POST",
        "/embeddings",
        None,
        Some(json!({"input": "x"})),
    )
    .await;
    let resp = send(&mock, "POST", "/nope", Some("Bearer other"), None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // An unknown path takes no queued behaviour.
    mock.push(Behavior::Status {
        status: 500,
        retry_after_secs: None,
    });
    let resp = send(&mock, "POST", "/nope", None, None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = send(&mock, "GET", "/models", None, None).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    let reqs = mock.requests();
    assert_eq!(mock.request_count(), 5);
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[4].method, "GET");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(reqs[0].authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(reqs[0].body["model"], "a");
    assert_eq!(reqs[0].headers["content-type"], "application/json");
    assert_eq!(reqs[1].path, "/v1/embeddings");
    assert_eq!(reqs[1].authorization, None);
    assert_eq!(reqs[2].path, "/v1/nope");
    assert_eq!(reqs[2].authorization.as_deref(), Some("Bearer other"));
    assert!(reqs[2].body.is_null());
}

#[tokio::test]
async fn server_stops_on_drop() {
    let mock = MockUpstream::start().await;
    let addr = mock.addr();
    drop(mock);
    tokio::task::yield_now().await;
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still accepting after drop");
}

#[tokio::test]
async fn each_sse_event_is_its_own_frame() {
    let mock = MockUpstream::start().await;
    let resp = post(
        &mock,
        "/chat/completions",
        json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = timeout(WAIT, body.frame()).await.unwrap() {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(String::from_utf8(data.to_vec()).unwrap());
        }
    }
    assert_eq!(frames.len(), 7, "{frames:?}");
    for f in &frames {
        assert!(f.starts_with("data: ") && f.ends_with("\n\n"), "{f:?}");
        assert_eq!(f.matches("\n\n").count(), 1, "{f:?}");
    }
}
