//! The command line: every subcommand's flags (each also from the
//! environment and the config file), and the configurations they build.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use syncd::server;

#[derive(Parser)]
#[command(
    name = "syncd",
    version,
    about = "Timeline sync server: stores conversations and inboxes, syncs devices"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct ConfigArgs {
    /// Print the effective configuration.
    #[arg(long, required = true)]
    pub(crate) print: bool,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// The flag of `syncd serve` that names its config file.
pub(crate) const CONFIG_ARG: &str = "config";

/// Every flag is also a key of the `--config` file (its long name without
/// the dashes): see `syncd::config`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("jwt_key").multiple(false).args(["jwt_hs256_secret_file", "jwt_public_key_file", "jwt_jwks_file"])))]
pub(crate) struct ServeArgs {
    /// A TOML file of settings: its keys are this command's long flags
    /// (`data-dir = "/var/lib/timeline"`, `metrics-listen = "0.0.0.0:9400"`).
    /// Flags and environment variables override it; unknown keys and bad
    /// values stop the start.
    #[arg(long, env = "SYNCD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Directory for the store, sequence state and auth key (created if missing).
    #[arg(long, env = "SYNCD_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Where timelines live: "embedded" (in the data directory) or
    /// scylla://host:port[,host:port]/keyspace[?replication=N&dc=NAME&consistency=LEVEL&timeout_ms=N]
    #[arg(long, env = "SYNCD_STORE", default_value = "embedded")]
    pub(crate) store: String,
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, env = "SYNCD_LISTEN", default_value = "127.0.0.1:7400")]
    pub(crate) listen: SocketAddr,
    /// Serve Prometheus metrics (GET /metrics) on this address, from before
    /// recovery on; port 0 picks a free port (printed on start, before the
    /// API's line). Off without it.
    #[arg(long, env = "SYNCD_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Snowflake node id (0-1023), unique among processes sharing a store.
    #[arg(long, default_value_t = 0)]
    pub(crate) node_id: u16,
    /// Take seqs and the node id from a seqsvc cluster: its arbiter
    /// addresses (host:port), comma separated. Without it the allocator
    /// runs in this process.
    #[arg(long, env = "SYNCD_SEQSVC", value_delimiter = ',')]
    pub(crate) seqsvc: Vec<String>,
    /// Join a cluster of nodes sharing the --store keyspace, reachable by the
    /// others and by clients at this HOST:PORT (port 0: the port this node
    /// listens on). One node at a time writes; the others pass calls on to
    /// it. Needs a scylla:// store.
    #[arg(long, value_name = "HOST:PORT", env = "SYNCD_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// The writer lease of a cluster, in milliseconds: a failed writer is
    /// replaced after about this plus --cluster-renew-ms.
    #[arg(long, default_value_t = syncd::cluster::LeaseTimings::DEFAULT.lease.as_millis() as u64, requires = "advertise")]
    pub(crate) cluster_lease_ms: u64,
    /// How often a cluster node reads (and the writer renews) the lease, in
    /// milliseconds; at most a third of --cluster-lease-ms.
    #[arg(long, default_value_t = syncd::cluster::LeaseTimings::DEFAULT.renew_every.as_millis() as u64, requires = "advertise")]
    pub(crate) cluster_renew_ms: u64,
    /// Sequence numbers reserved per persisted max_seq write (in-process
    /// allocator only).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) seq_step: u64,
    /// Ids sharing one persisted max_seq (in-process allocator only).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) seq_section_size: u64,
    /// Groups with more members than this use read fanout (one write per
    /// message instead of one per member); at most 10000.
    #[arg(long, default_value_t = syncd::limits::DEFAULT_LARGE_GROUP_THRESHOLD, value_parser = syncd::config::large_group_threshold)]
    pub(crate) large_group_threshold: usize,
    /// Seconds a push subscriber may leave its queue full before it is
    /// disconnected.
    #[arg(long, default_value_t = syncd::limits::DEFAULT_SUBSCRIBER_STALL_LIMIT.as_secs())]
    pub(crate) subscriber_stall_secs: u64,
    /// Seconds after sending during which a device may recall its message
    /// (services have no window).
    #[arg(long, default_value_t = syncd::amend::rules::DEFAULT_RECALL_WINDOW.as_secs())]
    pub(crate) recall_window_secs: u64,
    /// Seconds after sending during which a device may edit its message.
    #[arg(long, default_value_t = syncd::amend::rules::DEFAULT_EDIT_WINDOW.as_secs())]
    pub(crate) edit_window_secs: u64,
    /// Keep at most this many of the newest seqs per inbox (0: keep all).
    /// History is kept regardless; devices whose checkpoint falls below are
    /// told their checkpoint expired.
    #[arg(long, default_value_t = 0)]
    pub(crate) inbox_retention_entries: u64,
    /// Trim inbox entries older than this many hours (0: keep all).
    #[arg(long, default_value_t = 0)]
    pub(crate) inbox_retention_hours: u64,
    /// Seconds between retention passes.
    #[arg(long, default_value_t = syncd::limits::RETENTION_INTERVAL.as_secs())]
    pub(crate) retention_interval_secs: u64,
    /// Also accept HS256 JWTs signed with this shared secret (a file of at
    /// least 32 bytes; a trailing line break is ignored).
    #[arg(long, env = "SYNCD_JWT_HS256_SECRET_FILE")]
    pub(crate) jwt_hs256_secret_file: Option<PathBuf>,
    /// Also accept JWTs signed by the private half of this PEM public key
    /// (RSA: RS256/384/512, PS256/384/512; EC: ES256/ES384; Ed25519: EdDSA).
    #[arg(long, env = "SYNCD_JWT_PUBLIC_KEY_FILE")]
    pub(crate) jwt_public_key_file: Option<PathBuf>,
    /// Also accept JWTs signed by one of this JWKS file's public keys,
    /// chosen by the token's `kid`.
    #[arg(long, env = "SYNCD_JWT_JWKS_FILE")]
    pub(crate) jwt_jwks_file: Option<PathBuf>,
    /// JWTs must carry this audience (`aud`).
    #[arg(long, env = "SYNCD_JWT_AUDIENCE", requires = "jwt_key")]
    pub(crate) jwt_audience: Option<String>,
    /// JWTs must carry this issuer (`iss`).
    #[arg(long, env = "SYNCD_JWT_ISSUER", requires = "jwt_key")]
    pub(crate) jwt_issuer: Option<String>,
    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "SYNCD_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SYNCD_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Call the seqsvc cluster over TLS, trusting the certificates this PEM
    /// CA signed (its servers run with --tls-cert/--tls-key).
    #[arg(long, env = "SYNCD_SEQSVC_CA_CERT", requires = "seqsvc")]
    pub(crate) seqsvc_ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) search: SearchArgs,
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
    pub(crate) cors_origins: Vec<String>,
    /// Serve the static files of this directory (the built web app, web/dist)
    /// at / on the API's port. Off by default.
    #[arg(long, value_name = "DIR", env = "SYNCD_WEB_ROOT")]
    pub(crate) web_root: Option<PathBuf>,
}

impl ServeArgs {
    pub(crate) fn jwt(&self) -> Option<syncd::auth::jwt::JwtConfig> {
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

    pub(crate) fn tls(&self) -> Option<server::TlsFiles> {
        Some(server::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

#[derive(Args)]
pub(crate) struct ReindexArgs {
    /// The node's data directory (its embedded index is `search/` in it).
    #[arg(long, env = "SYNCD_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Where the timelines are, as for `syncd serve --store`.
    #[arg(long, env = "SYNCD_STORE", default_value = "embedded")]
    pub(crate) store: String,
    #[command(flatten)]
    pub(crate) search: SearchArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SearchBackendName {
    /// tantivy in the data directory (`search/`).
    Embedded,
    /// An index in an OpenSearch cluster (--opensearch-url).
    Opensearch,
    /// No history search: nothing is indexed and searches are refused.
    None,
}

/// Where the search index lives (the same flags for serve and reindex).
#[derive(Args)]
pub(crate) struct SearchArgs {
    /// The search index backend.
    #[arg(
        long,
        env = "SYNCD_SEARCH_BACKEND",
        value_enum,
        default_value = "embedded"
    )]
    pub(crate) search_backend: SearchBackendName,
    /// A node of the OpenSearch cluster, http://host:port (with
    /// --search-backend opensearch).
    #[arg(
        long,
        env = "SYNCD_OPENSEARCH_URL",
        required_if_eq("search_backend", "opensearch")
    )]
    pub(crate) opensearch_url: Option<String>,
    /// The OpenSearch index (created if missing).
    #[arg(
        long,
        env = "SYNCD_OPENSEARCH_INDEX",
        default_value = "timeline-search"
    )]
    pub(crate) opensearch_index: String,
    /// Primary shards of the index when syncd creates it.
    #[arg(long, env = "SYNCD_OPENSEARCH_SHARDS", default_value_t = 1)]
    pub(crate) opensearch_shards: u32,
    /// Replicas of each shard when syncd creates the index.
    #[arg(long, env = "SYNCD_OPENSEARCH_REPLICAS", default_value_t = 0)]
    pub(crate) opensearch_replicas: u32,
}

impl SearchArgs {
    pub(crate) fn backend(&self) -> anyhow::Result<server::SearchBackend> {
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
pub(crate) struct TokenArgs {
    #[arg(long, env = "SYNCD_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// A device token for this user id (with --device).
    #[arg(long, requires = "device")]
    pub(crate) user: Option<u64>,
    /// Device id: 1-64 of A-Z a-z 0-9 . _ -
    #[arg(long, requires = "user")]
    pub(crate) device: Option<String>,
    /// A service token for this backend service name.
    #[arg(long, conflicts_with_all = ["user", "device"])]
    pub(crate) service: Option<String>,
    /// Validity in hours.
    #[arg(long, default_value_t = 24 * 30)]
    pub(crate) ttl_hours: u64,
}
