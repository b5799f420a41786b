//! A cluster node's shutdown does not wait on a device that stopped
//! reading (as a single node's does not, `catch_up.rs`): after the grace
//! period it closes what could not drain and exits, non-zero when the node
//! failed while it drained. Needs the CQL server (fails, never skips,
//! without one).

use client::{Client, ConnectOptions, pb};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tests::lease_row::{foreign_writer, session, wait_for_holder};
use tests::{CqlKeyspace, Server};

const LEASE_MS: u64 = 1_500;
const RENEW_MS: u64 = 300;

/// A writer node (stderr in `stderr.log` of its data directory) holding a
/// catch-up stream for a device that stopped reading: the stream cannot
/// drain, so a shutdown takes the whole grace period.
async fn writer_with_a_stuck_device(
    dir: &std::path::Path,
    keyspace: &CqlKeyspace,
) -> anyhow::Result<(Server, Stuck)> {
    let args = tests::cluster_node_args(&keyspace.url, LEASE_MS, RENEW_MS);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Server::start_logged(dir, &args, &dir.join("stderr.log"))?;
    let (service, conversation) = serving(&node).await?;
    let text = "w".repeat(60_000);
    for _ in 0..40 {
        service.append(conversation, 1, &text, None).await?;
    }
    let stuck = Client::connect_with(
        &node.url(),
        &node.device_token(2, "stuck")?,
        ConnectOptions {
            receive_window: Some(16 * 1024),
            ..ConnectOptions::default()
        },
    )
    .await?;
    let mut stream = stuck.catch_up(Some(0), 1).await?;
    stream.message().await?.expect("a first page");
    // The rest stays unread: the windows fill and the node waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok((
        node,
        Stuck {
            _client: stuck,
            _stream: stream,
        },
    ))
}

/// A service client of `node` once it serves (it holds the writer lease),
/// and a direct conversation of users 1 and 2 it created.
async fn serving(node: &Server) -> anyhow::Result<(Client, u64)> {
    let service = Client::connect(&node.url(), &node.service_token("setup")?).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match service
            .create_conversation(pb::ConversationKind::Direct, vec![1, 2], "")
            .await
        {
            Ok(created) => return Ok((service, created.conversation_id)),
            Err(error) if Instant::now() < deadline => {
                eprintln!("not serving yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// What `syncd serve` logs when the grace period cuts its drain off.
const GRACE_CUT: &str = "calls still running after the grace period";

/// A writer asked to stop ends its push streams at once, as a single node
/// does: they never end by themselves, and before, every one of them (all
/// the passed-on Subscribes of a cluster) held the drain for the whole
/// grace period while the node kept the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_asked_to_stop_ends_its_push_streams_and_drains() -> anyhow::Result<()> {
    let keyspace = CqlKeyspace::new("cluster_shutdown_push");
    let dir = tempfile::tempdir()?;
    let args = tests::cluster_node_args(&keyspace.url, LEASE_MS, RENEW_MS);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Server::start_logged(dir.path(), &args, &dir.path().join("stderr.log"))?;
    let (service, conversation) = serving(&node).await?;
    service.append(conversation, 1, "hello", None).await?;
    let device = Client::connect(&node.url(), &node.device_token(2, "phone")?).await?;
    let mut notices = device.subscribe(0, false).await?;
    let first = tokio::time::timeout(Duration::from_secs(10), notices.message()).await;
    assert!(
        matches!(first, Ok(Ok(Some(_)))),
        "no first notice: {first:?}"
    );
    let asked = Instant::now();
    let status = node.terminate(Duration::from_secs(30))?;
    let exited_after = asked.elapsed();
    let log = std::fs::read_to_string(dir.path().join("stderr.log"))?;
    assert!(status.success(), "{status:?}:\n{log}");
    assert!(
        !log.contains(GRACE_CUT),
        "the push stream held the drain until the grace cut it ({exited_after:?}):\n{log}"
    );
    // The stream ended; the device reconnects (elsewhere, in a cluster).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match notices.message().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the push stream did not end");
    eprintln!("exited {exited_after:?} after SIGTERM");
    Ok(())
}

/// The device that stopped reading: its connection and its unread stream.
struct Stuck {
    _client: Client,
    _stream: tonic::Streaming<pb::SyncReply>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_exits_despite_a_device_that_stopped_reading() -> anyhow::Result<()> {
    let keyspace = CqlKeyspace::new("cluster_shutdown");
    let dir = tempfile::tempdir()?;
    let (mut node, stream) = writer_with_a_stuck_device(dir.path(), &keyspace).await?;
    let asked = Instant::now();
    let status = node.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    drop(stream);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_fails_while_it_drains_exits_non_zero() -> anyhow::Result<()> {
    let keyspace = CqlKeyspace::new("cluster_shutdown_failed");
    let dir = tempfile::tempdir()?;
    let (mut node, stream) = writer_with_a_stuck_device(dir.path(), &keyspace).await?;
    let session = Arc::new(session().await?);
    let epoch = wait_for_holder(&session, &keyspace.name, &node.addr).await?;
    node.ask_to_stop()?;
    let asked = Instant::now();
    // While the stuck device holds the drain, a writer of another version
    // takes the keyspace: the draining node loses its lease to it, which
    // it must never follow, and fails.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let foreign = tokio::spawn(foreign_writer(
        Arc::clone(&session),
        keyspace.name.clone(),
        epoch,
        Duration::from_millis(RENEW_MS),
        Arc::clone(&stop),
    ));
    let status = node.wait_exit(Duration::from_secs(30))?;
    let exited_after = asked.elapsed();
    stop.store(true, Ordering::Release);
    foreign.await??;
    drop(stream);
    let log = std::fs::read_to_string(dir.path().join("stderr.log"))?;
    assert!(
        !status.success(),
        "the node failed while draining but exited {status:?}:\n{log}"
    );
    // The case this is about: the grace (10 s) cut the drain short. A
    // drain that finished would report the failure anyway.
    assert!(
        exited_after >= Duration::from_secs(9),
        "the node exited {exited_after:?} after SIGTERM: the stuck device did not hold the drain"
    );
    assert!(
        log.contains("versions must not be mixed"),
        "the log does not say why the node failed:\n{log}"
    );
    Ok(())
}
