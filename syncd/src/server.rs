//! Opening a node (store, allocator, ids, auth) and serving it over gRPC (and
//! gRPC-Web, [`crate::web`]) with bounded connections, health, reflection and
//! graceful shutdown.

use crate::auth::jwt::{JwtConfig, JwtKeyError, JwtVerifier};
use crate::auth::revocation::RevocationGuard;
use crate::auth::{Authenticator, TokenAuthority};
use crate::engine::Engine;
use crate::grpc::{AdminService, TimelineService};
use crate::health::Health;
use crate::limits::{
    MAX_CONNECTIONS, MAX_REPLY_BYTES, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION,
};
use crate::web::{WebOptions, grpc_web};
use proto::timeline::v1 as pb;
use seqsvc::client::{DEFAULT_RETRY_FOR, NodeIdLease, RoutingClient, SeqSource};
use seqsvc::{Allocator, AllocatorConfig, FjallMaxSeqStore, MsgIdGenerator};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use timeline_store::{EmbeddedStore, EmbeddedStoreConfig, ScyllaTimelineStore, TimelineStore};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("timeline store: {0}")]
    Store(#[from] timeline_store::StoreError),
    #[error("sequence allocator: {0}")]
    Seq(#[from] seqsvc::SeqError),
    #[error("search index: {0}")]
    Search(#[from] search::SearchError),
    #[error("grpc: {0}")]
    Transport(String),
    #[error("JWT key {0}")]
    Jwt(#[from] JwtKeyError),
    #[error("TLS: {0}")]
    Tls(String),
    /// A serve option that cannot work (the message names the flag).
    #[error("{0}")]
    InvalidOption(String),
    /// The node failed for good while serving (its store is poisoned); a
    /// restart recovers.
    #[error("the node failed: {0}")]
    Failed(String),
}

/// Where timelines and sequence state live.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreLocation {
    /// fjall databases under the data directory (the default).
    Embedded,
    /// A ScyllaDB (or other CQL) cluster.
    Scylla(timeline_store::ScyllaConfig),
}

impl StoreLocation {
    /// `embedded`, or `scylla://host:port[,host:port]/keyspace[?options]`.
    pub fn parse(text: &str) -> Result<Self, StartupError> {
        if text == "embedded" {
            Ok(StoreLocation::Embedded)
        } else if text.starts_with("scylla://") {
            let config = timeline_store::ScyllaConfig::parse(text)
                .map_err(timeline_store::StoreError::from)?;
            Ok(StoreLocation::Scylla(config))
        } else {
            Err(StartupError::Store(
                timeline_store::StoreError::InvalidArgument(format!(
                    "store {text:?}: expected \"embedded\" or scylla://host:port/keyspace"
                )),
            ))
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Holds the auth key, and the embedded databases when `store` is
    /// [`StoreLocation::Embedded`].
    pub data_dir: PathBuf,
    pub store: StoreLocation,
    /// Snowflake node id; unique among processes sharing a store. With a
    /// seqsvc cluster, the one to ask for (the cluster leases it).
    pub node_id: u16,
    pub allocator: AllocatorConfig,
    /// Arbiter addresses of a seqsvc cluster; empty: the in-process
    /// allocator on the data directory (or the CQL store).
    pub seqsvc: Vec<String>,
    pub engine: crate::engine::EngineConfig,
    /// Accept JWTs checked with this key (besides `tl1` tokens).
    pub jwt: Option<JwtConfig>,
    /// Serve TLS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// Call the seqsvc cluster over TLS, trusting this CA (a PEM file).
    pub seqsvc_ca_cert: Option<PathBuf>,
    /// Where the search index lives.
    pub search: SearchBackend,
}

/// Which search index a node keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SearchBackend {
    /// tantivy in the data directory's `search/`: one index per node.
    #[default]
    Embedded,
    /// An index in an OpenSearch cluster, shared by the nodes (versioned
    /// writes: an indexer that lost its lease cannot set it back).
    OpenSearch(search::OpenSearchOptions),
    /// No history search: nothing is indexed (no indexing work on the
    /// commit path) and searches are refused with FAILED_PRECONDITION.
    Off,
}

/// A certificate chain and its private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads both files (blocking: call at startup).
    pub fn identity(&self) -> Result<tonic::transport::Identity, StartupError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| StartupError::Tls(format!("{}: {e}", path.display())))
        };
        let (cert, key) = (read(&self.cert)?, read(&self.key)?);
        if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
            return Err(StartupError::Tls(format!(
                "{}: not a PEM certificate",
                self.cert.display()
            )));
        }
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            return Err(StartupError::Tls(format!(
                "{}: not a PEM private key",
                self.key.display()
            )));
        }
        Ok(tonic::transport::Identity::from_pem(cert, key))
    }
}

/// Everything one syncd process runs on.
pub struct Node {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub tls: Option<tonic::transport::Identity>,
}

/// The data directory layout: `store/` (timelines), `seq/` (max_seq and
/// clock reservations), `search/` (the search index), `auth.key`.
/// What a node loads from its data directory and key files before it opens
/// any store: the `tl1` token authority, the JWT verifier, the TLS identity.
pub(crate) struct Keys {
    pub tl1: TokenAuthority,
    pub jwt: Option<JwtVerifier>,
    pub tls: Option<tonic::transport::Identity>,
}

pub(crate) async fn load_keys(config: &NodeConfig) -> Result<Keys, StartupError> {
    let dir = config.data_dir.clone();
    let data_dir_error = |source| StartupError::DataDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(data_dir_error)?;
    let tl1 = TokenAuthority::load_or_create(&dir).map_err(data_dir_error)?;
    let jwt = match config.jwt.clone() {
        Some(jwt) => Some(
            tokio::task::spawn_blocking(move || JwtVerifier::load(jwt))
                .await
                .map_err(|e| StartupError::Transport(format!("key loading task failed: {e}")))??,
        ),
        None => None,
    };
    let tls = match config.tls.clone() {
        Some(files) => Some(
            tokio::task::spawn_blocking(move || files.identity())
                .await
                .map_err(|e| StartupError::Transport(format!("TLS loading task failed: {e}")))??,
        ),
        None => None,
    };
    Ok(Keys { tl1, jwt, tls })
}

pub async fn open_node(config: &NodeConfig) -> Result<Node, StartupError> {
    let dir = config.data_dir.clone();
    let Keys { tl1, jwt, tls } = load_keys(config).await?;
    let (store, seq_store) = open_stores(&config.store, &dir).await?;
    let auth = Arc::new(Authenticator::new(
        tl1,
        jwt,
        RevocationGuard::new(Arc::clone(&store)),
    ));
    // Before anything reads a max_seq: under another layout it would bound
    // other ids' seqs.
    claim_seq_layout(config, seq_store.as_ref()).await?;
    // Events a crash interrupted are finished before anyone can read.
    metrics::gauge!("syncd_recovering").set(1.0);
    let finished = store.recover().await;
    metrics::gauge!("syncd_recovering").set(0.0);
    let finished = finished?;
    metrics::counter!("syncd_recovered_events_total").increment(finished as u64);
    if finished > 0 {
        tracing::info!(
            finished,
            "finished the events the last run left (interrupted ones, and on ScyllaDB complete ones not removed yet)"
        );
    }
    let index = open_search_index(&dir, &config.search).await?;
    let clock = seqsvc::snowflake::system_clock();
    let engine = if config.seqsvc.is_empty() {
        let allocator = Allocator::new(config.allocator.clone(), Arc::clone(&seq_store))?;
        let ids = MsgIdGenerator::open(config.node_id, clock, seq_store).await?;
        Engine::with_optional_search(store, allocator, ids, config.engine.clone(), index)
    } else {
        let (client, lease) = join_seqsvc(config, "syncd").await?;
        let ids = MsgIdGenerator::with_reservations(clock, lease)?;
        Engine::with_optional_search(
            store,
            SeqSource::Remote(client),
            ids,
            config.engine.clone(),
            index,
        )
    };
    Ok(Node { engine, auth, tls })
}

/// Claims the sequence layout `config` implies (in-process sections of its
/// size, or a seqsvc cluster): a store written under another layout is
/// refused, since its max_seq values would bound other ids' seqs.
pub(crate) async fn claim_seq_layout(
    config: &NodeConfig,
    seq_store: &dyn seqsvc::MaxSeqStore,
) -> Result<(), StartupError> {
    let layout = if config.seqsvc.is_empty() {
        seqsvc::SeqLayout::InProcess {
            section_size: config.allocator.section_size,
        }
    } else {
        seqsvc::SeqLayout::Cluster
    };
    Ok(seqsvc::claim_layout(seq_store, layout).await?)
}

/// Connects to `config`'s seqsvc cluster (over TLS with its CA, if given)
/// and leases a node id as `holder_prefix`-<uuid>, renewed in the
/// background.
pub(crate) async fn join_seqsvc(
    config: &NodeConfig,
    holder_prefix: &str,
) -> Result<(RoutingClient, Arc<NodeIdLease>), StartupError> {
    if let Some(path) = &config.seqsvc_ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| StartupError::Tls(format!("{}: {e}", path.display())))?;
        seqsvc::grpc::use_client_tls(&pem)
            .map_err(|e| StartupError::Tls(format!("{}: {e}", path.display())))?;
    }
    let client = RoutingClient::new(&config.seqsvc, DEFAULT_RETRY_FOR)?;
    let holder = format!("{holder_prefix}-{}", uuid::Uuid::new_v4());
    let lease = NodeIdLease::acquire(client.clone(), holder, Some(config.node_id)).await?;
    lease.spawn_renewals();
    tracing::info!(node_id = lease.node_id(), arbiters = ?config.seqsvc, "using the seqsvc cluster");
    Ok((client, lease))
}

type Stores = (Arc<dyn TimelineStore>, Arc<dyn seqsvc::MaxSeqStore>);

/// The search index: the data directory's embedded one (every node keeps
/// its own, whichever store it uses), an OpenSearch index, or none.
pub(crate) async fn open_search_index(
    data_dir: &Path,
    backend: &SearchBackend,
) -> Result<Option<Arc<dyn search::SearchIndex>>, StartupError> {
    open_index(data_dir, backend, false).await
}

/// [`open_search_index`]; `to_rebuild`: an OpenSearch index an earlier
/// version wrote is replaced rather than refused.
async fn open_index(
    data_dir: &Path,
    backend: &SearchBackend,
    to_rebuild: bool,
) -> Result<Option<Arc<dyn search::SearchIndex>>, StartupError> {
    let dir = data_dir.join("search");
    let backend = backend.clone();
    let open = move || -> Result<Option<Arc<dyn search::SearchIndex>>, search::SearchError> {
        Ok(match backend {
            SearchBackend::Embedded => Some(Arc::new(search::TantivyIndex::open(&dir)?)),
            SearchBackend::OpenSearch(options) if to_rebuild => Some(Arc::new(
                search::OpenSearchIndex::open_to_rebuild(&options)?,
            )),
            SearchBackend::OpenSearch(options) => {
                Some(Arc::new(search::OpenSearchIndex::open(&options)?))
            }
            SearchBackend::Off => None,
        })
    };
    Ok(tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| StartupError::Transport(format!("open task failed: {e}")))??)
}

/// Rebuilds the data directory's search index from the timelines of
/// `location`, with the node stopped; returns how many conversations it
/// indexed.
pub async fn reindex(
    data_dir: &Path,
    location: &StoreLocation,
    backend: &SearchBackend,
) -> Result<usize, StartupError> {
    let search_off = || {
        StartupError::InvalidOption(
            "search is off (--search-backend none): there is no index to rebuild".into(),
        )
    };
    // Before the store is opened: nothing is touched.
    if *backend == SearchBackend::Off {
        return Err(search_off());
    }
    let (store, _) = open_stores(location, data_dir).await?;
    // Interrupted events first: the rebuild reads whole timelines.
    store.recover().await?;
    let index = open_index(data_dir, backend, true)
        .await?
        .ok_or_else(search_off)?;
    let indexing = crate::search_index::SearchIndexing::new(store, None, index);
    indexing
        .rebuild()
        .await
        .map_err(|e| StartupError::Failed(format!("reindex: {e}")))
}

async fn open_stores(location: &StoreLocation, data_dir: &Path) -> Result<Stores, StartupError> {
    match location {
        StoreLocation::Embedded => {
            let dir = data_dir.to_path_buf();
            let open = move || -> Result<Stores, StartupError> {
                let store =
                    EmbeddedStore::open(&dir.join("store"), EmbeddedStoreConfig::default())?;
                let seq_store = FjallMaxSeqStore::open(&dir.join("seq"))?;
                Ok((Arc::new(store), Arc::new(seq_store)))
            };
            tokio::task::spawn_blocking(open)
                .await
                .map_err(|e| StartupError::Transport(format!("open task failed: {e}")))?
        }
        StoreLocation::Scylla(scylla) => {
            let session = scylla
                .connect()
                .await
                .map_err(timeline_store::StoreError::from)?;
            let store = ScyllaTimelineStore::open(Arc::clone(&session), &scylla.keyspace).await?;
            let seq_store = seqsvc::CqlMaxSeqStore::open(session, &scylla.keyspace).await?;
            Ok((Arc::new(store), Arc::new(seq_store)))
        }
    }
}

/// Reads the token authority of a data directory (creating its key).
pub fn token_authority(data_dir: &Path) -> Result<TokenAuthority, StartupError> {
    TokenAuthority::load_or_create(data_dir).map_err(|source| StartupError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })
}

/// Serves until `shutdown` resolves, then stops accepting, ends push
/// streams and waits for in-flight calls.
pub async fn serve(
    listener: TcpListener,
    node: Node,
    web: WebOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    // Checked before the first call can come, so a client never sees a
    // starting node as NOT_SERVING; then re-checked while it serves.
    let initial = node.engine.health().await;
    publish_health(&health, &initial).await;
    let (status, mut status_changes) = tokio::sync::watch::channel(initial);
    let checked = Arc::clone(&node.engine);
    node.engine.spawn(crate::health::watch_health(
        move || {
            let engine = Arc::clone(&checked);
            async move { engine.health().await }
        },
        status,
        node.engine.stopping(),
    ));
    let reporter = health.clone();
    node.engine.spawn(async move {
        // Ends when the checking loop does (shutdown).
        while status_changes.changed().await.is_ok() {
            let now = status_changes.borrow_and_update().clone();
            publish_health(&reporter, &now).await;
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Transport(e.to_string()))?;
    let timeline = pb::timeline_server::TimelineServer::new(TimelineService::new(
        Arc::clone(&node.engine),
        Arc::clone(&node.auth),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_REPLY_BYTES);
    let admin = pb::admin_server::AdminServer::new(AdminService::new(
        Arc::clone(&node.engine),
        Arc::clone(&node.auth),
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES)
    .max_encoding_message_size(MAX_REPLY_BYTES);

    node.engine.start();
    let revocations = Arc::clone(node.auth.revocations());
    node.engine
        .spawn(revocations.poll_feed(node.engine.stopping()));
    let engine = Arc::clone(&node.engine);
    let (stop_accepting, accept_stopped) = tokio::sync::oneshot::channel::<()>();
    let failed_reporter = health.clone();
    let signal = async move {
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutting down: no new connections, ending push streams");
            }
            reason = engine.failed() => {
                // Load balancers and supervisors see it at once; the exit
                // code after the drain tells the supervisor to restart.
                tracing::error!(%reason, "the store failed for good: NOT_SERVING, stopping so that a restart recovers from the journal");
                publish_health(&failed_reporter, &Health::NotServing(reason)).await;
            }
        }
        let _ = stop_accepting.send(());
        engine.begin_shutdown();
    };
    let incoming = seqsvc::incoming::limited_incoming(listener, MAX_CONNECTIONS, accept_stopped);
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(grpc_web(health_service))
        .add_service(reflection)
        .add_service(grpc_web(timeline))
        .add_service(grpc_web(admin));
    let routes = web.with_static_files(routes.routes());
    let mut builder = tonic::transport::Server::builder();
    if let Some(identity) = node.tls.clone() {
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| StartupError::Tls(e.to_string()))?;
    }
    builder
        // gRPC-Web from browsers comes over HTTP/1.1 as well as HTTP/2.
        .accept_http1(true)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Outside the services, so calls refused by auth, limits or as
        // unimplemented are counted too.
        .layer(seqsvc::telemetry::RpcMetricsLayer)
        .layer(web.cors_layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(|e| StartupError::Transport(e.to_string()))?;
    // Calls have finished; what they left running (background finishers,
    // push pumps, retention) stops or completes before the node closes.
    node.engine.shutdown().await;
    match node.engine.failure() {
        Some(reason) => Err(StartupError::Failed(reason)),
        None => Ok(()),
    }
}

/// The names health answers for: the overall one and each API service.
const HEALTH_NAMES: [&str; 3] = [
    "",
    <pb::timeline_server::TimelineServer<TimelineService> as tonic::server::NamedService>::NAME,
    <pb::admin_server::AdminServer<AdminService> as tonic::server::NamedService>::NAME,
];

async fn publish_health(reporter: &tonic_health::server::HealthReporter, health: &Health) {
    let status = match health {
        Health::Serving => tonic_health::ServingStatus::Serving,
        Health::NotServing(_) => tonic_health::ServingStatus::NotServing,
    };
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
    }
    crate::health::mark(health);
}

/// Binds a listener (port 0: the system picks one; `local_addr` tells).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(data_dir: &Path, section_size: u64, seqsvc: Vec<String>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.to_path_buf(),
            store: StoreLocation::Embedded,
            node_id: 1,
            allocator: AllocatorConfig {
                step: 16,
                section_size,
            },
            seqsvc,
            engine: crate::engine::EngineConfig::default(),
            jwt: None,
            tls: None,
            seqsvc_ca_cert: None,
            search: SearchBackend::Embedded,
        }
    }

    /// A data directory's max_seq values bound seqs only under the layout
    /// that wrote them, so a restart with another one must not serve.
    #[tokio::test]
    async fn a_data_directory_refuses_another_seq_layout() {
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(&config(dir.path(), 4, vec![])).await.unwrap();
        node.engine.shutdown().await;
        drop(node);
        for (section_size, seqsvc) in [(8, vec![]), (4, vec!["127.0.0.1:1".to_owned()])] {
            let refused = open_node(&config(dir.path(), section_size, seqsvc)).await;
            let Err(error) = refused else {
                panic!("opened a data directory written with section size 4 as {section_size}");
            };
            assert!(error.to_string().contains("section size 4"), "{error}");
        }
        let node = open_node(&config(dir.path(), 4, vec![])).await.unwrap();
        node.engine.shutdown().await;
    }
}
