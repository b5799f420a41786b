//! History search on both index backends, side by side: how fast a
//! history of N messages is indexed (in the batches the node's indexer
//! commits), and query latency over it for a device user (authorisation
//! part of the query) and for a service, in English, Chinese and a phrase,
//! in both orders; then how far each backend's index trails the sends of a
//! live node under W1 ([`crate::search_lag`]).
//!
//! The indexes are driven in-process (the `search` crate syncd uses), so
//! those numbers are the index's own, not gRPC's. Each backend gets the
//! same history and the same queries (one seed).

use crate::report;
use crate::workload::Rng;
use hdrhistogram::Histogram;
use search::{
    ConversationUpdate, IndexOp, MessageDoc, OpenSearchIndex, OpenSearchOptions, SearchIndex,
    SearchRequest, Searcher, SortOrder, TantivyIndex,
};
use std::time::Instant;

#[derive(clap::Args, Clone, Debug)]
pub struct SearchArgs {
    /// Messages in the history.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Conversations they are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub conversations: u64,
    /// Members per conversation (users are shared between conversations).
    #[arg(long, default_value_t = 8)]
    pub members: u64,
    /// Users; each is in about conversations * members / users of them.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Messages per conversation in one update (the indexer reads at most
    /// 256 entries of a conversation per pass).
    #[arg(long, default_value_t = 256)]
    pub batch: u64,
    /// Queries timed per kind.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// The backends measured, side by side: embedded, opensearch.
    #[arg(long, value_delimiter = ',', default_value = "embedded,opensearch")]
    pub backends: Vec<Backend>,
    /// The OpenSearch node (scripts/opensearch-server starts one there).
    #[arg(
        long,
        env = "TIMELINE_OPENSEARCH_URL",
        default_value = "http://127.0.0.1:9200"
    )]
    pub opensearch_url: String,
    /// Messages of OpenSearch's history when smaller than --messages (0:
    /// the same history).
    #[arg(long, default_value_t = 0)]
    pub opensearch_messages: u64,
    #[command(flatten)]
    pub lag: crate::search_lag::LagArgs,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Embedded,
    Opensearch,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Opensearch => "opensearch",
        }
    }
}

/// An index of the bench's own, dropped afterwards.
enum BenchIndex {
    Embedded(TantivyIndex, tempfile::TempDir),
    OpenSearch(OpenSearchIndex),
}

impl BenchIndex {
    fn open(backend: Backend, args: &SearchArgs) -> anyhow::Result<Self> {
        Ok(match backend {
            Backend::Embedded => {
                let dir = tempfile::tempdir()?;
                BenchIndex::Embedded(TantivyIndex::open(dir.path())?, dir)
            }
            Backend::Opensearch => {
                let name = format!("bench-search-{}", std::process::id());
                let options = OpenSearchOptions::new(&args.opensearch_url, name);
                let index = OpenSearchIndex::open(&options).map_err(|e| {
                    anyhow::anyhow!(
                        "{e} (start a node with scripts/opensearch-server start, or \
                         measure only --backends embedded)"
                    )
                })?;
                // A fresh index: one left by an interrupted run is dropped.
                index.delete()?;
                BenchIndex::OpenSearch(OpenSearchIndex::open(&options)?)
            }
        })
    }

    fn index(&self) -> &dyn SearchIndex {
        match self {
            BenchIndex::Embedded(index, _) => index,
            BenchIndex::OpenSearch(index) => index,
        }
    }

    /// Bytes on disk (the embedded index only: OpenSearch's are its own).
    fn bytes(&self) -> Option<u64> {
        match self {
            BenchIndex::Embedded(_, dir) => Some(dir_bytes(dir.path())),
            BenchIndex::OpenSearch(_) => None,
        }
    }

    fn drop_index(self) -> anyhow::Result<()> {
        if let BenchIndex::OpenSearch(index) = self {
            index.delete()?;
        }
        Ok(())
    }
}

/// English and Chinese words the generated messages draw from.
const WORDS: &[&str] = &[
    "meeting",
    "deploy",
    "database",
    "invoice",
    "lunch",
    "release",
    "review",
    "budget",
    "server",
    "holiday",
    "design",
    "customer",
    "report",
    "ticket",
    "launch",
    "schedule",
    "数据库",
    "会议",
    "发布",
    "客户",
    "预算",
    "服务器",
    "设计",
    "报告",
    "午饭",
    "假期",
];

/// Builds one query of a kind (picking its user at random).
type MakeRequest<'a> = Box<dyn Fn(&mut Rng) -> SearchRequest + 'a>;

pub fn message_text(rng: &mut Rng) -> String {
    let n = 4 + rng.below(8) as usize;
    let mut text = String::new();
    for i in 0..n {
        let word = WORDS[rng.below(WORDS.len() as u64) as usize];
        if i > 0 && word.is_ascii() {
            text.push(' ');
        }
        text.push_str(word);
    }
    text
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.conversations > 0 && args.members > 0 && args.users >= args.members,
        "--conversations and --members must be above 0, --users at least --members"
    );
    anyhow::ensure!(!args.backends.is_empty(), "--backends names none");
    let mut results = Vec::new();
    for &backend in &args.backends {
        let messages = match backend {
            Backend::Opensearch if args.opensearch_messages > 0 => {
                args.opensearch_messages.min(args.messages)
            }
            _ => args.messages,
        };
        let bench = BenchIndex::open(backend, &args)?;
        let measured = measure(bench.index(), &args, messages, backend);
        let bytes = bench.bytes();
        bench.drop_index()?;
        let mut measured = measured?;
        if let Some(bytes) = bytes {
            measured["index_mib"] = serde_json::json!(bytes as f64 / (1024.0 * 1024.0));
        }
        results.push(measured);
    }
    print_side_by_side(&results);
    let lag = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(crate::search_lag::run(
            &args.lag,
            &args.backends,
            &args.opensearch_url,
        ))?;
    let path = report::write_json(
        "search",
        args.out.clone(),
        &serde_json::json!({
            "conversations": args.conversations,
            "members": args.members,
            "users": args.users,
            "batch": args.batch,
            "backends": results,
            "lag": lag,
        }),
    )?;
    println!("results: {}", path.display());
    Ok(())
}

/// The backends' query latencies in one table, a column pair each.
fn print_side_by_side(results: &[serde_json::Value]) {
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["backend"].as_str().unwrap_or("?"))
        .collect();
    println!();
    print!("| query |");
    for name in &names {
        print!(" {name} p50 ms | {name} p99 ms |");
    }
    println!();
    println!("|---|{}", "---:|---:|".repeat(names.len()));
    let Some(first) = results.first() else { return };
    for (i, row) in first["queries"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        print!("| {} |", row["query"].as_str().unwrap_or("?"));
        for result in results {
            let q = &result["queries"][i];
            print!(
                " {:.2} | {:.2} |",
                q["p50_ms"].as_f64().unwrap_or(f64::NAN),
                q["p99_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!();
    }
}

/// Indexes the history into `index` and times the queries over it.
fn measure(
    index: &dyn SearchIndex,
    args: &SearchArgs,
    messages: u64,
    backend: Backend,
) -> anyhow::Result<serde_json::Value> {
    let mut rng = Rng::new(11);
    // Members of each conversation, joined at conv_seq 1.
    let members: Vec<Vec<u64>> = (0..args.conversations)
        .map(|_| {
            (0..args.members)
                .map(|_| 1 + rng.below(args.users))
                .collect()
        })
        .collect();
    let mut next_seq = vec![2u64; args.conversations as usize];
    let joins: Vec<ConversationUpdate> = members
        .iter()
        .enumerate()
        .map(|(c, users)| ConversationUpdate {
            conversation_id: c as u64 + 1,
            ops: vec![IndexOp::Joined {
                users: users.clone(),
                conv_seq: 1,
            }],
            indexed_through: 1,
        })
        .collect();
    for chunk in joins.chunks(64) {
        index.apply(chunk)?;
    }

    // Index the history in the shape of a backlog the indexer catches up
    // on: 64 conversations per commit, `batch` messages each (16,384 at
    // the default: the indexer's SEARCH_BATCH_ENTRIES).
    let started = Instant::now();
    let mut indexed = 0u64;
    let mut commits = 0u64;
    let mut commit_latency = report::histogram();
    let mut sent_at = 1_700_000_000_000i64;
    while indexed < messages {
        let mut updates = Vec::with_capacity(64);
        for _ in 0..64 {
            if indexed >= messages {
                break;
            }
            let c = rng.below(args.conversations) as usize;
            let count = args.batch.min(messages - indexed);
            let mut ops = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let conv_seq = next_seq[c];
                next_seq[c] += 1;
                sent_at += 1;
                let sender = members[c][rng.below(args.members) as usize];
                ops.push(IndexOp::Upsert(MessageDoc {
                    conversation_id: c as u64 + 1,
                    conv_seq,
                    msg_id: indexed + 1,
                    sender_id: sender,
                    text: message_text(&mut rng),
                    sent_at_ms: sent_at,
                }));
                indexed += 1;
            }
            updates.push(ConversationUpdate {
                conversation_id: c as u64 + 1,
                ops,
                indexed_through: next_seq[c] - 1,
            });
        }
        let commit_started = Instant::now();
        index.apply(&updates)?;
        let _ = commit_latency.record(commit_started.elapsed().as_micros().max(1) as u64);
        commits += 1;
    }
    let index_secs = started.elapsed().as_secs_f64();

    let user_in = |rng: &mut Rng| members[rng.below(args.conversations) as usize][0];
    let kinds: Vec<(&str, MakeRequest)> = vec![
        (
            "user, one English word, newest first",
            Box::new(move |rng: &mut Rng| {
                SearchRequest::new(Searcher::User(user_in(rng)), "database")
            }),
        ),
        (
            "user, Chinese word (数据库)",
            Box::new(move |rng: &mut Rng| {
                SearchRequest::new(Searcher::User(user_in(rng)), "数据库")
            }),
        ),
        (
            "user, two words, relevance",
            Box::new(move |rng: &mut Rng| SearchRequest {
                order: SortOrder::Relevance,
                ..SearchRequest::new(Searcher::User(user_in(rng)), "deploy server")
            }),
        ),
        (
            "service, phrase \"release review\"",
            Box::new(|_: &mut Rng| SearchRequest::new(Searcher::Service, "\"release review\"")),
        ),
        (
            "service, one conversation, one word",
            Box::new(move |rng: &mut Rng| SearchRequest {
                conversation_id: Some(1 + rng.below(args.conversations)),
                ..SearchRequest::new(Searcher::Service, "budget")
            }),
        ),
    ];
    let backend = backend.name();
    println!(
        "bench search ({backend}): {messages} messages in {} conversations ({} members each, {} users)",
        args.conversations, args.members, args.users
    );
    println!(
        "indexed in {index_secs:.1} s: {:.0} messages/s, {commits} commits (p50 {:.1} ms, p99 {:.1} ms)",
        messages as f64 / index_secs,
        report::ms(&commit_latency, 0.5),
        report::ms(&commit_latency, 0.99),
    );
    println!("| query | p50 ms | p99 ms | hits per page (mean) |");
    println!("|---|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, request) in &kinds {
        let mut latency: Histogram<u64> = report::histogram();
        let mut hits = 0usize;
        for _ in 0..args.queries {
            let request = request(&mut rng);
            let started = Instant::now();
            let page = index.search(&request)?;
            let _ = latency.record(started.elapsed().as_micros().max(1) as u64);
            anyhow::ensure!(!page.timed_out, "{name}: timed out");
            hits += page.hits.len();
        }
        let mean_hits = hits as f64 / args.queries as f64;
        println!(
            "| {name} | {:.2} | {:.2} | {mean_hits:.1} |",
            report::ms(&latency, 0.5),
            report::ms(&latency, 0.99)
        );
        rows.push(serde_json::json!({
            "query": name,
            "p50_ms": report::ms(&latency, 0.5),
            "p99_ms": report::ms(&latency, 0.99),
            "mean_hits": mean_hits,
        }));
    }
    Ok(serde_json::json!({
        "backend": backend,
        "messages": messages,
        "index_secs": index_secs,
        "messages_per_s": messages as f64 / index_secs,
        "commits": commits,
        "commit_ms": {"p50": report::ms(&commit_latency, 0.5), "p99": report::ms(&commit_latency, 0.99)},
        "queries": rows,
    }))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
