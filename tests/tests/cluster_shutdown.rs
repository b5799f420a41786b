//! A cluster node's shutdown does not wait on a device that stopped
//! reading (as a single node's does not, `catch_up.rs`): after the grace
//! period it closes what could not drain and exits. Needs the CQL server
//! (fails, never skips, without one).

use client::{Client, ConnectOptions, pb};
use std::time::{Duration, Instant};
use tests::{CqlKeyspace, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_exits_despite_a_device_that_stopped_reading() -> anyhow::Result<()> {
    let keyspace = CqlKeyspace::new("cluster_shutdown");
    let dir = tempfile::tempdir()?;
    let args = tests::cluster_node_args(&keyspace.url, 1_500, 300);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Server::start_with(dir.path(), &args)?;
    let service = Client::connect(&node.url(), &node.service_token("setup")?).await?;
    // The node serves once it holds the writer lease.
    let deadline = Instant::now() + Duration::from_secs(30);
    let conversation = loop {
        match service
            .create_conversation(pb::ConversationKind::Direct, vec![1, 2], "")
            .await
        {
            Ok(created) => break created.conversation_id,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not serving yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
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
    let asked = Instant::now();
    let status = node.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    drop(stream);
    Ok(())
}
