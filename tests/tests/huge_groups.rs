//! Large (read-fanout) groups pushed in real time through the real server:
//! every online member's stream names the group when a message becomes
//! readable, priority messages jump the queue, the client library's watch
//! follows a group by push alone, a device that lags hears the priority
//! messages first, and a device that stops reading a busy group is bounded
//! and disconnected like an inbox subscriber. `huge_groups/paged.rs`: a
//! 100,000-member group built a page at a time, on both stores.

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

/// Far more notices (about 20 bytes each on the wire while the stream
/// keeps up) than the stuck device's receive window holds.
const BURST: usize = 4_000;
/// The stuck device's receive window per stream. Small enough that the
/// device's own HTTP/2 stack never gives up on it: it closes a connection
/// (ENHANCE_YOUR_CALM) once unread small DATA frames cost more than its
/// budget of framing overhead (about 100 of them), so with a larger window a
/// device that stops reading cuts itself off before the server's stall
/// limit is ever reached, and the server's bound goes untested.
const FROZEN_WINDOW: u32 = 1024;

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

/// The server's stall limit in the frozen test: long enough that, however
/// slowly the machine commits, the stuck stream's priority lane passes its
/// bound (256 notices) before the stream is cut off.
const FROZEN_STALL: Duration = Duration::from_secs(10);

/// What the server may grow by during the burst while one stream is stuck
/// behind it. The stuck stream's mailbox is a few hundred notices (a few
/// KiB); nearly all of the growth is the burst's own working set (the
/// store's memtables and caches, about 150 MiB in a debug build), so this
/// only catches a server holding something per message for the stuck
/// stream (4,000 whole entries would be far past it), while the bounds
/// themselves are asserted by the server's counters.
const FROZEN_RSS_GROWTH_MIB: f64 = 256.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_subscriber_of_a_busy_large_group_is_bounded_and_disconnected()
-> anyhow::Result<()> {
    use tests::metrics::Scrape;
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(
        dir.path(),
        &[
            "--large-group-threshold",
            THRESHOLD,
            "--subscriber-stall-secs",
            &FROZEN_STALL.as_secs().to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    let metrics = server.metrics_addr.clone().expect("metrics address");
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
    let before = Scrape::take(&metrics)?;
    let rss_before = rss_mib(server.pid());
    let stalled_at = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let ops = ops.clone();
        senders.spawn(async move {
            let mut newest = 0;
            for i in (worker..BURST).step_by(8) {
                // Half marked priority: far more than the stuck stream's
                // priority lane holds, so that bound is reached too.
                let reply = ops
                    .append_with_priority(conversation, 1, &format!("b{i}"), None, i % 2 == 0)
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

    tokio::time::sleep(
        (FROZEN_STALL + Duration::from_secs(1)).saturating_sub(stalled_at.elapsed()),
    )
    .await;
    let mut buffered = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(20), stuck.message()).await? {
            Ok(Some(_)) => buffered += 1,
            Ok(None) => anyhow::bail!("the stuck stream ended without a status"),
            Err(status) => break status,
        }
    };
    // The server cut the device off for not reading (not the device's own
    // transport, which the small window keeps from giving up first).
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disconnected"),
        "{}",
        status.message()
    );
    let after = Scrape::take(&metrics)?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        delta("syncd_push_disconnects_total", &[("reason", "stalled")]),
        1.0,
        "the server counted the stalled stream"
    );
    assert!(
        delta("syncd_group_push_degraded_total", &[("lane", "priority")]) >= 1.0,
        "the stuck stream's priority lane hit its bound and was dropped for a resync"
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
        rss - rss_before < FROZEN_RSS_GROWTH_MIB,
        "server RSS grew from {rss_before:.0} to {rss:.0} MiB"
    );
    eprintln!(
        "frozen large-group subscriber: {buffered} notices buffered for {BURST} messages, \
         server RSS {rss_before:.0} -> {rss:.0} MiB, ended with {:?} ({})",
        status.code(),
        status.message()
    );
    Ok(())
}

/// Messages sent while the lagging device reads nothing, and how many of
/// them a service marks priority (fewer than a stream's priority lane
/// holds, so none may be dropped).
const LAG_BURST: usize = 1_200;
const LAG_PRIORITY_EVERY: usize = 25;

/// A device that stops reading while a burst goes to its large group, then
/// reads again: every priority message reaches it, once and in order, and
/// each before any ordinary notice naming a conv_seq at or past it, though
/// the ordinary notices queued meanwhile were merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_device_hears_every_priority_message_before_the_ordinary_ones()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The device reads nothing for as long as the burst takes to send,
    // which on a loaded machine may pass the default stall limit.
    let server = Server::start_with(
        dir.path(),
        &[
            "--large-group-threshold",
            THRESHOLD,
            "--subscriber-stall-secs",
            "600",
        ],
    )?;
    let url = server.url();
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let conversation = large_group(&ops, 4).await?;
    // The small window makes the server, not the device's transport, hold
    // what the device has not read.
    let lagging = Client::connect_with(
        &url,
        &server.device_token(2, "lagging")?,
        ConnectOptions {
            receive_window: Some(FROZEN_WINDOW),
            ..ConnectOptions::default()
        },
    )
    .await?;
    let after = lagging.sync_page(Some(0), 1_000).await?.checkpoint;
    let mut notices = lagging.subscribe(after, false).await?;
    let mut priority = Vec::new();
    let mut newest = 0;
    for i in 0..LAG_BURST {
        let urgent = i % LAG_PRIORITY_EVERY == LAG_PRIORITY_EVERY - 1;
        let reply = ops
            .append_with_priority(conversation, 1, &format!("m{i}"), None, urgent)
            .await?;
        if urgent {
            priority.push(reply.conv_seq);
        }
        newest = reply.conv_seq;
    }
    // Now the device reads: (conv_seq, priority) in arrival order.
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.iter().all(|&(seq, _)| seq < newest)
        || log.iter().filter(|n: &&(u64, bool)| n.1).count() < priority.len()
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let notice = tokio::time::timeout(left, notices.message())
            .await
            .map_err(|_| anyhow::anyhow!("heard {log:?}, not every message"))??
            .expect("the stream stays open");
        anyhow::ensure!(!notice.groups_resync, "nothing was dropped");
        for group in notice.groups {
            anyhow::ensure!(group.conversation_id == conversation);
            log.push((group.conv_seq, group.priority));
        }
    }
    let heard: Vec<u64> = log.iter().filter(|n| n.1).map(|n| n.0).collect();
    assert_eq!(heard, priority, "every priority message, once, in order");
    for (at, &(seq, _)) in log.iter().enumerate().filter(|(_, n)| n.1) {
        let overtaken = log[..at].iter().find(|n| !n.1 && n.0 >= seq);
        assert!(
            overtaken.is_none(),
            "priority {seq} came after the ordinary notice {overtaken:?}"
        );
    }
    let ordinary = log.iter().filter(|n| !n.1).count();
    assert!(
        ordinary < LAG_BURST - priority.len(),
        "the device never lagged: {ordinary} ordinary notices for as many messages"
    );
    eprintln!(
        "lagging device: {} priority notices first, {ordinary} ordinary notices for {} messages",
        heard.len(),
        LAG_BURST - priority.len()
    );
    Ok(())
}

/// A threshold above the largest write-fanout group a node takes is
/// refused at start, naming the limit.
#[test]
fn a_large_group_threshold_above_the_limit_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = std::process::Command::new(tests::syncd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--large-group-threshold",
            "10001",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("syncd served with a threshold of 10,001");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains("--large-group-threshold") && stderr.contains("at most 10000"),
        "{stderr}"
    );
    Ok(())
}

#[path = "huge_groups/paged.rs"]
mod paged;
