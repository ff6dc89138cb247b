//! Batches: OpenAI Batch input lines (`custom_id`, `method`, `url`, `body`) sent through the
//! router as fast as the limits allow. Each item waits in its model's queue for capacity
//! (no avoidable 429s) and is retried with full-jitter backoff when it still fails.
//!
//! [`Router::batch`] runs items and yields results in completion order; `llmux batch run` and
//! the gateway's `/v1/batches` are built on [`Router::send_item`].

use crate::error::RouteError;
use crate::provider::Endpoint;
use crate::router::{Request, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{Map, Value};
use std::time::Duration;

/// One checked input line.
#[derive(Clone, Debug)]
pub struct BatchItem {
    pub custom_id: String,
    pub endpoint: Endpoint,
    /// The line's `url`, e.g. `/v1/chat/completions`.
    pub url: String,
    pub body: Map<String, Value>,
}

/// A bad input line, by number (from 1).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

/// The endpoint a batch line's `url` names.
pub fn endpoint_of(url: &str) -> Option<Endpoint> {
    Some(match url {
        "/v1/chat/completions" => Endpoint::ChatCompletions,
        "/v1/completions" => Endpoint::Completions,
        "/v1/embeddings" => Endpoint::Embeddings,
        "/v1/messages" => Endpoint::Messages,
        "/v1/responses" => Endpoint::Responses,
        _ => return None,
    })
}

impl BatchItem {
    /// Parse one line; `model` replaces every item's model.
    pub fn parse(line: &str, model: Option<&str>) -> Result<BatchItem, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e})"))?;
        let custom_id = v
            .get("custom_id")
            .and_then(Value::as_str)
            .ok_or("needs a string `custom_id`")?;
        let method = v.get("method").and_then(Value::as_str).unwrap_or("POST");
        if method != "POST" {
            return Err(format!("method {method:?}: only POST is supported"));
        }
        let url = v
            .get("url")
            .and_then(Value::as_str)
            .ok_or("needs a string `url` such as \"/v1/chat/completions\"")?;
        let endpoint = endpoint_of(url).ok_or_else(|| {
            format!("url {url:?} is not one of /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages, /v1/responses")
        })?;
        let mut body = v
            .get("body")
            .and_then(Value::as_object)
            .cloned()
            .ok_or("needs an object `body`")?;
        if let Some(m) = model {
            body.insert("model".into(), m.into());
        }
        if !body.get("model").is_some_and(Value::is_string) {
            return Err("body needs a string `model`".into());
        }
        if body.get("stream").and_then(Value::as_bool) == Some(true) {
            return Err("body.stream: a batch item cannot stream".into());
        }
        Ok(BatchItem {
            custom_id: custom_id.to_string(),
            endpoint,
            url: url.to_string(),
            body,
        })
    }

    /// Every non-empty line of `text`; the first bad one (or a repeated `custom_id`) is an
    /// error naming its number.
    pub fn parse_lines(text: &str, model: Option<&str>) -> Result<Vec<BatchItem>, BadLine> {
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| BadLine {
                line: i + 1,
                message,
            };
            let item = BatchItem::parse(line, model).map_err(bad)?;
            if !seen.insert(item.custom_id.clone()) {
                return Err(bad(format!("custom_id {:?} appears twice", item.custom_id)));
            }
            items.push(item);
        }
        Ok(items)
    }

    /// The model the item asks for.
    pub fn model(&self) -> &str {
        self.body.get("model").and_then(Value::as_str).unwrap_or("")
    }
}

/// The error of an item whose batch's gateway key was revoked: `(code, message)`.
pub fn key_revoked(key: &str) -> (String, String) {
    (
        "key_revoked".into(),
        format!("the gateway key {key:?} that created this batch was revoked"),
    )
}

/// How items are sent.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Items in flight at once.
    pub concurrency: usize,
    /// Tries after the first for an item that fails with a 429, a 5xx or a lost connection.
    pub max_retries: u32,
    /// How long one try waits for capacity.
    pub wait: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            concurrency: 16,
            max_retries: 3,
            wait: Duration::from_secs(300),
        }
    }
}

/// What one item came to.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchResult {
    pub custom_id: String,
    pub url: String,
    /// The answer's status and body (`None`: no answer, see `error`).
    pub status: Option<u16>,
    pub body: Option<Value>,
    pub request_id: String,
    /// Why it failed: `(code, message)`.
    pub error: Option<(String, String)>,
}

impl BatchResult {
    /// Answered 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The OpenAI Batch output line (`id`, `custom_id`, `response`, `error`).
    pub fn output_line(&self) -> Value {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.custom_id.hash(&mut h);
        let response = self.status.map(|s| {
            serde_json::json!({
                "status_code": s,
                "request_id": self.request_id,
                "body": self.body.clone().unwrap_or(Value::Null),
            })
        });
        let error = self
            .error
            .as_ref()
            .map(|(code, message)| serde_json::json!({"code": code, "message": message}));
        serde_json::json!({
            "id": format!("batch_req_{:016x}", h.finish()),
            "custom_id": self.custom_id,
            "response": response,
            "error": error,
        })
    }
}

impl Router {
    /// Send one batch item: it waits for its start slot (items of a model start evenly spaced,
    /// at the rate its request limits allow) and then for capacity up to `opts.wait` per try,
    /// and a 429, a 5xx, a timeout or a lost connection is tried again with full-jitter backoff
    /// (0.5 s, 1 s, 2 s, … at most 30 s) up to `opts.max_retries` times. A 4xx other than 429
    /// is final.
    pub async fn send_item(&self, item: &BatchItem, opts: &BatchOptions) -> BatchResult {
        self.send_item_as(item, opts, None).await
    }

    /// [`Router::send_item`] under the gateway key named `key`: every try is admitted as the
    /// same request sent directly with that key would be (its policy, limits, budgets, team
    /// and tier), and once the key is revoked no further try is made: the item ends with
    /// error code `key_revoked`.
    pub async fn send_item_as(
        &self,
        item: &BatchItem,
        opts: &BatchOptions,
        key: Option<&str>,
    ) -> BatchResult {
        let body = bytes::Bytes::from(serde_json::to_vec(&item.body).unwrap_or_default());
        let mut attempt = 0u32;
        loop {
            // Spread across each window rather than a burst as it opens (see `stats::Pacer`).
            let pace = self.pace(item.model());
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
            let mut result = BatchResult {
                custom_id: item.custom_id.clone(),
                url: item.url.clone(),
                status: None,
                body: None,
                request_id: String::new(),
                error: None,
            };
            let mut req = Request::from_json_bytes(item.endpoint, body.clone());
            req.max_wait = Some(opts.wait);
            if let Some(name) = key {
                // Read per try: a key revoked meanwhile sends nothing more.
                match self.gateway_key_named(name).await {
                    Ok(Some(k)) => req.gateway_key = Some(k),
                    Ok(None) => {
                        result.error = Some(key_revoked(name));
                        return result;
                    }
                    Err(e) => {
                        result.error = Some(("upstream_error".into(), e.to_string()));
                        return result;
                    }
                }
            }
            let retry = match self.request(req).await {
                Ok(resp) => {
                    let status = resp.status;
                    result.request_id = resp
                        .headers
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    match resp.bytes().await {
                        Ok(b) => {
                            result.status = Some(status);
                            result.body = Some(serde_json::from_slice(&b).unwrap_or_else(|_| {
                                Value::String(String::from_utf8_lossy(&b).into_owned())
                            }));
                            if !(200..300).contains(&status) {
                                result.error = Some((
                                    format!("http_{status}"),
                                    format!("the upstream answered {status}"),
                                ));
                            }
                            status == 429 || status >= 500
                        }
                        Err(e) => {
                            result.error = Some(("upstream_error".into(), e.to_string()));
                            true
                        }
                    }
                }
                Err(e) => {
                    let (code, retry) = match &e {
                        RouteError::NoCapacity { budget: true, .. } => ("budget_exceeded", false),
                        RouteError::NoCapacity { .. } => ("rate_limit_exceeded", true),
                        RouteError::Upstream { .. } | RouteError::Store(_) => {
                            ("upstream_error", true)
                        }
                        RouteError::PolicyViolation(_) => ("policy_violation", false),
                        RouteError::UnknownModel(_) => ("model_not_found", false),
                        RouteError::Unauthorized => ("invalid_api_key", false),
                        RouteError::BadRequest(_) => ("invalid_request", false),
                    };
                    result.error = Some((code.into(), e.to_string()));
                    retry
                }
            };
            if result.ok() || !retry || attempt >= opts.max_retries {
                return result;
            }
            attempt += 1;
            let ceiling = 500u64.saturating_mul(1 << (attempt - 1).min(6)).min(30_000);
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=ceiling))).await;
        }
    }

    /// Send `items`, `opts.concurrency` at a time, each as [`Router::send_item`]; results come
    /// in completion order, each with its `custom_id`.
    pub fn batch(
        &self,
        items: Vec<BatchItem>,
        opts: BatchOptions,
    ) -> impl Stream<Item = BatchResult> + Send + 'static {
        let router = self.clone();
        stream::iter(items)
            .map(move |item| {
                let router = router.clone();
                async move { router.send_item(&item, &opts).await }
            })
            .buffer_unordered(opts.concurrency.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_and_named_by_number() {
        let ok = r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}"#;
        let items = BatchItem::parse_lines(&format!("{ok}\n\n"), None).unwrap();
        assert_eq!(items[0].custom_id, "a");
        assert_eq!(items[0].endpoint, Endpoint::ChatCompletions);
        let items = BatchItem::parse_lines(ok, Some("other")).unwrap();
        assert_eq!(items[0].model(), "other");
        for (text, says) in [
            (
                format!("{ok}\n{ok}"),
                "line 2: custom_id \"a\" appears twice",
            ),
            (format!("{ok}\nnot json"), "line 2: not JSON"),
            (ok.replace("POST", "GET"), "line 1: method \"GET\""),
            (
                ok.replace("/v1/chat/completions", "/v2/x"),
                "line 1: url \"/v2/x\"",
            ),
            (
                ok.replace("\"model\":\"m\"", "\"stream\":true,\"model\":\"m\""),
                "line 1: body.stream",
            ),
            (
                ok.replace("\"model\":\"m\"", "\"x\":1"),
                "line 1: body needs a string `model`",
            ),
        ] {
            let e = BatchItem::parse_lines(&text, None).unwrap_err().to_string();
            assert!(e.starts_with(says), "{e}");
        }
    }
}
