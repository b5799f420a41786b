//! `seqsvc`: run the shared store, an arbiter or an AllocSvr, or use a
//! running cluster by hand (`next`, `routes`).

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use seqsvc::alloc_server::AllocServer;
use seqsvc::arbiter::{Arbiter, ArbiterConfig};
use seqsvc::client::{DEFAULT_RETRY_FOR, RoutingClient, allocate_at};
use seqsvc::grpc::{AllocService, ArbiterService, StoreService, spawn_heartbeats};
use seqsvc::logging::init_logging;
use seqsvc::routing::{LeaseConfig, RoutingTable};
use seqsvc::{FjallMaxSeqStore, Namespace, SharedStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

#[derive(Parser)]
#[command(
    name = "seqsvc",
    version,
    about = "Timeline's sequence allocator: store, arbiter and AllocSvr processes, and a client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the shared store (max_seq per section and the routing table)
    /// on the embedded backend.
    Store(StoreArgs),
    /// Track live AllocSvrs and write the routing table.
    Arbiter(ArbiterArgs),
    /// Serve seqs for the sections the routing table assigns here.
    Alloc(AllocArgs),
    /// Allocate seqs and print them, one per line.
    Next(NextArgs),
    /// Print the routing table.
    Routes(RoutesArgs),
}

/// TLS of a server role, and of its own calls to the other roles.
#[derive(Args)]
struct TlsArgs {
    /// Serve only TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    client: ClientTlsArgs,
}

/// TLS of this process's calls to seqsvc servers.
#[derive(Args)]
struct ClientTlsArgs {
    /// Call the other seqsvc processes over TLS, trusting certificates
    /// this PEM CA signed.
    #[arg(long)]
    tls_ca_cert: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn apply(&self) -> anyhow::Result<()> {
        if let Some(path) = &self.tls_ca_cert {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            seqsvc::grpc::use_client_tls(&pem)
                .with_context(|| format!("--tls-ca-cert {}", path.display()))?;
        }
        Ok(())
    }
}

/// Where a server role serves its Prometheus metrics.
#[derive(Args)]
struct MetricsArgs {
    /// Serve Prometheus metrics (GET /metrics) on this address; port 0
    /// picks a free port (printed on start).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Before the gRPC listener: its address line comes first, and tests
    /// read both up to the gRPC one.
    async fn start(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_listen {
            let local = seqsvc::telemetry::start(addr).await?;
            println!("metrics listening on {local}");
        }
        Ok(())
    }
}

impl TlsArgs {
    /// Sets up client TLS; returns the server identity, if any.
    fn apply(&self) -> anyhow::Result<Option<tonic::transport::Identity>> {
        self.client.apply()?;
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
            bail!("{}: not a PEM certificate", cert.display());
        }
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            bail!("{}: not a PEM private key", key.display());
        }
        Ok(Some(tonic::transport::Identity::from_pem(
            cert_pem, key_pem,
        )))
    }
}

#[derive(Args)]
struct StoreArgs {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Directory of the store's database (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7410")]
    listen: SocketAddr,
    /// Test hook: while a file exists at this path, every max_seq raise fails.
    #[cfg(feature = "testsuite")]
    #[arg(long, hide = true)]
    fail_raises_while: Option<PathBuf>,
}

#[derive(Args)]
struct StoreUrl {
    /// The shared store: http://HOST:PORT (a `seqsvc store` process) or
    /// scylla://host:port[,host:port]/keyspace[?replication=N&dc=NAME]
    #[arg(long)]
    store: String,
}

#[derive(Args)]
struct ArbiterArgs {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    store: StoreUrl,
    #[arg(long, default_value = "127.0.0.1:7411")]
    listen: SocketAddr,
    /// Ids sharing one persisted max_seq; fixed once the first table is written.
    #[arg(long, default_value_t = 100_000)]
    section_size: u64,
    /// An AllocSvr that cannot read the table for this long stops serving.
    #[arg(long, default_value_t = 5_000)]
    lease_ms: u64,
    /// How often AllocSvrs read the table (and send heartbeats).
    #[arg(long, default_value_t = 1_000)]
    sync_interval_ms: u64,
    /// Wait before a newly assigned section serves; must exceed lease + sync interval.
    #[arg(long, default_value_t = 7_000)]
    activation_ms: u64,
    /// An AllocSvr not heard from for this long loses its sections.
    #[arg(long, default_value_t = 3_000)]
    dead_after_ms: u64,
    /// How often the arbiter re-reads the table and rebalances.
    #[arg(long, default_value_t = 500)]
    check_interval_ms: u64,
}

#[derive(Args)]
struct AllocArgs {
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    store: StoreUrl,
    /// Arbiter addresses (host:port), comma separated; heartbeats go to all.
    #[arg(long, value_delimiter = ',', required = true)]
    arbiter: Vec<String>,
    #[arg(long, default_value = "127.0.0.1:7412")]
    listen: SocketAddr,
    /// The address clients dial, if not the listening one.
    #[arg(long)]
    advertise: Option<String>,
    /// Seqs reserved per persisted max_seq write.
    #[arg(long, default_value_t = 10_000)]
    step: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum NamespaceArg {
    User,
    Conversation,
    Counter,
}

impl From<NamespaceArg> for Namespace {
    fn from(n: NamespaceArg) -> Self {
        match n {
            NamespaceArg::User => Namespace::Inbox,
            NamespaceArg::Conversation => Namespace::Conversation,
            NamespaceArg::Counter => Namespace::Counter,
        }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["arbiter", "alloc"])))]
struct NextArgs {
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Route through the cluster known to these arbiters (comma separated).
    #[arg(long, value_delimiter = ',')]
    arbiter: Vec<String>,
    /// Ask this one AllocSvr directly: no routing, no retry (shows fencing).
    #[arg(long)]
    alloc: Option<String>,
    #[arg(long, value_enum)]
    namespace: NamespaceArg,
    #[arg(long)]
    id: u64,
    /// How many seqs to allocate for the id.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// With --alloc: the routing table version to claim.
    #[arg(long, default_value_t = 0)]
    table_version: u64,
    /// With --arbiter: give up after this many seconds of retries.
    #[arg(long, default_value_t = DEFAULT_RETRY_FOR.as_secs())]
    retry_secs: u64,
}

#[derive(Args)]
struct RoutesArgs {
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// Arbiter addresses, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    arbiter: Vec<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Store(args) => store(args).await,
            Command::Arbiter(args) => arbiter(args).await,
            Command::Alloc(args) => alloc(args).await,
            Command::Next(args) => next(args).await,
            Command::Routes(args) => routes(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bind(listen: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // Scripts and tests read this line to learn the port.
    println!("listening on {local}");
    Ok((listener, local))
}

async fn serve(
    listener: TcpListener,
    routes: tonic::service::Routes,
    tls: Option<tonic::transport::Identity>,
) -> anyhow::Result<()> {
    // The role has opened what it needs (store, routing table): /readyz.
    seqsvc::telemetry::set_ready(true);
    seqsvc::grpc::serve(listener, routes, tls, wait_for_signal()).await?;
    Ok(())
}

async fn store(args: StoreArgs) -> anyhow::Result<()> {
    init_logging(DEFAULT_LOG_FILTER);
    args.metrics.start().await?;
    let tls = args.tls.apply()?;
    let dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || FjallMaxSeqStore::open(&dir))
        .await?
        .with_context(|| format!("cannot open {}", args.data_dir.display()))?;
    let store: Arc<dyn SharedStore> = Arc::new(store);
    #[cfg(feature = "testsuite")]
    let store: Arc<dyn SharedStore> = match args.fail_raises_while {
        Some(path) => Arc::new(seqsvc::testsuite::FaultyStore::new(store, path)),
        None => store,
    };
    let (listener, local) = bind(args.listen).await?;
    tracing::info!(%local, data_dir = %args.data_dir.display(), "seqsvc store serving");
    serve(listener, StoreService::new(store).into_routes(), tls).await
}

async fn arbiter(args: ArbiterArgs) -> anyhow::Result<()> {
    init_logging(DEFAULT_LOG_FILTER);
    args.metrics.start().await?;
    let tls = args.tls.apply()?;
    let config = ArbiterConfig {
        section_size: args.section_size,
        lease: LeaseConfig {
            lease: Duration::from_millis(args.lease_ms),
            sync_interval: Duration::from_millis(args.sync_interval_ms),
            activation: Duration::from_millis(args.activation_ms),
        },
        dead_after: Duration::from_millis(args.dead_after_ms),
        check_interval: Duration::from_millis(args.check_interval_ms.max(1)),
    };
    config.lease.validate()?;
    let store = seqsvc::grpc::open_store(&args.store.store).await?;
    // Bind first: AllocSvrs find us while we wait for the store.
    let (listener, local) = bind(args.listen).await?;
    let arbiter = loop {
        match Arbiter::open(config.clone(), store.clone()).await {
            Ok(arbiter) => break arbiter,
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, "store not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    tracing::info!(%local, version = arbiter.table().version, "seqsvc arbiter serving");
    arbiter.spawn();
    serve(listener, ArbiterService::new(arbiter).into_routes(), tls).await
}

async fn alloc(args: AllocArgs) -> anyhow::Result<()> {
    init_logging(DEFAULT_LOG_FILTER);
    args.metrics.start().await?;
    let tls = args.tls.apply()?;
    let store = seqsvc::grpc::open_store(&args.store.store).await?;
    let (listener, local) = bind(args.listen).await?;
    let advertise = args.advertise.unwrap_or_else(|| local.to_string());
    let server = AllocServer::new(advertise.clone(), args.step, store)?;
    server.spawn_refresher();
    spawn_heartbeats(&server, args.arbiter)?;
    tracing::info!(%local, %advertise, "seqsvc AllocSvr serving");
    serve(listener, AllocService::new(server).into_routes(), tls).await
}

async fn next(args: NextArgs) -> anyhow::Result<()> {
    args.tls.apply()?;
    if args.count == 0 || args.count > seqsvc::allocator::MAX_BATCH_IDS {
        bail!("--count must be 1 to {}", seqsvc::allocator::MAX_BATCH_IDS);
    }
    let ids = vec![args.id; args.count];
    let namespace = Namespace::from(args.namespace);
    let seqs = match args.alloc {
        Some(addr) => match allocate_at(&addr, namespace, ids, args.table_version).await? {
            Ok(seqs) => seqs,
            Err(table) => bail!(
                "moved: {addr} does not serve id {}; its routing table (version {}) names {}",
                args.id,
                table.version,
                table.owner_of(args.id).unwrap_or("no owner")
            ),
        },
        None => {
            let client = RoutingClient::new(&args.arbiter, Duration::from_secs(args.retry_secs))?;
            client.next_batch(namespace, &ids).await?
        }
    };
    let mut out = String::new();
    for seq in seqs {
        out.push_str(&seq.to_string());
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

async fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    args.tls.apply()?;
    let client = RoutingClient::new(&args.arbiter, Duration::ZERO)?;
    let table = client.refresh().await?;
    print!("{}", describe(&table));
    Ok(())
}

/// The table for people: settings, then each owner with its slot ranges.
fn describe(table: &RoutingTable) -> String {
    let mut out = format!(
        "version {}\nsection_size {}\nslots {}\nlease_ms {}\nsync_interval_ms {}\nactivation_ms {}\n",
        table.version,
        table.section_size,
        table.slot_count(),
        table.lease.lease.as_millis(),
        table.lease.sync_interval.as_millis(),
        table.lease.activation.as_millis(),
    );
    let mut owners: Vec<Option<&str>> = table.load().into_keys().map(Some).collect();
    owners.push(None);
    for owner in owners {
        let slots: Vec<u32> = (0..table.slot_count())
            .filter(|&s| table.owner_of_slot(s) == owner)
            .collect();
        if slots.is_empty() {
            continue;
        }
        let mut ranges = Vec::new();
        for run in slots.chunk_by(|a, b| b == &(a + 1)) {
            let (first, last) = (run[0], run[run.len() - 1]);
            ranges.push(if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            });
        }
        out.push_str(&format!(
            "owner {} slots {} ({})\n",
            owner.unwrap_or("none"),
            slots.len(),
            ranges.join(",")
        ));
    }
    out
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
