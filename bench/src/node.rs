//! The syncd node a benchmark measures: the `syncd` binary built next to
//! `bench`, started as a child process on a fresh data directory, so its
//! CPU and memory are measured apart from the load generator's; or a node
//! already running, given by URL and data directory (whose key signs the
//! bench's tokens).

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
}

pub struct Node {
    pub url: String,
    /// The store, when the bench started the node.
    pub location: Option<StoreLocation>,
    auth: TokenAuthority,
    pid: Option<u32>,
    _process: Option<Proc>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Node {
    /// Starts a node (`seq_step`: seqs per persisted max_seq write), or
    /// attaches to the running one the arguments name.
    pub async fn start(args: &NodeArgs, seq_step: u64) -> anyhow::Result<Self> {
        Self::start_with(args, seq_step, &[]).await
    }

    /// [`start`](Self::start), with more `syncd serve` flags for a node
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
                location: None,
                auth,
                pid: args.server_pid,
                _process: None,
                _data_dir: None,
            });
        }
        let location = StoreLocation::parse(&args.store)?;
        let data_dir = tempfile::tempdir()?;
        let data_path = data_dir
            .path()
            .to_str()
            .context("temporary path is not UTF-8")?;
        let seq_step = seq_step.to_string();
        let mut serve = vec![
            "serve",
            "--data-dir",
            data_path,
            "--listen",
            "127.0.0.1:0",
            "--store",
            &args.store,
            "--seq-step",
            &seq_step,
        ];
        serve.extend_from_slice(extra);
        let process = procs::start_listening(&procs::sibling_binary("syncd")?, &serve)?;
        let auth = syncd::server::token_authority(data_dir.path())?;
        Ok(Self {
            url: format!("http://{}", process.addr),
            location: Some(location),
            auth,
            pid: Some(process.pid()),
            _process: Some(process),
            _data_dir: Some(data_dir),
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

    /// The server's process id, when known.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// CPU seconds the server process has used, when its pid is known.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.pid.map(procs::cpu_seconds_of)
    }

    /// Bytes the server process has caused to be written to storage, when
    /// its pid is known (`write_bytes` of `/proc/<pid>/io`).
    pub fn bytes_written(&self) -> Option<u64> {
        self.pid.and_then(procs::bytes_written_of)
    }

    /// The server process's peak resident memory, when its pid is known.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.pid.map(procs::peak_rss_mib_of)
    }
}
