//! `syncd`: run the Timeline server, or mint tokens for it.

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use syncd::auth::Principal;
use syncd::server::{self, NodeConfig};

/// Our own info logs; the storage engine's routine messages only as warnings.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// How long shutdown waits for in-flight calls before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "Timeline sync server: stores conversations and inboxes, syncs devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (embedded store or ScyllaDB) until SIGINT/SIGTERM.
    // Boxed: the serve flags outweigh the other commands' several times.
    Serve(Box<ServeArgs>),
    /// Print a token signed with the data directory's key.
    Token(TokenArgs),
    /// Rebuild the search index of a data directory from the timelines,
    /// with the node stopped.
    Reindex(ReindexArgs),
    /// Show the configuration `syncd serve` would run with (same flags,
    /// environment and --config file), as TOML with secrets redacted.
    Config(Box<ConfigArgs>),
}

#[derive(Args)]
struct ConfigArgs {
    /// Print the effective configuration.
    #[arg(long, required = true)]
    print: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

/// The flag of `syncd serve` that names its config file.
const CONFIG_ARG: &str = "config";

/// Every flag is also a key of the `--config` file (its long name without
/// the dashes): see `syncd::config`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("jwt_key").multiple(false).args(["jwt_hs256_secret_file", "jwt_public_key_file", "jwt_jwks_file"])))]
struct ServeArgs {
    /// A TOML file of settings: its keys are this command's long flags
    /// (`data-dir = "/var/lib/timeline"`, `metrics-listen = "0.0.0.0:9400"`).
    /// Flags and environment variables override it; unknown keys and bad
    /// values stop the start.
    #[arg(long, env = "SYNCD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the store, sequence state and auth key (created if missing).
    #[arg(long, env = "SYNCD_DATA_DIR")]
    data_dir: PathBuf,
    /// Where timelines live: "embedded" (in the data directory) or
    /// scylla://host:port[,host:port]/keyspace[?replication=N&dc=NAME&consistency=LEVEL&timeout_ms=N]
    #[arg(long, env = "SYNCD_STORE", default_value = "embedded")]
    store: String,
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, env = "SYNCD_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Serve Prometheus metrics (GET /metrics) on this address, from before
    /// recovery on; port 0 picks a free port (printed on start, before the
    /// API's line). Off without it.
    #[arg(long, env = "SYNCD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Snowflake node id (0-1023), unique among processes sharing a store.
    #[arg(long, default_value_t = 0)]
    node_id: u16,
    /// Take seqs and the node id from a seqsvc cluster: its arbiter
    /// addresses (host:port), comma separated. Without it the allocator
    /// runs in this process.
    #[arg(long, env = "SYNCD_SEQSVC", value_delimiter = ',')]
    seqsvc: Vec<String>,
    /// Join a cluster of nodes sharing the --store keyspace, reachable by the
    /// others and by clients at this HOST:PORT (port 0: the port this node
    /// listens on). One node at a time writes; the others pass calls on to
    /// it. Needs a scylla:// store.
    #[arg(long, value_name = "HOST:PORT", env = "SYNCD_ADVERTISE")]
    advertise: Option<String>,
    /// The writer lease of a cluster, in milliseconds: a failed writer is
    /// replaced after about this plus --cluster-renew-ms.
    #[arg(long, default_value_t = syncd::cluster::LeaseTimings::DEFAULT.lease.as_millis() as u64, requires = "advertise")]
    cluster_lease_ms: u64,
    /// How often a cluster node reads (and the writer renews) the lease, in
    /// milliseconds; at most a third of --cluster-lease-ms.
    #[arg(long, default_value_t = syncd::cluster::LeaseTimings::DEFAULT.renew_every.as_millis() as u64, requires = "advertise")]
    cluster_renew_ms: u64,
    /// Sequence numbers reserved per persisted max_seq write (in-process
    /// allocator only).
    #[arg(long, default_value_t = 10_000)]
    seq_step: u64,
    /// Ids sharing one persisted max_seq (in-process allocator only).
    #[arg(long, default_value_t = 100_000)]
    seq_section_size: u64,
    /// Groups with more members than this use read fanout (one write per
    /// message instead of one per member); at most 10000.
    #[arg(long, default_value_t = syncd::limits::DEFAULT_LARGE_GROUP_THRESHOLD, value_parser = syncd::config::large_group_threshold)]
    large_group_threshold: usize,
    /// Seconds a push subscriber may leave its queue full before it is
    /// disconnected.
    #[arg(long, default_value_t = syncd::limits::DEFAULT_SUBSCRIBER_STALL_LIMIT.as_secs())]
    subscriber_stall_secs: u64,
    /// Seconds after sending during which a device may recall its message
    /// (services have no window).
    #[arg(long, default_value_t = syncd::amend::rules::DEFAULT_RECALL_WINDOW.as_secs())]
    recall_window_secs: u64,
    /// Seconds after sending during which a device may edit its message.
    #[arg(long, default_value_t = syncd::amend::rules::DEFAULT_EDIT_WINDOW.as_secs())]
    edit_window_secs: u64,
    /// Keep at most this many of the newest seqs per inbox (0: keep all).
    /// History is kept regardless; devices whose checkpoint falls below are
    /// told their checkpoint expired.
    #[arg(long, default_value_t = 0)]
    inbox_retention_entries: u64,
    /// Trim inbox entries older than this many hours (0: keep all).
    #[arg(long, default_value_t = 0)]
    inbox_retention_hours: u64,
    /// Seconds between retention passes.
    #[arg(long, default_value_t = syncd::limits::RETENTION_INTERVAL.as_secs())]
    retention_interval_secs: u64,
    /// Also accept HS256 JWTs signed with this shared secret (a file of at
    /// least 32 bytes; a trailing line break is ignored).
    #[arg(long, env = "SYNCD_JWT_HS256_SECRET_FILE")]
    jwt_hs256_secret_file: Option<PathBuf>,
    /// Also accept JWTs signed by the private half of this PEM public key
    /// (RSA: RS256/384/512, PS256/384/512; EC: ES256/ES384; Ed25519: EdDSA).
    #[arg(long, env = "SYNCD_JWT_PUBLIC_KEY_FILE")]
    jwt_public_key_file: Option<PathBuf>,
    /// Also accept JWTs signed by one of this JWKS file's public keys,
    /// chosen by the token's `kid`.
    #[arg(long, env = "SYNCD_JWT_JWKS_FILE")]
    jwt_jwks_file: Option<PathBuf>,
    /// JWTs must carry this audience (`aud`).
    #[arg(long, env = "SYNCD_JWT_AUDIENCE", requires = "jwt_key")]
    jwt_audience: Option<String>,
    /// JWTs must carry this issuer (`iss`).
    #[arg(long, env = "SYNCD_JWT_ISSUER", requires = "jwt_key")]
    jwt_issuer: Option<String>,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "SYNCD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SYNCD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Call the seqsvc cluster over TLS, trusting the certificates this PEM
    /// CA signed (its servers run with --tls-cert/--tls-key).
    #[arg(long, env = "SYNCD_SEQSVC_CA_CERT", requires = "seqsvc")]
    seqsvc_ca_cert: Option<PathBuf>,
    #[command(flatten)]
    search: SearchArgs,
    /// A browser origin (http[s]://host[:port]) whose pages may call the API
    /// over gRPC-Web; repeat for several (comma separated in the
    /// environment). None by default: a page served by --web-root is
    /// same-origin and needs none.
    #[arg(
        long = "cors-origin",
        value_name = "URL",
        env = "SYNCD_CORS_ORIGINS",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Serve the static files of this directory (the built web app, web/dist)
    /// at / on the API's port. Off by default.
    #[arg(long, value_name = "DIR", env = "SYNCD_WEB_ROOT")]
    web_root: Option<PathBuf>,
}

impl ServeArgs {
    fn jwt(&self) -> Option<syncd::auth::jwt::JwtConfig> {
        use syncd::auth::jwt::JwtKeySource;
        let key = if let Some(path) = &self.jwt_hs256_secret_file {
            JwtKeySource::Hs256SecretFile(path.clone())
        } else if let Some(path) = &self.jwt_public_key_file {
            JwtKeySource::PublicKeyFile(path.clone())
        } else {
            JwtKeySource::JwksFile(self.jwt_jwks_file.clone()?)
        };
        Some(syncd::auth::jwt::JwtConfig {
            key,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
        })
    }

    fn tls(&self) -> Option<server::TlsFiles> {
        Some(server::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

#[derive(Args)]
struct ReindexArgs {
    /// The node's data directory (its embedded index is `search/` in it).
    #[arg(long, env = "SYNCD_DATA_DIR")]
    data_dir: PathBuf,
    /// Where the timelines are, as for `syncd serve --store`.
    #[arg(long, env = "SYNCD_STORE", default_value = "embedded")]
    store: String,
    #[command(flatten)]
    search: SearchArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SearchBackendName {
    /// tantivy in the data directory (`search/`).
    Embedded,
    /// An index in an OpenSearch cluster (--opensearch-url).
    Opensearch,
    /// No history search: nothing is indexed and searches are refused.
    None,
}

/// Where the search index lives (the same flags for serve and reindex).
#[derive(Args)]
struct SearchArgs {
    /// The search index backend.
    #[arg(
        long,
        env = "SYNCD_SEARCH_BACKEND",
        value_enum,
        default_value = "embedded"
    )]
    search_backend: SearchBackendName,
    /// A node of the OpenSearch cluster, http://host:port (with
    /// --search-backend opensearch).
    #[arg(
        long,
        env = "SYNCD_OPENSEARCH_URL",
        required_if_eq("search_backend", "opensearch")
    )]
    opensearch_url: Option<String>,
    /// The OpenSearch index (created if missing).
    #[arg(
        long,
        env = "SYNCD_OPENSEARCH_INDEX",
        default_value = "timeline-search"
    )]
    opensearch_index: String,
    /// Primary shards of the index when syncd creates it.
    #[arg(long, env = "SYNCD_OPENSEARCH_SHARDS", default_value_t = 1)]
    opensearch_shards: u32,
    /// Replicas of each shard when syncd creates the index.
    #[arg(long, env = "SYNCD_OPENSEARCH_REPLICAS", default_value_t = 0)]
    opensearch_replicas: u32,
}

impl SearchArgs {
    fn backend(&self) -> anyhow::Result<server::SearchBackend> {
        Ok(match self.search_backend {
            SearchBackendName::Embedded => server::SearchBackend::Embedded,
            SearchBackendName::Opensearch => {
                let url = self.opensearch_url.clone().ok_or_else(|| {
                    anyhow::anyhow!("--search-backend opensearch needs --opensearch-url")
                })?;
                let mut options = search::OpenSearchOptions::new(url, &self.opensearch_index);
                options.shards = self.opensearch_shards;
                options.replicas = self.opensearch_replicas;
                // Before the data directory is touched.
                options.check()?;
                server::SearchBackend::OpenSearch(options)
            }
            SearchBackendName::None => {
                anyhow::ensure!(
                    self.opensearch_url.is_none(),
                    "--opensearch-url is for --search-backend opensearch; search is off (none)"
                );
                server::SearchBackend::Off
            }
        })
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["user", "service"])))]
struct TokenArgs {
    #[arg(long, env = "SYNCD_DATA_DIR")]
    data_dir: PathBuf,
    /// A device token for this user id (with --device).
    #[arg(long, requires = "device")]
    user: Option<u64>,
    /// Device id: 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long, requires = "user")]
    device: Option<String>,
    /// A service token for this backend service name.
    #[arg(long, conflicts_with_all = ["user", "device"])]
    service: Option<String>,
    /// Validity in hours.
    #[arg(long, default_value_t = 24 * 30)]
    ttl_hours: u64,
}

fn main() -> std::process::ExitCode {
    let (cli, matches, from_file) = match parse_command_line(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(errors) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            return std::process::ExitCode::from(2);
        }
    };
    let result = match cli {
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Token(args)) => token(args),
        Some(Command::Reindex(args)) => reindex(args),
        Some(Command::Config(_)) | None => {
            print_config(&matches, &from_file);
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line with the `--config` file merged in (see
/// `syncd::config`). `syncd config` is parsed with nothing required, so it
/// shows an incomplete configuration too; it returns no command, only its
/// matches. Clap's own errors (and --help) exit here as clap does.
fn parse_command_line(
    argv: Vec<OsString>,
) -> Result<(Option<Command>, clap::ArgMatches, BTreeSet<String>), Vec<syncd::config::ConfigError>>
{
    let sub = argv
        .get(1)
        .and_then(|a| a.to_str())
        .unwrap_or_default()
        .to_owned();
    let (argv, from_file) = if sub == "serve" || sub == "config" {
        let command = serve_command(&sub);
        let layered = syncd::config::layer(&command, argv[1..].to_vec(), CONFIG_ARG, &["print"])?;
        let mut full = vec![argv[0].clone()];
        full.extend(layered.argv);
        (full, layered.from_file)
    } else {
        (argv, BTreeSet::new())
    };
    if sub == "config" {
        let command = syncd::config::relaxed(&serve_command(&sub));
        let matches = command
            .try_get_matches_from(&argv[1..])
            .unwrap_or_else(|e| e.exit());
        return Ok((None, matches, from_file));
    }
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| e.exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    Ok((Some(cli.command), matches, from_file))
}

/// The `serve` or `config` subcommand's definition, named as typed.
fn serve_command(name: &str) -> clap::Command {
    Cli::command()
        .find_subcommand(name)
        .expect("serve and config are subcommands")
        .clone()
}

fn print_config(matches: &clap::ArgMatches, from_file: &BTreeSet<String>) {
    let command = serve_command("serve");
    print!(
        "{}",
        syncd::config::render_effective(&command, matches, from_file)
    );
    for arg in command.get_arguments().filter(|a| a.is_required_set()) {
        if matches.value_source(arg.get_id().as_str()).is_none() {
            eprintln!(
                "warning: {} is required by `syncd serve` and not set",
                arg.get_long().unwrap_or_default()
            );
        }
    }
}

fn reindex(args: ReindexArgs) -> anyhow::Result<()> {
    let location = server::StoreLocation::parse(&args.store)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let conversations = runtime
        .block_on(server::reindex(
            &args.data_dir,
            &location,
            &args.search.backend()?,
        ))
        .with_context(|| format!("cannot reindex {}", args.data_dir.display()))?;
    println!(
        "reindexed {conversations} conversations in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let principal = match (args.user, args.device, args.service) {
        (Some(user_id), Some(device_id), None) => Principal::Device { user_id, device_id },
        (None, None, Some(name)) => Principal::Service { name },
        _ => anyhow::bail!("give either --user and --device, or --service"),
    };
    let authority = server::token_authority(&args.data_dir)?;
    let ttl = Duration::from_secs(args.ttl_hours.saturating_mul(3600));
    println!("{}", authority.issue(&principal, ttl)?);
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    seqsvc::logging::init_logging(DEFAULT_LOG_FILTER);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // Before recovery: the endpoint tells a node that is recovering
        // (`syncd_ready 0`) from one that is not running at all.
        if let Some(addr) = args.metrics_listen {
            let local = seqsvc::telemetry::start(addr).await?;
            // Scripts and tests read this line (before the API's) to learn the port.
            timeline_store::describe_metrics();
            syncd::telemetry::describe_metrics();
            println!("metrics listening on {local}");
        }
        metrics::gauge!("syncd_ready").set(0.0);
        let config = NodeConfig {
            data_dir: args.data_dir.clone(),
            store: server::StoreLocation::parse(&args.store)?,
            node_id: args.node_id,
            seqsvc: args.seqsvc.clone(),
            allocator: seqsvc::AllocatorConfig {
                step: args.seq_step,
                section_size: args.seq_section_size,
            },
            engine: syncd::engine::EngineConfig {
                large_group_threshold: args.large_group_threshold,
                subscriber_stall_limit: Duration::from_secs(args.subscriber_stall_secs.max(1)),
                retention: syncd::engine::Retention {
                    max_entries: args.inbox_retention_entries,
                    max_age: (args.inbox_retention_hours > 0)
                        .then(|| Duration::from_secs(args.inbox_retention_hours * 3600)),
                    interval: Duration::from_secs(args.retention_interval_secs.max(1)),
                },
                windows: syncd::engine::Windows {
                    recall: Duration::from_secs(args.recall_window_secs),
                    edit: Duration::from_secs(args.edit_window_secs),
                },
                ..syncd::engine::EngineConfig::default()
            },
            jwt: args.jwt(),
            tls: args.tls(),
            seqsvc_ca_cert: args.seqsvc_ca_cert.clone(),
            search: args.search.backend()?,
        };
        let web = syncd::web::WebOptions::new(&args.cors_origins, args.web_root.as_deref())?;
        if let Some(advertise) = &args.advertise {
            return serve_cluster(&args, advertise, &config, web).await;
        }
        let node = server::open_node(&config)
            .await
            .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?;
        let listener = server::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        // Handlers first: a SIGTERM sent as soon as the port is announced
        // must stop the server cleanly, not kill it by the default action.
        let signals = Signals::install()?;
        syncd::health::mark(&node.engine.health().await);
        // Scripts and tests read this line to learn the port.
        println!("listening on {local}");
        tracing::info!(%local, data_dir = %args.data_dir.display(), "syncd serving");
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            signals.wait().await;
            let _ = stopping_tx.send(());
        };
        let engine = std::sync::Arc::clone(&node.engine);
        let served = server::serve(listener, node, web, shutdown);
        let grace_begins = async {
            tokio::select! {
                _ = stopping_rx => {}
                _ = engine.failed() => {}
            }
        };
        within_grace(served, grace_begins).await?;
        if let Some(reason) = engine.failure() {
            anyhow::bail!("the node failed: {reason}");
        }
        tracing::info!("syncd stopped");
        Ok(())
    })
}

/// Runs `served` to its end, or until [`SHUTDOWN_GRACE`] after
/// `grace_begins`: a device that stopped reading keeps its stream's last
/// bytes (and so its connection) from draining, and must not hold the
/// process.
async fn within_grace<E>(
    served: impl std::future::Future<Output = Result<(), E>>,
    grace_begins: impl std::future::Future<Output = ()>,
) -> Result<(), E> {
    tokio::pin!(served);
    tokio::select! {
        result = &mut served => result,
        () = async {
            grace_begins.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("calls still running after the grace period; exiting");
            Ok(())
        }
    }
}

/// `syncd serve --advertise`: a node of a cluster.
async fn serve_cluster(
    args: &ServeArgs,
    advertise: &str,
    config: &NodeConfig,
    web: syncd::web::WebOptions,
) -> anyhow::Result<()> {
    let timings = syncd::cluster::LeaseTimings {
        lease: Duration::from_millis(args.cluster_lease_ms),
        renew_every: Duration::from_millis(args.cluster_renew_ms),
    };
    let listener = server::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let advertise = advertised(advertise, local.port())?;
    let node = syncd::cluster::ClusterNode::open(config, advertise.clone(), timings)
        .await
        .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?;
    let signals = Signals::install()?;
    // Scripts and tests read this line to learn the port.
    println!("listening on {local}");
    tracing::info!(%local, %advertise, data_dir = %args.data_dir.display(), "syncd serving as a cluster node");
    use syncd::cluster::Stopping;
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(Stopping::Serving);
    let shutdown = async move { signals.wait().await };
    let served = syncd::cluster::serve(listener, node, web, shutdown, stopping_tx);
    let grace_begins = {
        let mut stopping_rx = stopping_rx.clone();
        async move {
            // Asked to stop, or failed: either way the drain is bounded.
            if stopping_rx
                .wait_for(|stopping| *stopping != Stopping::Serving)
                .await
                .is_err()
            {
                // Served to the end: the first branch wins.
                std::future::pending::<()>().await;
            }
        }
    };
    let served = within_grace(served, grace_begins).await;
    // A failure is the exit's reason even when the grace cut the drain off.
    if let Stopping::Failed(reason) = &*stopping_rx.borrow() {
        anyhow::bail!("the node failed: {reason}");
    }
    served?;
    tracing::info!("syncd stopped");
    Ok(())
}

/// `--advertise` as other nodes dial it: HOST:PORT, port 0 standing for the
/// port this node listens on.
fn advertised(advertise: &str, listening_port: u16) -> anyhow::Result<String> {
    let bad = || {
        anyhow::anyhow!(
            "--advertise {advertise:?}: expected HOST:PORT (the address other nodes and clients reach this node on)"
        )
    };
    let (host, port) = advertise.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    let port = if port == 0 { listening_port } else { port };
    let address = format!("{host}:{port}");
    address
        .parse::<tonic::codegen::http::uri::Authority>()
        .map_err(|_| bad())?;
    Ok(address)
}

/// SIGINT and SIGTERM, listened for from the moment they are installed.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn wait(mut self) {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = self.term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}
