//! A syncd node of a cluster: opens what every generation shares, runs the
//! lease loop, builds a fresh writer generation each time this node wins
//! the lease, and routes the public services (here, to the writer, or
//! UNAVAILABLE).

use super::lease::{LeaseTimings, Role, WriterLease};
use super::member;
use super::route::{self, FORWARD_CONNECTIONS, Routed, Target, WriterChannels};
use crate::auth::Authenticator;
use crate::auth::revocation::RevocationGuard;
use crate::engine::Engine;
use crate::grpc::{AdminService, Tenure, TimelineService};
use crate::limits::{
    MAX_CONNECTIONS, MAX_REPLY_BYTES, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION,
};
use crate::server::{Keys, NodeConfig, StartupError, StoreLocation};
use crate::web::{WebOptions, grpc_web};
use proto::timeline::v1 as pb;
use seqsvc::client::{NodeIdLease, RoutingClient, SeqSource};
use seqsvc::{Allocator, MsgIdGenerator};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use timeline_store::scylla::{WriterClock, WriterLeaseTable};
use timeline_store::{EventLog, ScyllaTimelineStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

type TimelineServer = pb::timeline_server::TimelineServer<TimelineService>;
type AdminServer = pb::admin_server::AdminServer<AdminService>;

/// Where this node takes seqs and message ids from.
enum Seqs {
    /// The in-process allocator over the keyspace's `max_seq` table (only
    /// the writer allocates; each generation loads `max_seq` afresh).
    InProcess,
    /// A seqsvc cluster, with this node's node-id lease.
    Remote {
        client: RoutingClient,
        lease: Arc<NodeIdLease>,
    },
}

/// A cluster node, opened and not yet serving.
pub struct ClusterNode {
    config: NodeConfig,
    advertise: String,
    timings: LeaseTimings,
    keyspace: String,
    base: ScyllaTimelineStore,
    seq_store: Arc<dyn seqsvc::MaxSeqStore>,
    seqs: Seqs,
    index: Option<Arc<dyn search::SearchIndex>>,
    lease_table: WriterLeaseTable,
    /// Write timestamps of this node's writer generations, bounded by the
    /// lease the loop holds.
    clock: Arc<WriterClock>,
    auth: Arc<Authenticator>,
}

impl ClusterNode {
    /// Opens the shared parts. `advertise` is the address other nodes and
    /// clients reach this node on.
    pub async fn open(
        config: &NodeConfig,
        advertise: String,
        timings: LeaseTimings,
    ) -> Result<Self, StartupError> {
        timings.validate().map_err(StartupError::InvalidOption)?;
        let StoreLocation::Scylla(scylla) = &config.store else {
            return Err(StartupError::InvalidOption(
                "--advertise (a cluster of nodes) needs --store scylla://...: nodes share the ScyllaDB keyspace".into(),
            ));
        };
        if config.tls.is_some() {
            return Err(StartupError::InvalidOption(
                "--advertise with --tls-cert is not supported yet: nodes pass calls on to each other in plaintext".into(),
            ));
        }
        let Keys { tl1, jwt, .. } = crate::server::load_keys(config).await?;
        let session = scylla
            .connect()
            .await
            .map_err(timeline_store::StoreError::from)?;
        let base = ScyllaTimelineStore::open(Arc::clone(&session), &scylla.keyspace).await?;
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> =
            Arc::new(seqsvc::CqlMaxSeqStore::open(Arc::clone(&session), &scylla.keyspace).await?);
        crate::server::claim_seq_layout(config, seq_store.as_ref()).await?;
        let seqs = if config.seqsvc.is_empty() {
            Seqs::InProcess
        } else {
            let prefix = format!("syncd-{advertise}");
            let (client, lease) = crate::server::join_seqsvc(config, &prefix).await?;
            Seqs::Remote { client, lease }
        };
        let store: Arc<dyn timeline_store::TimelineStore> = Arc::new(base.clone());
        let auth = Arc::new(Authenticator::new(tl1, jwt, RevocationGuard::new(store)));
        Ok(Self {
            index: crate::server::open_search_index(&config.data_dir, &config.search).await?,
            lease_table: WriterLeaseTable::open(session, &scylla.keyspace).await?,
            clock: Arc::new(WriterClock::new()),
            keyspace: scylla.keyspace.clone(),
            config: config.clone(),
            advertise,
            timings,
            base,
            seq_store,
            seqs,
            auth,
        })
    }

    /// A writer generation for `epoch`: the store sealed with it, whatever
    /// earlier writers left finished, a fresh engine (caches, horizon and
    /// allocator start empty: nothing from an earlier ownership is reused).
    async fn writer(&self, epoch: u64) -> Result<Arc<Engine>, StartupError> {
        let store = self
            .base
            .fenced(&self.keyspace, epoch, Arc::clone(&self.clock))
            .await?;
        metrics::gauge!("syncd_recovering").set(1.0);
        let finished = store.recover().await;
        metrics::gauge!("syncd_recovering").set(0.0);
        let finished = finished?;
        metrics::counter!("syncd_recovered_events_total").increment(finished as u64);
        tracing::info!(
            epoch,
            finished,
            "writing: finished the events earlier writers left"
        );
        let store: Arc<dyn timeline_store::TimelineStore> = Arc::new(store);
        let clock = seqsvc::snowflake::system_clock();
        let engine_config = self.config.engine.clone();
        let index = self.index.clone();
        let engine = match &self.seqs {
            Seqs::InProcess => {
                let allocator =
                    Allocator::new(self.config.allocator.clone(), Arc::clone(&self.seq_store))?;
                let ids =
                    MsgIdGenerator::open(self.config.node_id, clock, Arc::clone(&self.seq_store))
                        .await?;
                Engine::with_optional_search(store, allocator, ids, engine_config, index)
            }
            Seqs::Remote { client, lease } => {
                let ids = MsgIdGenerator::with_reservations(clock, Arc::clone(lease) as _)?;
                Engine::with_optional_search(
                    store,
                    SeqSource::Remote(client.clone()),
                    ids,
                    engine_config,
                    index,
                )
            }
        };
        engine.start();
        Ok(engine)
    }
}

/// Attempts in a row to start a writer generation before the node gives
/// up the lease by stopping (a supervisor restarts it).
const MAX_WRITER_START_FAILURES: u32 = 10;

/// The public services of one writer generation.
struct Generation {
    epoch: u64,
    engine: Arc<Engine>,
}

async fn end(generation: Option<Generation>) {
    if let Some(generation) = generation {
        tracing::info!(
            epoch = generation.epoch,
            "no longer writing: ending the writer generation"
        );
        generation.engine.begin_shutdown();
        generation.engine.shutdown().await;
    }
}

/// Why a node began to stop, published the moment it does: the caller
/// bounds the drain that follows, and must learn a failure even when the
/// drain is cut off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopping {
    Serving,
    Asked,
    Failed(String),
}

/// Serves until `shutdown` resolves, or this node fails; `stopping` says
/// when and why it began to stop.
pub async fn serve(
    listener: TcpListener,
    node: ClusterNode,
    web: WebOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: watch::Sender<Stopping>,
) -> Result<(), StartupError> {
    let node = Arc::new(node);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (roles_tx, roles_rx) = watch::channel(Role::Unknown);
    let starting = "starting: no writer node known yet; retry";
    let timeline: Routed<TimelineServer> = Routed::new(Target::Unavailable(starting.into()));
    let admin: Routed<AdminServer> = Routed::new(Target::Unavailable(starting.into()));

    let member = tokio::spawn(member::run(
        node.lease_table.clone(),
        Arc::clone(&node.clock),
        WriterLease::new(node.advertise.clone(), node.timings),
        roles_tx,
        stop_rx.clone(),
        stopping.subscribe(),
    ));
    let revocations = tokio::spawn(Arc::clone(node.auth.revocations()).poll_feed(stop_rx.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let generations = tokio::spawn(run_generations(
        Arc::clone(&node),
        roles_rx,
        timeline.clone(),
        admin.clone(),
        health,
        Stops {
            stopping: stop_rx.clone(),
            asked: stopping.subscribe(),
        },
        failed_tx,
    ));

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError::Transport(e.to_string()))?;
    let (stop_accepting, accept_stopped) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Arc::new(stop_tx);
    let stop_on_failure = Arc::clone(&stop_tx);
    let stopping = Arc::new(stopping);
    let on_failure = {
        let stopping = Arc::clone(&stopping);
        move |reason: String| {
            // Stop renewing at once: another node takes over while this one
            // drains, and its supervisor restarts it.
            let _ = stop_on_failure.send(true);
            tracing::error!(%reason, "this node cannot go on; stopping");
            stopping.send_replace(Stopping::Failed(reason));
        }
    };
    let signal = async move {
        let mut failed_rx = failed_rx;
        tokio::select! {
            () = shutdown => {
                tracing::info!("shutting down: no new connections");
                stopping.send_replace(Stopping::Asked);
                // A failure during the drain is still the exit's reason,
                // even when the grace cuts the drain off.
                tokio::spawn(async move {
                    if let Ok(reason) = failed_rx.await {
                        on_failure(reason);
                    }
                });
            }
            Ok(reason) = &mut failed_rx => on_failure(reason),
        }
        let _ = stop_accepting.send(());
    };
    let incoming = seqsvc::incoming::limited_incoming(listener, MAX_CONNECTIONS, accept_stopped);
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(grpc_web(health_service))
        .add_service(reflection)
        .add_service(grpc_web(timeline))
        .add_service(grpc_web(admin));
    let routes = web.with_static_files(routes.routes());
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(seqsvc::telemetry::RpcMetricsLayer)
        .layer(web.cors_layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(|e| StartupError::Transport(e.to_string()));
    let _ = stop_tx.send(true);
    let _ = member.await;
    let _ = revocations.await;
    let failure = generations
        .await
        .map_err(|e| StartupError::Transport(format!("generation task: {e}")))?;
    served?;
    match failure {
        Some(reason) => Err(StartupError::Failed(reason)),
        None => Ok(()),
    }
}

/// What tells the generations' loop to stop: `stopping` once the node is
/// done serving, `asked` as soon as it begins to drain.
struct Stops {
    stopping: watch::Receiver<bool>,
    asked: watch::Receiver<Stopping>,
}

/// Follows the role: a writer generation per epoch won, the services
/// pointed at it, at the writer node, or refusing. Answers the failure of
/// a generation's engine, if one failed for good.
async fn run_generations(
    node: Arc<ClusterNode>,
    mut roles: watch::Receiver<Role>,
    timeline: Routed<TimelineServer>,
    admin: Routed<AdminServer>,
    health: tonic_health::server::HealthReporter,
    stops: Stops,
    failed: tokio::sync::oneshot::Sender<String>,
) -> Option<String> {
    let Stops {
        mut stopping,
        mut asked,
    } = stops;
    // Asked to stop (SIGTERM): the generation's push streams and loops end
    // at once, as on a single node, so the drain waits only for calls
    // that end by themselves; calls are still served until the drain is
    // over and the lease is let go.
    let mut draining = false;
    let mut current: Option<Generation> = None;
    let mut start_failures = 0;
    // The writer's address and a channel to it (only the current one is
    // kept: a restarted writer comes back under another address).
    let mut channel: Option<(String, Arc<WriterChannels>)> = None;
    loop {
        let role = roles.borrow_and_update().clone();
        let serving = match &role {
            Role::Writer { epoch, .. } => {
                if current.as_ref().map(|g| g.epoch) != Some(*epoch) {
                    end(current.take()).await;
                    match node.writer(*epoch).await {
                        Ok(engine) => {
                            start_failures = 0;
                            let tenure = {
                                let (roles, epoch) = (roles.clone(), *epoch);
                                Tenure::while_holding(move || route::writes(&roles.borrow(), epoch))
                            };
                            let services = Services::new(&engine, &node.auth, tenure);
                            timeline.set(Target::Local {
                                service: services.timeline,
                                epoch: *epoch,
                                roles: roles.clone(),
                            });
                            admin.set(Target::Local {
                                service: services.admin,
                                epoch: *epoch,
                                roles: roles.clone(),
                            });
                            if draining {
                                engine.begin_shutdown();
                            }
                            current = Some(Generation {
                                epoch: *epoch,
                                engine,
                            });
                        }
                        Err(error) if start_failures >= MAX_WRITER_START_FAILURES => {
                            // Holding the lease without serving keeps the
                            // whole cluster down: give it up.
                            let reason = format!(
                                "cannot start writing after {start_failures} attempts: {error}"
                            );
                            let _ = failed.send(reason.clone());
                            return Some(reason);
                        }
                        Err(error) => {
                            start_failures += 1;
                            tracing::error!(%error, epoch, "cannot start writing; retrying");
                            let why = format!("this node cannot start writing: {error}; retry");
                            timeline.set(Target::Unavailable(why.clone()));
                            admin.set(Target::Unavailable(why));
                            tokio::select! {
                                () = tokio::time::sleep(node.timings.renew_every) => continue,
                                () = super::stopped(&mut stopping) => return None,
                            }
                        }
                    }
                }
                true
            }
            Role::Follower { writer } => {
                end(current.take()).await;
                if channel.as_ref().is_none_or(|(to, _)| to != writer) {
                    channel = writer_channels(writer).map(|c| (writer.clone(), Arc::new(c)));
                }
                let Some((_, channel)) = channel.clone() else {
                    let why = format!("the writer lease names {writer:?}, which is not HOST:PORT");
                    timeline.set(Target::Unavailable(why.clone()));
                    admin.set(Target::Unavailable(why));
                    publish_health(&health, false).await;
                    tokio::select! {
                        changed = roles.changed() => if changed.is_err() { break },
                        () = super::stopped(&mut stopping) => break,
                    }
                    continue;
                };
                timeline.set(Target::Remote {
                    writer: writer.clone(),
                    channels: Arc::clone(&channel),
                    me: node.advertise.clone(),
                });
                admin.set(Target::Remote {
                    writer: writer.clone(),
                    channels: channel,
                    me: node.advertise.clone(),
                });
                true
            }
            Role::Refused { reason } => {
                timeline.set(Target::Unavailable(reason.clone()));
                admin.set(Target::Unavailable(reason.clone()));
                publish_health(&health, false).await;
                // Told before the generation ends: ending it waits on every
                // call, and the caller bounds that wait only once told.
                let _ = failed.send(reason.clone());
                end(current.take()).await;
                return Some(reason.clone());
            }
            Role::Unknown => {
                end(current.take()).await;
                let why = "no writer node known now (the lease is changing hands); retry";
                timeline.set(Target::Unavailable(why.into()));
                admin.set(Target::Unavailable(why.into()));
                false
            }
        };
        publish_health(&health, serving).await;
        let engine = current.as_ref().map(|g| Arc::clone(&g.engine));
        let failed_engine = async move {
            match engine {
                Some(engine) => engine.failed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = roles.changed() => if changed.is_err() { break },
            changed = asked.changed(), if !draining => {
                // A closed channel: the node is ending anyway.
                draining = changed.is_err() || *asked.borrow() != Stopping::Serving;
                if draining && let Some(generation) = &current {
                    tracing::info!(epoch = generation.epoch, "draining: ending push streams");
                    generation.engine.begin_shutdown();
                }
            }
            reason = failed_engine => {
                timeline.set(Target::Unavailable("this node failed; retry".into()));
                admin.set(Target::Unavailable("this node failed; retry".into()));
                publish_health(&health, false).await;
                let _ = failed.send(reason.clone());
                end(current.take()).await;
                return Some(reason);
            }
            () = super::stopped(&mut stopping) => break,
        }
    }
    if !*stopping.borrow() {
        // The lease loop ended without a stop (it panicked): nothing says
        // any longer whether this node may write or whom to pass calls on
        // to, so it must not look healthy, nor exit as if asked to.
        let reason = "the writer lease's loop stopped; this node cannot serve".to_string();
        timeline.set(Target::Unavailable(reason.clone()));
        admin.set(Target::Unavailable(reason.clone()));
        publish_health(&health, false).await;
        let _ = failed.send(reason.clone());
        end(current.take()).await;
        return Some(reason);
    }
    end(current.take()).await;
    None
}

struct Services {
    timeline: TimelineServer,
    admin: AdminServer,
}

impl Services {
    fn new(engine: &Arc<Engine>, auth: &Arc<Authenticator>, tenure: Tenure) -> Self {
        Self {
            timeline: TimelineServer::new(
                TimelineService::new(Arc::clone(engine), Arc::clone(auth)).with_tenure(tenure),
            )
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_REPLY_BYTES),
            admin: AdminServer::new(AdminService::new(Arc::clone(engine), Arc::clone(auth)))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
                .max_encoding_message_size(MAX_REPLY_BYTES),
        }
    }
}

/// Lazily connected channels to the writer node. Calls passed on are the
/// device's own, so no per-call deadline is added here; keepalives end the
/// passed-on streams of a writer that froze or vanished within
/// [`WRITER_KEEPALIVE`] twice, so its devices reconnect elsewhere.
fn writer_channels(writer: &str) -> Option<WriterChannels> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{writer}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(WRITER_KEEPALIVE)
        .keep_alive_timeout(WRITER_KEEPALIVE)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(FORWARD_STREAM_WINDOW)
        .initial_connection_window_size(FORWARD_STREAM_WINDOW * MAX_STREAMS_PER_CONNECTION);
    // Each lazy channel connects on its first call.
    let channels = (0..FORWARD_CONNECTIONS)
        .map(|_| endpoint.connect_lazy())
        .collect();
    Some(WriterChannels::new(channels))
}

/// What the writer may send ahead on one passed-on stream before its device
/// reads. The connection's window is this for every stream it may carry,
/// so devices that stop reading (each holding up to this much unread at
/// the follower) can never use up the window of the connection they share
/// with others. With hyper's defaults (2 MiB a stream, 5 MiB a
/// connection) three stalled CatchUps of 3 MiB pages could take a whole
/// connection's window, and every call passed on over it would wait. At
/// most 64 connections x 32 MiB are held unread, and only with every
/// stream stalled.
const FORWARD_STREAM_WINDOW: u32 = 128 * 1024;

/// How often a follower pings the writer over the connection calls are
/// passed on through, and how long it waits for the answer.
const WRITER_KEEPALIVE: Duration = Duration::from_secs(5);

const HEALTH_NAMES: [&str; 3] = [
    "",
    <TimelineServer as tonic::server::NamedService>::NAME,
    <AdminServer as tonic::server::NamedService>::NAME,
];

async fn publish_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
    }
    metrics::gauge!("syncd_ready").set(if serving { 1.0 } else { 0.0 });
}
