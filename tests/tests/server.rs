//! The server as an operator and a watching device see it: health checks,
//! push delivery, `tl watch`, and clean shutdown with streams open.

use client::{Client, pb};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::Server;

#[tokio::test]
async fn health_push_and_clean_shutdown_with_open_streams() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let url = server.url();

    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["timeline.v1.Timeline", "timeline.v1.Admin", ""] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    let alice = Client::connect(&url, &server.device_token(1, "phone")?).await?;
    let bob = Client::connect(&url, &server.device_token(2, "phone")?).await?;
    let conversation = alice
        .create_conversation(pb::ConversationKind::Direct, vec![2], "")
        .await?;
    let mut notices = bob.subscribe(0, true).await?;
    let created = tokio::time::timeout(Duration::from_secs(5), notices.message())
        .await??
        .expect("a notice");
    assert_eq!(created.entries.len(), 1);
    alice
        .send(conversation.conversation_id, "ping", None)
        .await?;
    let pushed = tokio::time::timeout(Duration::from_secs(5), notices.message())
        .await??
        .expect("a notice");
    assert_eq!(
        pushed
            .entries
            .iter()
            .map(|e| e.text.as_str())
            .collect::<Vec<_>>(),
        ["ping"]
    );
    assert_eq!(pushed.up_to_seq, pushed.entries[0].seq);

    // Services and strangers cannot subscribe to someone's inbox.
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let refused = ops.subscribe(0, false).await;
    assert!(
        matches!(refused, Err(client::ClientError::Rpc(s)) if s.code() == tonic::Code::PermissionDenied)
    );

    // SIGTERM with a push stream open: the stream ends and the process exits
    // 0, well within its grace period. (Waiting off the runtime, so these
    // clients keep answering the server's GOAWAY meanwhile.)
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.terminate(Duration::from_secs(15))
    })
    .await??;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(status.success(), "syncd exited with {status}");
    let ended = tokio::time::timeout(Duration::from_secs(5), notices.message()).await?;
    assert!(matches!(ended, Ok(None) | Err(_)), "the stream ended");
    Ok(())
}

#[test]
fn tl_watch_prints_entries_as_they_arrive_and_keeps_its_checkpoint() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    let url = server.url();
    let alice = server.device_token(1, "phone")?;
    let bob = server.device_token(2, "laptop")?;
    let created = tests::tl(&url, &alice, &["conversation", "create", "--members", "2"]);
    assert!(created.status.success());
    let conv = String::from_utf8(created.stdout)?.trim().to_owned();
    let state = dir.path().join("bob-watch.json");

    let mut watch = Command::new(tests::tl_bin())
        .args([
            "--server",
            &url,
            "--token",
            &bob,
            "watch",
            "--state",
            state.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> anyhow::Result<serde_json::Value> {
        let line = rx.recv_timeout(Duration::from_secs(10))?;
        Ok(serde_json::from_str(&line)?)
    };
    assert_eq!(
        next()?["kind"],
        "conversation_created",
        "catch-up through sync"
    );
    let mut last_seq = 0;
    for text in ["one", "two", "three"] {
        let sent = tests::tl_send(&url, &alice, &conv, text, None);
        assert!(sent.status.success());
        let entry = next()?;
        assert_eq!(entry["text"], text, "pushed while watching");
        last_seq = entry["seq"].as_u64().unwrap();
    }
    // The checkpoint is saved right after the entries are printed.
    let saved_seq = || -> u64 {
        std::fs::read(&state)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["checkpoint"].as_u64())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while saved_seq() < last_seq && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(saved_seq(), last_seq);
    let _ = watch.kill();
    let _ = watch.wait();
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state)?)?;
    let resumed = tests::json_lines(&tests::tl(
        &url,
        &bob,
        &["sync", "--state", state.to_str().unwrap()],
    ));
    assert!(
        resumed.is_empty(),
        "watch saved checkpoint {saved}; nothing is delivered twice"
    );
    Ok(())
}
