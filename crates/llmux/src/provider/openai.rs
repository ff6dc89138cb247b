//! The OpenAI-compatible HTTP adapter (`openai`, `openai-compatible`, `openrouter`): Bearer
//! auth, one pooled hyper client (HTTP/1 and HTTP/2, rustls) shared by every provider.

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
    /// The URL of each endpoint, parsed once (`None`: the base URL does not make one).
    uris: [Option<http::Uri>; 3],
    client: HttpClient,
    extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl OpenAiCompatible {
    pub fn new(base_url: &str, client: HttpClient) -> Self {
        let base = base_url.trim_end_matches('/');
        let uri = |e: Endpoint| format!("{base}{}", e.path()).parse().ok();
        OpenAiCompatible {
            uris: [
                uri(Endpoint::ChatCompletions),
                uri(Endpoint::Completions),
                uri(Endpoint::Embeddings),
            ],
            client,
            extra_headers: Vec::new(),
        }
    }

    fn uri(&self, e: Endpoint) -> Option<&http::Uri> {
        self.uris[match e {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
        }]
        .as_ref()
    }
}

impl Provider for OpenAiCompatible {
    fn has_own_estimate(&self) -> bool {
        false
    }

    fn send(&self, call: Call) -> BoxFuture<'static, Result<Reply, UpstreamError>> {
        let client = self.client.clone();
        let auth =
            http::HeaderValue::try_from(format!("Bearer {}", call.secret.expose())).map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let req = match (self.uri(call.endpoint), auth) {
            (Some(uri), Ok(auth)) => {
                let mut builder = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::AUTHORIZATION, auth);
                for (k, v) in &self.extra_headers {
                    builder = builder.header(k, v);
                }
                builder.body(Full::new(call.body)).ok()
            }
            _ => None,
        };
        let timeout_secs = call.timeout.as_secs();
        Box::pin(async move {
            // Never echo the request (it holds the key) in an error.
            let req = req.ok_or_else(|| {
                UpstreamError::Connect("invalid upstream URL or key for a header".into())
            })?;
            let work = async {
                let resp = client.request(req).await.map_err(|e| {
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
