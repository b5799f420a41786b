//! Every gRPC call a server answers, counted by method and status code and
//! timed, as a tower layer around the whole router: calls refused by
//! authentication, by a limit or as unimplemented are counted like the
//! others, whatever code produced the status.
//!
//! - `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`
//! - `grpc_server_handling_seconds{grpc_service, grpc_method}` (histogram;
//!   for a server stream, how long the stream was open)
//!
//! (the names of go-grpc-prometheus, so existing dashboards apply).
//!
//! The status is read where gRPC puts it: in the response headers for an
//! error answered at once ("trailers only"), else in the trailers at the end
//! of the body. A body dropped before its trailers (the client went away)
//! counts as `CANCELLED`. For gRPC-Web the status travels in a trailer
//! frame inside the body (tonic-web encodes the trailers there), which is
//! read the same way. Requests that are not gRPC (a browser's CORS
//! preflight, the web app's files) are not counted here. A call to a
//! method the server does not know, or to a service outside the project's
//! packages, counts under `grpc_service="unknown"`: paths come from
//! clients, and labels must come from a closed set.

use bytes::Buf;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

const UNIMPLEMENTED: i32 = 12;

/// Wraps a server's router; see the module doc.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let call = content_type.starts_with("application/grpc").then(|| {
            Call::start(
                request.uri().path(),
                content_type.starts_with("application/grpc-web"),
            )
        });
        RpcFuture {
            inner: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct RpcFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

/// The status of a gRPC-Web trailer frame (flag 0x80, a length, then
/// `name:value` lines), if `chunk` is one.
fn web_trailer_status(chunk: &[u8]) -> Option<i32> {
    let (&flag, rest) = chunk.split_first()?;
    if flag != 0x80 || rest.len() < 4 {
        return None;
    }
    let length = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let text = std::str::from_utf8(rest.get(4..4 + length)?).ok()?;
    text.split("\r\n")
        .find_map(|line| line.strip_prefix("grpc-status:"))
        .and_then(|code| code.trim().parse().ok())
}

impl<F, ResBody, E> Future for RpcFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<CountedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(result.map(|response| {
            // A status in the headers: the call is over ("trailers only").
            if let Some(code) = status_code(response.headers())
                && let Some(call) = call.take()
            {
                call.finish(code);
            }
            response.map(|body| CountedBody {
                inner: body,
                pending: Pending(call),
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the status goes by (or
    /// when it is dropped without one).
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    this.pending.finish(code);
                } else if this.pending.is_web()
                    && let Some(code) = frame.data_ref().and_then(|d| web_trailer_status(d.chunk()))
                {
                    this.pending.finish(code);
                }
            }
            // A body that ends or breaks without a status: the client sees
            // an error, so does the count.
            Some(Err(_)) | None => this.pending.finish(INTERNAL),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const INTERNAL: i32 = 13;
const CANCELLED: i32 = 1;

/// A call not yet counted as handled.
struct Pending(Option<Call>);

impl Pending {
    fn is_web(&self) -> bool {
        self.0.as_ref().is_some_and(|call| call.web)
    }

    fn finish(&mut self, code: i32) {
        if let Some(call) = self.0.take() {
            call.finish(code);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

struct Call {
    service: String,
    method: String,
    started: Instant,
    /// gRPC-Web: the status comes in a trailer frame of the body.
    web: bool,
}

/// The packages whose services a label may name; any other path counts as
/// `unknown`, whatever it answered.
const KNOWN_PACKAGES: &[&str] = &[
    "timeline.v1.",
    "seqsvc.v1.",
    "grpc.health.v1.",
    "grpc.reflection.",
];

impl Call {
    fn start(path: &str, web: bool) -> Self {
        let (service, method) = match split_path(path) {
            (service, method) if KNOWN_PACKAGES.iter().any(|p| service.starts_with(p)) => {
                (service, method)
            }
            _ => ("unknown", "unknown"),
        };
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
            web,
        }
    }

    fn finish(self, code: i32) {
        // Only a method that exists answers something else than
        // UNIMPLEMENTED; the others share one label (see the module doc).
        let (service, method) = if code == UNIMPLEMENTED {
            ("unknown".to_owned(), "unknown".to_owned())
        } else {
            (self.service, self.method)
        };
        metrics::counter!(
            "grpc_server_handled_total",
            "grpc_service" => service.clone(),
            "grpc_method" => method.clone(),
            "grpc_code" => code_name(code),
        )
        .increment(1);
        metrics::histogram!(
            "grpc_server_handling_seconds",
            "grpc_service" => service,
            "grpc_method" => method,
        )
        .record(self.started.elapsed().as_secs_f64());
    }
}

fn status_code(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// `/package.Service/Method` into its two parts.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("unknown", "unknown"))
}

/// The canonical names of gRPC status codes (as in the gRPC spec).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod web_tests {
    use super::*;

    #[test]
    fn a_grpc_web_trailer_frame_gives_its_status() {
        let text = b"grpc-status:5\r\ngrpc-message:no such thing\r\n";
        let mut frame = vec![0x80];
        frame.extend_from_slice(&(text.len() as u32).to_be_bytes());
        frame.extend_from_slice(text);
        assert_eq!(web_trailer_status(&frame), Some(5));
        // A message frame (flag 0) is not a trailer frame.
        frame[0] = 0;
        assert_eq!(web_trailer_status(&frame), None);
        assert_eq!(web_trailer_status(&[0x80, 0, 0]), None);
    }

    #[test]
    fn labels_name_only_the_projects_services() {
        let known = Call::start("/timeline.v1.Timeline/Sync", false);
        assert_eq!(
            (known.service.as_str(), known.method.as_str()),
            ("timeline.v1.Timeline", "Sync")
        );
        let random = Call::start("/x7d9/abc", true);
        assert_eq!(
            (random.service.as_str(), random.method.as_str()),
            ("unknown", "unknown")
        );
        assert!(random.web);
    }
}
