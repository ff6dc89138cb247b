//! Running batches: one gateway at a time per batch, under a lease in the store.
//!
//! A batch's lease is the record `batch_leases/ID` = `{"holder", "until_ms"}`, taken and
//! renewed by compare and swap ([`Records::swap_record`]), so of several gateways on one store
//! exactly one runs it. The runner renews it every second; a gateway that finds a batch
//! `in_progress` (every [`SCAN_EVERY`]) takes it over only once its lease has lapsed
//! ([`LEASE_MS`] after the last renewal, e.g. after `kill -9` of its runner), skipping the items
//! that have an output line. A runner that finds its lease taken stops sending at once.
//!
//! Each item is sent under the batch's gateway key (`Router::send_item_as`); once that key is
//! revoked the batch stops and its unfinished items get `key_revoked` lines.

use super::{batch, files, get_json, now_secs, out_table, put_json, store_error, BATCHES};
use crate::error::ApiError;
use futures_util::StreamExt;
use llmux::batch::{BatchItem, BatchOptions, BatchResult};
use llmux::core::Records;
use llmux::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Cancel requests, by batch id: apart from the batch's object, which its runner rewrites
/// every second, so that no cancel is lost between the runner's read and write.
pub(super) const CANCELS: &str = "batch_cancels";
/// Who runs each batch, until when.
const LEASES: &str = "batch_leases";
/// How long a batch's lease holds after its last renewal.
pub(super) const LEASE_MS: i64 = 10_000;
/// How often a gateway looks for batches to take over (and files past their retention).
pub(super) const SCAN_EVERY: Duration = Duration::from_secs(2);

/// The batches this gateway runs.
pub(crate) struct Runners {
    router: Router,
    /// This gateway's name as a lease holder (random per process).
    holder: String,
    running: Mutex<HashSet<String>>,
}

/// How a batch's run ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Cancelled,
    Expired,
    /// The key that created it was revoked.
    Revoked,
    /// Another gateway holds its lease now: this one stops, writing nothing more.
    Lost,
}

impl Runners {
    pub(crate) fn new(router: Router) -> Arc<Runners> {
        Arc::new(Runners {
            router,
            holder: format!("gw-{:016x}", rand::random::<u64>()),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// Take (or renew) batch `id`'s lease: true if this gateway holds it now.
    async fn claim(&self, id: &str) -> Result<bool, ApiError> {
        let store = self.router.store();
        let now = llmux::core::Clock::now(&llmux::core::SystemClock).0;
        let held = store.get_record(LEASES, id).await.map_err(store_error)?;
        if let Some(h) = held
            .as_deref()
            .and_then(|h| serde_json::from_str::<Value>(h).ok())
        {
            let mine = h["holder"].as_str() == Some(&self.holder);
            if !mine && h["until_ms"].as_i64().unwrap_or(0) > now {
                return Ok(false);
            }
        }
        let lease = json!({"holder": self.holder, "until_ms": now + LEASE_MS}).to_string();
        store
            .swap_record(LEASES, id, held.as_deref(), &lease)
            .await
            .map_err(store_error)
    }

    /// Run batch `id` here if its lease can be had (and it is not running here already).
    pub(crate) async fn start(self: &Arc<Self>, id: &str) -> Result<bool, ApiError> {
        if self.running.lock().contains(id) || !self.claim(id).await? {
            return Ok(false);
        }
        if !self.running.lock().insert(id.to_string()) {
            return Ok(false);
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            me.run(&id).await;
            me.running.lock().remove(&id);
        });
        Ok(true)
    }

    /// Take over the batches left `in_progress` (or `cancelling`) whose lease lapsed; remove
    /// files past their retention. Every [`SCAN_EVERY`], for as long as the gateway runs.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut swept = None::<std::time::Instant>;
        loop {
            if let Err(e) = self.scan().await {
                tracing::debug!(error = %e, "could not look for batches to run");
            }
            if swept.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                swept = Some(std::time::Instant::now());
                match files::sweep(&self.router).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(files = n, "removed files past their retention"),
                    Err(e) => tracing::debug!(error = %e, "could not remove old files"),
                }
            }
            tokio::time::sleep(SCAN_EVERY).await;
        }
    }

    async fn scan(self: &Arc<Self>) -> Result<(), ApiError> {
        let all = self
            .router
            .store()
            .list_records(BATCHES)
            .await
            .map_err(store_error)?;
        for (id, v) in all {
            let Ok(b) = serde_json::from_str::<Value>(&v) else {
                continue;
            };
            if (b["status"] == "in_progress" || b["status"] == "cancelling")
                && self.start(&id).await?
            {
                tracing::info!(batch = %id, "running a batch left by its runner");
            }
        }
        Ok(())
    }

    /// Run batch `id` to its end: every item without an output line goes through the router
    /// under the batch's key; the counts are saved every second; then the output and error
    /// files are made.
    async fn run(&self, id: &str) {
        let router = &self.router;
        match self.run_inner(id).await {
            Ok(End::Lost) => {
                tracing::warn!(batch = %id, "another gateway took this batch over; stopped here");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(batch = %id, error = %e, "batch failed");
                if let Ok(Some(mut b)) = get_json(router, BATCHES, id).await {
                    b["status"] = "failed".into();
                    b["failed_at"] = now_secs().into();
                    b["errors"] = json!({"object": "list", "data": [{"code": "llmux_error", "message": e.to_string()}]});
                    let _ = put_json(router, BATCHES, id, &b).await;
                }
            }
        }
        let _ = router.store().delete_record(LEASES, id).await;
    }

    async fn run_inner(&self, id: &str) -> Result<End, ApiError> {
        let router = &self.router;
        let store = router.store().clone();
        let b = batch(router, id).await?;
        let owner = super::owner_of(&b).map(str::to_string);
        let input = b["input_file_id"].as_str().unwrap_or_default().to_string();
        let text = files::input(router, &input, owner.as_deref()).await?;
        let items = BatchItem::parse_lines(&text, None)
            .map_err(|e| ApiError::BadRequest(format!("input file {input}: {e}")))?;
        drop(text);
        let table = out_table(id);
        let lines = store.list_records(&table).await.map_err(store_error)?;
        let done: HashSet<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
        let mut counts = Counts::of(lines.iter().map(|(_, l)| l.as_str()));
        let todo: Vec<BatchItem> = items
            .into_iter()
            .filter(|it| !done.contains(it.custom_id.as_str()))
            .collect();
        drop(done);
        // What an expired or revoked batch writes error lines for, unless finished meanwhile.
        let unfinished: Vec<(String, String)> = todo
            .iter()
            .map(|it| (it.custom_id.clone(), it.url.clone()))
            .collect();
        let opts = BatchOptions::default();
        let key = owner.as_deref();
        let mut results = Box::pin(
            futures_util::stream::iter(todo)
                .map(|item| {
                    let router = router.clone();
                    async move { router.send_item_as(&item, &opts, key).await }
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
                    counts.add(&r);
                    store
                        .put_record(&table, &r.custom_id, &r.output_line().to_string())
                        .await
                        .map_err(store_error)?;
                    if r.error
                        .as_ref()
                        .is_some_and(|(code, _)| code == "key_revoked")
                    {
                        // The item found the key revoked: so will the rest.
                        break End::Revoked;
                    }
                }
                Ok(None) => break End::Done,
                Err(_) => {}
            }
            if last.elapsed() >= Duration::from_secs(1) {
                last = std::time::Instant::now();
                if !self.claim(id).await? {
                    break End::Lost;
                }
                if let Some(k) = key {
                    if router.gateway_key_named(k).await?.is_none() {
                        break End::Revoked;
                    }
                }
                if update_counts(router, id, counts).await? == "cancelling" {
                    break End::Cancelled;
                }
            }
        };
        // Stopped early: the items in flight are dropped (those already sent still count).
        drop(results);
        match end {
            End::Lost => return Ok(End::Lost),
            End::Expired => {
                let error = (
                    "batch_expired".to_string(),
                    "This request could not be executed before the completion window expired."
                        .to_string(),
                );
                end_unfinished(router, &table, &unfinished, error).await?;
            }
            End::Revoked => {
                let error = llmux::batch::key_revoked(key.unwrap_or_default());
                end_unfinished(router, &table, &unfinished, error).await?;
            }
            End::Done | End::Cancelled => {}
        }
        finalize(router, id, &table, end, owner.as_deref()).await?;
        Ok(end)
    }
}

/// Items answered 2xx and not.
#[derive(Clone, Copy, Default)]
struct Counts {
    ok: u64,
    failed: u64,
}

impl Counts {
    /// The counts of output lines.
    fn of<'a>(lines: impl Iterator<Item = &'a str>) -> Counts {
        let mut c = Counts::default();
        for line in lines {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            if v.get("error").is_some_and(Value::is_null) {
                c.ok += 1;
            } else {
                c.failed += 1;
            }
        }
        c
    }

    fn add(&mut self, r: &BatchResult) {
        if r.error.is_none() {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// Every item (`custom_id`, `url`) without a line gets one with `error`.
async fn end_unfinished(
    router: &Router,
    table: &str,
    items: &[(String, String)],
    error: (String, String),
) -> Result<(), ApiError> {
    let lines = router
        .store()
        .list_records(table)
        .await
        .map_err(store_error)?;
    let finished: HashSet<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    for (custom_id, url) in items.iter().filter(|(c, _)| !finished.contains(c.as_str())) {
        let line = BatchResult {
            custom_id: custom_id.clone(),
            url: url.clone(),
            status: None,
            body: None,
            request_id: String::new(),
            error: Some(error.clone()),
        };
        router
            .store()
            .put_record(table, custom_id, &line.output_line().to_string())
            .await
            .map_err(store_error)?;
    }
    Ok(())
}

/// The output file (lines without an error), the error file (the rest), the counts and the
/// final status. The files belong to the batch's owner.
async fn finalize(
    router: &Router,
    id: &str,
    table: &str,
    end: End,
    owner: Option<&str>,
) -> Result<(), ApiError> {
    let store = router.store();
    let lines = store.list_records(table).await.map_err(store_error)?;
    let (mut ok, mut failed) = (String::new(), String::new());
    for (_, line) in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let good = v.get("error").is_some_and(Value::is_null);
        let buf = if good { &mut ok } else { &mut failed };
        buf.push_str(line);
        buf.push('\n');
    }
    let counts = Counts::of(lines.iter().map(|(_, l)| l.as_str()));
    drop(lines);
    let mut b = batch(router, id).await?;
    if !ok.is_empty() {
        let name = format!("{id}_output.jsonl");
        let f = files::save(router, &name, "batch_output", owner, &ok).await?;
        b["output_file_id"] = f["id"].clone();
    }
    if !failed.is_empty() {
        let name = format!("{id}_error.jsonl");
        let f = files::save(router, &name, "batch_output", owner, &failed).await?;
        b["error_file_id"] = f["id"].clone();
    }
    b["request_counts"]["completed"] = counts.ok.into();
    b["request_counts"]["failed"] = counts.failed.into();
    let now = now_secs();
    b["finalizing_at"] = now.into();
    let asked = store.get_record(CANCELS, id).await.map_err(store_error)?;
    match end {
        End::Expired => {
            b["status"] = "expired".into();
            b["expired_at"] = now.into();
        }
        End::Revoked => {
            let (code, message) = llmux::batch::key_revoked(owner.unwrap_or_default());
            b["status"] = "cancelled".into();
            b["cancelled_at"] = now.into();
            b["errors"] = json!({"object": "list", "data": [{"code": code, "message": message}]});
        }
        _ if end == End::Cancelled || asked.is_some() || b["status"] == "cancelling" => {
            b["status"] = "cancelled".into();
            b["cancelled_at"] = now.into();
        }
        _ => {
            b["status"] = "completed".into();
            b["completed_at"] = now.into();
        }
    }
    put_json(router, BATCHES, id, &b).await
}

/// Save the counts so far; returns the batch's status (a cancel may have come in).
async fn update_counts(router: &Router, id: &str, counts: Counts) -> Result<String, ApiError> {
    let mut b = batch(router, id).await?;
    b["request_counts"]["completed"] = counts.ok.into();
    b["request_counts"]["failed"] = counts.failed.into();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_the_error_field_not_the_text() {
        let ok = json!({"custom_id": "a", "response": {"status_code": 200,
            "body": {"note": "\"error\":null"}}, "error": null})
        .to_string();
        // An answer whose text contains `"error":null` but that failed.
        let failed = json!({"custom_id": "b", "response": {"status_code": 500,
            "body": {"echo": "\"error\":null"}}, "error": {"code": "http_500", "message": "x"}})
        .to_string();
        let c = Counts::of([ok.as_str(), failed.as_str(), "not json"].into_iter());
        assert_eq!((c.ok, c.failed), (1, 2));
    }
}
