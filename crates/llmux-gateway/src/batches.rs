//! The OpenAI Batch API: `/v1/files` (purpose `batch`) and `/v1/batches`, run by this gateway
//! through the router (`Router::send_item`: each item waits for capacity, retried on 429/5xx).
//!
//! Everything lives in the store's records, so a batch survives a restart and any gateway on
//! the store can answer for it: `files` (a file's object) and `file_content` (its text),
//! `batches` (a batch's object, with its counts), and `batch_out:ID` (one output line per
//! finished `custom_id`). A gateway resumes the batches left `in_progress` when it starts,
//! skipping the items that have a line. A batch still running at its `expires_at` (from its
//! `completion_window`) ends `expired`, every unfinished item with a `batch_expired` line.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Multipart, Path, State};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{header, HeaderMap};
use llmux::batch::{endpoint_of, BatchItem, BatchOptions};
use llmux::core::{Clock, Records, SystemClock};
use llmux::{RouteError, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const FILES: &str = "files";
const FILE_CONTENT: &str = "file_content";
const BATCHES: &str = "batches";
/// Cancel requests, by batch id: apart from the batch's object, which its runner rewrites
/// every second, so that no cancel is lost between the runner's read and write.
const CANCELS: &str = "batch_cancels";
/// The largest file accepted (bytes).
const MAX_FILE_BYTES: usize = 100 * 1024 * 1024;

/// The JSON answer, or the error in the OpenAI envelope.
fn reply(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn out_table(batch: &str) -> String {
    format!("batch_out:{batch}")
}

fn now_secs() -> i64 {
    SystemClock.now().0 / 1000
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

fn store_error(e: llmux::core::StoreError) -> ApiError {
    ApiError::Route(RouteError::Store(e))
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::NoSuch(format!("{what} {id:?}"))
}

async fn authorized(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    s.router
        .authorize_request(crate::bearer(headers))
        .await
        .map(|_| ())
        .map_err(ApiError::from)
}

async fn get_json(router: &Router, table: &str, id: &str) -> Result<Option<Value>, ApiError> {
    let v = router
        .store()
        .get_record(table, id)
        .await
        .map_err(store_error)?;
    Ok(v.and_then(|t| serde_json::from_str(&t).ok()))
}

/// The batch `id`, or 404.
async fn batch(router: &Router, id: &str) -> Result<Value, ApiError> {
    get_json(router, BATCHES, id)
        .await?
        .ok_or_else(|| not_found("batch", id))
}

/// The text of file `id`, or 404.
async fn file_text(router: &Router, id: &str) -> Result<String, ApiError> {
    router
        .store()
        .get_record(FILE_CONTENT, id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("file", id))
}

async fn put_json(router: &Router, table: &str, id: &str, v: &Value) -> Result<(), ApiError> {
    router
        .store()
        .put_record(table, id, &v.to_string())
        .await
        .map_err(store_error)
}

/// Keep a file (object and content); returns its object.
async fn save_file(
    router: &Router,
    filename: &str,
    purpose: &str,
    content: &str,
) -> Result<Value, ApiError> {
    let id = new_id("file-");
    let object = json!({
        "id": id, "object": "file", "bytes": content.len(), "created_at": now_secs(),
        "filename": filename, "purpose": purpose, "status": "processed",
    });
    router
        .store()
        .put_record(FILE_CONTENT, &id, content)
        .await
        .map_err(store_error)?;
    put_json(router, FILES, &id, &object).await?;
    Ok(object)
}

/// `POST /v1/files` (multipart: `purpose` = `batch`, `file`).
pub(crate) async fn upload(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        let (mut purpose, mut file) = (None, None);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?
        {
            match field.name() {
                Some("purpose") => purpose = Some(field.text().await.unwrap_or_default()),
                Some("file") => {
                    let name = field.file_name().unwrap_or("upload.jsonl").to_string();
                    let bytes = field
                        .bytes()
                        .await
                        .map_err(|e| ApiError::BadRequest(format!("cannot read the file: {e}")))?;
                    file = Some((name, bytes));
                }
                _ => {}
            }
        }
        let purpose = purpose.ok_or_else(|| ApiError::BadRequest("missing `purpose`".into()))?;
        if purpose != "batch" {
            return Err(ApiError::BadRequest(format!(
                "purpose {purpose:?} is not supported; llmux keeps files for `batch`"
            )));
        }
        let (name, bytes) = file.ok_or_else(|| ApiError::BadRequest("missing `file`".into()))?;
        if bytes.len() > MAX_FILE_BYTES {
            return Err(ApiError::PayloadTooLarge {
                limit: MAX_FILE_BYTES,
            });
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ApiError::BadRequest("the file is not UTF-8 text".into()))?;
        save_file(&s.router, &name, &purpose, text).await
    }
    .await;
    reply(r)
}

/// `GET /v1/files/{id}`.
pub(crate) async fn file(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        get_json(&s.router, FILES, &id)
            .await?
            .ok_or_else(|| not_found("file", &id))
    }
    .await;
    reply(r)
}

/// `GET /v1/files/{id}/content`.
pub(crate) async fn file_content(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        file_text(&s.router, &id).await
    }
    .await;
    match r {
        Ok(text) => ([(header::CONTENT_TYPE, "application/jsonl")], text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A `completion_window` in seconds: `24h` (OpenAI's only one), or any `Nh`, `Nm`, `Ns` with
/// N from 1 (at most a year).
fn completion_window_secs(w: &str) -> Option<i64> {
    let unit = match w.chars().last()? {
        'h' => 3600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    let n: i64 = w[..w.len() - 1].parse().ok().filter(|n| *n >= 1)?;
    n.checked_mul(unit).filter(|s| *s <= 366 * 86_400)
}

/// `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window`, `metadata`).
pub(crate) async fn create(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        let req: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
        let field = |name: &str| req.get(name).and_then(Value::as_str).map(str::to_string);
        let input = field("input_file_id")
            .ok_or_else(|| ApiError::BadRequest("missing `input_file_id`".into()))?;
        let endpoint =
            field("endpoint").ok_or_else(|| ApiError::BadRequest("missing `endpoint`".into()))?;
        if endpoint_of(&endpoint).is_none() {
            return Err(ApiError::BadRequest(format!(
                "endpoint {endpoint:?} is not one llmux serves"
            )));
        }
        let text = file_text(&s.router, &input).await?;
        let items = BatchItem::parse_lines(&text, None)
            .map_err(|e| ApiError::BadRequest(format!("input file {input}: {e}")))?;
        if let Some(it) = items.iter().find(|it| it.url != endpoint) {
            return Err(ApiError::BadRequest(format!(
                "custom_id {:?} has url {:?}, not the batch's endpoint {endpoint:?}",
                it.custom_id, it.url
            )));
        }
        let window = field("completion_window").unwrap_or_else(|| "24h".into());
        let window_secs = completion_window_secs(&window).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "completion_window {window:?}: expected a duration such as \"24h\", \"90m\" or \"30s\""
            ))
        })?;
        let id = new_id("batch_");
        let now = now_secs();
        let object = json!({
            "id": id, "object": "batch", "endpoint": endpoint, "errors": null,
            "input_file_id": input,
            "completion_window": window,
            "status": "in_progress", "output_file_id": null, "error_file_id": null,
            "created_at": now, "in_progress_at": now,
            "expires_at": now.saturating_add(window_secs),
            "finalizing_at": null, "completed_at": null, "failed_at": null, "expired_at": null,
            "cancelling_at": null, "cancelled_at": null,
            "request_counts": {"total": items.len(), "completed": 0, "failed": 0},
            "metadata": req.get("metadata").cloned().unwrap_or(Value::Null),
        });
        put_json(&s.router, BATCHES, &id, &object).await?;
        tokio::spawn(run(s.router.clone(), id));
        Ok(object)
    }
    .await;
    reply(r)
}

/// `GET /v1/batches/{id}`.
pub(crate) async fn get_batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        batch(&s.router, &id).await
    }
    .await;
    reply(r)
}

/// `GET /v1/batches`: newest first.
pub(crate) async fn list(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        let all = s
            .router
            .store()
            .list_records(BATCHES)
            .await
            .map_err(store_error)?;
        let mut data: Vec<Value> = all
            .iter()
            .filter_map(|(_, v)| serde_json::from_str(v).ok())
            .collect();
        data.sort_by_key(|b: &Value| std::cmp::Reverse(b["created_at"].as_i64().unwrap_or(0)));
        Ok::<_, ApiError>(json!({
            "object": "list",
            "first_id": data.first().map(|b| b["id"].clone()),
            "last_id": data.last().map(|b| b["id"].clone()),
            "has_more": false,
            "data": data,
        }))
    }
    .await;
    reply(r)
}

/// `POST /v1/batches/{id}/cancel`: `cancelling` until its items in flight end, then
/// `cancelled` with the lines finished so far.
pub(crate) async fn cancel(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        authorized(&s, &headers).await?;
        let mut b = batch(&s.router, &id).await?;
        if b["status"] == "in_progress" || b["status"] == "validating" {
            let at = now_secs();
            s.router
                .store()
                .put_record(CANCELS, &id, &at.to_string())
                .await
                .map_err(store_error)?;
            b["status"] = "cancelling".into();
            b["cancelling_at"] = at.into();
            put_json(&s.router, BATCHES, &id, &b).await?;
        }
        Ok::<_, ApiError>(b)
    }
    .await;
    reply(r)
}

/// Resume the batches left `in_progress` (or `cancelling`) in the store.
pub(crate) async fn resume(router: Router) {
    let Ok(all) = router.store().list_records(BATCHES).await else {
        return;
    };
    for (id, v) in all {
        let Ok(b) = serde_json::from_str::<Value>(&v) else {
            continue;
        };
        if b["status"] == "in_progress" || b["status"] == "cancelling" {
            tracing::info!(batch = %id, "resuming a batch");
            tokio::spawn(run(router.clone(), id));
        }
    }
}

/// Run batch `id` to its end: every item without an output line goes through the router; the
/// counts are saved every second; then the output and error files are made.
async fn run(router: Router, id: String) {
    if let Err(e) = run_inner(&router, &id).await {
        tracing::error!(batch = %id, error = %e, "batch failed");
        if let Ok(Some(mut b)) = get_json(&router, BATCHES, &id).await {
            b["status"] = "failed".into();
            b["failed_at"] = now_secs().into();
            b["errors"] = json!({"object": "list", "data": [{"code": "llmux_error", "message": e.to_string()}]});
            let _ = put_json(&router, BATCHES, &id, &b).await;
        }
    }
}

async fn run_inner(router: &Router, id: &str) -> Result<(), ApiError> {
    let store = router.store().clone();
    let b = batch(router, id).await?;
    let input = b["input_file_id"].as_str().unwrap_or_default().to_string();
    let text = file_text(router, &input).await?;
    let items = BatchItem::parse_lines(&text, None)
        .map_err(|e| ApiError::BadRequest(format!("input file {input}: {e}")))?;
    let table = out_table(id);
    let done = finished(router, &table).await?;
    let todo: Vec<BatchItem> = items
        .into_iter()
        .filter(|it| !done.contains(&it.custom_id))
        .collect();
    // What an expired batch writes `batch_expired` lines for, unless finished meanwhile.
    let unfinished: Vec<(String, String)> = todo
        .iter()
        .map(|it| (it.custom_id.clone(), it.url.clone()))
        .collect();
    let opts = BatchOptions::default();
    let mut results = Box::pin(
        futures_util::stream::iter(todo)
            .map(|item| {
                let router = router.clone();
                async move { router.send_item(&item, &opts).await }
            })
            .buffer_unordered(opts.concurrency),
    );
    let mut last = std::time::Instant::now();
    let expires_at = b["expires_at"].as_i64().unwrap_or(i64::MAX);
    let end = loop {
        if now_secs() >= expires_at {
            break End::Expired;
        }
        let next = tokio::time::timeout(Duration::from_secs(1), results.next()).await;
        match next {
            Ok(Some(r)) => {
                store
                    .put_record(&table, &r.custom_id, &r.output_line().to_string())
                    .await
                    .map_err(store_error)?;
            }
            Ok(None) => break End::Done,
            Err(_) => {}
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = std::time::Instant::now();
            if update_counts(router, id, &table).await? == "cancelling" {
                break End::Cancelled;
            }
        }
    };
    // Cancelled or expired: the items in flight are dropped (their leases released).
    drop(results);
    if end == End::Expired {
        expire(router, &table, &unfinished).await?;
    }
    finalize(router, id, &table, end).await
}

/// How a batch's run ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Cancelled,
    Expired,
}

/// The `custom_id`s of `table` (a batch's output lines) that have a line.
async fn finished(
    router: &Router,
    table: &str,
) -> Result<std::collections::HashSet<String>, ApiError> {
    Ok(router
        .store()
        .list_records(table)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// As OpenAI does: every item (`custom_id`, `url`) not finished in the window gets a
/// `batch_expired` line.
async fn expire(router: &Router, table: &str, items: &[(String, String)]) -> Result<(), ApiError> {
    let finished = finished(router, table).await?;
    for (custom_id, url) in items.iter().filter(|(c, _)| !finished.contains(c)) {
        let line = llmux::batch::BatchResult {
            custom_id: custom_id.clone(),
            url: url.clone(),
            status: None,
            body: None,
            request_id: String::new(),
            error: Some((
                "batch_expired".into(),
                "This request could not be executed before the completion window expired.".into(),
            )),
        };
        router
            .store()
            .put_record(table, custom_id, &line.output_line().to_string())
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// The output file (2xx lines), the error file (the rest), the counts and the final status.
async fn finalize(router: &Router, id: &str, table: &str, end: End) -> Result<(), ApiError> {
    let store = router.store();
    let lines = store.list_records(table).await.map_err(store_error)?;
    let (mut ok, mut failed) = (String::new(), String::new());
    for (_, line) in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let good = v["error"].is_null();
        let buf = if good { &mut ok } else { &mut failed };
        buf.push_str(line);
        buf.push('\n');
    }
    let mut b = batch(router, id).await?;
    let (nok, nfailed) = (ok.lines().count(), failed.lines().count());
    if !ok.is_empty() {
        let f = save_file(router, &format!("{id}_output.jsonl"), "batch_output", &ok).await?;
        b["output_file_id"] = f["id"].clone();
    }
    if !failed.is_empty() {
        let f = save_file(
            router,
            &format!("{id}_error.jsonl"),
            "batch_output",
            &failed,
        )
        .await?;
        b["error_file_id"] = f["id"].clone();
    }
    b["request_counts"]["completed"] = nok.into();
    b["request_counts"]["failed"] = nfailed.into();
    let now = now_secs();
    b["finalizing_at"] = now.into();
    let asked = store.get_record(CANCELS, id).await.map_err(store_error)?;
    if end == End::Expired {
        b["status"] = "expired".into();
        b["expired_at"] = now.into();
    } else if end == End::Cancelled || asked.is_some() || b["status"] == "cancelling" {
        b["status"] = "cancelled".into();
        b["cancelled_at"] = now.into();
    } else {
        b["status"] = "completed".into();
        b["completed_at"] = now.into();
    }
    put_json(router, BATCHES, id, &b).await
}

/// Save the counts so far; returns the batch's status (a cancel may have come in).
async fn update_counts(router: &Router, id: &str, table: &str) -> Result<String, ApiError> {
    let lines = router
        .store()
        .list_records(table)
        .await
        .map_err(store_error)?;
    let failed = lines
        .iter()
        .filter(|(_, l)| !l.contains("\"error\":null"))
        .count();
    let mut b = batch(router, id).await?;
    b["request_counts"]["completed"] = (lines.len() - failed).into();
    b["request_counts"]["failed"] = failed.into();
    // A cancel is its own record: this write cannot undo it.
    let cancel = router
        .store()
        .get_record(CANCELS, id)
        .await
        .map_err(store_error)?;
    if let Some(at) = cancel {
        b["status"] = "cancelling".into();
        b["cancelling_at"] = at.parse::<i64>().map_or(Value::Null, Value::from);
    }
    put_json(router, BATCHES, id, &b).await?;
    Ok(b["status"].as_str().unwrap_or_default().to_string())
}
