//! The Centrifugo process: its binary (built from the Go module proxy with
//! the Go toolchain on first use, cached under the workspace's target
//! directory), the configuration the bench generates for it, and the child
//! process on free loopback ports.

use crate::procs::{self, Proc};
use ::tests::STARTUP_TIMEOUT;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const MODULE: &str = "github.com/centrifugal/centrifugo/v6";
pub const VERSION: &str = "v6.9.1";
/// The namespace of the users' personal channels (`personal:#<user>`).
pub const NAMESPACE: &str = "personal";
/// Publications each personal channel keeps for recovery: a device that
/// reconnects within [`HISTORY_TTL_SECS`] and missed at most this many gets
/// them from the history.
pub const HISTORY_SIZE: u32 = 100;
pub const HISTORY_TTL_SECS: u64 = 600;
/// How long the bench's connection tokens are valid.
const TOKEN_TTL_SECS: u64 = 86_400;

/// `personal:#<user>`, the channel Centrifugo subscribes a user's every
/// connection to (`subscribe_to_user_personal_channel`).
pub fn personal_channel(user: u64) -> String {
    format!("{NAMESPACE}:#{user}")
}

/// Where the built binary is kept between runs.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/peers")
        .join(format!("centrifugo-{VERSION}"))
}

/// A Centrifugo binary and the version it reports.
pub struct Binary {
    pub path: PathBuf,
    pub version: String,
}

/// The binary to run: `explicit`, or the cached build, built now when
/// missing (`go install`, about 80 s on 2 cores; blocking, so on a thread
/// of its own).
pub async fn binary(explicit: Option<&Path>) -> anyhow::Result<Binary> {
    let explicit = explicit.map(Path::to_owned);
    tokio::task::spawn_blocking(move || {
        let path = match explicit {
            Some(path) if !path.is_file() => {
                bail!("--centrifugo-bin {}: no such file", path.display())
            }
            Some(path) => path,
            None => {
                let dir = cache_dir();
                let path = dir.join("centrifugo");
                if !path.is_file() {
                    build(&dir, &path)?;
                }
                path
            }
        };
        let version = version_of(&path)?;
        Ok(Binary { path, version })
    })
    .await?
}

fn build(dir: &Path, binary: &Path) -> anyhow::Result<()> {
    let go_found = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !go_found {
        bail!(
            "the Centrifugo peer is built with the Go toolchain (go install {MODULE}@{VERSION}) \
             and `go` was not found on PATH: install Go 1.26 or newer, or pass --centrifugo-bin"
        );
    }
    // Into a directory of its own, then renamed: an interrupted build never
    // leaves a binary that looks complete.
    let staging = dir.join(format!("building-{}", std::process::id()));
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    eprintln!(
        "building Centrifugo {VERSION} with the Go toolchain, once (into {})",
        dir.display()
    );
    let status = Command::new("go")
        // As release builds do, so the binary reports its version.
        .arg("install")
        .arg(format!(
            "-ldflags=-X {MODULE}/internal/build.Version={}",
            VERSION.trim_start_matches('v')
        ))
        .arg(format!("{MODULE}@{VERSION}"))
        .env("GOBIN", &staging)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("running go install")?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("go install {MODULE}@{VERSION} failed ({status})");
    }
    std::fs::rename(staging.join("centrifugo"), binary)
        .with_context(|| format!("moving the built binary to {}", binary.display()))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// What `binary version` prints (e.g. `Centrifugo v6.9.1 (Go version:
/// go1.26.8)`).
fn version_of(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("version")
        .output()
        .with_context(|| format!("running {} version", binary.display()))?;
    if !output.status.success() {
        bail!("{} version failed ({})", binary.display(), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Loopback ports of one Centrifugo run.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub grpc_api: u16,
    pub uni_grpc: u16,
}

/// The configuration file: the memory engine, history and forced recovery
/// on the personal channels, HS256 connection tokens, the server API over
/// gRPC with a key, the unidirectional gRPC client transport; no
/// WebSocket, no HTTP API, no usage reports; everything on 127.0.0.1.
pub fn config(ports: Ports, token_secret: &str, api_key: &str) -> serde_json::Value {
    serde_json::json!({
        "http_server": {"address": "127.0.0.1", "port": ports.http},
        "log": {"level": "warn"},
        "engine": {"type": "memory"},
        "usage_stats": {"disabled": true},
        "client": {
            "token": {"hmac_secret_key": token_secret},
            "subscribe_to_user_personal_channel": {
                "enabled": true,
                "personal_channel_namespace": NAMESPACE,
            },
        },
        "channel": {
            "namespaces": [{
                "name": NAMESPACE,
                "history_size": HISTORY_SIZE,
                "history_ttl": format!("{HISTORY_TTL_SECS}s"),
                "force_recovery": true,
                // The bench's payload is text, not JSON.
                "publication_data_format": "binary",
            }],
        },
        "http_api": {"disabled": true},
        "websocket": {"disabled": true},
        "grpc_api": {
            "enabled": true,
            "address": "127.0.0.1",
            "port": ports.grpc_api,
            "key": api_key,
        },
        "uni_grpc": {"enabled": true, "address": "127.0.0.1", "port": ports.uni_grpc},
    })
}

/// A connection token for `user` (HS256, `sub` the user id).
pub fn token(secret: &str, user: u64) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims =
        serde_json::json!({"sub": user.to_string(), "iat": now, "exp": now + TOKEN_TTL_SECS});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())?,
    )?)
}

/// 32 random bytes as hex, from the kernel.
fn random_hex() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A running Centrifugo, killed when dropped.
pub struct Server {
    proc: Proc,
    pub ports: Ports,
    pub token_secret: String,
    pub api_key: String,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` on a generated configuration in a temporary
    /// directory and waits until both gRPC ports accept connections.
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let ports = Ports {
            http: procs::free_port()?,
            grpc_api: procs::free_port()?,
            uni_grpc: procs::free_port()?,
        };
        let (token_secret, api_key) = (random_hex()?, random_hex()?);
        let config_path = dir.path().join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config(ports, &token_secret, &api_key))?,
        )?;
        let log_path = dir.path().join("centrifugo.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut proc = Proc::new(child, format!("127.0.0.1:{}", ports.uni_grpc));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let api = tokio::net::TcpStream::connect(("127.0.0.1", ports.grpc_api)).await;
            let uni = tokio::net::TcpStream::connect(("127.0.0.1", ports.uni_grpc)).await;
            if api.is_ok() && uni.is_ok() {
                break;
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(status) = proc.exited() {
                bail!("Centrifugo exited ({status}) while starting:\n{}", log());
            }
            if Instant::now() > deadline {
                bail!(
                    "Centrifugo did not listen on ports {} and {} within {STARTUP_TIMEOUT:?}:\n{}",
                    ports.grpc_api,
                    ports.uni_grpc,
                    log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            proc,
            ports,
            token_secret,
            api_key,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_turns_on_history_recovery_and_the_grpc_transports() {
        let ports = Ports {
            http: 1,
            grpc_api: 2,
            uni_grpc: 3,
        };
        let config = config(ports, "secret", "key");
        let at = |pointer: &str| {
            config
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{pointer} missing"))
                .clone()
        };
        assert_eq!(at("/client/token/hmac_secret_key"), "secret");
        assert_eq!(
            at("/client/subscribe_to_user_personal_channel/enabled"),
            true
        );
        let namespace = at("/client/subscribe_to_user_personal_channel/personal_channel_namespace");
        assert_eq!(at("/channel/namespaces/0/name"), namespace);
        assert!(at("/channel/namespaces/0/history_size").as_u64().unwrap() >= 32);
        assert_eq!(at("/channel/namespaces/0/history_ttl"), "600s");
        assert_eq!(at("/channel/namespaces/0/force_recovery"), true);
        assert_eq!(at("/engine/type"), "memory");
        assert_eq!(at("/grpc_api/enabled"), true);
        assert_eq!(at("/grpc_api/port"), 2);
        assert_eq!(at("/grpc_api/key"), "key");
        assert_eq!(at("/uni_grpc/enabled"), true);
        assert_eq!(at("/uni_grpc/port"), 3);
        for server in ["/http_server", "/grpc_api", "/uni_grpc"] {
            assert_eq!(at(&format!("{server}/address")), "127.0.0.1", "{server}");
        }
        assert_eq!(at("/usage_stats/disabled"), true);
        // The channel Centrifugo builds: namespace, ':' boundary, '#' user boundary.
        let namespace = namespace.as_str().unwrap();
        assert_eq!(personal_channel(42), format!("{namespace}:#42"));
    }

    #[test]
    fn token_is_hs256_with_the_user_as_subject() {
        let token = token("s3cret", 17).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret").unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "17");
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"other").unwrap(),
                &validation,
            )
            .is_err()
        );
    }

    #[test]
    fn random_secrets_differ() {
        let (a, b) = (random_hex().unwrap(), random_hex().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
