//! llmux-gateway: the HTTP face of the engine. OpenAI-compatible routes, the error envelope,
//! `/health` and `/metrics`. This crate alone knows HTTP statuses and wire JSON shapes.
//!
//! [`app`] builds the axum `Router`; [`serve`] runs it on a listener until shutdown.

mod batches;
pub mod error;

use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use error::ApiError;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use llmux::{Endpoint, Request, ResponseBody, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

struct AppState {
    router: Router,
    /// The batches this gateway runs (see `batches::Runners`).
    runners: Arc<batches::Runners>,
    metrics: Option<PrometheusHandle>,
    /// Per endpoint (by `Endpoint::index`): the handles of the common case, registered once.
    endpoint_metrics: [EndpointMetrics; 5],
}

/// Metric handles of one endpoint: its latency histogram and its count of 200s. Other statuses
/// are rarer and go through the registry.
struct EndpointMetrics {
    duration: metrics::Histogram,
    ok: metrics::Counter,
}

impl EndpointMetrics {
    fn new(endpoint: Endpoint) -> Self {
        EndpointMetrics {
            duration: metrics::histogram!("llmux_request_duration_seconds", "endpoint" => endpoint.name()),
            ok: metrics::counter!("llmux_requests_total", "endpoint" => endpoint.name(), "status" => "200"),
        }
    }
}

/// How often raw histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The process-wide Prometheus recorder (installed once).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            // actual / estimate: 1 is exact, below 1 the estimate reserved too much.
            let ratios = [
                0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 10.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("llmux_estimate_error_ratio".into()), &ratios)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            // Histograms keep raw samples until upkeep folds them into buckets; without it they
            // grow with every request until someone scrapes /metrics.
            let upkeep = handle.clone();
            let started = std::thread::Builder::new()
                .name("llmux-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(METRICS_UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "metrics upkeep thread not started");
            }
            Some(handle)
        })
        .clone()
}

/// The gateway's routes over `router`.
pub fn app(router: Router) -> axum::Router {
    // The recorder first: handles registered before it would record nowhere.
    let metrics = metrics_handle();
    // Batches left running in the store (by this gateway before, or by another whose lease
    // lapsed) go on here.
    let runners = batches::Runners::new(router.clone());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(runners.clone().watch());
    }
    // An upload is read as it streams; the body limit only stops what is far past the file
    // limit (which `batches::upload` reports by name).
    let upload_limit = usize::try_from(router.config().files.max_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    let state = Arc::new(AppState {
        router,
        runners,
        metrics,
        endpoint_metrics: Endpoint::ALL.map(EndpointMetrics::new),
    });
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route(
            "/v1/files",
            post(batches::upload)
                .layer(axum::extract::DefaultBodyLimit::max(upload_limit))
                .get(batches::list_files),
        )
        .route(
            "/v1/files/{id}",
            get(batches::file).delete(batches::delete_file),
        )
        .route("/v1/files/{id}/content", get(batches::file_content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get_batch))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .with_state(state)
}

/// Serve `app(router)` on `listener` until `shutdown` resolves; in-flight requests finish.
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small SSE chunks must leave at once: no Nagle delay on client connections.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(router))
        .with_graceful_shutdown(shutdown)
        .await
}

const X_LLMUX_TARGET: HeaderName = HeaderName::from_static("x-llmux-target");
const X_LLMUX_ATTEMPTS: HeaderName = HeaderName::from_static("x-llmux-attempts");
const X_LLMUX_DECISION: HeaderName = HeaderName::from_static("x-llmux-decision");

async fn chat(State(s): State<Arc<AppState>>, req: HttpRequest) -> Response {
    proxy(s, Endpoint::ChatCompletions, req).await
}
async fn completions(State(s): State<Arc<AppState>>, req: HttpRequest) -> Response {
    proxy(s, Endpoint::Completions, req).await
}
async fn embeddings(State(s): State<Arc<AppState>>, req: HttpRequest) -> Response {
    proxy(s, Endpoint::Embeddings, req).await
}
async fn messages(State(s): State<Arc<AppState>>, req: HttpRequest) -> Response {
    proxy(s, Endpoint::Messages, req).await
}
async fn responses(State(s): State<Arc<AppState>>, req: HttpRequest) -> Response {
    proxy(s, Endpoint::Responses, req).await
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

/// The gateway key a client of `endpoint` sent: `Authorization: Bearer`, or on
/// `/v1/messages` also `x-api-key` (as the Anthropic SDKs send it).
fn gateway_key(endpoint: Endpoint, headers: &HeaderMap) -> Option<&str> {
    let api_key = || {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    match endpoint {
        Endpoint::Messages => api_key()
            .filter(|k| !k.is_empty())
            .or_else(|| bearer(headers)),
        _ => bearer(headers),
    }
}

async fn proxy(s: Arc<AppState>, endpoint: Endpoint, req: HttpRequest) -> Response {
    let started = Instant::now();
    let mut decision = None;
    let result = route(&s, endpoint, req, &mut decision).await;
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => e.parts().0,
    };
    let m = &s.endpoint_metrics[endpoint.index()];
    if status == StatusCode::OK {
        m.ok.increment(1);
    } else {
        metrics::counter!("llmux_requests_total", "endpoint" => endpoint.name(), "status" => status.as_str().to_owned()).increment(1);
    }
    m.duration.record(started.elapsed().as_secs_f64());
    let mut out = match result {
        Ok(r) => r,
        Err(e) => e.render(endpoint),
    };
    if let Some(d) = decision {
        if let Ok(v) = HeaderValue::from_str(&d.header_value()) {
            out.headers_mut().insert(X_LLMUX_DECISION, v);
        }
    }
    out
}

/// Route one request; `decision` gets the routing decision when the request asked for it
/// (`x-llmux-decision: 1`), on success and on failure alike.
async fn route(
    s: &AppState,
    endpoint: Endpoint,
    req: HttpRequest,
    decision: &mut Option<llmux::Decision>,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let limit = s.router.config().max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let key = s
        .router
        .authorize_request(gateway_key(endpoint, &parts.headers))
        .await?;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })?;
    let tier = match parts.headers.get("x-llmux-tier") {
        None => None,
        Some(v) => {
            let t = v.to_str().unwrap_or_default();
            if !s.router.config().tier_order.iter().any(|x| x == t) {
                return Err(ApiError::BadRequest(format!(
                    "unknown tier {t:?} in x-llmux-tier; expected one of {}",
                    s.router.config().tier_order.join(", ")
                )));
            }
            Some(t.to_string())
        }
    };
    // `x-llmux-max-wait: SECONDS`: wait that long for capacity rather than get a 429.
    let max_wait = match parts.headers.get("x-llmux-max-wait") {
        None => None,
        Some(v) => {
            let text = v.to_str().unwrap_or_default().trim();
            match text.parse::<f64>() {
                Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => {
                    Some(std::time::Duration::from_secs_f64(secs))
                }
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "x-llmux-max-wait: {text:?} is not a number of seconds from 0 to 86400"
                    )))
                }
            }
        }
    };
    let (resp, decided) = s
        .router
        .request_with_decision({
            // The body goes on as bytes: the router reads the few fields it needs and splices
            // the ones it edits.
            let mut r = Request::from_json_bytes(endpoint, bytes);
            r.tier = tier;
            r.gateway_key = key;
            r.max_wait = max_wait;
            r
        })
        .await;
    if wants_decision(&parts.headers) {
        *decision = Some(decided);
    }
    let resp = resp?;
    let status = StatusCode::from_u16(resp.status).map_err(|_| {
        ApiError::from(llmux::RouteError::Upstream {
            attempts: resp.attempts,
            timeout: false,
            message: format!("the upstream answered status {}", resp.status),
        })
    })?;
    let target = resp.target_header().clone();
    let mut headers = resp.headers;
    headers.insert(X_LLMUX_TARGET, target);
    headers.insert(X_LLMUX_ATTEMPTS, HeaderValue::from(resp.attempts));
    for (name, value) in llmux::rate_limit_headers(&resp.limits, s.router.now()) {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    }
    let body = match resp.body {
        ResponseBody::Full(b) => Body::from(b),
        ResponseBody::Stream(stream) => {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            headers
                .entry(header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("text/event-stream"));
            Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)))
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// `x-llmux-decision: 1` (or `true`) asks for the decision header.
fn wants_decision(h: &HeaderMap) -> bool {
    h.get(X_LLMUX_DECISION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim(), "1" | "true"))
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let key = match s.router.authorize_request(bearer(&headers)).await {
        Ok(k) => k,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut names = s.router.models();
    if let Some(k) = &key {
        names.retain(|m| k.allows_model(m));
    }
    names.sort();
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "llmux"}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "store": s.router.store().kind(),
        "models": s.router.models().len(),
    }))
    .into_response()
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    match &s.metrics {
        Some(h) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => ApiError::NotFound("/metrics (no recorder installed)".into()).into_response(),
    }
}

async fn not_found(req: HttpRequest) -> Response {
    ApiError::NotFound(format!("{} {}", req.method(), req.uri().path())).into_response()
}
