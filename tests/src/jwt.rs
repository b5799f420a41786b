//! JWTs for the tests, minted by `tests/jwt/mint.mjs` (Node and the jose
//! library: an implementation independent of the server's), so a test
//! token is what another backend's JWT library sends. Needs `node` and
//! `npm ci` in `tests/jwt` (`.ci/run` and `scripts/test` do it); without
//! them the tests fail, saying so.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn minter_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jwt")
}

/// A set of keys (HS256 secret; RSA, EC P-256 and Ed25519 pairs; a JWKS of
/// the public ones) in a directory of its own, and tokens signed with them.
pub struct Minter {
    dir: tempfile::TempDir,
}

fn node(args: &[&str]) -> Result<String> {
    let dir = minter_dir();
    if !dir.join("node_modules").join("jose").exists() {
        bail!(
            "the JWT minter is not installed: run `npm ci` in {} (scripts/test does)",
            dir.display()
        );
    }
    let output = Command::new("node")
        .arg(dir.join("mint.mjs"))
        .args(args)
        .output()
        .context("running node (the JWT tests need Node.js)")?;
    if !output.status.success() {
        bail!(
            "mint.mjs {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

impl Minter {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        node(&["keys", &dir.path().to_string_lossy()])?;
        Ok(Self { dir })
    }

    /// A key file: `hs256.secret`, `{rsa,ec,ed}.pub.pem`, `jwks.json`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A token for `spec` (see mint.mjs: `key`, `alg`, `kid`, `claims`,
    /// `hmac_key_file`).
    pub fn sign(&self, spec: Value) -> Result<String> {
        node(&[
            "sign",
            &self.dir.path().to_string_lossy(),
            &spec.to_string(),
        ])
    }

    /// A device token valid for an hour, issued now.
    pub fn device(&self, key: &str, alg: &str, user: u64, device: &str) -> Result<String> {
        self.sign(json!({
            "key": key,
            "alg": alg,
            "claims": device_claims(user, device),
        }))
    }
}

/// `sub`, `device`, `iat` now, `exp` in an hour.
pub fn device_claims(user: u64, device: &str) -> Value {
    let now = now_s();
    json!({"sub": user.to_string(), "device": device, "iat": now, "exp": now + 3600})
}
