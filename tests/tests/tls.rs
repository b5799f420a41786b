//! TLS: `syncd serve --tls-cert/--tls-key` serves only TLS; `tl` reaches
//! it over `https://` trusting a test CA (`--ca-cert`), and a plaintext
//! client, or one that does not trust the CA, fails with a clear error.

use tests::tls::TestCa;
use tests::{Server, json_lines, tl};

fn tl_with_ca(
    server: &str,
    token: &str,
    ca: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    let ca = ca.to_string_lossy().into_owned();
    let mut all = vec!["--ca-cert", &ca];
    all.extend(args);
    tl(server, token, &all)
}

#[test]
fn tl_talks_to_a_tls_server_through_its_ca() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dir = tempfile::tempdir()?;
    let args = ca.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(dir.path(), &args)?;
    let alice = server.device_token(1, "phone")?;
    for https in [
        format!("https://{}", server.addr),
        format!(
            "https://localhost:{}",
            server.addr.rsplit(':').next().unwrap()
        ),
    ] {
        let created = tl_with_ca(
            &https,
            &alice,
            &ca.ca(),
            &["conversation", "create", "--members", "2"],
        );
        assert!(
            created.status.success(),
            "{https}: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let id = String::from_utf8(created.stdout)?.trim().to_owned();
        let sent = tl_with_ca(
            &https,
            &alice,
            &ca.ca(),
            &["send", "--conversation", &id, "--text", "over tls"],
        );
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        assert_eq!(json_lines(&sent)[0]["conversation_id"].to_string(), id);
    }

    let plaintext = tl(
        &server.url(),
        &alice,
        &["conversation", "create", "--members", "2"],
    );
    assert!(!plaintext.status.success());
    let stderr = String::from_utf8_lossy(&plaintext.stderr);
    assert!(
        stderr.contains("https://"),
        "plaintext against TLS: {stderr}"
    );

    let https = format!("https://{}", server.addr);
    let untrusted = tl(
        &https,
        &alice,
        &["conversation", "create", "--members", "2"],
    );
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        stderr.contains("cannot connect") && stderr.to_lowercase().contains("certificate"),
        "without the CA: {stderr}"
    );
    Ok(())
}

/// A seqsvc cluster on TLS (store, arbiter and AllocSvr call each other
/// over it) serves a syncd that trusts its CA; a client that does not
/// speak TLS to it fails.
#[test]
fn syncd_takes_its_seqs_from_a_tls_seqsvc_cluster() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let cluster = tests::seq_cluster::Cluster::start_with_tls(&ca, 1, 1)?;
    let arbiter = cluster.arbiter_addrs().join(",");
    let dir = tempfile::tempdir()?;
    let ca_path = ca.ca().to_string_lossy().into_owned();
    let mut args = ca.server_args();
    args.extend([
        "--seqsvc".to_owned(),
        arbiter.clone(),
        "--seqsvc-ca-cert".to_owned(),
        ca_path.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(dir.path(), &args)?;
    let https = format!("https://{}", server.addr);
    let alice = server.device_token(1, "phone")?;
    let created = tl_with_ca(
        &https,
        &alice,
        &ca.ca(),
        &["conversation", "create", "--members", "2"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let id = String::from_utf8(created.stdout)?.trim().to_owned();
    let sent = tl_with_ca(
        &https,
        &alice,
        &ca.ca(),
        &["send", "--conversation", &id, "--text", "seq over tls"],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    let routes = |extra: &[&str]| {
        std::process::Command::new(tests::seqsvc_bin())
            .args(["routes", "--arbiter", &arbiter])
            .args(extra)
            .output()
            .expect("running seqsvc routes")
    };
    let trusted = routes(&["--tls-ca-cert", &ca_path]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let plaintext = routes(&[]);
    assert!(
        !plaintext.status.success(),
        "a plaintext client was served by a TLS arbiter"
    );
    Ok(())
}
