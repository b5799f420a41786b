//! The `/metrics` listener: plain HTTP/1.1 on an address of its own, so a
//! scraper needs no gRPC and metrics stay reachable when the API port is
//! saturated (or not open yet: syncd binds it before recovery). It also
//! answers HTTP probes: `/livez` (200 while the process runs) and
//! `/readyz` (200 when [`super::is_ready`], else 503), so a supervisor
//! can tell a node that is still recovering from one that is gone.
//!
//! Bounded like every server here: at most [`MAX_METRICS_CONNECTIONS`] at
//! once (further ones wait in the kernel's backlog), each closed after one
//! request or [`METRICS_CONNECTION_TIMEOUT`].

use super::Metrics;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Scrapers open one connection at a time; a few more for people with curl.
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// A scrape renders in well under a millisecond; this bounds a slow or
/// silent client.
pub const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The exposition format's content type (text format 0.0.4).
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of fds, say: back off instead of spinning.
                    tracing::warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn respond<B>(request: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(CONTENT_TYPE),
        );
        response
    };
    const SERVED: &str = "served: GET /metrics, /livez, /readyz\n";
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            // Rendering reads /proc and walks every series: not for the
            // async threads at scale, but a few hundred series take
            // microseconds, less than a spawn_blocking hop.
            reply(StatusCode::OK, metrics.render())
        }
        (&Method::GET, "/livez") => reply(StatusCode::OK, "alive\n".into()),
        (&Method::GET, "/readyz") if super::is_ready() => reply(StatusCode::OK, "ready\n".into()),
        (&Method::GET, "/readyz") => reply(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        (_, "/metrics" | "/livez" | "/readyz") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, SERVED.into())
        }
        _ => reply(StatusCode::NOT_FOUND, SERVED.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn probes_answer_by_readiness_and_other_paths_are_not_found() {
        let metrics = Metrics {
            handle: PrometheusBuilder::new().build_recorder().handle(),
        };
        let get = |method: Method, path: &str| {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            respond(&request, &metrics).status()
        };
        super::super::set_ready(false);
        assert_eq!(get(Method::GET, "/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(Method::GET, "/livez"), StatusCode::OK);
        super::super::set_ready(true);
        assert_eq!(get(Method::GET, "/readyz"), StatusCode::OK);
        assert_eq!(get(Method::GET, "/metrics"), StatusCode::OK);
        assert_eq!(
            get(Method::POST, "/metrics"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(get(Method::GET, "/"), StatusCode::NOT_FOUND);
    }
}
