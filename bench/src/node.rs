//! The syncd node a benchmark measures: the `syncd` binary built next to
//! `bench`, started as a child process on a fresh data directory, so its
//! CPU and memory are measured apart from the load generator's; or several
//! such nodes forming a cluster over one ScyllaDB keyspace (`--nodes`); or
//! a node already running, given by URL and data directory (whose key
//! signs the bench's tokens).

use crate::procs::{self, Proc};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
use syncd::auth::{Principal, TokenAuthority};
use syncd::server::StoreLocation;

#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// Store of the node the bench starts: "embedded" (a fresh temporary
    /// data directory) or scylla://host:port/keyspace?replication=N
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// Measure a running syncd at this URL instead of starting one (with
    /// --server-data-dir).
    #[arg(long, requires = "server_data_dir", conflicts_with = "store")]
    pub server: Option<String>,
    /// The running syncd's data directory (its key signs the bench's tokens).
    #[arg(long, requires = "server")]
    pub server_data_dir: Option<PathBuf>,
    /// The running syncd's process id, to report its CPU and memory.
    #[arg(long, requires = "server")]
    pub server_pid: Option<u32>,
    /// Start this many syncd nodes as one cluster (`--advertise`) over the
    /// --store keyspace (scylla:// only); clients are spread over them.
    #[arg(long, default_value_t = 1, conflicts_with = "server")]
    pub nodes: usize,
    /// Start the nodes with history search off (`--search-backend none`):
    /// the timelines' own cost, without indexing.
    #[arg(long, conflicts_with = "server")]
    pub no_search: bool,
}

impl NodeArgs {
    /// Whether the measured syncd indexes for search: `None` for a running
    /// server (`--server`), which someone else started.
    pub fn search_on(&self) -> Option<bool> {
        match (self.server.is_some(), self.no_search) {
            (true, _) => None,
            (false, no_search) => Some(!no_search),
        }
    }

    /// How reports name [`Self::search_on`].
    pub fn search_label(&self) -> &'static str {
        match self.search_on() {
            None => "search as the server runs",
            Some(false) => "search off",
            Some(true) => "search on",
        }
    }
}

pub struct Node {
    /// The first node's URL (the only one, unless `--nodes`).
    pub url: String,
    /// Every node's URL.
    pub urls: Vec<String>,
    /// The store, when the bench started the node.
    pub location: Option<StoreLocation>,
    auth: TokenAuthority,
    pids: Vec<u32>,
    _processes: Vec<Proc>,
    _data_dirs: Vec<tempfile::TempDir>,
}

impl Node {
    /// Starts a node (`seq_step`: seqs per persisted max_seq write), or
    /// attaches to the running one the arguments name.
    pub async fn start(args: &NodeArgs, seq_step: u64) -> anyhow::Result<Self> {
        Self::start_with(args, seq_step, &[]).await
    }

    /// [`start`](Self::start), with more `syncd serve` flags for each node
    /// the bench starts.
    pub async fn start_with(
        args: &NodeArgs,
        seq_step: u64,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        if let (Some(url), Some(data_dir)) = (&args.server, &args.server_data_dir) {
            let auth = syncd::server::token_authority(data_dir)?;
            return Ok(Self {
                url: url.clone(),
                urls: vec![url.clone()],
                location: None,
                auth,
                pids: args.server_pid.into_iter().collect(),
                _processes: Vec::new(),
                _data_dirs: Vec::new(),
            });
        }
        let location = StoreLocation::parse(&args.store)?;
        anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
        anyhow::ensure!(
            args.nodes == 1 || matches!(location, StoreLocation::Scylla(_)),
            "--nodes {} needs a scylla:// --store: the nodes share its keyspace",
            args.nodes
        );
        let data_dirs = (0..args.nodes)
            .map(|_| tempfile::tempdir())
            .collect::<Result<Vec<_>, _>>()?;
        // One token key for every node: the bench's tokens work on each.
        let auth = syncd::server::token_authority(data_dirs[0].path())?;
        for dir in &data_dirs[1..] {
            std::fs::copy(
                data_dirs[0].path().join("auth.key"),
                dir.path().join("auth.key"),
            )?;
        }
        let mut processes = Vec::new();
        for dir in &data_dirs {
            let data_path = dir.path().to_str().context("temporary path is not UTF-8")?;
            let step = seq_step.to_string();
            let mut serve = vec![
                "serve",
                "--data-dir",
                data_path,
                "--listen",
                "127.0.0.1:0",
                "--store",
                &args.store,
                "--seq-step",
                &step,
            ];
            if args.nodes > 1 {
                serve.extend(["--advertise", "127.0.0.1:0"]);
            }
            if args.no_search {
                serve.extend(["--search-backend", "none"]);
            }
            serve.extend_from_slice(extra);
            processes.push(procs::start_listening(
                &procs::sibling_binary("syncd")?,
                &serve,
            )?);
        }
        let urls: Vec<String> = processes
            .iter()
            .map(|p| format!("http://{}", p.addr))
            .collect();
        if args.nodes > 1 {
            // The first claim is immediate; the others learn the writer at
            // their next read of the lease.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(Self {
            url: urls[0].clone(),
            urls,
            location: Some(location),
            auth,
            pids: processes.iter().map(Proc::pid).collect(),
            _processes: processes,
            _data_dirs: data_dirs,
        })
    }

    /// "embedded", "scylla", or "running" for a node the bench did not start.
    pub fn store_kind(&self) -> &'static str {
        match self.location {
            Some(StoreLocation::Embedded) => "embedded",
            Some(StoreLocation::Scylla(_)) => "scylla",
            None => "running",
        }
    }

    pub fn token(&self, principal: &Principal) -> anyhow::Result<String> {
        Ok(self.auth.issue(principal, Duration::from_secs(86_400))?)
    }

    pub fn service_token(&self) -> anyhow::Result<String> {
        self.token(&Principal::Service {
            name: "bench".into(),
        })
    }

    /// The (first) server's process id, when known.
    pub fn pid(&self) -> Option<u32> {
        self.pids.first().copied()
    }

    /// CPU seconds the server processes have used together, when their
    /// pids are known.
    pub fn cpu_seconds(&self) -> Option<f64> {
        (!self.pids.is_empty()).then(|| self.pids.iter().map(|&p| procs::cpu_seconds_of(p)).sum())
    }

    /// Bytes the server processes have caused to be written to storage,
    /// when their pids are known (`write_bytes` of `/proc/<pid>/io`).
    pub fn bytes_written(&self) -> Option<u64> {
        self.pids
            .iter()
            .map(|&p| procs::bytes_written_of(p))
            .sum::<Option<u64>>()
            .filter(|_| !self.pids.is_empty())
    }

    /// The server processes' peak resident memory together, when their
    /// pids are known.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        (!self.pids.is_empty()).then(|| self.pids.iter().map(|&p| procs::peak_rss_mib_of(p)).sum())
    }
}
