//! How far a live node's search index trails its sends under W1: a syncd
//! per backend, closed-loop senders appending to the W1 conversations, and
//! beside them one probe at a time: a message with a word of its own,
//! then searches for that word (every [`POLL_EVERY`]) until it is found.
//! The lag is from the probe's send reply to the first search that finds
//! it, so it includes up to one poll interval and one search.

use crate::history_search::Backend;
use crate::node::{Node, NodeArgs};
use crate::report;
use crate::workload::{self, Mix, Rng};
use client::Client;
use proto::timeline::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a probe searches for its word.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// A probe not found in this long means the index does not follow.
const PROBE_GIVE_UP: Duration = Duration::from_secs(60);
/// Pause between probes (so that probes are a small share of the sends).
const PROBE_PAUSE: Duration = Duration::from_millis(20);

#[derive(clap::Args, Clone, Debug)]
pub struct LagArgs {
    /// Seconds of sends per backend while the index lag is probed (0: no
    /// lag measurement).
    #[arg(long, default_value_t = 20)]
    pub lag_secs: u64,
    /// W1 users of the lag measurement.
    #[arg(long, default_value_t = 10_000)]
    pub lag_users: u64,
    /// W1 conversations of the lag measurement.
    #[arg(long, default_value_t = 2_000)]
    pub lag_conversations: u64,
    /// Senders, each with one send in flight (W1's fanout default).
    #[arg(long, default_value_t = 64)]
    pub lag_concurrency: usize,
}

/// Measures each backend in turn; the rows as JSON.
pub async fn run(
    args: &LagArgs,
    backends: &[Backend],
    opensearch_url: &str,
) -> anyhow::Result<serde_json::Value> {
    if args.lag_secs == 0 {
        return Ok(serde_json::Value::Null);
    }
    anyhow::ensure!(
        args.lag_users >= 2 && args.lag_conversations > 0 && args.lag_concurrency > 0,
        "--lag-users must be at least 2, --lag-conversations and --lag-concurrency above 0"
    );
    let mut rows = Vec::new();
    for &backend in backends {
        rows.push(measure(args, backend, opensearch_url).await?);
    }
    println!();
    println!(
        "index lag behind sends, W1 ({} users, {} conversations), {} closed-loop senders, {} s:",
        args.lag_users, args.lag_conversations, args.lag_concurrency, args.lag_secs
    );
    println!("| backend | sends/s | probes | lag p50 ms | lag p99 ms | lag max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} |",
            row["backend"].as_str().unwrap_or("?"),
            row["sends_per_s"].as_f64().unwrap_or(f64::NAN),
            row["probes"],
            row["lag_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            row["lag_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            row["lag_ms"]["max"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(serde_json::Value::Array(rows))
}

async fn measure(
    args: &LagArgs,
    backend: Backend,
    opensearch_url: &str,
) -> anyhow::Result<serde_json::Value> {
    let index_name = format!("bench-lag-{}", std::process::id());
    let extra: Vec<&str> = match backend {
        Backend::Embedded => Vec::new(),
        Backend::Opensearch => vec![
            "--search-backend",
            "opensearch",
            "--opensearch-url",
            opensearch_url,
            "--opensearch-index",
            &index_name,
        ],
    };
    let node_args = NodeArgs {
        store: "embedded".into(),
        server: None,
        server_data_dir: None,
        server_pid: None,
        nodes: 1,
    };
    let node = Node::start_with(&node_args, 10_000, &extra).await?;
    let result = drive(args, &node, backend).await;
    drop(node);
    if backend == Backend::Opensearch {
        let options = search::OpenSearchOptions::new(opensearch_url, index_name);
        tokio::task::spawn_blocking(move || search::OpenSearchIndex::open(&options)?.delete())
            .await??;
    }
    result
}

async fn drive(args: &LagArgs, node: &Node, backend: Backend) -> anyhow::Result<serde_json::Value> {
    let client = Client::connect(&node.url, &node.service_token()?).await?;
    let mix = Mix {
        users: args.lag_users,
        conversations: args.lag_conversations,
        direct_share: 0.70,
        small_group_share: 0.25,
        small_group_size: 20,
        large_group_size: 200,
    };
    let mut rng = Rng::new(42);
    let member_lists = workload::conversations(&mix, &mut rng);
    let mut conversations = Vec::with_capacity(member_lists.len());
    for chunk in member_lists.chunks(64) {
        let created = futures_util::future::try_join_all(chunk.iter().map(|members| {
            let client = client.clone();
            async move {
                let kind = if members.len() == 2 {
                    pb::ConversationKind::Direct
                } else {
                    pb::ConversationKind::Group
                };
                let conversation = client
                    .create_conversation(kind, members.clone(), "")
                    .await?;
                anyhow::Ok((conversation.conversation_id, members.clone()))
            }
        }))
        .await?;
        conversations.extend(created);
    }
    let conversations = Arc::new(conversations);
    let duration = Duration::from_secs(args.lag_secs);
    let senders = crate::closed_loop::run(args.lag_concurrency, duration, |worker| {
        let client = client.clone();
        let conversations = Arc::clone(&conversations);
        let mut rng = Rng::new(1000 + worker as u64);
        move |_| {
            let (conversation, _, sender) = workload::pick(&mut rng, &conversations);
            let text = crate::history_search::message_text(&mut rng);
            let client = client.clone();
            async move {
                client.append(conversation, sender, &text, None).await?;
                anyhow::Ok(1)
            }
        }
    });
    let prober = probe(&client, &conversations, duration);
    let (sent, lag) = tokio::try_join!(senders, prober)?;
    let sends_per_s = sent.calls as f64 / sent.elapsed.as_secs_f64();
    Ok(serde_json::json!({
        "backend": backend.name(),
        "sends": sent.calls,
        "sends_per_s": sends_per_s,
        "send_ms": {"p50": report::ms(&sent.latency, 0.5), "p99": report::ms(&sent.latency, 0.99)},
        "probes": lag.len(),
        "lag_ms": {
            "p50": report::ms(&lag, 0.5),
            "p99": report::ms(&lag, 0.99),
            "max": lag.max() as f64 / 1000.0,
        },
    }))
}

/// Probes one at a time until `duration` is over; the lags in µs.
async fn probe(
    client: &Client,
    conversations: &[(u64, Vec<u64>)],
    duration: Duration,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let mut lag = report::histogram();
    let mut rng = Rng::new(7);
    let deadline = Instant::now() + duration;
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let (conversation, _, sender) = workload::pick(&mut rng, conversations);
        let word = format!("lagprobe{n}");
        client
            .append(conversation, sender, &format!("{word} status"), None)
            .await?;
        let sent = Instant::now();
        loop {
            let reply = client
                .search(pb::SearchRequest {
                    query: word.clone(),
                    conversation_id: Some(conversation),
                    limit: 1,
                    ..Default::default()
                })
                .await?;
            if !reply.hits.is_empty() {
                lag.record(sent.elapsed().as_micros().max(1) as u64)?;
                break;
            }
            anyhow::ensure!(
                sent.elapsed() < PROBE_GIVE_UP,
                "probe {word} not found in the index after {PROBE_GIVE_UP:?}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    anyhow::ensure!(!lag.is_empty(), "no probe finished");
    Ok(lag)
}
