//! A subscriber that never reads costs bounded memory, never slows the
//! others, and is disconnected with a clear status once it has stalled past
//! the limit.

use client::{Client, ConnectOptions, pb};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::Server;

/// Far more pushed bytes (2,000 x 1 KiB) than the stuck device's receive
/// window (FROZEN_WINDOW) and the notice queue hold, even when notices
/// coalesce; the transport's default window (2 MiB) would not be, so the
/// stall would depend on timing.
const MESSAGES: usize = 2_000;
const PADDING: usize = 1_024;
const FROZEN_WINDOW: u32 = 64 * 1024;

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Follows user 3's inbox and notes when each message arrives.
fn watch(client: Client, arrivals: Arrivals) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut seen = client.sync_page(Some(0), 1000).await?.checkpoint;
        let mut notices = client.subscribe(seen, true).await?;
        while let Some(notice) = notices.message().await? {
            let entries = if client::notice_is_complete(&notice) {
                notice.entries
            } else {
                client.sync_page(Some(seen), 1000).await?.entries
            };
            let now = Instant::now();
            let mut arrived = arrivals.lock().unwrap();
            for entry in entries {
                if entry.seq > seen {
                    seen = entry.seq;
                    let key = entry.text.split(' ').next().unwrap_or_default().to_owned();
                    arrived.entry(key).or_insert(now);
                }
            }
        }
        Ok(())
    })
}

/// Sends MESSAGES messages from 8 concurrent senders; returns the p99
/// delivery latency to the watcher, in milliseconds.
async fn load(
    sender: &Client,
    conversation_id: u64,
    phase: &str,
    arrivals: &Arrivals,
) -> anyhow::Result<f64> {
    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (sender, started) = (sender.clone(), started.clone());
        let phase = phase.to_owned();
        senders.spawn(async move {
            for i in (worker..MESSAGES).step_by(8) {
                let key = format!("{phase}-{i}");
                let text = format!("{key} {}", "x".repeat(PADDING));
                started.lock().unwrap().insert(key, Instant::now());
                sender.send(conversation_id, &text, None).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = senders.join_next().await {
        result??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut latencies = loop {
        let latencies: Vec<f64> = {
            let arrived = arrivals.lock().unwrap();
            started
                .lock()
                .unwrap()
                .iter()
                .filter_map(|(text, at)| {
                    arrived
                        .get(text)
                        .map(|got| got.duration_since(*at).as_secs_f64() * 1000.0)
                })
                .collect()
        };
        if latencies.len() == MESSAGES {
            break latencies;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{phase}: only {} of {MESSAGES} delivered",
            latencies.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    latencies.sort_by(f64::total_cmp);
    Ok(latencies[latencies.len() * 99 / 100])
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(str::to_owned))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_subscriber_is_bounded_harmless_and_disconnected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), &["--subscriber-stall-secs", "2"])?;
    let url = server.url();
    let sender = Client::connect(&url, &server.device_token(1, "phone")?).await?;
    let frozen = Client::connect_with(
        &url,
        &server.device_token(2, "frozen")?,
        ConnectOptions {
            receive_window: Some(FROZEN_WINDOW),
            ..ConnectOptions::default()
        },
    )
    .await?;
    let watcher = Client::connect(&url, &server.device_token(3, "watch")?).await?;
    let conversation = sender
        .create_conversation(pb::ConversationKind::Group, vec![2, 3], "")
        .await?;
    let arrivals: Arrivals = Arc::default();
    let watching = watch(watcher, arrivals.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let p99_alone = load(&sender, conversation.conversation_id, "alone", &arrivals).await?;
    let rss_before = rss_mib(server.pid(), "VmRSS:");

    // A subscriber that never reads what it asked for.
    let mut stuck = frozen.subscribe(0, true).await?;
    let stalled_at = Instant::now();
    let p99_with_frozen = load(&sender, conversation.conversation_id, "frozen", &arrivals).await?;
    let rss_after = rss_mib(server.pid(), "VmRSS:");
    let peak = rss_mib(server.pid(), "VmHWM:");

    // Past the stall limit the stuck stream ends with a clear status, after
    // whatever it had buffered.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stalled_at.elapsed())).await;
    let (mut buffered, mut buffered_bytes) = (0, 0);
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stuck.message()).await? {
            Ok(Some(notice)) => {
                buffered += 1;
                buffered_bytes += notice.entries.iter().map(|e| e.text.len()).sum::<usize>();
            }
            Ok(None) => anyhow::bail!("the stuck stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("disconnected"),
        "{}",
        status.message()
    );
    // What a stuck stream holds is bounded by its HTTP/2 window plus our
    // queue (8 notices of at most 64 entries), not by how much was sent to it.
    assert!(
        buffered_bytes < 1 << 20,
        "a stuck subscriber held {buffered_bytes} bytes"
    );
    assert!(rss_after < 512.0, "server RSS grew to {rss_after:.0} MiB");
    eprintln!(
        "push: delivery p99 {p99_alone:.1} ms alone, {p99_with_frozen:.1} ms with a frozen subscriber; \
         server RSS {rss_before:.0} -> {rss_after:.0} MiB (peak {peak:.0} MiB); the frozen stream held \
         {buffered} notices ({buffered_bytes} bytes of text) and ended with {:?}",
        status.code()
    );
    watching.abort();
    Ok(())
}
