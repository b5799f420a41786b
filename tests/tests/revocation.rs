//! Revocation as a service uses it: `tl devices revoke` ends a device's
//! open Subscribe stream within a second (UNAUTHENTICATED), refuses its
//! tokens (JWTs and the server's own) on every call, also after a restart,
//! leaves the user's other devices alone, and a fresh login (a token issued
//! after the revocation) works. Revoking every device of the user is the
//! logout everywhere; on a shared ScyllaDB store a revocation made on one
//! node ends a stream and refuses the token on another.

use client::{Client, ClientError};
use std::time::{Duration, Instant};
use tests::jwt::{Minter, now_s};
use tests::{CqlKeyspace, Server, json_lines, tl};
use tonic::Code;

/// How soon after the revocation an open stream must end.
const REVOCATION_REACH: Duration = Duration::from_secs(1);

async fn device_call(url: &str, token: &str) -> Result<u64, tonic::Status> {
    let client = Client::connect(url, token).await.expect("connect");
    match client.sync_page(None, 1).await {
        Ok(reply) => Ok(reply.user_id),
        Err(ClientError::Rpc(status)) => Err(status),
        Err(other) => panic!("not a call failure: {other}"),
    }
}

async fn refused_as_revoked(url: &str, token: &str) {
    let status = device_call(url, token)
        .await
        .expect_err("a revoked token was accepted");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
}

/// Opens a Subscribe stream and returns a task resolving with the status
/// the stream ended with.
async fn open_stream(url: &str, token: &str) -> tokio::task::JoinHandle<Option<tonic::Status>> {
    let client = Client::connect(url, token).await.expect("connect");
    let mut stream = client.subscribe(0, false).await.expect("subscribe");
    tokio::spawn(async move {
        let _client = client;
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
}

/// Waits for the stream's end, which must come within [`REVOCATION_REACH`]
/// of `revoked_at`, with UNAUTHENTICATED.
async fn ends_as_revoked(
    stream: tokio::task::JoinHandle<Option<tonic::Status>>,
    revoked_at: Instant,
) {
    let left = REVOCATION_REACH.saturating_sub(revoked_at.elapsed());
    let ended = tokio::time::timeout(left, stream)
        .await
        .expect("the Subscribe stream was still open a second after the revocation")
        .unwrap();
    let status = ended.expect("the stream ended without a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
}

/// `tl devices revoke`; returns the JSON line it printed.
fn revoke(url: &str, ops: &str, user: u64, device: Option<&str>) -> serde_json::Value {
    let user = user.to_string();
    let mut args = vec!["devices", "revoke", "--user", &user];
    if let Some(device) = device {
        args.extend(["--device", device]);
    }
    let output = tl(url, ops, &args);
    assert!(
        output.status.success(),
        "tl devices revoke: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    json_lines(&output).remove(0)
}

/// Until the clock passes `revoked_before`, so a fresh token's `iat` is at
/// or after it.
async fn wait_past(revoked_before: u64) {
    while now_s() < revoked_before {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_revoked_device_is_refused_and_a_new_login_works() -> anyhow::Result<()> {
    let keys = Minter::new()?;
    let dir = tempfile::tempdir()?;
    let secret = keys.file("hs256.secret").to_string_lossy().into_owned();
    let mut server = Server::start_with(dir.path(), &["--jwt-hs256-secret-file", &secret])?;
    let url = server.url();
    let ops = server.service_token("ops")?;
    let phone = keys.device("hs256", "HS256", 5, "phone")?;
    let laptop = keys.device("hs256", "HS256", 5, "laptop")?;
    let own_token = server.device_token(5, "phone")?;
    assert_eq!(device_call(&url, &phone).await?, 5);
    let stream = open_stream(&url, &phone).await;

    let revoked_at = Instant::now();
    let reply = revoke(&url, &ops, 5, Some("phone"));
    assert_eq!(reply["user_id"], 5);
    assert_eq!(reply["device_id"], "phone");
    let revoked_before = reply["revoked_before"].as_u64().expect("revoked_before");
    assert!(revoked_before > now_s() - 5, "{reply}");
    ends_as_revoked(stream, revoked_at).await;
    refused_as_revoked(&url, &phone).await;
    refused_as_revoked(&url, &own_token).await;
    assert_eq!(
        device_call(&url, &laptop).await?,
        5,
        "another device keeps working"
    );

    server.restart_after_kill9()?;
    refused_as_revoked(&url, &phone).await;
    refused_as_revoked(&url, &own_token).await;
    wait_past(revoked_before).await;
    let fresh = keys.device("hs256", "HS256", 5, "phone")?;
    assert_eq!(device_call(&url, &fresh).await?, 5, "a new login works");
    let fresh_own = server.device_token(5, "phone")?;
    assert_eq!(device_call(&url, &fresh_own).await?, 5);

    // Logout everywhere.
    let reply = revoke(&url, &ops, 5, None);
    assert!(reply["device_id"].is_null(), "{reply}");
    refused_as_revoked(&url, &laptop).await;
    refused_as_revoked(&url, &fresh).await;

    // Bad input changes nothing and says why; devices cannot revoke.
    let zero = tl(&url, &ops, &["devices", "revoke", "--user", "0"]);
    assert!(!zero.status.success());
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(
        stderr.contains("invalid argument") || stderr.contains("not a user id"),
        "{stderr}"
    );
    let bad_device = tl(
        &url,
        &ops,
        &["devices", "revoke", "--user", "6", "--device", "a|b"],
    );
    assert!(!bad_device.status.success());
    let other = server.device_token(6, "phone")?;
    let by_device = tl(&url, &other, &["devices", "revoke", "--user", "6"]);
    assert!(!by_device.status.success());
    assert!(
        String::from_utf8_lossy(&by_device.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&by_device.stderr)
    );
    assert_eq!(device_call(&url, &other).await?, 6);
    Ok(())
}

/// Two nodes on one ScyllaDB keyspace: a revocation made through one
/// reaches the other's open stream and calls through the store's feed.
#[tokio::test]
async fn a_revocation_on_one_node_reaches_another_sharing_the_store() -> anyhow::Result<()> {
    let keyspace = CqlKeyspace::new("revocation_nodes");
    let keys = Minter::new()?;
    let secret = keys.file("hs256.secret").to_string_lossy().into_owned();
    let start = |dir: &std::path::Path, node_id: &str| {
        Server::start_with(
            dir,
            &[
                "--store",
                &keyspace.url,
                "--node-id",
                node_id,
                "--jwt-hs256-secret-file",
                &secret,
            ],
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let node_a = start(dir_a.path(), "1")?;
    let node_b = start(dir_b.path(), "2")?;
    let ops = keys.sign(serde_json::json!({
        "key": "hs256",
        "alg": "HS256",
        "claims": {"service": "ops", "exp": now_s() + 600},
    }))?;
    let phone = keys.device("hs256", "HS256", 77, "phone")?;
    assert_eq!(device_call(&node_b.url(), &phone).await?, 77);
    let stream = open_stream(&node_b.url(), &phone).await;
    let revoked_at = Instant::now();
    revoke(&node_a.url(), &ops, 77, None);
    ends_as_revoked(stream, revoked_at).await;
    refused_as_revoked(&node_b.url(), &phone).await;
    Ok(())
}
