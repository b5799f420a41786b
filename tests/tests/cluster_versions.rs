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
use scylla::client::session::Session;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
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

async fn session() -> anyhow::Result<Session> {
    Ok(scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(tests::cql_nodes().split(','))
        .build()
        .await?)
}

/// The lease row's holder and epoch, once a node created it.
async fn lease(session: &Session, keyspace: &str) -> anyhow::Result<Option<(String, i64)>> {
    let result = session
        .query_unpaged(
            format!("SELECT holder, epoch FROM {keyspace}.writer_lease WHERE name = 'writer'"),
            (),
        )
        .await;
    let Ok(result) = result else {
        return Ok(None);
    };
    Ok(result
        .into_rows_result()?
        .maybe_first_row::<(String, i64)>()?)
}

async fn wait_for_holder(session: &Session, keyspace: &str, holder: &str) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((now, epoch)) = lease(session, keyspace).await?
            && now == holder
        {
            return Ok(epoch);
        }
        ensure!(Instant::now() < deadline, "{holder} never held the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the lease over the way a version that records no protocol does,
/// then renews it every read interval until `stop` turns true.
async fn foreign_writer(
    session: Arc<Session>,
    keyspace: String,
    after_epoch: i64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.writer_lease SET holder = '127.0.0.1:1', epoch = ?, renewals = 0 \
                 WHERE name = 'writer' IF epoch = ?"
            ),
            (after_epoch + 1, after_epoch),
        )
        .await?;
    let claimed = lease(&session, &keyspace).await?;
    ensure!(
        claimed == Some(("127.0.0.1:1".into(), after_epoch + 1)),
        "the foreign claim did not apply: {claimed:?}"
    );
    let mut renewals = 0i64;
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(RENEW_MS)).await;
        renewals += 1;
        session
            .query_unpaged(
                format!("UPDATE {keyspace}.writer_lease SET renewals = ? WHERE name = 'writer'"),
                (renewals,),
            )
            .await?;
    }
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
