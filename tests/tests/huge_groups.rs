//! Large (read-fanout) groups pushed in real time through the real server:
//! every online member's stream names the group when a message becomes
//! readable, priority messages jump the queue, the client library's watch
//! follows a group by push alone, and a device that stops reading a busy
//! group is bounded and disconnected like an inbox subscriber.

use client::{CheckpointFile, Client, ConnectOptions, pb};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::Server;

/// Groups past 3 members use read fanout.
const THRESHOLD: &str = "3";
/// Members of the test group, added by a service in pages of 1,000.
const MEMBERS: u64 = 10_000;
/// Members holding a Subscribe stream (one process mints each token).
const ONLINE: u64 = 200;
const MESSAGES: usize = 50;

async fn large_group(ops: &Client, members: u64) -> anyhow::Result<u64> {
    let all: Vec<u64> = (1..=members).collect();
    let mut pages = all.chunks(1_000);
    let created = ops
        .create_conversation(
            pb::ConversationKind::Group,
            pages.next().unwrap().to_vec(),
            "",
        )
        .await?;
    anyhow::ensure!(created.read_fanout, "a group of {members} uses read fanout");
    for page in pages {
        ops.add_members(created.conversation_id, page.to_vec())
            .await?;
    }
    Ok(created.conversation_id)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_online_member_is_told_of_each_message_priority_first() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), &["--large-group-threshold", THRESHOLD])?;
    let url = server.url();
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let conversation = large_group(&ops, MEMBERS).await?;

    // Each online member's notices, as (conv_seq, priority, arrival).
    type Seen = Arc<Mutex<Vec<(u64, bool, Instant)>>>;
    let mut seen: Vec<Seen> = Vec::new();
    let mut streams = tokio::task::JoinSet::new();
    for user in 1..=ONLINE {
        let client = Client::connect(&url, &server.device_token(user, "d")?).await?;
        let after = client.sync_page(Some(0), 1_000).await?.checkpoint;
        let mut notices = client.subscribe(after, false).await?;
        let log: Seen = Arc::default();
        seen.push(log.clone());
        streams.spawn(async move {
            while let Some(notice) = notices.message().await? {
                let now = Instant::now();
                let mut log = log.lock().unwrap();
                for group in notice.groups {
                    anyhow::ensure!(group.conversation_id == conversation);
                    log.push((group.conv_seq, group.priority, now));
                }
            }
            anyhow::Ok(())
        });
    }

    let mut sent_at = HashMap::new();
    let mut priority = Vec::new();
    for i in 0..MESSAGES {
        let urgent = i % 10 == 9;
        let started = Instant::now();
        let reply = ops
            .append_with_priority(conversation, 0, &format!("m{i}"), None, urgent)
            .await?;
        sent_at.insert(reply.conv_seq, started);
        if urgent {
            priority.push(reply.conv_seq);
        }
    }
    let newest = *sent_at.keys().max().unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while seen
        .iter()
        .any(|log| log.lock().unwrap().iter().all(|&(seq, ..)| seq < newest))
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every online member heard of conv_seq {newest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Allow the priority notices queued behind the newest to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut latencies = Vec::new();
    for (member, log) in seen.iter().enumerate() {
        let log = log.lock().unwrap();
        let heard: Vec<u64> = log.iter().filter(|n| n.1).map(|n| n.0).collect();
        assert_eq!(
            heard,
            priority,
            "member {}: every priority message, in order",
            member + 1
        );
        let ordinary: Vec<u64> = log.iter().filter(|n| !n.1).map(|n| n.0).collect();
        assert!(
            ordinary.windows(2).all(|w| w[0] < w[1]),
            "member {}: ordinary notices only move forward: {ordinary:?}",
            member + 1
        );
        // A notice covers every message up to its conv_seq.
        for (&seq, &at) in &sent_at {
            let covered = log
                .iter()
                .find(|n| n.0 >= seq)
                .expect("the newest was heard");
            latencies.push(covered.2.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "large-group push: {MEMBERS} members, {ONLINE} online, {MESSAGES} messages: \
         delivery p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 50),
        percentile(&latencies, 99)
    );
    streams.abort_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_follows_a_large_group_by_push() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), &["--large-group-threshold", THRESHOLD])?;
    let url = server.url();
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let conversation = large_group(&ops, 10).await?;
    let watcher = Client::connect(&url, &server.device_token(2, "watch")?).await?;
    let mut checkpoint = CheckpointFile::open(&dir.path().join("watch.json"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        watcher
            .watch(&mut checkpoint, |entry| {
                let _ = tx.send(entry.clone());
                Ok(())
            })
            .await
    });
    let mut texts = Vec::new();
    for i in 0..5 {
        let text = format!("live {i}");
        ops.append_with_priority(conversation, 1, &text, None, i == 3)
            .await?;
        let entry = loop {
            let entry = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .expect("watch runs");
            if entry.kind == pb::EntryKind::Message as i32 {
                break entry;
            }
        };
        assert_eq!(entry.text, text);
        assert_eq!(entry.priority, i == 3);
        texts.push(entry.text);
    }
    assert_eq!(texts.len(), 5, "each message once, in order");
    watching.abort();
    Ok(())
}

/// Far more notices (about 30 bytes each on the wire while the stream
/// keeps up) than the stuck device's receive window holds. The window is
/// the smallest HTTP/2 allows for a connection (65,535 bytes), so the
/// stall does not depend on the transport's defaults.
const BURST: usize = 4_000;
const FROZEN_WINDOW: u32 = 64 * 1024;

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_subscriber_of_a_busy_large_group_is_bounded_and_disconnected()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(
        dir.path(),
        &[
            "--large-group-threshold",
            THRESHOLD,
            "--subscriber-stall-secs",
            "2",
        ],
    )?;
    let url = server.url();
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let conversation = large_group(&ops, 4).await?;
    let frozen = Client::connect_with(
        &url,
        &server.device_token(2, "frozen")?,
        ConnectOptions {
            receive_window: Some(FROZEN_WINDOW),
            ..ConnectOptions::default()
        },
    )
    .await?;
    let after = frozen.sync_page(Some(0), 1_000).await?.checkpoint;
    let mut stuck = frozen.subscribe(after, false).await?;
    // A member who keeps reading, on its own connection.
    let live = Client::connect(&url, &server.device_token(3, "live")?).await?;
    let after = live.sync_page(Some(0), 1_000).await?.checkpoint;
    let mut live_notices = live.subscribe(after, false).await?;
    let heard = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let live_reader = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Ok(Some(notice)) = live_notices.message().await {
                for group in notice.groups {
                    heard.fetch_max(group.conv_seq, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    let stalled_at = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let ops = ops.clone();
        senders.spawn(async move {
            let mut newest = 0;
            for i in (worker..BURST).step_by(8) {
                // A share marked priority: that lane is bounded too.
                let reply = ops
                    .append_with_priority(conversation, 1, &format!("b{i}"), None, i % 50 == 0)
                    .await?;
                newest = newest.max(reply.conv_seq);
            }
            anyhow::Ok(newest)
        });
    }
    let mut newest = 0;
    while let Some(result) = senders.join_next().await {
        newest = newest.max(result??);
    }
    let rss = rss_mib(server.pid());

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stalled_at.elapsed())).await;
    let mut buffered = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), stuck.message()).await? {
            Ok(Some(_)) => buffered += 1,
            Ok(None) => anyhow::bail!("the stuck stream ended without a status"),
            Err(status) => break status,
        }
    };
    // Either end is the device being cut off for not reading, never a
    // server holding more: the server's stall limit ("disconnected"), or,
    // first as a rule, the device's own HTTP/2 stack, which closes a
    // connection holding too many small unread DATA frames
    // (ENHANCE_YOUR_CALM, which gRPC reports as RESOURCE_EXHAUSTED).
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disconnected") || status.message().contains("h2 protocol error"),
        "{}",
        status.message()
    );
    // The member who reads heard of the newest message all along.
    let deadline = Instant::now() + Duration::from_secs(30);
    while heard.load(std::sync::atomic::Ordering::SeqCst) < newest {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the live member missed conv_seq {newest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    live_reader.abort();
    assert!(
        buffered < BURST,
        "the stuck stream was handed {buffered} notices for {BURST} messages"
    );
    assert!(rss < 512.0, "server RSS grew to {rss:.0} MiB");
    eprintln!(
        "frozen large-group subscriber: {buffered} notices buffered for {BURST} messages, \
         server RSS {rss:.0} MiB, ended with {:?} ({})",
        status.code(),
        status.message()
    );
    Ok(())
}
