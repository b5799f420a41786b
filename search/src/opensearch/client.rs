//! A blocking JSON-over-HTTP/1.1 client for the OpenSearch REST API.
//!
//! The index's calls block (the trait's contract: callers run them on a
//! blocking thread), so the client owns a small runtime of its own and
//! waits on it; it never borrows the caller's. Every call has a deadline
//! and every reply a size limit.

use crate::error::{Result, SearchError};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;
use std::time::Duration;

/// Largest reply read: a page of hits or a bulk reply is far below it.
pub(crate) const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept for reuse.
const IDLE_CONNECTIONS: usize = 8;

pub(crate) struct Http {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, without a trailing slash.
    base: String,
}

/// What the body of a request is.
pub(crate) enum Body {
    Empty,
    Json(Value),
    /// Newline-delimited JSON (the bulk API).
    Lines(Vec<u8>),
}

impl Http {
    /// A client of the node at `url` (`http://host:port`); nothing is
    /// sent yet.
    pub(crate) fn new(url: &str) -> Result<Self> {
        let base = base_url(url)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("opensearch-client")
            .enable_all()
            .build()
            .map_err(|e| SearchError::Engine(format!("start the OpenSearch client: {e}")))?;
        let client = {
            let _entered = runtime.enter();
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(IDLE_CONNECTIONS)
                .build(connector)
        };
        Ok(Self {
            runtime: Some(runtime),
            client,
            base,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request and reads its JSON reply (`Value::Null` for an
    /// empty one), whatever its status: callers decide what a status means.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<(StatusCode, Value)> {
        let (m, p) = (method.clone(), path.to_owned());
        self.call_within(method, path, body, timeout)?
            .ok_or_else(|| {
                SearchError::Engine(format!(
                    "OpenSearch at {} ({m} {p}): no reply within {timeout:?}",
                    self.base
                ))
            })
    }

    /// [`call`](Self::call), or `None` when no whole reply came within
    /// `timeout` (the request is abandoned).
    pub(crate) fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Option<(StatusCode, Value)>> {
        let (content_type, bytes) = match body {
            Body::Empty => (None, Bytes::new()),
            Body::Json(value) => (
                Some("application/json"),
                Bytes::from(serde_json::to_vec(&value).expect("a JSON value serialises")),
            ),
            Body::Lines(lines) => (Some("application/x-ndjson"), Bytes::from(lines)),
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base));
        if let Some(content_type) = content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        let request = request
            .body(Full::new(bytes))
            .map_err(|e| SearchError::Engine(format!("OpenSearch request {path}: {e}")))?;
        let unreachable = |e: &dyn std::fmt::Display| {
            SearchError::Engine(format!(
                "OpenSearch at {} ({method} {path}): {e}",
                self.base
            ))
        };
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        runtime.block_on(async {
            let exchange = async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| unreachable(&error_chain(&e)))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                    .collect()
                    .await
                    .map_err(|e| unreachable(&e))?
                    .to_bytes();
                let value = if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&body).map_err(|e| {
                        unreachable(&format!("a reply that is not JSON (status {status}): {e}"))
                    })?
                };
                Ok((status, value))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(reply) => reply.map(Some),
                Err(_) => Ok(None),
            }
        })
    }
}

/// `http://host:port` of a node's URL, or why it is not one.
pub(crate) fn base_url(url: &str) -> Result<String> {
    let bad = |why: &str| SearchError::Config(format!("OpenSearch URL {url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported; reach the node over http on a private network",
            ));
        }
        _ => return Err(bad("must start with http://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must name only a host and port (no path or query)"));
    }
    Ok(format!("http://{authority}"))
}

/// The error with its causes ("connection refused" sits a few levels down).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Drop for Http {
    fn drop(&mut self) {
        // The index may be dropped on an async thread, where waiting for
        // the runtime's threads is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// OpenSearch's reason for a failed call, from its error reply.
pub(crate) fn reason(reply: &Value) -> String {
    let error = &reply["error"];
    match (error["type"].as_str(), error["reason"].as_str()) {
        (Some(kind), Some(reason)) => format!("{kind}: {reason}"),
        _ if error.is_string() => error.as_str().unwrap_or_default().to_owned(),
        _ => {
            let mut text = reply.to_string();
            text.truncate(500);
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_host_urls_are_accepted() {
        for bad in [
            "127.0.0.1:9200",
            "https://127.0.0.1:9200",
            "ftp://x",
            "http://u:p@127.0.0.1:9200",
            "http://127.0.0.1:9200/index",
            "http://127.0.0.1:9200?x=1",
            "not a url",
        ] {
            assert!(
                matches!(Http::new(bad), Err(SearchError::Config(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Http::new("http://127.0.0.1:9200/").unwrap().base(),
            "http://127.0.0.1:9200"
        );
    }

    #[test]
    fn a_closed_port_is_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = Http::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let error = http
            .call(Method::GET, "/", Body::Empty, Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(&error, SearchError::Engine(m) if m.contains("refused")),
            "{error}"
        );
    }
}
