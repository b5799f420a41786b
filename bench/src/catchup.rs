//! `bench catchup`: a device that was offline while `--entries` messages
//! arrived syncs them all, page by page, as the client library does.

use crate::node::{Node, NodeArgs};
use crate::report;
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
    let started = Instant::now();
    let mut latency = report::histogram();
    let (mut after, mut received, mut pages) = (0u64, 0u64, 0u64);
    loop {
        let asked = Instant::now();
        let page = device.sync_page(Some(after), args.page).await?;
        latency.record(asked.elapsed().as_micros().max(1) as u64)?;
        received += page.entries.len() as u64;
        pages += 1;
        after = page.checkpoint;
        if !page.has_more {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let store_kind = node.store_kind();
    drop(node);
    // The conversation-created event is in the inbox too.
    anyhow::ensure!(
        received == backlog + 1,
        "received {received} of {} entries",
        backlog + 1
    );
    let peer = if args.redis_peer {
        eprintln!("Redis Streams peer: the same backlog in one stream");
        Some(crate::redis_peer::catch_up(received, args.message_bytes, args.page as usize).await?)
    } else {
        None
    };
    println!();
    println!(
        "catch-up of {received} entries by one device, pages of {}",
        args.page
    );
    println!(
        "| {:<28} | {:>8} | {:>9} | {:>12} | {:>13} | {:>13} |",
        "system", "pages", "total s", "entries/s", "page p50 ms", "page p99 ms"
    );
    println!("|{}|", ["---"; 6].join("|"));
    println!(
        "| {:<28} | {:>8} | {:>9.3} | {:>12.0} | {:>13.2} | {:>13.2} |",
        format!("syncd, {store_kind} store"),
        pages,
        elapsed,
        received as f64 / elapsed,
        report::ms(&latency, 0.5),
        report::ms(&latency, 0.99)
    );
    let mut json = serde_json::json!({
        "benchmark": "catchup",
        "config": { "store": store_kind, "entries": args.entries, "message_bytes": args.message_bytes, "page": args.page },
        "received": received, "pages": pages, "elapsed_secs": elapsed,
        "entries_per_sec": received as f64 / elapsed,
        "page_ms": { "p50": report::ms(&latency, 0.5), "p99": report::ms(&latency, 0.99) },
    });
    if let Some(peer) = peer {
        anyhow::ensure!(
            peer.received == received,
            "the Redis peer read {} of {received} entries",
            peer.received
        );
        let peer_secs = peer.elapsed.as_secs_f64();
        println!(
            "| {:<28} | {:>8} | {:>9.3} | {:>12.0} | {:>13.2} | {:>13.2} |",
            "Redis Streams (XRANGE)",
            peer.pages,
            peer_secs,
            peer.received as f64 / peer_secs,
            report::ms(&peer.page_latency, 0.5),
            report::ms(&peer.page_latency, 0.99)
        );
        println!(
            "syncd takes {:.2}x the peer's time (syncd pages carry seqs, conversation ids and \
             message ids over gRPC; the peer's are raw stream entries)",
            elapsed / peer_secs
        );
        json["redis_peer"] = serde_json::json!({
            "received": peer.received, "pages": peer.pages, "elapsed_secs": peer_secs,
            "entries_per_sec": peer.received as f64 / peer_secs,
            "page_ms": { "p50": report::ms(&peer.page_latency, 0.5), "p99": report::ms(&peer.page_latency, 0.99) },
            "ratio_syncd_time_to_peer": elapsed / peer_secs,
        });
    }
    let path = report::write_json("catchup", args.out, &json)?;
    println!("results: {}", path.display());
    Ok(())
}
