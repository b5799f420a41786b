//! gRPC for the three roles: the store service over a [`SharedStore`], the
//! arbiter and AllocSvr services over their cores, a remote store client,
//! and the one place where [`SeqError`] and `tonic::Status` map.

use crate::alloc_server::{AllocServer, Routed};
use crate::arbiter::Arbiter;
use crate::routing::RoutingTable;
use crate::store::{MaxSeqStore, RouteStore, SharedStore};
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use proto::seqsvc::v1 as pb;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

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

/// An `http://host:port` endpoint with our connect timeout; lazy, so a
/// process that is down now may be reached later.
pub fn channel(url: &str) -> Result<Channel> {
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| SeqError::InvalidArgument(format!("address {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
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

/// A tonic service this crate's processes can serve.
pub trait Servable:
    tonic::codegen::Service<
        tonic::codegen::http::Request<tonic::body::Body>,
        Response = tonic::codegen::http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    > + tonic::server::NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Servable for S where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves one service on `listener` until `shutdown` resolves.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    service: S,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    S: Servable,
    S::Future: Send + 'static,
{
    let (stop_accepting, accept_stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stop_accepting.send(());
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .add_service(service)
        .serve_with_incoming_shutdown(
            crate::incoming::limited_incoming(listener, MAX_CONNECTIONS, accept_stopped),
            signal,
        )
        .await
}

/// The shared store named by a `--store` URL: `http://HOST:PORT` (a
/// `seqsvc store` process) or `scylla://...` (the syncd URL form).
pub async fn open_store(url: &str) -> Result<Arc<dyn SharedStore>> {
    if url.starts_with("http://") {
        return Ok(Arc::new(RemoteStore::connect_lazy(url)?));
    }
    if url.starts_with("scylla://") {
        let store_error = |e: timeline_store::StoreError| match e {
            timeline_store::StoreError::InvalidArgument(m) => SeqError::InvalidArgument(m),
            other => SeqError::Store(other.to_string()),
        };
        let config = timeline_store::scylla::ScyllaConfig::parse(url).map_err(store_error)?;
        let session = config.connect().await.map_err(store_error)?;
        let store = crate::CqlMaxSeqStore::open(session, &config.keyspace).await?;
        return Ok(Arc::new(store));
    }
    Err(SeqError::InvalidArgument(format!(
        "store {url:?}: expected http://HOST:PORT or scylla://host:port/keyspace"
    )))
}

// ---- the store process ----

/// Serves a [`SharedStore`] (the embedded one in `seqsvc store`).
pub struct StoreService {
    store: Arc<dyn SharedStore>,
    /// While a file exists at this path every raise fails: a fault injection
    /// hook for tests of the "store error is an error reply" rule.
    fail_raises_while: Option<PathBuf>,
}

impl StoreService {
    pub fn new(store: Arc<dyn SharedStore>, fail_raises_while: Option<PathBuf>) -> Self {
        Self {
            store,
            fail_raises_while,
        }
    }

    pub fn into_server(self) -> pb::seq_store_server::SeqStoreServer<Self> {
        pb::seq_store_server::SeqStoreServer::new(self)
    }
}

fn namespace_from_code(code: u32) -> Result<Namespace> {
    u8::try_from(code)
        .ok()
        .and_then(Namespace::from_code)
        .ok_or_else(|| SeqError::InvalidArgument(format!("unknown namespace code {code}")))
}

#[tonic::async_trait]
impl pb::seq_store_server::SeqStore for StoreService {
    async fn load_max_seq(
        &self,
        request: Request<pb::LoadMaxSeqRequest>,
    ) -> Result<Response<pb::MaxSeqReply>, Status> {
        let r = request.into_inner();
        let max_seq = self
            .store
            .load(namespace_from_code(r.namespace_code)?, r.section)
            .await?;
        Ok(Response::new(pb::MaxSeqReply { max_seq }))
    }

    async fn raise_max_seq(
        &self,
        request: Request<pb::RaiseMaxSeqRequest>,
    ) -> Result<Response<pb::MaxSeqReply>, Status> {
        let r = request.into_inner();
        let namespace = namespace_from_code(r.namespace_code)?;
        if self.fail_raises_while.as_ref().is_some_and(|p| p.exists()) {
            return Err(SeqError::Store("injected raise failure".into()).into());
        }
        let max_seq = self.store.raise(namespace, r.section, r.at_least).await?;
        Ok(Response::new(pb::MaxSeqReply { max_seq }))
    }

    async fn read_routes(
        &self,
        _request: Request<pb::ReadRoutesRequest>,
    ) -> Result<Response<pb::ReadRoutesReply>, Status> {
        let table = self.store.read_routes().await?;
        Ok(Response::new(pb::ReadRoutesReply {
            table: table.map(|t| t.to_proto()),
        }))
    }

    async fn write_routes(
        &self,
        request: Request<pb::WriteRoutesRequest>,
    ) -> Result<Response<pb::WriteRoutesReply>, Status> {
        let r = request.into_inner();
        let table = r
            .table
            .ok_or_else(|| SeqError::InvalidArgument("no table given".into()))?;
        let table = RoutingTable::from_proto(&table)?;
        let (applied, current) = self.store.write_routes(r.expected_version, &table).await?;
        Ok(Response::new(pb::WriteRoutesReply {
            applied,
            current: current.map(|t| t.to_proto()),
        }))
    }
}

/// The shared store reached over gRPC (`--store http://host:port`).
#[derive(Clone)]
pub struct RemoteStore {
    client: pb::seq_store_client::SeqStoreClient<Channel>,
}

impl RemoteStore {
    pub fn connect_lazy(url: &str) -> Result<Self> {
        Ok(Self {
            client: pb::seq_store_client::SeqStoreClient::new(channel(url)?),
        })
    }
}

fn store_error(status: Status) -> SeqError {
    let message = status.message();
    match status.code() {
        Code::InvalidArgument => SeqError::InvalidArgument(message.to_owned()),
        // The store's own failure, already worded as one.
        Code::Unavailable if message.starts_with(STORE_FAILED) => {
            SeqError::Store(message[STORE_FAILED.len()..].to_owned())
        }
        code => SeqError::Store(format!("{code:?}: {message}")),
    }
}

/// How a [`SeqError::Store`] reads on the wire.
const STORE_FAILED: &str = "shared store failed: ";

#[async_trait]
impl MaxSeqStore for RemoteStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        let request = pb::LoadMaxSeqRequest {
            namespace_code: u32::from(namespace.code()),
            section,
        };
        let reply = self
            .client
            .clone()
            .load_max_seq(with_timeout(request, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?;
        Ok(reply.into_inner().max_seq)
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let request = pb::RaiseMaxSeqRequest {
            namespace_code: u32::from(namespace.code()),
            section,
            at_least,
        };
        let reply = self
            .client
            .clone()
            .raise_max_seq(with_timeout(request, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?;
        let stored = reply.into_inner().max_seq;
        if stored < at_least {
            return Err(SeqError::Store(format!(
                "store answered max_seq {stored} to a raise to {at_least}"
            )));
        }
        Ok(stored)
    }
}

#[async_trait]
impl RouteStore for RemoteStore {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        let reply = self
            .client
            .clone()
            .read_routes(with_timeout(pb::ReadRoutesRequest {}, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?;
        reply
            .into_inner()
            .table
            .map(|t| RoutingTable::from_proto(&t))
            .transpose()
    }

    async fn write_routes(
        &self,
        expected_version: u64,
        table: &RoutingTable,
    ) -> Result<(bool, Option<RoutingTable>)> {
        let request = pb::WriteRoutesRequest {
            expected_version,
            table: Some(table.to_proto()),
        };
        let reply = self
            .client
            .clone()
            .write_routes(with_timeout(request, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?
            .into_inner();
        let current = reply
            .current
            .map(|t| RoutingTable::from_proto(&t))
            .transpose()?;
        Ok((reply.applied, current))
    }
}

// ---- the arbiter ----

pub struct ArbiterService {
    arbiter: Arbiter,
}

impl ArbiterService {
    pub fn new(arbiter: Arbiter) -> Self {
        Self { arbiter }
    }

    pub fn into_server(self) -> pb::arbiter_server::ArbiterServer<Self> {
        pb::arbiter_server::ArbiterServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::arbiter_server::Arbiter for ArbiterService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let table_version = self.arbiter.heartbeat(&request.into_inner().addr)?;
        Ok(Response::new(pb::HeartbeatReply { table_version }))
    }

    async fn get_routes(
        &self,
        _request: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesReply>, Status> {
        Ok(Response::new(pb::GetRoutesReply {
            table: Some(self.arbiter.table().to_proto()),
        }))
    }
}

// ---- the AllocSvr ----

pub struct AllocService {
    server: AllocServer,
}

impl AllocService {
    pub fn new(server: AllocServer) -> Self {
        Self { server }
    }

    pub fn into_server(self) -> pb::alloc_svr_server::AllocSvrServer<Self> {
        pb::alloc_svr_server::AllocSvrServer::new(self)
    }
}

fn moved(table: &RoutingTable) -> Option<pb::RoutingTable> {
    Some(table.to_proto())
}

#[tonic::async_trait]
impl pb::alloc_svr_server::AllocSvr for AllocService {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateReply>, Status> {
        let r = request.into_inner();
        let namespace = namespace_from_proto(r.namespace)?;
        let reply = match self
            .server
            .allocate(namespace, &r.ids, r.table_version)
            .await?
        {
            Routed::Served(seqs) => pb::AllocateReply { seqs, moved: None },
            Routed::Moved(table) => pb::AllocateReply {
                seqs: Vec::new(),
                moved: moved(&table),
            },
        };
        Ok(Response::new(reply))
    }

    async fn current(
        &self,
        request: Request<pb::CurrentRequest>,
    ) -> Result<Response<pb::CurrentReply>, Status> {
        let r = request.into_inner();
        let namespace = namespace_from_proto(r.namespace)?;
        let reply = match self
            .server
            .current(namespace, &r.ids, r.table_version)
            .await?
        {
            Routed::Served(seqs) => pb::CurrentReply { seqs, moved: None },
            Routed::Moved(table) => pb::CurrentReply {
                seqs: Vec::new(),
                moved: moved(&table),
            },
        };
        Ok(Response::new(reply))
    }

    async fn lease_node_id(
        &self,
        request: Request<pb::LeaseNodeIdRequest>,
    ) -> Result<Response<pb::LeaseNodeIdReply>, Status> {
        let r = request.into_inner();
        let preferred = if r.has_preferred {
            Some(u16::try_from(r.preferred).map_err(|_| {
                SeqError::InvalidArgument(format!("node id {} out of range", r.preferred))
            })?)
        } else {
            None
        };
        let reply = match self
            .server
            .lease_node_id(&r.holder, preferred, r.reserve_until_ms, r.table_version)
            .await?
        {
            Routed::Served(grant) => pb::LeaseNodeIdReply {
                node_id: u32::from(grant.node_id),
                floor_ms: grant.floor_ms,
                reserved_ms: grant.reserved_ms,
                lease_ms: grant.lease.as_millis() as u64,
                moved: None,
            },
            Routed::Moved(table) => pb::LeaseNodeIdReply {
                moved: moved(&table),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_routes(
        &self,
        _request: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesReply>, Status> {
        Ok(Response::new(pb::GetRoutesReply {
            table: self.server.table().map(|t| t.to_proto()),
        }))
    }
}

/// Sends heartbeats to every arbiter until the process ends.
pub fn spawn_heartbeats(
    server: &AllocServer,
    arbiters: Vec<String>,
) -> Result<tokio::task::JoinHandle<()>> {
    let clients = arbiters
        .iter()
        .map(|url| {
            Ok((
                url.clone(),
                pb::arbiter_client::ArbiterClient::new(channel(url)?),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // One task per arbiter, so one that is down does not delay the others.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(url, mut client)| {
            let server = server.clone();
            tokio::spawn(async move {
                loop {
                    let request = with_timeout(
                        pb::HeartbeatRequest {
                            addr: server.addr().to_owned(),
                        },
                        STORE_CALL_TIMEOUT,
                    );
                    if let Err(status) = client.heartbeat(request).await {
                        tracing::debug!(arbiter = %url, %status, "heartbeat failed");
                    }
                    let interval = server
                        .table()
                        .map_or(Duration::from_millis(500), |t| t.lease.sync_interval);
                    tokio::time::sleep(interval).await;
                }
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
    }))
}
