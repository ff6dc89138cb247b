//! The OpenAI Batch API: `/v1/files` (purpose `batch`) and `/v1/batches`, run through the
//! router (`Router::send_item_as`: each item waits for capacity, retried on 429/5xx, admitted
//! under the gateway key that created its batch).
//!
//! Everything lives in the store's records, so a batch survives a restart and any gateway on
//! the store can answer for it: `files` (a file's object; content in `files.rs`), `batches` (a
//! batch's object, with its counts), and `batch_out:ID` (one output line per finished
//! `custom_id`). Each file and batch belongs to the gateway key that made it (`owner`, kept
//! in the object and never shown): any other key gets 404 for it and never sees it listed.
//! `runner.rs` runs each batch on one gateway at a time, under a lease in the store. A batch
//! still running at its `expires_at` (from its `completion_window`) ends `expired`, every
//! unfinished item with a `batch_expired` line.

mod files;
mod runner;

use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Multipart, Path, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap};
use llmux::batch::{endpoint_of, BatchItem};
use llmux::core::{Clock, Records, SystemClock};
use llmux::{RouteError, Router};
pub(crate) use runner::Runners;
use serde_json::{json, Value};
use std::sync::Arc;

const FILES: &str = "files";
const BATCHES: &str = "batches";
/// Fields of the stored objects that are llmux's own, never shown to clients.
const INTERNAL: [&str; 2] = ["owner", "chunks"];

/// Who asks: the name of their gateway key (`None` while the gateway needs none).
type Caller<'a> = Option<&'a str>;

/// The gateway key an object belongs to.
fn owner_of(v: &Value) -> Caller<'_> {
    v.get("owner").and_then(Value::as_str)
}

/// An object as clients see it.
fn public(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for f in INTERNAL {
            o.remove(f);
        }
    }
    v
}

/// The JSON answer (without llmux's own fields), or the error in the OpenAI envelope.
fn reply(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => axum::Json(public(v)).into_response(),
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

/// The caller's gateway key name, once its key is checked.
async fn authorized(s: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let key = s.router.authorize_request(crate::bearer(headers)).await?;
    Ok(key.map(|k| k.key.id.clone()))
}

async fn get_json(router: &Router, table: &str, id: &str) -> Result<Option<Value>, ApiError> {
    let v = router
        .store()
        .get_record(table, id)
        .await
        .map_err(store_error)?;
    Ok(v.and_then(|t| serde_json::from_str(&t).ok()))
}

async fn put_json(router: &Router, table: &str, id: &str, v: &Value) -> Result<(), ApiError> {
    router
        .store()
        .put_record(table, id, &v.to_string())
        .await
        .map_err(store_error)
}

/// The batch `id`, or 404.
async fn batch(router: &Router, id: &str) -> Result<Value, ApiError> {
    get_json(router, BATCHES, id)
        .await?
        .ok_or_else(|| not_found("batch", id))
}

/// The batch `id` if it is `caller`'s, else 404 (the same answer as for no batch at all).
async fn own_batch(router: &Router, id: &str, caller: Caller<'_>) -> Result<Value, ApiError> {
    batch(router, id)
        .await
        .ok()
        .filter(|b| owner_of(b) == caller)
        .ok_or_else(|| not_found("batch", id))
}

/// `POST /v1/files` (multipart: `purpose` = `batch`, `file`): the file is streamed to the
/// store, each line checked as a batch input line, within `[files]` `max_file_mb` and the
/// key's `quota_mb_per_key`.
pub(crate) async fn upload(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let r = async {
        let caller = authorized(&s, &headers).await?;
        let caller = caller.as_deref();
        let (mut purpose, mut object) = (None, None);
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?
        {
            match field.name() {
                Some("purpose") => purpose = Some(field.text().await.unwrap_or_default()),
                Some("file") if object.is_none() => {
                    object = Some(receive(&s.router, caller, field).await?);
                }
                _ => {}
            }
        }
        let Some(object) = object else {
            return Err(ApiError::BadRequest("missing `file`".into()));
        };
        let id = object["id"].as_str().unwrap_or_default().to_string();
        let refuse = |m: String| async {
            let _ = files::remove(&s.router, &id, &object).await;
            Err(ApiError::BadRequest(m))
        };
        match purpose.as_deref() {
            Some("batch") => Ok(object),
            None => refuse("missing `purpose`".into()).await,
            Some(p) => {
                refuse(format!(
                    "purpose {p:?} is not supported; llmux keeps files for `batch`"
                ))
                .await
            }
        }
    }
    .await;
    reply(r)
}

/// Stream one uploaded file into the store; its object once it is whole and valid.
async fn receive(
    router: &Router,
    caller: Caller<'_>,
    mut field: axum::extract::multipart::Field<'_>,
) -> Result<Value, ApiError> {
    let limits = router.config().files;
    let kept = files::kept_bytes(router, caller).await?;
    let name = field.file_name().unwrap_or("upload.jsonl").to_string();
    let mut w = files::ChunkWriter::new(router, new_id("file-"));
    let mut lines = files::LineCheck::default();
    let mut received = 0u64;
    let result = async {
        while let Some(bytes) = field
            .chunk()
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the file: {e}")))?
        {
            received += bytes.len() as u64;
            if received > limits.max_file_bytes {
                return Err(ApiError::FileTooLarge(format!(
                    "the file is larger than the limit of {} MiB ([files] max_file_mb)",
                    limits.max_file_bytes >> 20
                )));
            }
            if kept + received > limits.quota_bytes_per_key {
                return Err(ApiError::FileTooLarge(format!(
                    "the file would take this key past its quota of {} MiB of files ([files] quota_mb_per_key; {} bytes kept now)",
                    limits.quota_bytes_per_key >> 20,
                    kept
                )));
            }
            let text = lines.feed(&bytes)?;
            w.push(&text).await?;
        }
        let last = lines.finish()?;
        w.push(&last).await
    }
    .await;
    match result {
        Ok(()) => w.finish(&name, "batch", caller).await,
        Err(e) => {
            w.abandon().await;
            Err(e)
        }
    }
}

/// `GET /v1/files`: the caller's files, newest first.
pub(crate) async fn list_files(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let r = async {
        let caller = authorized(&s, &headers).await?;
        let data: Vec<Value> = files::list(&s.router, caller.as_deref())
            .await?
            .into_iter()
            .map(public)
            .collect();
        Ok(json!({"object": "list", "data": data, "has_more": false}))
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
        let caller = authorized(&s, &headers).await?;
        files::object(&s.router, &id, caller.as_deref()).await
    }
    .await;
    reply(r)
}

/// `DELETE /v1/files/{id}`: the file and its content are gone.
pub(crate) async fn delete_file(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let caller = authorized(&s, &headers).await?;
        let f = files::object(&s.router, &id, caller.as_deref()).await?;
        files::remove(&s.router, &id, &f).await?;
        Ok(json!({"id": id, "object": "file", "deleted": true}))
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
        let caller = authorized(&s, &headers).await?;
        let f = files::object(&s.router, &id, caller.as_deref()).await?;
        files::text(&s.router, &id, Some(&f)).await
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
        let caller = authorized(&s, &headers).await?;
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
        let text = files::input(&s.router, &input, caller.as_deref()).await?;
        let items = BatchItem::parse_lines(&text, None)
            .map_err(|e| ApiError::BadRequest(format!("input file {input}: {e}")))?;
        drop(text);
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
            "owner": caller,
        });
        put_json(&s.router, BATCHES, &id, &object).await?;
        // Run here; should another gateway be first to take its lease, it runs there.
        s.runners.start(&id).await?;
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
        let caller = authorized(&s, &headers).await?;
        own_batch(&s.router, &id, caller.as_deref()).await
    }
    .await;
    reply(r)
}

/// `GET /v1/batches`: the caller's, newest first.
pub(crate) async fn list(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let r = async {
        let caller = authorized(&s, &headers).await?;
        let all = s
            .router
            .store()
            .list_records(BATCHES)
            .await
            .map_err(store_error)?;
        let mut data: Vec<Value> = all
            .iter()
            .filter_map(|(_, v)| serde_json::from_str::<Value>(v).ok())
            .filter(|b| owner_of(b) == caller.as_deref())
            .map(public)
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
        let caller = authorized(&s, &headers).await?;
        let mut b = own_batch(&s.router, &id, caller.as_deref()).await?;
        if b["status"] == "in_progress" || b["status"] == "validating" {
            let at = now_secs();
            s.router
                .store()
                .put_record(runner::CANCELS, &id, &at.to_string())
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
