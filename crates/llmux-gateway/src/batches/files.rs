//! Files of the Batch API, kept in the store's records: a file's object in `files` (with its
//! `owner`, the gateway key that made it, and its `chunks`), its content in
//! `file_chunks:ID` as numbered chunks of whole lines (about [`CHUNK_BYTES`] each).
//!
//! An upload is streamed: each line is checked as a batch input line as it arrives and the
//! content is written chunk by chunk, so a file is never held whole in memory. The object is
//! written last: a refused or broken upload leaves nothing visible (its chunks are removed).
//! A file lives `[files] retention_days`; past that it is gone with its content.

use super::{now_secs, owner_of, store_error, Caller, FILES};
use crate::error::ApiError;
use llmux::batch::BatchItem;
use llmux::core::Records;
use llmux::Router;
use serde_json::{json, Value};
use std::collections::HashSet;

/// Where files' content was kept whole before chunks (read still, for files made then).
const FILE_CONTENT: &str = "file_content";
/// About how much content one chunk holds (a longer line makes a longer chunk).
const CHUNK_BYTES: usize = 1 << 20;

fn chunk_table(id: &str) -> String {
    format!("file_chunks:{id}")
}

fn chunk_name(i: u64) -> String {
    format!("{i:08}")
}

/// Writes a file's content chunk by chunk.
pub(super) struct ChunkWriter<'a> {
    router: &'a Router,
    id: String,
    buf: String,
    chunks: u64,
    pub(super) bytes: u64,
}

impl<'a> ChunkWriter<'a> {
    pub(super) fn new(router: &'a Router, id: String) -> Self {
        ChunkWriter {
            router,
            id,
            buf: String::new(),
            chunks: 0,
            bytes: 0,
        }
    }

    /// Append `text` (whole lines, or the file's last line).
    pub(super) async fn push(&mut self, text: &str) -> Result<(), ApiError> {
        self.buf.push_str(text);
        self.bytes += text.len() as u64;
        if self.buf.len() >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ApiError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = chunk_name(self.chunks);
        self.router
            .store()
            .put_record(&chunk_table(&self.id), &name, &self.buf)
            .await
            .map_err(store_error)?;
        self.chunks += 1;
        self.buf.clear();
        Ok(())
    }

    /// Write what is left and the file's object; returns the object.
    pub(super) async fn finish(
        mut self,
        filename: &str,
        purpose: &str,
        owner: Caller<'_>,
    ) -> Result<Value, ApiError> {
        self.flush().await?;
        let now = now_secs();
        let retention = self.router.config().files.retention_secs;
        let object = json!({
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": now,
            "expires_at": now.saturating_add(i64::try_from(retention).unwrap_or(i64::MAX)),
            "filename": filename, "purpose": purpose, "status": "processed",
            "owner": owner, "chunks": self.chunks,
        });
        super::put_json(self.router, FILES, &self.id, &object).await?;
        Ok(object)
    }

    /// Remove the chunks written so far (a refused upload).
    pub(super) async fn abandon(self) {
        remove_chunks(self.router, &self.id, self.chunks).await;
    }
}

async fn remove_chunks(router: &Router, id: &str, chunks: u64) {
    let table = chunk_table(id);
    for i in 0..chunks {
        if let Err(e) = router.store().delete_record(&table, &chunk_name(i)).await {
            tracing::warn!(file = %id, error = %e, "could not remove a file chunk");
        }
    }
}

/// Keep `content` as a new file of `owner`; returns its object.
pub(super) async fn save(
    router: &Router,
    filename: &str,
    purpose: &str,
    owner: Caller<'_>,
    content: &str,
) -> Result<Value, ApiError> {
    let mut w = ChunkWriter::new(router, super::new_id("file-"));
    for line in content.split_inclusive('\n') {
        w.push(line).await?;
    }
    w.finish(filename, purpose, owner).await
}

/// Whether file object `f` is still kept at `now` (seconds).
fn live(f: &Value, now: i64) -> bool {
    f["expires_at"].as_i64().is_none_or(|at| at > now)
}

/// File `id`'s object, if it exists, is live and belongs to `caller`; else 404 (the same
/// answer whether it is another key's or none at all).
pub(super) async fn object(
    router: &Router,
    id: &str,
    caller: Caller<'_>,
) -> Result<Value, ApiError> {
    super::get_json(router, FILES, id)
        .await?
        .filter(|f| owner_of(f) == caller && live(f, now_secs()))
        .ok_or_else(|| super::not_found("file", id))
}

/// The content of the file whose object is `f`.
pub(super) async fn text(router: &Router, id: &str, f: Option<&Value>) -> Result<String, ApiError> {
    let store = router.store();
    let Some(chunks) = f.and_then(|f| f["chunks"].as_u64()) else {
        return store
            .get_record(FILE_CONTENT, id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| super::not_found("file", id));
    };
    let table = chunk_table(id);
    let mut out = String::new();
    for i in 0..chunks {
        let part = store
            .get_record(&table, &chunk_name(i))
            .await
            .map_err(store_error)?
            .ok_or_else(|| super::not_found("file", id))?;
        out.push_str(&part);
    }
    Ok(out)
}

/// The content of a batch's input file `id`, checked as `caller`'s: a file with an object
/// must be theirs; content kept without one (made before files had owners) is read as is.
pub(super) async fn input(
    router: &Router,
    id: &str,
    caller: Caller<'_>,
) -> Result<String, ApiError> {
    match super::get_json(router, FILES, id).await? {
        Some(_) => {
            let f = object(router, id, caller).await?;
            text(router, id, Some(&f)).await
        }
        None => text(router, id, None).await,
    }
}

/// Remove file `id` (object and content).
pub(super) async fn remove(router: &Router, id: &str, f: &Value) -> Result<(), ApiError> {
    router
        .store()
        .delete_record(FILES, id)
        .await
        .map_err(store_error)?;
    remove_chunks(router, id, f["chunks"].as_u64().unwrap_or(0)).await;
    let _ = router.store().delete_record(FILE_CONTENT, id).await;
    Ok(())
}

/// Every file object in the store, by id (unreadable ones left out).
async fn all(router: &Router) -> Result<Vec<(String, Value)>, ApiError> {
    let records = router
        .store()
        .list_records(FILES)
        .await
        .map_err(store_error)?;
    Ok(records
        .into_iter()
        .filter_map(|(id, v)| Some((id, serde_json::from_str::<Value>(&v).ok()?)))
        .collect())
}

/// `caller`'s live files.
async fn owned_by(router: &Router, caller: Caller<'_>) -> Result<Vec<Value>, ApiError> {
    let now = now_secs();
    Ok(all(router)
        .await?
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| owner_of(f) == caller && live(f, now))
        .collect())
}

/// Bytes `caller` keeps in live files.
pub(super) async fn kept_bytes(router: &Router, caller: Caller<'_>) -> Result<u64, ApiError> {
    let files = owned_by(router, caller).await?;
    Ok(files.iter().map(|f| f["bytes"].as_u64().unwrap_or(0)).sum())
}

/// `caller`'s live files, newest first.
pub(super) async fn list(router: &Router, caller: Caller<'_>) -> Result<Vec<Value>, ApiError> {
    let mut data = owned_by(router, caller).await?;
    data.sort_by_key(|f| std::cmp::Reverse(f["created_at"].as_i64().unwrap_or(0)));
    Ok(data)
}

/// Remove every file past its retention; how many.
pub(super) async fn sweep(router: &Router) -> Result<usize, ApiError> {
    let now = now_secs();
    let mut n = 0;
    for (id, f) in all(router).await? {
        if !live(&f, now) {
            remove(router, &id, &f).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Checks an upload's lines as they arrive: each one a batch input line, each `custom_id`
/// once, UTF-8 throughout.
#[derive(Default)]
pub(super) struct LineCheck {
    line: usize,
    seen: HashSet<String>,
    /// The bytes after the last newline seen.
    partial: Vec<u8>,
}

impl LineCheck {
    /// Take `bytes`; returns the whole lines they complete (newlines included), checked.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<String, ApiError> {
        self.partial.extend_from_slice(bytes);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(String::new());
        };
        let rest = self.partial.split_off(end + 1);
        let done = std::mem::replace(&mut self.partial, rest);
        let text = String::from_utf8(done).map_err(|_| {
            ApiError::BadRequest(format!(
                "line {}: the file is not UTF-8 text",
                self.line + 1
            ))
        })?;
        for line in text.split_inclusive('\n') {
            self.check(line)?;
        }
        Ok(text)
    }

    /// The file's last line (without a newline), checked.
    pub(super) fn finish(&mut self) -> Result<String, ApiError> {
        let done = std::mem::take(&mut self.partial);
        let text = String::from_utf8(done).map_err(|_| {
            ApiError::BadRequest(format!(
                "line {}: the file is not UTF-8 text",
                self.line + 1
            ))
        })?;
        if !text.is_empty() {
            self.check(&text)?;
        }
        if self.seen.is_empty() {
            return Err(ApiError::BadRequest(
                "the file has no lines; a batch input file has one request per line".into(),
            ));
        }
        Ok(text)
    }

    fn check(&mut self, line: &str) -> Result<(), ApiError> {
        self.line += 1;
        if line.trim().is_empty() {
            return Ok(());
        }
        let bad = |m: String| ApiError::BadRequest(format!("line {}: {m}", self.line));
        let item = BatchItem::parse(line, None).map_err(bad)?;
        if !self.seen.insert(item.custom_id.clone()) {
            return Err(bad(format!("custom_id {:?} appears twice", item.custom_id)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_across_any_split() {
        let a = r#"{"custom_id":"a","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        let b = r#"{"custom_id":"b","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        let text = format!("{a}\n\n{b}");
        for split in 0..text.len() {
            let mut c = LineCheck::default();
            let mut out = c.feed(&text.as_bytes()[..split]).unwrap();
            out.push_str(&c.feed(&text.as_bytes()[split..]).unwrap());
            out.push_str(&c.finish().unwrap());
            assert_eq!(out, text, "split at {split}");
        }
        let mut c = LineCheck::default();
        let e = c.feed(format!("{a}\n{a}\n").as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 2: custom_id \"a\" appears twice"),
            "{e}"
        );
        let mut c = LineCheck::default();
        let e = c.feed(b"{\"custom_id\":1}\n").unwrap_err();
        assert!(e.to_string().starts_with("line 1: "), "{e}");
        let mut c = LineCheck::default();
        c.feed(b"\n\n").unwrap();
        assert!(c.finish().is_err(), "an empty file is refused");
    }
}
