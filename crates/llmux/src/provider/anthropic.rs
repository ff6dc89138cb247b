//! The `anthropic` adapter: Anthropic's Messages API, the key as `x-api-key` and the
//! `anthropic-version` header, over the shared HTTP client.

use super::openai::{endpoint_uri, secret_header, send_http, HttpClient};
use super::{Call, Dialect, Endpoint, Provider, Reply};
use crate::error::UpstreamError;
use futures_util::future::BoxFuture;
use http_body_util::Full;

/// An Anthropic upstream at `base_url` (the part before `/messages`, e.g.
/// `https://api.anthropic.com/v1`).
pub struct Anthropic {
    messages: Option<http::Uri>,
    version: Option<http::HeaderValue>,
    client: HttpClient,
}

impl Anthropic {
    pub fn new(base_url: &str, version: &str, client: HttpClient) -> Self {
        Anthropic {
            messages: endpoint_uri(base_url, Endpoint::Messages),
            version: http::HeaderValue::from_str(version).ok(),
            client,
        }
    }
}

impl Provider for Anthropic {
    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }

    fn has_own_estimate(&self) -> bool {
        false
    }

    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
        let key = secret_header("", call.secret.expose());
        let req = match (call.endpoint, &self.messages, &self.version, key) {
            (Endpoint::Messages, Some(uri), Some(version), Some(key)) => {
                http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header("x-api-key", key)
                    .header("anthropic-version", version.clone())
                    .body(Full::new(call.body.clone()))
                    .ok()
            }
            _ => None,
        };
        send_http(self.client.clone(), req, call)
    }
}
