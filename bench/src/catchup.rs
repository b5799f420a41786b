//! `bench catchup`: a device that was offline while `--entries` messages
//! arrived syncs them all: page by page with Sync (a round trip per page),
//! and as one CatchUp stream of the same pages (the server reads the next
//! page while the device decodes this one), as the client library does.

use crate::node::{Node, NodeArgs};
use crate::redis_peer::CatchUpRound;
use crate::report;
use anyhow::Context;
use client::{Client, pb};
use futures_util::future::try_join_all;
use std::time::Instant;
use syncd::auth::Principal;

#[derive(clap::Args, Clone, Debug)]
pub struct CatchupArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Entries the device missed.
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// Sync page size (the server caps it at 1,000).
    #[arg(long, default_value_t = 1_000)]
    page: u32,
    /// Catch-ups of the whole backlog timed on each side; the median
    /// round is reported, so one stall does not make the figure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Also catch up the same backlog from a Redis stream (XRANGE pages
    /// from a checkpoint id), redis-server started by the bench.
    #[arg(long)]
    redis_peer: bool,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

pub async fn run(args: CatchupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.entries > 0, "--entries must be at least 1");
    let node = Node::start(&args.node, seqsvc::AllocatorConfig::default().step).await?;
    let service = Client::connect(&node.url, &node.service_token()?).await?;
    let conversation = service
        .create_conversation(pb::ConversationKind::Direct, vec![1, 2], "")
        .await?
        .conversation_id;
    eprintln!(
        "setup: appending {} messages while the device is offline",
        args.entries
    );
    let text = "x".repeat(args.message_bytes);
    let writers = 64u64;
    let per_writer = args.entries.div_ceil(writers);
    let fill = (0..writers).map(|_| {
        let (service, text) = (service.clone(), text.clone());
        async move {
            for _ in 0..per_writer {
                service.append(conversation, 1, &text, None).await?;
            }
            anyhow::Ok(())
        }
    });
    try_join_all(fill).await?;
    let backlog = per_writer * writers;

    let device = Client::connect(
        &node.url,
        &node.token(&Principal::Device {
            user_id: 2,
            device_id: "laptop".into(),
        })?,
    )
    .await?;
    // The conversation-created event is in the inbox too.
    let expected = backlog + 1;
    let mut timed = Vec::with_capacity(args.rounds as usize);
    let mut streamed = Vec::with_capacity(args.rounds as usize);
    // Alternating, so a slow spell of the machine does not fall on one way.
    for _ in 0..args.rounds {
        for (round, way) in [
            (sync_all(&device, args.page).await?, &mut timed),
            (catch_up(&device, args.page).await?, &mut streamed),
        ] {
            anyhow::ensure!(
                round.received == expected,
                "received {} of {expected} entries",
                round.received
            );
            way.push(round);
        }
    }
    let store_kind = node.store_kind();
    drop(node);
    let peer = if args.redis_peer {
        eprintln!("Redis Streams peer: the same backlog in one stream");
        let peer = crate::redis_peer::catch_up(
            expected,
            args.message_bytes,
            args.page as usize,
            args.rounds as usize,
        )
        .await?;
        if let Some(short) = peer.iter().find(|r| r.received != expected) {
            anyhow::bail!(
                "the Redis peer read {} of {expected} entries",
                short.received
            );
        }
        Some(peer)
    } else {
        None
    };
    println!();
    println!(
        "catch-up of {expected} entries by one device, pages of {}, {} rounds each \
         (the median round)",
        args.page, args.rounds
    );
    println!(
        "| {:<28} | {:>8} | {:>9} | {:>12} | {:>13} | {:>13} |",
        "system", "pages", "total s", "entries/s", "page p50 ms", "page p99 ms"
    );
    println!("|{}|", ["---"; 6].join("|"));
    let syncd = Summary::of(&timed)?;
    syncd.print_row(&format!("syncd Sync, {store_kind} store"));
    let syncd_streamed = Summary::of(&streamed)?;
    syncd_streamed.print_row(&format!("syncd CatchUp, {store_kind}"));
    let mut json = serde_json::json!({
        "benchmark": "catchup",
        "config": {
            "store": store_kind, "entries": args.entries, "message_bytes": args.message_bytes,
            "page": args.page, "rounds": args.rounds, "search_on": args.node.search_on(),
        },
        "received": expected,
    });
    json.as_object_mut()
        .expect("an object")
        .extend(syncd.json().as_object().expect("an object").clone());
    json["catch_up_stream"] = syncd_streamed.json();
    if let Some(peer) = peer {
        let peer = Summary::of(&peer)?;
        peer.print_row("Redis Streams (XRANGE)");
        let ratio = peer.median_secs / syncd.median_secs;
        let streamed_ratio = peer.median_secs / syncd_streamed.median_secs;
        println!(
            "syncd: {ratio:.2}x the peer's entries/s with Sync pages, {streamed_ratio:.2}x \
             with CatchUp, median round against median round (syncd pages carry seqs, \
             conversation ids and message ids over gRPC; the peer's are raw stream entries)"
        );
        json["redis_peer"] = peer.json();
        json["ratio_syncd_to_peer"] = serde_json::json!(ratio);
        json["ratio_catch_up_stream_to_peer"] = serde_json::json!(streamed_ratio);
    }
    let path = report::write_json("catchup", args.out, &json)?;
    println!("results: {}", path.display());
    Ok(())
}

/// One catch-up from the start of the inbox, page by page, as the client
/// library pulls.
async fn sync_all(device: &Client, page_size: u32) -> anyhow::Result<CatchUpRound> {
    let mut round = Round::start();
    loop {
        let asked = Instant::now();
        let page = device.sync_page(Some(round.after), page_size).await?;
        if round.took(&page, asked)? {
            return Ok(round.finish());
        }
    }
}

/// One round being timed: pages taken, entries, where the next read starts.
struct Round {
    started: Instant,
    after: u64,
    received: u64,
    pages: u64,
    page_latency: hdrhistogram::Histogram<u64>,
}

impl Round {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            after: 0,
            received: 0,
            pages: 0,
            page_latency: report::histogram(),
        }
    }

    /// Counts a page asked for (or waited for) since `asked`; true once it
    /// was the complete one.
    fn took(&mut self, page: &pb::SyncReply, asked: Instant) -> anyhow::Result<bool> {
        self.page_latency
            .record(asked.elapsed().as_micros().max(1) as u64)?;
        self.received += page.entries.len() as u64;
        self.pages += 1;
        self.after = page.checkpoint;
        Ok(!page.has_more)
    }

    fn finish(self) -> CatchUpRound {
        CatchUpRound {
            received: self.received,
            pages: self.pages,
            elapsed: self.started.elapsed(),
            page_latency: self.page_latency,
        }
    }
}

/// One catch-up from the start of the inbox as one CatchUp call (calling
/// again should a stream end early, as the client library does). A page's
/// latency is the time from the previous page (or the call) to its arrival.
async fn catch_up(device: &Client, page_size: u32) -> anyhow::Result<CatchUpRound> {
    let mut round = Round::start();
    loop {
        let mut asked = Instant::now();
        let mut replies = device.catch_up(Some(round.after), page_size).await?;
        let mut complete = false;
        while let Some(page) = replies.message().await? {
            complete = round.took(&page, asked)?;
            asked = Instant::now();
        }
        if complete {
            return Ok(round.finish());
        }
    }
}

/// The rounds of one system: the median round's time, and page latency
/// over all rounds.
struct Summary {
    received: u64,
    pages: u64,
    median_secs: f64,
    round_secs: Vec<f64>,
    page_latency: hdrhistogram::Histogram<u64>,
}

impl Summary {
    fn of(rounds: &[CatchUpRound]) -> anyhow::Result<Self> {
        let first = rounds.first().context("no rounds")?;
        let round_secs: Vec<f64> = rounds.iter().map(|r| r.elapsed.as_secs_f64()).collect();
        let mut sorted = round_secs.clone();
        sorted.sort_by(f64::total_cmp);
        let mut page_latency = report::histogram();
        for round in rounds {
            page_latency.add(&round.page_latency)?;
        }
        Ok(Self {
            received: first.received,
            pages: first.pages,
            median_secs: sorted[sorted.len() / 2],
            round_secs,
            page_latency,
        })
    }

    fn entries_per_sec(&self) -> f64 {
        self.received as f64 / self.median_secs
    }

    fn print_row(&self, system: &str) {
        println!(
            "| {:<28} | {:>8} | {:>9.3} | {:>12.0} | {:>13.2} | {:>13.2} |",
            system,
            self.pages,
            self.median_secs,
            self.entries_per_sec(),
            report::ms(&self.page_latency, 0.5),
            report::ms(&self.page_latency, 0.99)
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "received": self.received, "pages": self.pages,
            "elapsed_secs": self.median_secs, "round_secs": self.round_secs,
            "entries_per_sec": self.entries_per_sec(),
            "page_ms": {
                "p50": report::ms(&self.page_latency, 0.5),
                "p99": report::ms(&self.page_latency, 0.99),
            },
        })
    }
}
