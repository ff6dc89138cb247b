//! Test support for llmux: [`MockUpstream`], a local HTTP server that behaves
//! like the OpenAI API.
//!
//! The mock listens on `127.0.0.1:<random port>` and serves, under `/v1`:
//!
//! * `POST /v1/chat/completions` — a chat completion, as JSON or as an SSE
//!   stream when the request has `"stream": true` (with a final usage chunk only
//!   when `"stream_options": {"include_usage": true}` is set, as OpenAI does);
//! * `POST /v1/completions` — a legacy text completion, JSON or SSE;
//! * `POST /v1/embeddings` — one `[0.1, 0.2, 0.3]` embedding per input;
//! * `GET /v1/models` — a list holding the single model `gpt-4o-mini`;
//! * `POST /v1/messages` — Anthropic Messages, JSON or SSE (`message_start` …
//!   `message_stop`), usage with cache tokens ([`MockUpstream::set_cache_usage`]), errors in
//!   Anthropic's envelope and `anthropic-ratelimit-*` headers on a 429;
//! * `POST /v1/responses` — OpenAI Responses, JSON or typed SSE events ending with
//!   `response.completed`.
//!
//! A chat or Messages request with `tools` whose last message is not a tool result is
//! answered with a call of its first tool, arguments `{"q":"mock"}` (streamed in two pieces).
//!
//! Every request is recorded (see [`MockUpstream::requests`]) and answered
//! according to a [`Behavior`]: the next one queued with [`MockUpstream::push`]
//! or, when the queue is empty, the default ([`Behavior::Ok`] unless changed with
//! [`MockUpstream::set_default`]). Any other path answers 404 with an
//! OpenAI-shaped error; it is recorded too, but takes no queued behaviour.
//!
//! ```no_run
//! # async fn demo() {
//! use llmux_testkit::{Behavior, MockUpstream};
//!
//! let mock = MockUpstream::start().await;
//! mock.push(Behavior::Status { status: 503, retry_after_secs: Some(2) });
//! // point the gateway at `mock.base_url()`; its first request gets a 503,
//! // the following ones a normal answer.
//! assert_eq!(mock.request_count(), 0);
//! # }
//! ```

mod dialects;
pub mod redis;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The text of every normal answer; streams send it as these three pieces.
const CONTENT_PIECES: [&str; 3] = ["Hello", " from", " mock"];
/// Largest request body the mock reads.
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Model named in answers when the request names none.
const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// 200 with a normal answer (JSON, or SSE if the request had "stream": true).
    Ok,
    /// Answer with this status and an OpenAI-shaped error body {"error":{"message","type","code"}};
    /// if retry_after_secs is Some, set the `retry-after` header (integer seconds).
    Status {
        /// HTTP status code of the answer (an invalid code becomes 500).
        status: u16,
        /// Value of the `retry-after` header, in whole seconds.
        retry_after_secs: Option<u64>,
    },
    /// Shortcut for 429 with retry-after and x-ratelimit-* headers (remaining 0, reset "Ns").
    RateLimited {
        /// Value of `retry-after`, also used for the `x-ratelimit-reset-*` headers.
        retry_after_secs: u64,
    },
    /// Wait this long before answering normally (for timeouts).
    Delay(Duration),
    /// Streaming answer where each chunk after the first waits for one permit of this semaphore
    /// (tests gate chunk by chunk without sleeps). Non-stream requests ignore the gate.
    ///
    /// Every SSE event after the first one, including the closing `data: [DONE]`,
    /// takes (and forgets) one permit. Closing the semaphore aborts the stream.
    GatedStream(Arc<Semaphore>),
    /// Streaming: send `n` content chunks, then drop the connection abruptly (no `[DONE]`, no usage
    /// chunk) — the body stream must yield an error so hyper aborts the chunked response.
    ///
    /// For chat completions the initial role chunk is sent first and is not counted.
    /// A non-stream request gets a 200 whose JSON body is cut in the middle.
    BreakStreamAfter(usize),
    /// 200 with a normal answer carrying these headers too (replacing the default
    /// `x-ratelimit-*` ones of the same names), e.g. limits that run low.
    WithHeaders(Vec<(String, String)>),
    /// Streaming: send the answer's head at once, then nothing for this long before the first
    /// event (a hang before the first token). A non-stream request waits before its head.
    StallFirstChunk(Duration),
}

/// One request received by the mock.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Request path without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The `authorization` header, if present and valid UTF-8.
    pub authorization: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The request body parsed as JSON, or `Value::Null` if it was not JSON.
    pub body: Value,
}

/// State shared between the handle and the server task.
struct Inner {
    queue: VecDeque<Behavior>,
    default: Behavior,
    requests: Vec<Recorded>,
    usage: (u64, u64),
    /// Cache (read, write) tokens: reported by Anthropic answers (beside `input_tokens`),
    /// and as `prompt_tokens_details.cached_tokens` (included in `prompt_tokens`) by OpenAI ones.
    cache: (u64, u64),
    /// OpenRouter's `GET /v1/key`: `None` = not served (404), `Some(None)` = a key without a
    /// credit limit, `Some(Some(usd))` = the credit left.
    credit: Option<Option<f64>>,
}

type Shared = Arc<Mutex<Inner>>;

/// A mock OpenAI-compatible upstream server; the server stops when this is dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and spawns the server on the current tokio runtime.
    ///
    /// # Panics
    /// If the loopback address cannot be bound (a broken test environment).
    #[allow(
        clippy::expect_used,
        reason = "test support: a mock that cannot bind loopback has nothing useful to return"
    )]
    pub async fn start() -> MockUpstream {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("MockUpstream: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("MockUpstream: local address of the listener");
        let shared: Shared = Arc::new(Mutex::new(Inner {
            queue: VecDeque::new(),
            default: Behavior::Ok,
            requests: Vec::new(),
            usage: (10, 5),
            cache: (0, 0),
            credit: None,
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .route("/v1/messages", post(messages))
            .route("/v1/responses", post(responses))
            .route("/v1/key", get(key_info))
            .fallback(unknown)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            // The server only ends on an accept error or when the task is aborted.
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream { addr, shared, task }
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a behaviour: the next request without one gets it (FIFO).
    pub fn push(&self, b: Behavior) {
        self.shared.lock().queue.push_back(b);
    }

    /// Sets the behaviour used when the queue is empty (initially [`Behavior::Ok`]).
    pub fn set_default(&self, b: Behavior) {
        self.shared.lock().default = b;
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// The number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Sets the token usage reported in answers (default 10 prompt / 5 completion tokens).
    pub fn set_usage(&self, prompt_tokens: u64, completion_tokens: u64) {
        self.shared.lock().usage = (prompt_tokens, completion_tokens);
    }

    /// Sets the prompt-cache tokens reported (default none): Anthropic answers report them
    /// beside `input_tokens` (= the prompt tokens of [`MockUpstream::set_usage`]); OpenAI chat
    /// answers report `read` as `cached_tokens`, inside `prompt_tokens`.
    pub fn set_cache_usage(&self, read: u64, write: u64) {
        self.shared.lock().cache = (read, write);
    }

    /// Serve OpenRouter's key endpoint (`GET /v1/key`) with this credit left in USD (`None`:
    /// a key without a limit). Until called, that path answers 404.
    pub fn set_credit(&self, remaining: Option<f64>) {
        self.shared.lock().credit = Some(remaining);
    }
}

/// OpenRouter's `GET /key`: the key's limit, usage and the credit left. Recorded like every
/// request; needs an `Authorization: Bearer` header, as OpenRouter does.
async fn key_info(State(s): State<Shared>, req: Request) -> Response {
    let credit = s.lock().credit;
    if credit.is_none() || !req.headers().contains_key(AUTHORIZATION) {
        return handle(s, None, req).await;
    }
    let _ = handle(s, None, req).await;
    let remaining = credit.flatten();
    let body = json!({"data": {
        "label": "sk-or-v1-moc...key",
        "limit": remaining.map(|_| 100.0),
        "limit_remaining": remaining,
        "usage": remaining.map_or(0.0, |r| 100.0 - r),
        "is_free_tier": false,
    }});
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which API an answer is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
    Messages,
    Responses,
}

/// What a normal answer needs to know about its request.
struct Ctx {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    body: Value,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Cache (read, write) tokens.
    cache: (u64, u64),
    include_usage: bool,
}

impl Ctx {
    /// The name of the tool to call: the request has tools and does not end with a result.
    fn tool_call(&self) -> Option<String> {
        let first = self.body.get("tools")?.as_array()?.first()?;
        let name = first
            .pointer("/function/name")
            .or_else(|| first.get("name"))?
            .as_str()?;
        let last = self.body.get("messages")?.as_array()?.last()?;
        let is_result = last.get("role").and_then(Value::as_str) == Some("tool")
            || last
                .get("content")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
                });
        (!is_result).then(|| name.to_string())
    }
}

async fn chat(State(s): State<Shared>, req: Request) -> Response {
    handle(s, Some(Endpoint::Chat), req).await
}

async fn completions(State(s): State<Shared>, req: Request) -> Response {
    handle(s, Some(Endpoint::Completions), req).await
}

async fn embeddings(State(s): State<Shared>, req: Request) -> Response {
    handle(s, Some(Endpoint::Embeddings), req).await
}

async fn models(State(s): State<Shared>, req: Request) -> Response {
    handle(s, Some(Endpoint::Models), req).await
}

async fn messages(State(s): State<Shared>, req: Request) -> Response {
    handle(s, Some(Endpoint::Messages), req).await
}

async fn responses(State(s): State<Shared>, req: Request) -> Response {
    handle(s, Some(Endpoint::Responses), req).await
}

async fn unknown(State(s): State<Shared>, req: Request) -> Response {
    handle(s, None, req).await
}

/// Records the request, takes its behaviour and answers accordingly.
async fn handle(shared: Shared, endpoint: Option<Endpoint>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (behavior, n, (prompt_tokens, completion_tokens), cache) = {
        let mut inner = shared.lock();
        inner.requests.push(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            authorization: parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            headers: parts.headers.clone(),
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            body: body.clone(),
        });
        // Unknown paths answer 404 without taking a queued behaviour.
        let behavior = endpoint.map(|_| match inner.queue.pop_front() {
            Some(b) => b,
            None => inner.default.clone(),
        });
        (behavior, inner.requests.len(), inner.usage, inner.cache)
    };
    let (Some(endpoint), Some(behavior)) = (endpoint, behavior) else {
        return error_response(StatusCode::NOT_FOUND, None, HeaderMap::new());
    };
    let ctx = Ctx {
        endpoint,
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-mock-{n}"),
            Endpoint::Completions => format!("cmpl-mock-{n}"),
            Endpoint::Messages => format!("msg_mock{n}"),
            Endpoint::Responses => format!("resp_mock{n}"),
            Endpoint::Embeddings | Endpoint::Models => format!("mock-{n}"),
        },
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_MODEL)
            .to_string(),
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        body,
        prompt_tokens,
        completion_tokens,
        cache,
    };
    let anthropic = endpoint == Endpoint::Messages;
    match behavior {
        Behavior::Ok => normal(&ctx, Flow::Plain),
        Behavior::Delay(d) => {
            tokio::time::sleep(d).await;
            normal(&ctx, Flow::Plain)
        }
        Behavior::GatedStream(sem) => normal(&ctx, Flow::Gated(sem)),
        Behavior::BreakStreamAfter(k) => normal(&ctx, Flow::Break(k)),
        Behavior::WithHeaders(extra) => {
            let mut r = normal(&ctx, Flow::Plain);
            for (k, v) in extra {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
        Behavior::StallFirstChunk(d) => {
            let streams = ctx.body.get("stream").and_then(Value::as_bool) == Some(true);
            if !streams {
                tokio::time::sleep(d).await;
            }
            normal(&ctx, Flow::Stall(d))
        }
        Behavior::Status {
            status,
            retry_after_secs,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if anthropic {
                return dialects::anthropic_error(status, retry_after_secs, HeaderMap::new());
            }
            error_response(status, retry_after_secs, HeaderMap::new())
        }
        Behavior::RateLimited { retry_after_secs } if anthropic => {
            dialects::anthropic_rate_limited(retry_after_secs)
        }
        Behavior::RateLimited { retry_after_secs } => {
            let reset = format!("{retry_after_secs}s");
            let mut h = HeaderMap::new();
            for (name, value) in [
                ("x-ratelimit-limit-requests", "10000"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", reset.as_str()),
                ("x-ratelimit-limit-tokens", "200000"),
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", reset.as_str()),
            ] {
                insert(&mut h, name, value);
            }
            error_response(StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs), h)
        }
    }
}

/// How the body of a normal answer is delivered.
enum Flow {
    Plain,
    Gated(Arc<Semaphore>),
    Break(usize),
    Stall(Duration),
}

/// A successful answer for `ctx`, streamed if the request asked for it.
fn normal(ctx: &Ctx, flow: Flow) -> Response {
    let streams = !matches!(ctx.endpoint, Endpoint::Embeddings | Endpoint::Models)
        && ctx.body.get("stream").and_then(Value::as_bool) == Some(true);
    let mut headers = success_headers(ctx);
    if !streams {
        insert(&mut headers, "content-type", "application/json");
        let text = json_answer(ctx).to_string();
        let body = match flow {
            Flow::Break(_) => {
                let cut = text.len() / 2;
                stream_body(vec![Bytes::from(text).slice(..cut)], None, true)
            }
            // The stall came before the head (see `Behavior::StallFirstChunk`).
            Flow::Plain | Flow::Gated(_) | Flow::Stall(_) => Body::from(text),
        };
        return build(StatusCode::OK, headers, body);
    }
    insert(&mut headers, "content-type", "text/event-stream");
    insert(&mut headers, "cache-control", "no-cache");
    let events = |pieces, complete| match ctx.endpoint {
        Endpoint::Messages => dialects::anthropic_events(ctx, pieces, complete),
        Endpoint::Responses => dialects::responses_events(ctx, pieces, complete),
        _ => sse_events(ctx, pieces, complete),
    };
    let body = match flow {
        Flow::Plain => stream_body(events(CONTENT_PIECES.len(), true), None, false),
        Flow::Gated(sem) => stream_body(events(CONTENT_PIECES.len(), true), Some(sem), false),
        Flow::Break(k) => stream_body(events(k, false), None, true),
        Flow::Stall(d) => {
            let rest = stream_body(events(CONTENT_PIECES.len(), true), None, false);
            use futures_util::StreamExt;
            let stalled = futures_util::stream::once(tokio::time::sleep(d))
                .filter_map(|()| async { None::<Result<Bytes, axum::Error>> })
                .chain(rest.into_data_stream());
            Body::from_stream(stalled)
        }
    };
    build(StatusCode::OK, headers, body)
}

/// The non-stream JSON answer of each endpoint.
fn json_answer(ctx: &Ctx) -> Value {
    let (p, c) = (ctx.prompt_tokens, ctx.completion_tokens);
    let usage = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
    let content: String = CONTENT_PIECES.concat();
    match ctx.endpoint {
        Endpoint::Messages => dialects::anthropic_json(ctx),
        Endpoint::Responses => dialects::responses_json(ctx),
        Endpoint::Chat => dialects::chat_json(ctx),
        Endpoint::Completions => json!({
            "id": ctx.id,
            "object": "text_completion",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [{"text": content, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }),
        Endpoint::Embeddings => {
            let data: Vec<Value> = (0..embedding_inputs(ctx.body.get("input")))
                .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}))
                .collect();
            json!({
                "object": "list",
                "data": data,
                "model": ctx.model,
                "usage": {"prompt_tokens": p, "total_tokens": p},
            })
        }
        Endpoint::Models => json!({
            "object": "list",
            "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 1_721_172_741, "owned_by": "system"}],
        }),
    }
}

/// How many embeddings an `input` asks for: one per string, one per token array.
fn embedding_inputs(input: Option<&Value>) -> usize {
    match input {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len(),
        _ => 1,
    }
}

/// The SSE events of a streamed answer: for chat a role chunk, then `pieces`
/// content chunks, then (if `complete`) the finish chunk, the usage chunk when
/// asked for, and `[DONE]`.
fn sse_events(ctx: &Ctx, pieces: usize, complete: bool) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    if ctx.endpoint == Endpoint::Chat {
        chunks.push(chunk(
            ctx,
            json!({"role": "assistant", "content": ""}),
            None,
        ));
    }
    let tool = (ctx.endpoint == Endpoint::Chat)
        .then(|| ctx.tool_call())
        .flatten();
    match &tool {
        Some(name) => {
            let head = json!({"tool_calls": [{"index": 0, "id": "call_mock", "type": "function",
                "function": {"name": name, "arguments": ""}}]});
            chunks.push(chunk(ctx, head, None));
            for piece in dialects::TOOL_ARGUMENT_PIECES.iter().take(pieces) {
                let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                chunks.push(chunk(ctx, delta, None));
            }
        }
        None => {
            for i in 0..pieces {
                let piece = CONTENT_PIECES[i % CONTENT_PIECES.len()];
                chunks.push(chunk(ctx, json!({"content": piece}), None));
            }
        }
    }
    if complete {
        let finish = if tool.is_some() { "tool_calls" } else { "stop" };
        chunks.push(chunk(ctx, json!({}), Some(finish)));
        if ctx.include_usage {
            let mut last = chunk_frame(ctx);
            last["choices"] = json!([]);
            last["usage"] = dialects::chat_usage(ctx);
            chunks.push(last);
        }
    }
    let mut events: Vec<Bytes> = chunks
        .iter()
        .map(|c| Bytes::from(format!("data: {c}\n\n")))
        .collect();
    if complete {
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
    events
}

/// The fields shared by every chunk of a stream.
fn chunk_frame(ctx: &Ctx) -> Value {
    let object = match ctx.endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        _ => "text_completion",
    };
    let mut v = json!({"id": ctx.id, "object": object, "created": ctx.created, "model": ctx.model});
    if ctx.endpoint == Endpoint::Chat {
        v["system_fingerprint"] = json!("fp_mock");
    }
    v
}

/// One content-bearing chunk: `delta` for chat, its `content` as `text` for completions.
fn chunk(ctx: &Ctx, delta: Value, finish_reason: Option<&str>) -> Value {
    let mut v = chunk_frame(ctx);
    v["choices"] = if ctx.endpoint == Endpoint::Chat {
        json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}])
    } else {
        let text = delta.get("content").cloned().unwrap_or_else(|| json!(""));
        json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}])
    };
    if ctx.include_usage {
        v["usage"] = Value::Null;
    }
    v
}

/// State of a streamed body.
struct StreamState {
    events: VecDeque<Bytes>,
    gate: Option<Arc<Semaphore>>,
    sent: usize,
    fail_at_end: bool,
}

/// A body sending each event as its own (separately flushed) frame; with `gate`, every event after
/// the first waits for a permit; with `fail_at_end`, the body ends in an error
/// (so hyper aborts the connection instead of ending the chunked response).
fn stream_body(events: Vec<Bytes>, gate: Option<Arc<Semaphore>>, fail_at_end: bool) -> Body {
    let state = StreamState {
        events: events.into(),
        gate,
        sent: 0,
        fail_at_end,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if st.sent > 0 {
            // Return Pending once so hyper flushes the previous event on its own.
            tokio::task::yield_now().await;
        }
        let Some(event) = st.events.pop_front() else {
            if st.fail_at_end {
                st.fail_at_end = false;
                // Let what was sent reach the client before the connection drops.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Some((Err(broken("mock upstream broke the stream")), st));
            }
            return None;
        };
        if st.sent > 0 {
            if let Some(gate) = st.gate.clone() {
                let Ok(permit) = gate.acquire().await else {
                    st.events.clear();
                    st.fail_at_end = false;
                    return Some((Err(broken("mock upstream gate closed")), st));
                };
                permit.forget();
            }
        }
        st.sent += 1;
        Some((Ok(event), st))
    });
    Body::from_stream(stream)
}

fn broken(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, msg)
}

/// The `x-ratelimit-*` headers of a successful answer.
fn success_headers(ctx: &Ctx) -> HeaderMap {
    let used = ctx.prompt_tokens + ctx.completion_tokens;
    let remaining_tokens = 200_000u64.saturating_sub(used).to_string();
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "200000"),
        ("x-ratelimit-remaining-tokens", remaining_tokens.as_str()),
        ("x-ratelimit-reset-tokens", "1ms"),
        ("x-request-id", ctx.id.as_str()),
    ] {
        insert(&mut h, name, value);
    }
    h
}

/// An OpenAI-shaped error answer.
fn error_response(status: StatusCode, retry_after_secs: Option<u64>, mut h: HeaderMap) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("invalid_request_error", "permission_denied"),
        404 => ("invalid_request_error", "not_found"),
        429 => ("requests", "rate_limit_exceeded"),
        500..=599 => ("server_error", "server_error"),
        _ => ("invalid_request_error", "invalid_request"),
    };
    let body = json!({"error": {
        "message": format!("mock upstream error: {status}"),
        "type": kind,
        "param": null,
        "code": code,
    }});
    insert(&mut h, "content-type", "application/json");
    if let Some(secs) = retry_after_secs {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    build(status, h, Body::from(body.to_string()))
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), value);
    }
}

fn build(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_input_counts() {
        assert_eq!(embedding_inputs(Some(&json!("a"))), 1);
        assert_eq!(embedding_inputs(Some(&json!(["a", "b", "c"]))), 3);
        assert_eq!(embedding_inputs(Some(&json!([1, 2, 3]))), 1);
        assert_eq!(embedding_inputs(Some(&json!([[1, 2], [3]]))), 2);
        assert_eq!(embedding_inputs(None), 1);
    }
}
