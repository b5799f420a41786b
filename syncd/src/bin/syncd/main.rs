//! `syncd`: run the Timeline server, or mint tokens for it.
//!
//! Layout: the commands here; `args`: their flags and what they make of
//! them.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;
use syncd::auth::Principal;
use syncd::server::{self, NodeConfig};

mod args;

use args::*;

/// Our own info logs; the storage engine's routine messages only as warnings.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// How long shutdown waits for in-flight calls before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
