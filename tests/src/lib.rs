//! Harness for Timeline's multi-process tests (the tests themselves live in
//! `tests/tests/`): builds the `syncd` and `tl` binaries once, starts real
//! server processes on `127.0.0.1:0`, mints tokens, runs the CLI, and kills
//! processes with SIGKILL to test crash recovery.
//!
//! [`spawn_listening`] is the one way a server child process is started and
//! waited for, here and in `bench` (which depends on this library for it and
//! nothing else): a second copy would drift in how it reads the address or
//! keeps the pipe drained.

mod backends;
pub mod jwt;
pub mod lease_row;
pub mod metrics;
pub mod seq_cluster;
pub mod tls;

pub use backends::*;

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding `syncd` and `tl`, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Test executables live in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = option_env!("CARGO").unwrap_or("cargo");
        let mut build = Command::new(cargo);
        // The same targets `cargo test --workspace` builds, so this is a no-op
        // after it (a narrower build would unify features differently and
        // recompile dependencies).
        build.args(["build", "--workspace", "--all-targets"]);
        // Without what cargo sets for this test process: build scripts
        // that track them (ring's tracks CARGO_MANIFEST_DIR and
        // CARGO_PKG_*) would otherwise see them change and rerun, and
        // everything above them (TLS, tonic, every crate here) would be
        // compiled again: minutes of a test run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if set_for_this_test(&name) {
                build.env_remove(name.as_ref());
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the syncd and tl binaries");
        assert!(status.success(), "cargo build of syncd and tl failed");
        profile_dir
    })
}

/// Whether cargo set `name` for the test process it runs (or for the build
/// script it ran), rather than for cargo itself.
fn set_for_this_test(name: &str) -> bool {
    const PREFIXES: [&str; 3] = ["CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_"];
    const NAMES: [&str; 6] = [
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix)) || NAMES.contains(&name)
}

pub fn syncd_bin() -> PathBuf {
    bin_dir().join("syncd")
}

pub fn tl_bin() -> PathBuf {
    bin_dir().join("tl")
}

pub fn seqsvc_bin() -> PathBuf {
    bin_dir().join("seqsvc")
}

/// What a server printed when it started.
#[derive(Clone, Debug)]
pub struct Announced {
    /// From its `listening on ADDR` line (the gRPC API).
    pub addr: String,
    /// From its `metrics listening on ADDR` line, printed before the API's
    /// when it runs with `--metrics-listen`.
    pub metrics: Option<String>,
}

/// Spawns `bin args` and waits for its `listening on ADDR` line (every
/// Timeline server prints it once bound, after its metrics address if it
/// has one); returns the child and ADDR. Its stderr is inherited, its
/// stdout drained for as long as it runs.
pub fn spawn_listening<I, S>(bin: &Path, args: I) -> Result<(Child, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let (child, announced) = spawn_announced(bin, args)?;
    Ok((child, announced.addr))
}

/// [`spawn_listening`], also returning the metrics address.
pub fn spawn_announced<I, S>(bin: &Path, args: I) -> Result<(Child, Announced)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    spawn_announced_to(bin, args, Stdio::inherit())
}

/// [`spawn_announced`] with the process's stderr going to `stderr` (a
/// file a test reads back, say).
pub fn spawn_announced_to<I, S>(bin: &Path, args: I, stderr: Stdio) -> Result<(Child, Announced)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let name = bin
        .file_name()
        .map_or("server".into(), |n| n.to_string_lossy());
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {name}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        // The metrics line (if any), then the API's.
        for line in lines.by_ref().take(2).map_while(|l| l.ok()) {
            let last = !line.starts_with("metrics listening on ");
            let _ = tx.send(line);
            if last {
                break;
            }
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let mut metrics = None;
    loop {
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{name} did not report its address within {STARTUP_TIMEOUT:?}");
            }
        };
        if let Some(addr) = line.strip_prefix("metrics listening on ") {
            metrics = Some(addr.to_owned());
            continue;
        }
        let addr = line
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected line from {name}: {line:?}"))?
            .to_owned();
        return Ok((child, Announced { addr, metrics }));
    }
}

/// Retries `start` for up to [`STARTUP_TIMEOUT`]: the port a killed process
/// listened on can linger briefly before it binds again.
fn retry_start<T>(mut start: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        match start() {
            Ok(started) => return Ok(started),
            Err(error) if Instant::now() < deadline => {
                eprintln!("restart retry: {error:#}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(error) => return Err(error),
        }
    }
}

/// SIGKILL and reap, if it runs.
fn kill9(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill {signal} {pid} failed");
    }
    Ok(())
}

/// Any server process that takes `--listen` and prints its address (the
/// seqsvc roles); killed with SIGKILL when dropped.
pub struct Process {
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Where it listens; kept across restarts.
    pub addr: String,
    /// Its metrics endpoint, when started with `--metrics-listen`.
    pub metrics_addr: Option<String>,
}

impl Process {
    /// Starts `bin args --listen 127.0.0.1:0`.
    pub fn start(bin: &Path, args: &[&str]) -> Result<Self> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut with_listen = args.clone();
        with_listen.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        let (child, announced) = spawn_announced(bin, &with_listen)?;
        Ok(Self {
            bin: bin.to_path_buf(),
            args,
            child: Some(child),
            addr: announced.addr,
            metrics_addr: announced.metrics,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Kills it (if running) and starts it again on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let mut args = self.args.clone();
        args.extend(["--listen".to_owned(), self.addr.clone()]);
        let (child, _) = retry_start(|| spawn_listening(&self.bin, &args))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGSTOP: the process stops running but keeps its sockets; its
    /// monotonic clock keeps going.
    pub fn freeze(&self) -> Result<()> {
        signal(self.pid(), "-STOP")
    }

    /// SIGCONT after [`Process::freeze`].
    pub fn thaw(&self) -> Result<()> {
        signal(self.pid(), "-CONT")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The exit status of `child` once it exits within `timeout`; else it is
/// killed and the wait fails (`after` says after what).
fn exit_within(
    mut child: Child,
    timeout: Duration,
    after: &str,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("syncd did not exit within {timeout:?} {after}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `syncd serve` process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    pub addr: String,
    /// The metrics endpoint, when started with `--metrics-listen`.
    pub metrics_addr: Option<String>,
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
}

impl Server {
    /// Starts a server on a free port with the given data directory.
    pub fn start(data_dir: &Path) -> Result<Self> {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::spawn(
            data_dir,
            "127.0.0.1:0",
            extra_args.iter().map(|s| s.to_string()).collect(),
        )
    }

    /// [`Server::start_with`], its stderr written to `log` (created anew).
    pub fn start_logged(data_dir: &Path, extra_args: &[&str], log: &Path) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Self::spawn_to(
            data_dir,
            "127.0.0.1:0",
            extra_args.iter().map(|s| s.to_string()).collect(),
            Stdio::from(file),
        )
    }

    fn spawn(data_dir: &Path, listen: &str, extra_args: Vec<String>) -> Result<Self> {
        Self::spawn_to(data_dir, listen, extra_args, Stdio::inherit())
    }

    fn spawn_to(
        data_dir: &Path,
        listen: &str,
        extra_args: Vec<String>,
        stderr: Stdio,
    ) -> Result<Self> {
        let mut args = vec!["serve".to_owned(), "--data-dir".to_owned()];
        args.push(data_dir.to_string_lossy().into_owned());
        args.extend(["--listen".to_owned(), listen.to_owned()]);
        args.extend(extra_args.iter().cloned());
        let (child, announced) = spawn_announced_to(&syncd_bin(), &args, stderr)?;
        Ok(Self {
            child: Some(child),
            addr: announced.addr,
            metrics_addr: announced.metrics,
            data_dir: data_dir.to_path_buf(),
            extra_args,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown code runs, like a power cut for the process.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Kills the process and starts a new one on the same data directory
    /// and port.
    pub fn restart_after_kill9(&mut self) -> Result<()> {
        self.kill9();
        *self = retry_start(|| Self::spawn(&self.data_dir, &self.addr, self.extra_args.clone()))?;
        Ok(())
    }

    /// Waits for the process to exit on its own; fails (killing it) when it
    /// is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.child.take().context("not running")?;
        exit_within(child, timeout, "on its own")
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.ask_to_stop()?;
        let child = self.child.take().context("not running")?;
        exit_within(child, timeout, "of SIGTERM")
    }

    /// SIGTERM, without waiting: [`Server::wait_exit`] gets the status.
    pub fn ask_to_stop(&self) -> Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(())
    }

    /// A device token for `user_id`/`device_id`.
    pub fn device_token(&self, user_id: u64, device_id: &str) -> Result<String> {
        token(
            &self.data_dir,
            &["--user", &user_id.to_string(), "--device", device_id],
        )
    }

    pub fn service_token(&self, name: &str) -> Result<String> {
        token(&self.data_dir, &["--service", name])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn token(data_dir: &Path, who: &[&str]) -> Result<String> {
    let output = Command::new(syncd_bin())
        .args(["token", "--data-dir"])
        .arg(data_dir)
        .args(who)
        .output()?;
    if !output.status.success() {
        bail!(
            "syncd token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Every entry of the caller's inbox, read page by page from seq 0.
pub async fn read_whole_inbox(client: &client::Client) -> Result<Vec<client::pb::Entry>> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = client.sync_page(Some(after), 1000).await?;
        entries.extend(page.entries);
        after = page.checkpoint;
        if !page.has_more {
            return Ok(entries);
        }
    }
}

/// Runs `tl` with the given arguments and returns its output.
pub fn tl(server: &str, token: &str, args: &[&str]) -> Output {
    Command::new(tl_bin())
        .args(["--server", server, "--token", token])
        .args(args)
        .output()
        .expect("running tl")
}

/// `tl send`, with a client message id when given (a retry).
pub fn tl_send(
    server: &str,
    token: &str,
    conversation: &str,
    text: &str,
    client_msg_id: Option<&str>,
) -> Output {
    let mut args = vec!["send", "--conversation", conversation, "--text", text];
    if let Some(id) = client_msg_id {
        args.extend(["--client-msg-id", id]);
    }
    tl(server, token, &args)
}

/// `tl conversation add-members` (`members` comma separated).
pub fn tl_add_members(server: &str, token: &str, conversation: &str, members: &str) -> Output {
    tl(
        server,
        token,
        &[
            "conversation",
            "add-members",
            "--conversation",
            conversation,
            "--members",
            members,
        ],
    )
}

/// The ids of the conversations `user` is a member of.
pub fn conversations_of(conversations: &[client::pb::Conversation], user: u64) -> Vec<u64> {
    conversations
        .iter()
        .filter(|c| c.members.contains(&user))
        .map(|c| c.conversation_id)
        .collect()
}

/// Parses JSON lines printed by `tl`.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A client of `url`, retried every 50 ms until the server answers (it may
/// be restarting after a kill -9).
pub async fn connect_retrying(url: &str, token: &str) -> client::Client {
    loop {
        match client::Client::connect(url, token).await {
            Ok(client) => return client,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A tiny deterministic generator for seeded tests (splitmix64): the
/// same seed replays the same run.
pub struct SeededRng(pub u64);

impl SeededRng {
    /// A number below `n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}
