//! Versions are not mixed in a cluster (docs/ARCHITECTURE.md, "Several
//! nodes"): a node that finds a writer of another cluster protocol at work
//! on its keyspace stops with an error instead of following it or taking
//! over from it, and a writer that loses the lease to one stops too; once
//! the other version's writer stands still (its nodes were stopped), a node
//! takes the keyspace over as usual. The other version is played by this
//! test, writing the lease row as a version that records no protocol does.
//! Needs the CQL server (fails, never skips, without one).

use anyhow::ensure;
use client::{Client, pb};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tests::lease_row::{foreign_writer, session, wait_for_holder};
use tests::{CqlKeyspace, Server};

const LEASE_MS: u64 = 1_500;
const RENEW_MS: u64 = 300;

/// A node whose stderr goes to `stderr.log` in its data directory.
fn start_node(dir: &std::path::Path, store: &str) -> anyhow::Result<Server> {
    let args = tests::cluster_node_args(store, LEASE_MS, RENEW_MS);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_logged(dir, &args, &dir.join("stderr.log"))
}

/// A node exited non-zero, saying why.
fn refused(node: &mut Server, what: &str) -> anyhow::Result<()> {
    let status = node.wait_exit(Duration::from_secs(20))?;
    ensure!(!status.success(), "{what}: exited {status}");
    let log = std::fs::read_to_string(node.data_dir.join("stderr.log"))?;
    ensure!(
        log.contains("versions must not be mixed"),
        "{what}: the log does not say why:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_a_writer_of_another_version_and_takes_over_once_it_stopped()
-> anyhow::Result<()> {
    let keyspace = CqlKeyspace::new("versions");
    let session = Arc::new(session().await?);
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir())
        .collect::<Result<_, _>>()?;

    // A node of this version claims the empty keyspace.
    let mut first = start_node(dirs[0].path(), &keyspace.url)?;
    let epoch = wait_for_holder(&session, &keyspace.name, &first.addr).await?;

    // A node of another version takes the lease over and keeps renewing.
    let stop = Arc::new(AtomicBool::new(false));
    let foreign = tokio::spawn(foreign_writer(
        Arc::clone(&session),
        keyspace.name.clone(),
        epoch,
        Duration::from_millis(RENEW_MS),
        Arc::clone(&stop),
    ));
    refused(
        &mut first,
        "the writer that lost its lease to another version",
    )?;

    // A node started while the other version writes never joins it.
    let mut second = start_node(dirs[1].path(), &keyspace.url)?;
    refused(&mut second, "a node joining another version's writer")?;

    // The other version's nodes stop: the row stands still, and a node of
    // this version takes over after a lease and serves.
    stop.store(true, Ordering::Release);
    foreign.await??;
    let third = start_node(dirs[2].path(), &keyspace.url)?;
    wait_for_holder(&session, &keyspace.name, &third.addr).await?;
    let service = Client::connect(&third.url(), &third.service_token("versions")?).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let conversation = loop {
        match service
            .create_conversation(pb::ConversationKind::Group, vec![1, 2], "after the upgrade")
            .await
        {
            Ok(conversation) => break conversation,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not serving yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    service
        .append(conversation.conversation_id, 1, "served", None)
        .await?;
    Ok(())
}
