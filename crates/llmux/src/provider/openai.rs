//! The OpenAI-compatible HTTP adapter (`openai`, `openai-compatible`, `openrouter`): Bearer
//! auth, and the one pooled hyper client (HTTP/1 and HTTP/2, rustls) and send path that every
//! HTTP provider shares.

use super::{Call, Endpoint, Provider, Reply, ReplyBody};
use crate::error::UpstreamError;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Build the shared upstream client.
pub fn http_client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(https)
}

/// An OpenAI-compatible upstream at `base_url` (e.g. `https://api.openai.com/v1`).
pub struct OpenAiCompatible {
    /// The URL of each endpoint (by [`Endpoint::index`]), parsed once (`None`: not served, or
    /// the base URL does not make one).
    uris: [Option<http::Uri>; 5],
    client: HttpClient,
}

impl OpenAiCompatible {
    pub fn new(base_url: &str, client: HttpClient) -> Self {
        let uris = Endpoint::ALL.map(|e| match e {
            Endpoint::Messages => None,
            e => endpoint_uri(base_url, e),
        });
        OpenAiCompatible { uris, client }
    }
}

/// `base_url` joined with the endpoint's path.
pub(crate) fn endpoint_uri(base_url: &str, e: Endpoint) -> Option<http::Uri> {
    format!("{}{}", base_url.trim_end_matches('/'), e.path())
        .parse()
        .ok()
}

/// A header value that holds a secret: marked sensitive, so it never prints.
pub(crate) fn secret_header(prefix: &str, secret: &str) -> Option<http::HeaderValue> {
    let mut text = zeroize::Zeroizing::new(Vec::with_capacity(prefix.len() + secret.len()));
    text.extend_from_slice(prefix.as_bytes());
    text.extend_from_slice(secret.as_bytes());
    // The header holds these very bytes (no copy) and zeroes them when the request is done.
    let mut v =
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(ZeroedOnDrop(text))).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Bytes that are zeroed when the last header holding them is dropped.
struct ZeroedOnDrop(zeroize::Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroedOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Provider for OpenAiCompatible {
    fn has_own_estimate(&self) -> bool {
        false
    }

    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
        let auth = secret_header("Bearer ", call.secret.expose());
        let req = match (&self.uris[call.endpoint.index()], auth) {
            (Some(uri), Some(auth)) => http::Request::post(uri.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::AUTHORIZATION, auth)
                .body(Full::new(call.body.clone()))
                .ok(),
            _ => None,
        };
        send_http(self.client.clone(), req, call)
    }
}

/// Send `req` (`None`: it could not be built) for `call`: the answer's head within the call's
/// timeout, then the whole body, or the stream for a streamed 200 in SSE.
pub(crate) fn send_http(
    client: HttpClient,
    req: Option<http::Request<Full<Bytes>>>,
    call: Call,
) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
    let timeout_secs = call.timeout.as_secs();
    Box::pin(async move {
        // Never echo the request (it holds the key) in an error.
        let req = req.ok_or_else(|| {
            UpstreamError::Connect("invalid upstream URL or key for a header".into())
        })?;
        let first_byte = call.first_byte;
        let work = async {
            let head = async {
                match first_byte {
                    None => Ok(client.request(req).await),
                    Some(d) => tokio::time::timeout(d, client.request(req))
                        .await
                        .map_err(|_| UpstreamError::Timeout(d.as_secs().max(1))),
                }
            };
            let resp = head.await?.map_err(|e| {
                // Only a failed connect proves the request never left.
                if e.is_connect() {
                    UpstreamError::Connect(describe(&e))
                } else {
                    UpstreamError::Reset(describe(&e))
                }
            })?;
            let (parts, body) = resp.into_parts();
            let status = parts.status.as_u16();
            let is_sse = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let body = if call.stream && status == 200 && is_sse {
                ReplyBody::Stream(
                    BodyStream::new(body)
                        .filter_map(|frame| async move {
                            match frame {
                                Ok(f) => f.into_data().ok().map(Ok),
                                Err(e) => Some(Err(UpstreamError::Body(e.to_string()))),
                            }
                        })
                        .boxed(),
                )
            } else {
                let limit = call.max_response_bytes;
                let bytes = Limited::new(body, limit)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.is::<LengthLimitError>() {
                            UpstreamError::TooLarge(limit)
                        } else {
                            UpstreamError::Body(e.to_string())
                        }
                    })?
                    .to_bytes();
                ReplyBody::Full(bytes)
            };
            Ok(Reply {
                status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(call.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(timeout_secs)),
        }
    })
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_header_is_sensitive_and_holds_the_prefixed_secret() {
        let h = secret_header("Bearer ", "sk-abc").unwrap();
        assert!(h.is_sensitive());
        assert_eq!(h.as_bytes(), b"Bearer sk-abc");
        assert_eq!(format!("{h:?}"), "Sensitive");
        assert!(secret_header("", "bad\nvalue").is_none());
    }
}
