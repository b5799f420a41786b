//! Operator and client inputs that would reuse or merge seqs are refused
//! before they reach a store: a data directory restarted under another seq
//! layout does not serve, and user ids that do not fit a signed 64-bit key
//! are INVALID_ARGUMENT on every backend.

use client::{Client, ClientError, pb};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::{CqlKeyspace, Server, syncd_bin};

/// How long a refused start may take to exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_data_directory_refuses_another_seq_section_size() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with(dir.path(), &["--seq-section-size", "4"])?;
    let status = server.terminate(Duration::from_secs(20))?;
    anyhow::ensure!(status.success(), "first run exited with {status}");

    let mut child = Command::new(syncd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--seq-section-size",
            "8",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + REFUSAL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("syncd served a data directory written with another section size");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{status}");
    assert!(stderr.contains("section size 4"), "{stderr}");
    Ok(())
}

async fn refuses_huge_user_ids(server: &Server) -> anyhow::Result<()> {
    let url = server.url();
    let alice = Client::connect(&url, &server.device_token(1, "phone")?).await?;
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let conversation = alice
        .create_conversation(pb::ConversationKind::Group, vec![2], "")
        .await?;
    for huge in [1u64 << 63, u64::MAX] {
        let created = alice
            .create_conversation(pb::ConversationKind::Group, vec![2, huge], "")
            .await;
        assert_invalid(created.map(drop), "a member");
        let added = ops
            .add_members(conversation.conversation_id, vec![huge])
            .await;
        assert_invalid(added.map(drop), "an added member");
        let appended = ops
            .append(conversation.conversation_id, huge, "x", None)
            .await;
        assert_invalid(appended.map(drop), "a sender");
        assert!(
            server.device_token(huge, "phone").is_err(),
            "a token for user {huge}"
        );
    }
    Ok(())
}

fn assert_invalid(result: Result<(), ClientError>, what: &str) {
    match result {
        Err(ClientError::Rpc(status)) if status.code() == tonic::Code::InvalidArgument => {}
        other => panic!("{what} of 2^63 or more: expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn user_ids_from_2_pow_63_are_invalid_argument_embedded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    refuses_huge_user_ids(&server).await
}

#[tokio::test]
async fn user_ids_from_2_pow_63_are_invalid_argument_on_scylla() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keyspace = CqlKeyspace::new("huge_user_ids");
    let server = Server::start_with(dir.path(), &["--store", &keyspace.url])?;
    refuses_huge_user_ids(&server).await
}
