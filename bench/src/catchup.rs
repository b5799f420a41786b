//! `bench catchup`: a device that was offline while `--entries` messages
//! arrived syncs them all, page by page, as the client library does.

use crate::node::LocalNode;
use crate::report;
use client::{Client, pb};
use futures_util::future::try_join_all;
use std::time::Instant;
use syncd::auth::Principal;

#[derive(clap::Args, Clone, Debug)]
pub struct CatchupArgs {
    /// "embedded" or scylla://host:port/keyspace?replication=N
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Entries the device missed.
    #[arg(long, default_value_t = 100_000)]
    entries: u64,
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// Sync page size (the server caps it at 1,000).
    #[arg(long, default_value_t = 1_000)]
    page: u32,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

pub async fn run(args: CatchupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.entries > 0, "--entries must be at least 1");
    let node = LocalNode::start(&args.store, seqsvc::AllocatorConfig::default()).await?;
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
    node.shutdown().await;
    // The conversation-created event is in the inbox too.
    anyhow::ensure!(
        received == backlog + 1,
        "received {received} of {} entries",
        backlog + 1
    );
    println!();
    println!(
        "catch-up on {} store: {received} entries in {pages} pages",
        report::store_kind(&args.store)
    );
    println!("{:<28} {:>10}", "total (s)", format!("{elapsed:.3}"));
    println!(
        "{:<28} {:>10}",
        "entries/s",
        format!("{:.0}", received as f64 / elapsed)
    );
    println!(
        "{:<28} {:>10}",
        "page p50 (ms)",
        format!("{:.2}", report::ms(&latency, 0.5))
    );
    println!(
        "{:<28} {:>10}",
        "page p99 (ms)",
        format!("{:.2}", report::ms(&latency, 0.99))
    );
    let json = serde_json::json!({
        "benchmark": "catchup",
        "config": { "store": report::store_kind(&args.store), "entries": args.entries, "message_bytes": args.message_bytes, "page": args.page },
        "received": received, "pages": pages, "elapsed_secs": elapsed,
        "entries_per_sec": received as f64 / elapsed,
        "page_ms": { "p50": report::ms(&latency, 0.5), "p99": report::ms(&latency, 0.99) },
    });
    let path = report::write_json("catchup", args.out, &json)?;
    println!("results: {}", path.display());
    Ok(())
}
