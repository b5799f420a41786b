//! How far a live node's search index trails its sends under W1: a syncd
//! per backend, closed-loop senders appending to the W1 conversations, and
//! beside them a prober that sends a probe (a message with the run's probe
//! word) into a random conversation every `--lag-probe-every-ms`, however
//! many earlier probes are still unfound, while a poller searches for the
//! probe word every [`POLL_EVERY`] (one service search, paged, over
//! everything sent since the oldest unfound probe) and marks each probe
//! found by its `msg_id`. A probe's lag is from its send reply to the
//! first search that finds it, so it includes up to one poll interval and
//! one search.
//!
//! Indexing throughput is the entries sent in the window (sends and
//! probes) over the time from the window's start, with the index caught
//! up, to the index holding them all again: while the index keeps up it is
//! the send rate and the drain after the last send is short.

use crate::history_search::Backend;
use crate::node::{Node, NodeArgs};
use crate::report;
use crate::workload::{self, Mix, Rng};
use client::Client;
use proto::timeline::v1 as pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the poller searches for the unfound probes.
const POLL_EVERY: Duration = Duration::from_millis(10);
/// A probe not found in this long means the index does not follow.
const PROBE_GIVE_UP: Duration = Duration::from_secs(60);
/// Most probes unfound at once; the prober skips its turn past it.
const MAX_PROBES_UNFOUND: usize = 2_000;
/// How long the index may take to hold everything sent, before the
/// window and after it.
const CATCH_UP_GIVE_UP: Duration = Duration::from_secs(180);
/// Hits per page of the poller's search (the API's most).
const POLL_PAGE: u32 = 100;

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
    /// A probe is sent this often (milliseconds), overlapping the ones not
    /// found yet.
    #[arg(long, default_value_t = 50)]
    pub lag_probe_every_ms: u64,
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
        args.lag_users >= 2
            && args.lag_conversations > 0
            && args.lag_concurrency > 0
            && args.lag_probe_every_ms > 0,
        "--lag-users must be at least 2, --lag-conversations, --lag-concurrency and \
         --lag-probe-every-ms above 0"
    );
    let mut rows = Vec::new();
    for &backend in backends {
        rows.push(measure(args, backend, opensearch_url).await?);
    }
    println!();
    println!(
        "index lag behind sends, W1 ({} users, {} conversations), {} closed-loop senders, \
         {} s, a probe every {} ms:",
        args.lag_users,
        args.lag_conversations,
        args.lag_concurrency,
        args.lag_secs,
        args.lag_probe_every_ms
    );
    println!(
        "| backend | sends/s | indexed entries/s | caught up after last send ms | \
         backlog max events | probes | lag p50 ms | lag p99 ms | lag max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} |",
            row["backend"].as_str().unwrap_or("?"),
            row["sends_per_s"].as_f64().unwrap_or(f64::NAN),
            row["indexed_entries_per_s"].as_f64().unwrap_or(f64::NAN),
            row["drain_ms"].as_f64().unwrap_or(f64::NAN),
            row["backlog_max_events"],
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
        no_search: false,
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
    // The window starts with the setup (the creations) indexed.
    caught_up(&client).await?;
    let duration = Duration::from_secs(args.lag_secs);
    let started = Instant::now();
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
    let senders = async {
        let sent = senders.await?;
        anyhow::Ok((sent, Instant::now()))
    };
    let probes = Probes::new(format!("lagprobe{}", std::process::id()));
    let every = Duration::from_millis(args.lag_probe_every_ms);
    let prober = probes.send(&client, &conversations, duration, every);
    let poller = probes.poll(&client);
    let ((sent, sends_ended), probes_sent, (lag, backlog_max)) =
        tokio::try_join!(senders, prober, poller)?;
    caught_up(&client).await?;
    let drain = sends_ended.elapsed();
    let indexed_secs = started.elapsed().as_secs_f64();
    let sends_per_s = sent.calls as f64 / sent.elapsed.as_secs_f64();
    Ok(serde_json::json!({
        "backend": backend.name(),
        "sends": sent.calls,
        "sends_per_s": sends_per_s,
        "send_ms": {"p50": report::ms(&sent.latency, 0.5), "p99": report::ms(&sent.latency, 0.99)},
        "indexed_entries_per_s": (sent.calls + probes_sent) as f64 / indexed_secs,
        "drain_ms": drain.as_secs_f64() * 1000.0,
        "backlog_max_events": backlog_max,
        "probes": lag.len(),
        "lag_ms": {
            "p50": report::ms(&lag, 0.5),
            "p99": report::ms(&lag, 0.99),
            "max": lag.max() as f64 / 1000.0,
        },
    }))
}

/// Waits until the index holds every readable event.
async fn caught_up(client: &Client) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let reply = client
            .search(pb::SearchRequest {
                query: "caughtupcheck".into(),
                limit: 1,
                ..Default::default()
            })
            .await?;
        if reply.lagging_events == 0 && !reply.catching_up {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < CATCH_UP_GIVE_UP,
            "the index still lags {} events after {CATCH_UP_GIVE_UP:?}",
            reply.lagging_events
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A probe sent and not found yet.
struct Unfound {
    replied: Instant,
    sent_at_ms: i64,
}

/// The probes of one run, shared by the prober and the poller.
#[derive(Clone)]
struct Probes {
    word: Arc<str>,
    unfound: Arc<Mutex<HashMap<u64, Unfound>>>,
    /// Every probe is sent and its reply noted.
    all_sent: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Probes {
    fn new(word: String) -> Self {
        Self {
            word: word.into(),
            unfound: Arc::default(),
            all_sent: Arc::default(),
            sent: Arc::default(),
        }
    }

    fn unfound(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Unfound>> {
        self.unfound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a probe every `every` until `duration` is over, each on its
    /// own task; the number sent.
    async fn send(
        &self,
        client: &Client,
        conversations: &Arc<Vec<(u64, Vec<u64>)>>,
        duration: Duration,
        every: Duration,
    ) -> anyhow::Result<u64> {
        let result = self.send_all(client, conversations, duration, every).await;
        self.all_sent.store(true, Ordering::SeqCst);
        result
    }

    async fn send_all(
        &self,
        client: &Client,
        conversations: &Arc<Vec<(u64, Vec<u64>)>>,
        duration: Duration,
        every: Duration,
    ) -> anyhow::Result<u64> {
        let mut rng = Rng::new(7);
        let deadline = Instant::now() + duration;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = Vec::new();
        loop {
            ticks.tick().await;
            if Instant::now() >= deadline {
                break;
            }
            if self.unfound().len() >= MAX_PROBES_UNFOUND {
                continue;
            }
            let (conversation, _, sender) = workload::pick(&mut rng, conversations);
            let text = format!("{} status", self.word);
            let client = client.clone();
            let probes = self.clone();
            tasks.push(tokio::spawn(async move {
                let reply = client.append(conversation, sender, &text, None).await?;
                probes.unfound().insert(
                    reply.msg_id,
                    Unfound {
                        replied: Instant::now(),
                        sent_at_ms: reply.sent_at_ms,
                    },
                );
                probes.sent.fetch_add(1, Ordering::SeqCst);
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(self.sent.load(Ordering::SeqCst))
    }

    /// Searches for the unfound probes until every probe is sent and
    /// found; their lags in µs, and the most lagging events a search
    /// reply reported.
    async fn poll(&self, client: &Client) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
        let mut lag = report::histogram();
        let mut backlog_max = 0u64;
        loop {
            // Read before the map: a probe noted after this is seen by the
            // next round.
            let all_sent = self.all_sent.load(Ordering::SeqCst);
            let oldest = self
                .unfound()
                .values()
                .map(|p| (p.sent_at_ms, p.replied))
                .min();
            let Some((oldest_ms, oldest_replied)) = oldest else {
                if all_sent {
                    break;
                }
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            };
            anyhow::ensure!(
                oldest_replied.elapsed() < PROBE_GIVE_UP,
                "a probe was not found in the index after {PROBE_GIVE_UP:?}"
            );
            let mut cursor = String::new();
            loop {
                let reply = client
                    .search(pb::SearchRequest {
                        query: self.word.to_string(),
                        sent_from_ms: Some(oldest_ms),
                        limit: POLL_PAGE,
                        cursor,
                        ..Default::default()
                    })
                    .await?;
                let found = Instant::now();
                backlog_max = backlog_max.max(reply.lagging_events);
                {
                    let mut unfound = self.unfound();
                    for hit in &reply.hits {
                        if let Some(probe) = unfound.remove(&hit.msg_id) {
                            let waited = found.duration_since(probe.replied);
                            lag.record(waited.as_micros().max(1) as u64)?;
                        }
                    }
                }
                if reply.next_cursor.is_empty() {
                    break;
                }
                cursor = reply.next_cursor;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        anyhow::ensure!(!lag.is_empty(), "no probe was sent");
        Ok((lag, backlog_max))
    }
}
