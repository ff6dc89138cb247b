//! OpenRouter credit as a USD resource: on an `openrouter` provider, a key's resource named
//! [`CREDIT_RESOURCE`] follows the credit OpenRouter says the key has left. Every
//! [`CREDIT_REFRESH`] the router reads `GET {base_url}/key` with the key's secret and sets the
//! resource's `used` so that its room is `data.limit_remaining` (never more than the
//! resource's `value`). Requests reserve their estimated cost on it as on any budget, so the
//! key is passed over before OpenRouter would refuse it for want of credit, and the spend of
//! every other client of the key counts too. A key without a credit limit (`limit_remaining`
//! null) keeps what it counted itself.

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
                let bound = Bound::new(subject, resource.clone(), p.timezone.clone());
                let line = bound.line(&Usage::default(), now);
                let room = Measure::CostMicroUsd.capacity_from_value(remaining.max(0.0));
                let used = line.capacity.saturating_sub(room);
                self.inner
                    .ledger
                    .store
                    .update(line, AdminOp::SetUsed(used), now)
                    .await?;
                set += 1;
            }
        }
        Ok(set)
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
    let auth =
        secret_header(format!("Bearer {secret}")).ok_or("the secret is not a header value")?;
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
    use super::parse_credit;

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
}
