//! gRPC for the three roles, one file per service, and what they share: the
//! one place where [`SeqError`] and `tonic::Status` map, namespace
//! conversions, channels with our timeouts, and serving with bounded
//! connections.
//!
//! - [`store_service`]: the `seqsvc store` process over a [`SharedStore`];
//!   [`remote_store`]: its client, itself a [`SharedStore`].
//! - [`arbiter_service`]: the arbiter over its core.
//! - [`alloc_service`]: the AllocSvr over its core, and its heartbeats to the
//!   arbiters.
//! - [`store_url`]: the shared store a `--store` URL names.
//!
//! TLS is a property of the process: a server role given a certificate
//! serves only TLS ([`serve`]), and a process that called
//! [`use_client_tls`] reaches every other role over TLS (addresses in the
//! routing table carry no scheme, so the choice cannot be per address).
//!
//! [`SharedStore`]: crate::store::SharedStore

pub mod alloc_service;
pub mod arbiter_service;
pub mod remote_store;
pub mod store_service;
pub mod store_url;

pub use alloc_service::{AllocService, spawn_heartbeats};
pub use arbiter_service::ArbiterService;
pub use remote_store::RemoteStore;
pub use store_service::StoreService;
pub use store_url::open_store;

use crate::{Namespace, Result, SeqError};
use proto::seqsvc::v1 as pb;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

static CLIENT_TLS: OnceLock<ClientTlsConfig> = OnceLock::new();

/// From now on this process calls every seqsvc role over TLS, trusting
/// certificates signed by the CA in `ca_pem`. Set once, at startup; a
/// later call changes nothing and says so.
pub fn use_client_tls(ca_pem: &[u8]) -> Result<()> {
    if !String::from_utf8_lossy(ca_pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SeqError::InvalidArgument(
            "the CA file holds no PEM certificate".into(),
        ));
    }
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    CLIENT_TLS
        .set(config)
        .map_err(|_| SeqError::InvalidArgument("TLS for seqsvc calls was already set up".into()))
}
use tonic::{Code, Request, Status};

/// Deadline of one call to the store process: a store that does not answer
/// within it counts as failed (the AllocSvr's lease covers several).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one call from a routing client to an AllocSvr or arbiter.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl From<SeqError> for Status {
    fn from(error: SeqError) -> Self {
        let code = match &error {
            SeqError::InvalidArgument(_) => Code::InvalidArgument,
            SeqError::Exhausted { .. } => Code::OutOfRange,
            SeqError::Store(_) | SeqError::NotServing(_) | SeqError::Unavailable(_) => {
                Code::Unavailable
            }
        };
        Status::new(code, error.to_string())
    }
}

/// A failed call as seen by a caller: its own argument errors stay
/// argument errors, everything else may succeed on a retry.
pub fn error_from_status(status: Status) -> SeqError {
    match status.code() {
        Code::InvalidArgument => SeqError::InvalidArgument(status.message().to_owned()),
        Code::OutOfRange => SeqError::InvalidArgument(status.message().to_owned()),
        _ => SeqError::Unavailable(format!("{:?}: {}", status.code(), status.message())),
    }
}

pub fn namespace_from_proto(namespace: i32) -> Result<Namespace> {
    match pb::Namespace::try_from(namespace) {
        Ok(pb::Namespace::User) => Ok(Namespace::Inbox),
        Ok(pb::Namespace::Conversation) => Ok(Namespace::Conversation),
        Ok(pb::Namespace::Counter) => Ok(Namespace::Counter),
        _ => Err(SeqError::InvalidArgument(format!(
            "namespace {namespace}: expected user, conversation or counter"
        ))),
    }
}

pub fn namespace_to_proto(namespace: Namespace) -> Result<pb::Namespace> {
    match namespace {
        Namespace::Inbox => Ok(pb::Namespace::User),
        Namespace::Conversation => Ok(pb::Namespace::Conversation),
        Namespace::Counter => Ok(pb::Namespace::Counter),
        Namespace::SnowflakeClock => Err(SeqError::InvalidArgument(
            "snowflake clocks are reserved through node-id leases".into(),
        )),
    }
}

/// An endpoint for `host:port` (or an `http://`/`https://` URL) with our
/// connect timeout, over TLS once [`use_client_tls`] was called; lazy, so a
/// process that is down now may be reached later.
pub fn channel(url: &str) -> Result<Channel> {
    let tls = CLIENT_TLS.get();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let url = match tls {
        Some(_) => format!("https://{rest}"),
        None if url.starts_with("https://") => url.to_owned(),
        None => format!("http://{rest}"),
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| SeqError::InvalidArgument(format!("address {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let config = tls
            .cloned()
            .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| SeqError::InvalidArgument(format!("TLS for {url:?}: {e}")))?;
    }
    Ok(endpoint.connect_lazy())
}

pub(crate) fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Concurrent calls one connection may carry.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;
/// Connections a seqsvc server keeps open at once; past it new clients wait
/// in the kernel's backlog. Its clients are syncd processes, AllocSvrs and
/// arbiters, each with a few connections.
pub const MAX_CONNECTIONS: usize = 4_096;

/// Serves `routes` (one service each, from its `into_routes`) on
/// `listener` until `shutdown` resolves; only TLS when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
    tls: Option<Identity>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (stop_accepting, accept_stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stop_accepting.send(());
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    builder
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(crate::incoming::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::incoming::KEEPALIVE_TIMEOUT))
        .layer(crate::telemetry::RpcMetricsLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            crate::incoming::limited_incoming(listener, MAX_CONNECTIONS, accept_stopped),
            signal,
        )
        .await
}
