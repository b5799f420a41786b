//! Child processes a benchmark starts and stops: the seqsvc roles (from the
//! binary next to this one), redis-server and Centrifugo.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::STARTUP_TIMEOUT;

/// A child killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Takes charge of `child`, which serves on `addr`.
    pub fn new(child: Child, addr: String) -> Self {
        Self { child, addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// A binary built alongside `bench` (same target directory).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("bench has no directory")?.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first (cargo build --release -p {name})",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `bin args` and waits for its `listening on ADDR` line.
pub fn start_listening(bin: &Path, args: &[&str]) -> anyhow::Result<Proc> {
    let (child, addr) = tests::spawn_listening(bin, args)?;
    Ok(Proc { child, addr })
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts redis-server on a free loopback port with the given extra
/// configuration (for example `--appendonly yes --appendfsync always`),
/// its files in `dir`, and waits until it answers.
pub async fn start_redis(dir: &Path, config: &[&str]) -> anyhow::Result<Proc> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting redis-server (install the redis-server package)")?;
    let proc = Proc {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(mut conn) = redis_connection(&proc.addr).await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            if pong.is_ok() {
                return Ok(proc);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "redis-server did not answer on {} within {STARTUP_TIMEOUT:?}",
                proc.addr
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a Redis call may take. The client's default (500 ms) fails
/// calls during a disk stall under `appendfsync always`, and the peer's
/// numbers must include such stalls, as syncd's do, rather than abort.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// One TCP connection to Redis (requests on it are pipelined by the client).
pub async fn redis_connection(addr: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds_of(pid: u32) -> f64 {
    crate::report::cpu_seconds_at(&format!("/proc/{pid}/stat"))
}

/// Resident memory of a process now, in MiB (0 when it cannot be read).
pub fn rss_mib_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Peak resident memory of a process in MiB.
pub fn peak_rss_mib_of(pid: u32) -> f64 {
    crate::report::peak_rss_mib_at(&format!("/proc/{pid}/status"))
}

/// Bytes a process has caused to be written to storage so far.
pub fn bytes_written_of(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|bytes| bytes.trim().parse().ok())
}
