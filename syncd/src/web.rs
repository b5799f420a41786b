//! Browsers as devices: gRPC-Web next to native gRPC on the same port, CORS
//! for an allow-list of origins, and (optionally) the web app's static files.
//!
//! A browser cannot speak native gRPC (fetch exposes neither HTTP/2 framing
//! nor trailers), so each public service is wrapped in tonic-web's
//! translation: a request whose content type is `application/grpc-web*` is
//! turned into a gRPC call of the same service, with the same interceptors,
//! limits and status mapping; everything else passes through untouched. The
//! wrapping is per service rather than around the whole server because
//! tonic-web answers 400 to any other HTTP/1.1 request, and the static files
//! are plain HTTP/1.1 GETs routed to the router's fallback.
//!
//! # Invariants
//! - No origin is allowed by default: cross-origin browser calls need an
//!   explicit `--cors-origin`. A page served by `--web-root` is same-origin
//!   and needs none.
//! - The headers a gRPC-Web client reads for the status are exposed
//!   ([`EXPOSED_HEADERS`]); without them a browser sees every error,
//!   UNAUTHENTICATED on the trailers-only path included, as a network error.
//! - Static files are only served from `--web-root`, never from anywhere
//!   else (tower-http's `ServeDir` refuses `..` and absolute paths).

use crate::server::StartupError;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::body::Body;
use tonic::codegen::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tonic::codegen::{BoxFuture, Context, Poll, Service};
use tonic::service::Routes;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;
use tower_layer::Layer;

/// How long a browser may cache a preflight answer.
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a gRPC-Web client sends (connect-web's transport and
/// grpc-web's), besides the bearer token.
pub const ALLOWED_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
];

/// Response headers the browser must let the page read: the call's status
/// arrives in them when the reply has no body (the trailers-only path).
pub const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// What `syncd serve` offers browsers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebOptions {
    /// Origins (`scheme://host[:port]`) whose pages may call the API.
    pub cors_origins: Vec<HeaderValue>,
    /// A directory of static files served at `/` (the built web app).
    pub web_root: Option<PathBuf>,
}

impl WebOptions {
    /// Checks the flags: every origin must be a bare `http(s)://host[:port]`
    /// (what a browser sends in `Origin`, so a path or a trailing slash
    /// would never match), and the web root a directory.
    pub fn new(cors_origins: &[String], web_root: Option<&Path>) -> Result<Self, StartupError> {
        let cors_origins = cors_origins
            .iter()
            .map(|origin| parse_origin(origin))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(dir) = web_root
            && !dir.is_dir()
        {
            return Err(StartupError::InvalidOption(format!(
                "--web-root {}: not a directory",
                dir.display()
            )));
        }
        Ok(Self {
            cors_origins,
            web_root: web_root.map(Path::to_path_buf),
        })
    }

    /// The CORS layer for the whole server: preflights from allowed origins
    /// are answered, others get no `access-control-allow-origin`, so the
    /// browser refuses the call before it is made.
    pub fn cors_layer(&self) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(self.cors_origins.iter().cloned()))
            .allow_methods([Method::POST])
            .allow_headers(ALLOWED_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(PREFLIGHT_MAX_AGE)
    }

    /// The routes with the static files as the fallback for GETs of paths
    /// no gRPC service claims. Without a web root, and for every other
    /// method, the fallback stays UNIMPLEMENTED, so a gRPC client calling an
    /// unknown method is told so rather than given an HTTP error.
    pub fn with_static_files(&self, routes: Routes) -> Routes {
        match &self.web_root {
            Some(dir) => routes
                .into_axum_router()
                .fallback_service(StaticFiles {
                    files: ServeDir::new(dir),
                })
                .into(),
            None => routes,
        }
    }
}

/// GET and HEAD from the web root; anything else is a gRPC call of a
/// method that does not exist.
#[derive(Clone)]
struct StaticFiles {
    files: ServeDir,
}

impl<B> Service<Request<B>> for StaticFiles
where
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.method() == Method::GET || request.method() == Method::HEAD {
            let served = self.files.try_call(request);
            Box::pin(async move {
                Ok(match served.await {
                    Ok(response) => response.map(Body::new),
                    Err(error) => {
                        tracing::warn!(%error, "reading a file of the web root");
                        let mut response = Response::new(Body::empty());
                        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        response
                    }
                })
            })
        } else {
            let (parts, ()) = tonic::Status::unimplemented("")
                .into_http::<()>()
                .into_parts();
            Box::pin(async move { Ok(Response::from_parts(parts, Body::empty())) })
        }
    }
}

/// A service that also answers gRPC-Web (HTTP/1.1 or HTTP/2).
pub fn grpc_web<S>(service: S) -> tonic_web::GrpcWebService<S> {
    tonic_web::GrpcWebLayer::new().layer(service)
}

fn parse_origin(origin: &str) -> Result<HeaderValue, StartupError> {
    let invalid = |why: &str| {
        StartupError::InvalidOption(format!(
            "--cors-origin {origin:?}: {why} (expected http://host[:port] or https://host[:port])"
        ))
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| invalid("not an http or https origin"))?;
    if rest.is_empty() {
        return Err(invalid("no host"));
    }
    if rest.contains(['/', '?', '#', '*', '@']) || rest.chars().any(char::is_whitespace) {
        return Err(invalid("an origin has no path, query, user or wildcard"));
    }
    HeaderValue::from_str(origin).map_err(|_| invalid("not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_bare_scheme_host_and_port() {
        let ok = WebOptions::new(
            &[
                "http://127.0.0.1:5173".into(),
                "https://chat.example".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(ok.cors_origins.len(), 2);
        for bad in [
            "127.0.0.1:5173",
            "http://",
            "https://chat.example/",
            "https://chat.example/app",
            "*",
            "http://*",
            "ftp://chat.example",
            "http://a b",
        ] {
            let error = WebOptions::new(&[bad.into()], None)
                .unwrap_err()
                .to_string();
            assert!(error.contains("--cors-origin"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_web_root_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(WebOptions::new(&[], Some(dir.path())).is_ok());
        let file = dir.path().join("index.html");
        std::fs::write(&file, "<html>").unwrap();
        let error = WebOptions::new(&[], Some(&file)).unwrap_err().to_string();
        assert!(error.contains("not a directory"), "{error}");
        let missing = dir.path().join("missing");
        assert!(WebOptions::new(&[], Some(&missing)).is_err());
    }
}
