//! TLS material for the tests: a CA and a server certificate it signed
//! (for `localhost` and 127.0.0.1), made with the `openssl` command line.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

pub struct TestCa {
    dir: tempfile::TempDir,
}

fn openssl(args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (the TLS tests make their certificates with it)")?;
    if !output.status.success() {
        bail!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl TestCa {
    /// A CA (`ca.pem`) and a server certificate (`server.pem`, key
    /// `server.key`) signed by it, valid for a day.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=timeline test CA",
        ];
        ca.extend(ec);
        let (ca_key, ca_pem) = (path("ca.key"), path("ca.pem"));
        ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
        openssl(&ca)?;
        let (key, csr) = (path("server.key"), path("server.csr"));
        let mut request = vec!["req", "-subj", "/CN=localhost"];
        request.extend(ec);
        request.extend(["-keyout", &key, "-out", &csr]);
        openssl(&request)?;
        let ext = path("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let cert = path("server.pem");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ])?;
        Ok(Self { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// `--tls-cert C --tls-key K`, for a server's arguments.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert().to_string_lossy().into_owned(),
            "--tls-key".into(),
            self.key().to_string_lossy().into_owned(),
        ]
    }
}
