//! syncd started with `--seqsvc`: seqs, conversation ids and snowflake node
//! ids come from a seqsvc cluster shared by two syncd processes, and sends
//! continue across the loss of the AllocSvr that serves them.

use anyhow::{Result, ensure};
use client::{Client, pb};
use seqsvc::SnowflakeId;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tests::Server;
use tests::seq_cluster::Cluster;

/// Sends with one client_msg_id until it succeeds (the client's own retries
/// give up sooner than a failover takes).
async fn send_surely(client: &Client, conversation: u64, text: &str) -> Result<pb::SendReply> {
    let id = uuid::Uuid::new_v4();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.send(conversation, text, Some(id)).await {
            Ok(reply) => return Ok(reply),
            Err(error) if Instant::now() < deadline => {
                eprintln!("send retry: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_syncd_share_seqs_and_never_share_a_node_id() -> Result<()> {
    let mut cluster = Cluster::start(1, 2)?;
    cluster.wait_balanced().await?;
    let arbiter = cluster.arbiters[0].addr.clone();
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // Both ask for node id 3; only one may get it.
    let args = ["--seqsvc", arbiter.as_str(), "--node-id", "3"];
    let a = Server::start_with(dir_a.path(), &args)?;
    let b = Server::start_with(dir_b.path(), &args)?;
    let sender_a = Client::connect(&a.url(), &a.device_token(1, "phone")?).await?;
    let sender_b = Client::connect(&b.url(), &b.device_token(1, "phone")?).await?;
    let conv_a = sender_a
        .create_conversation(pb::ConversationKind::Direct, vec![1, 2], "")
        .await?
        .conversation_id;
    let conv_b = sender_b
        .create_conversation(pb::ConversationKind::Direct, vec![1, 2], "")
        .await?
        .conversation_id;
    ensure!(
        conv_a != conv_b,
        "two nodes handed out conversation id {conv_a}"
    );

    // Message i goes through node a when i is even, b when odd.
    let send_numbered = async |i: usize| -> Result<(char, pb::SendReply)> {
        let (client, conversation, node) = if i.is_multiple_of(2) {
            (&sender_a, conv_a, 'a')
        } else {
            (&sender_b, conv_b, 'b')
        };
        Ok((
            node,
            send_surely(client, conversation, &format!("m{i}")).await?,
        ))
    };
    let mut replies = Vec::new();
    for i in 0..40 {
        replies.push(send_numbered(i).await?);
    }
    // Lose the AllocSvr serving user 2's inbox section and the node-id
    // registry (both in slot 0), then keep sending.
    let (_, _, killed) = cluster.kill_owner_of_slot(0).await?;
    for i in 40..60 {
        replies.push(send_numbered(i).await?);
    }
    let after_failover = killed.elapsed();

    let node_of = |which: char| -> HashSet<u16> {
        replies
            .iter()
            .filter(|(n, _)| *n == which)
            .map(|(_, r)| SnowflakeId::decode(r.msg_id).node_id)
            .collect()
    };
    let (nodes_a, nodes_b) = (node_of('a'), node_of('b'));
    ensure!(
        nodes_a.is_disjoint(&nodes_b),
        "shared node ids: {nodes_a:?} {nodes_b:?}"
    );
    ensure!(nodes_a.contains(&3) || nodes_b.contains(&3));
    let msg_ids: HashSet<u64> = replies.iter().map(|(_, r)| r.msg_id).collect();
    ensure!(msg_ids.len() == replies.len(), "a msg_id repeated");

    // User 2's inbox seqs come from one shared sequence: the two stores
    // hold disjoint seqs, and in send order they strictly increase.
    let reader_a = Client::connect(&a.url(), &a.device_token(2, "tablet")?).await?;
    let reader_b = Client::connect(&b.url(), &b.device_token(2, "tablet")?).await?;
    let inbox_a = tests::read_whole_inbox(&reader_a).await?;
    let inbox_b = tests::read_whole_inbox(&reader_b).await?;
    let mut by_text: Vec<(String, u64)> = inbox_a
        .iter()
        .chain(&inbox_b)
        .filter(|e| e.text.starts_with('m'))
        .map(|e| (e.text.clone(), e.seq))
        .collect();
    ensure!(
        by_text.len() == 60,
        "{} messages in user 2's inboxes",
        by_text.len()
    );
    by_text.sort_by_key(|(text, _)| text[1..].parse::<u32>().expect("m<number>"));
    for pair in by_text.windows(2) {
        ensure!(pair[0].1 < pair[1].1, "{:?} then {:?}", pair[0], pair[1]);
    }
    eprintln!(
        "two syncd on one seqsvc: node ids {nodes_a:?} and {nodes_b:?}; 20 sends across an AllocSvr loss took {after_failover:?}"
    );
    Ok(())
}
