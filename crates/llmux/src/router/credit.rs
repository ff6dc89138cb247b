//! OpenRouter credit as a USD resource: on an `openrouter` provider, a key's resource named
//! [`CREDIT_RESOURCE`] follows the credit OpenRouter says the key has left. Every
//! [`CREDIT_REFRESH`] the router reads `GET {base_url}/key` with the key's secret and sets the
//! resource's `used` so that its room is `data.limit_remaining` (never more than the
//! resource's `value`). Requests reserve their estimated cost on it as on any budget, so the
//! key is passed over before OpenRouter would refuse it for want of credit, and the spend of
//! every other client of the key counts too. A key without a credit limit (`limit_remaining`
//! null) keeps what it counted itself. OpenRouter reports spend with a delay, so spend counted
//! here since the last read that the report has not grown by yet stays counted
//! (`with_unreported`).

use super::Router;
use crate::error::RouteError;
use crate::provider::openai::{secret_header, HttpClient};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use llmux_core::config::ProviderKind;
use llmux_core::plan::Bound;
use llmux_core::store::{AdminOp, StoreAdmin};
use llmux_core::{Measure, Subject, Usage};
use std::time::Duration;

/// The name of the resource that follows an OpenRouter key's remaining credit.
pub const CREDIT_RESOURCE: &str = "credit_usd";

/// How often the router reads the credit of its OpenRouter keys.
pub(crate) const CREDIT_REFRESH: Duration = Duration::from_secs(60);

/// How long one read of a key's credit may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Router {
    /// Whether any OpenRouter key has a [`CREDIT_RESOURCE`] to keep in step.
    pub(crate) fn tracks_credit(&self) -> bool {
        self.inner.config.providers.values().any(|p| {
            p.kind == ProviderKind::OpenRouter
                && p.keys
                    .iter()
                    .any(|k| k.resources.iter().any(|r| &*r.name == CREDIT_RESOURCE))
        })
    }

    /// Read the remaining credit of every OpenRouter key with a [`CREDIT_RESOURCE`] and set
    /// the resource's room to it. Returns how many keys were set; a key whose credit could
    /// not be read is logged and left as it was.
    pub async fn refresh_credit(&self, client: &HttpClient) -> Result<usize, RouteError> {
        let mut set = 0;
        for p in self.inner.config.providers.values() {
            if p.kind != ProviderKind::OpenRouter {
                continue;
            }
            let Some(base) = p.base_url.as_deref() else {
                continue;
            };
            for key in &p.keys {
                let Some(resource) = key.resources.iter().find(|r| &*r.name == CREDIT_RESOURCE)
                else {
                    continue;
                };
                let subject = Subject::key(&p.id, &key.id);
                let Some(secret) = self.key_secret(key, &subject) else {
                    continue;
                };
                let remaining = match read_credit(client, base, secret.expose()).await {
                    Ok(Some(usd)) => usd,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(key = %subject, error = %e, "could not read the OpenRouter key's credit");
                        continue;
                    }
                };
                let now = self.inner.ledger.clock.now();
                let bound = Bound::new(subject.clone(), resource.clone(), p.timezone.clone());
                let line = bound.line(&Usage::default(), now);
                let room = Measure::CostMicroUsd.capacity_from_value(remaining.max(0.0));
                let reported = line.capacity.saturating_sub(room);
                let last = self.inner.credit_set.lock().get(&subject).copied();
                let used = match last {
                    None => reported,
                    Some(last) => {
                        let counted = self.counted(&subject, &resource.name).await?;
                        with_unreported(reported, last, counted)
                    }
                };
                self.inner
                    .ledger
                    .store
                    .update(line, AdminOp::SetUsed(used), now)
                    .await?;
                self.inner.credit_set.lock().insert(subject, used);
                set += 1;
            }
        }
        Ok(set)
    }
}

/// The `used` to set a credit resource to: what OpenRouter reports used (`reported`), plus
/// what was spent here since the last read (`counted - last`) beyond what the report grew by
/// (OpenRouter reports spend with a delay: spend it has not reported yet is not forgotten). A
/// credit top-up lowers `reported`; the spend since still counts on top of it.
fn with_unreported(reported: u64, last: u64, counted: u64) -> u64 {
    let spent_here = counted.saturating_sub(last);
    let grew = reported.saturating_sub(last);
    reported.saturating_add(spent_here.saturating_sub(grew))
}

impl Router {
    /// The `used` of `resource` on `subject` now.
    async fn counted(&self, subject: &Subject, resource: &str) -> Result<u64, RouteError> {
        let states = self.inner.ledger.store.snapshot(subject.as_str()).await?;
        Ok(states
            .iter()
            .find(|s| s.subject == subject.as_str())
            .and_then(|s| s.resources.iter().find(|(n, _)| n == resource))
            .map_or(0, |(_, c)| c.used))
    }
}

/// `GET {base}/key`: the key's `limit_remaining` in USD (`None`: the key has no limit).
async fn read_credit(client: &HttpClient, base: &str, secret: &str) -> Result<Option<f64>, String> {
    let uri: http::Uri = format!("{}/key", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad key URL: {e}"))?;
    let mut req = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let auth = secret_header("Bearer ", secret).ok_or("the secret is not a header value")?;
    req.headers_mut().insert(http::header::AUTHORIZATION, auth);
    let read = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("the key endpoint answered {status}"));
        }
        parse_credit(&body)
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| format!("no answer within {} s", READ_TIMEOUT.as_secs()))?
}

/// `{"data": {"limit_remaining": 74.5, ...}}` -> `Some(74.5)`; null or absent -> `None`.
fn parse_credit(body: &[u8]) -> Result<Option<f64>, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the key endpoint's answer is not JSON: {e}"))?;
    let data = v
        .get("data")
        .ok_or("the key endpoint's answer has no `data`")?;
    match data.get("limit_remaining") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("`data.limit_remaining` is not a number: {n}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_credit, with_unreported};

    #[test]
    fn credit_is_read_from_the_key_endpoint_answer() {
        let with = br#"{"data":{"label":"sk-or-v1-au7...890","limit":100,"limit_remaining":74.5,"usage":25.5}}"#;
        assert_eq!(parse_credit(with), Ok(Some(74.5)));
        let unlimited = br#"{"data":{"limit":null,"limit_remaining":null,"usage":3.0}}"#;
        assert_eq!(parse_credit(unlimited), Ok(None));
        assert!(parse_credit(b"{}").unwrap_err().contains("no `data`"));
        assert!(parse_credit(br#"{"data":{"limit_remaining":"x"}}"#)
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_credit(b"<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn spend_not_yet_reported_is_kept() {
        // Spent 30 here since the last read, and OpenRouter's report did not move yet.
        assert_eq!(with_unreported(100, 100, 130), 130);
        // The report caught up with all of it (and 5 spent by another client).
        assert_eq!(with_unreported(135, 100, 130), 135);
        // It reports 10 of the 30 so far.
        assert_eq!(with_unreported(110, 100, 130), 130);
        // A top-up: 50 more credit, and the 30 spent here since still count.
        assert_eq!(with_unreported(50, 100, 130), 80);
    }
}
