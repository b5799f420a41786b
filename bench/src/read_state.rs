//! `bench readstate`: what read state costs. A user in `--conversations`
//! conversations (one unread message each) and a 10,000-member large group;
//! the bench measures, on syncd and side by side on Redis (a sorted set per
//! user for the list and hashes of read markers and unread counts, as a team
//! would build it there, AOF everysec):
//! - the list's first page (cold after setup, then warm), and an unchanged
//!   list answered "not modified";
//! - an incremental update: a message arrives, the device learns it with
//!   its counts (Sync with counts; on Redis the top of the sorted set with
//!   its counts);
//! - a mark in a small conversation and in the 10,000-member group, with
//!   the bytes the server wrote per mark (the same in both: O(1) writes).

use crate::node::{Node, NodeArgs};
use crate::procs;
use crate::report;
use client::{Client, pb};
use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use std::time::Instant;
use syncd::auth::Principal;

#[derive(clap::Args, Clone, Debug)]
pub struct ReadStateArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Conversations of the measured user.
    #[arg(long, default_value_t = 5_000)]
    conversations: u64,
    /// Members of the large group.
    #[arg(long, default_value_t = 10_000)]
    large_group_members: u64,
    /// Timed repetitions of each operation.
    #[arg(long, default_value_t = 300)]
    repeats: usize,
    /// Conversations per list page.
    #[arg(long, default_value_t = 50)]
    page: u32,
    /// Also run the same operations on Redis (redis-server started by the bench).
    #[arg(long)]
    redis_peer: bool,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// The measured user, and the one who sends to them.
const READER: u64 = 1;
const WRITER: u64 = 2;
/// Creations and sends in flight during setup.
const SETUP_CONCURRENCY: usize = 64;

struct Timings {
    name: &'static str,
    histogram: Histogram<u64>,
}

impl Timings {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            histogram: report::histogram(),
        }
    }

    fn record(&mut self, started: Instant) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        self.histogram.record(micros).expect("in range");
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_ms": report::ms(&self.histogram, 0.5),
            "p99_ms": report::ms(&self.histogram, 0.99),
            "count": self.histogram.len(),
        })
    }
}

async fn device(node: &Node, user_id: u64) -> anyhow::Result<Client> {
    let token = node.token(&Principal::Device {
        user_id,
        device_id: "bench".into(),
    })?;
    Ok(Client::connect(&node.url, &token).await?)
}

pub async fn run(args: ReadStateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.conversations >= 2,
        "--conversations must be at least 2"
    );
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let node = Node::start(&args.node, seqsvc::AllocatorConfig::default().step).await?;
    let reader = device(&node, READER).await?;
    let writer = device(&node, WRITER).await?;
    let service = Client::connect(&node.url, &node.service_token()?).await?;
    eprintln!(
        "setup: {} conversations with one unread message each, and a {}-member group",
        args.conversations, args.large_group_members
    );
    let mut conversations = Vec::new();
    for chunk in (0..args.conversations)
        .collect::<Vec<_>>()
        .chunks(SETUP_CONCURRENCY)
    {
        let created =
            try_join_all(chunk.iter().map(|_| {
                reader.create_conversation(pb::ConversationKind::Group, vec![WRITER], "")
            }))
            .await?;
        conversations.extend(created.into_iter().map(|c| c.conversation_id));
    }
    for chunk in conversations.chunks(SETUP_CONCURRENCY) {
        try_join_all(chunk.iter().map(|&c| writer.send(c, "hello", None))).await?;
    }
    let large = large_group(&service, args.large_group_members).await?;
    writer.send(large, "to everyone", None).await?;

    let mut cold = Timings::new("list first page, cold");
    let started = Instant::now();
    let first = reader.list_conversations(args.page, "", "").await?;
    cold.record(started);
    anyhow::ensure!(
        first.total_unread >= args.conversations,
        "the list counts {} unread, expected at least {}",
        first.total_unread,
        args.conversations
    );
    let mut warm = Timings::new("list first page, warm");
    let mut unchanged = Timings::new("list not modified");
    for _ in 0..args.repeats {
        let started = Instant::now();
        let page = reader.list_conversations(args.page, "", "").await?;
        warm.record(started);
        let started = Instant::now();
        let again = reader
            .list_conversations(args.page, "", &page.version)
            .await?;
        unchanged.record(started);
        anyhow::ensure!(
            again.not_modified,
            "an unchanged list was not 'not modified'"
        );
    }

    let mut incremental = Timings::new("incremental update (message -> counts)");
    let mut checkpoint = reader.sync_page(Some(0), 1).await?.checkpoint;
    loop {
        let page = reader.sync_page(Some(checkpoint), 1_000).await?;
        checkpoint = page.checkpoint;
        if !page.has_more {
            break;
        }
    }
    for i in 0..args.repeats {
        let conversation = conversations[i % conversations.len()];
        writer.send(conversation, "more", None).await?;
        let started = Instant::now();
        let page = reader.sync_with_read_state(Some(checkpoint), 100).await?;
        incremental.record(started);
        checkpoint = page.checkpoint;
        anyhow::ensure!(page.read_state.is_some(), "no counts with a complete sync");
    }

    let small = conversations[0];
    let (small_marks, small_bytes) = marks(
        &node,
        &reader,
        &writer,
        small,
        "mark read, 2-member conversation",
        args.repeats,
    )
    .await?;
    let (large_marks, large_bytes) = marks(
        &node,
        &reader,
        &writer,
        large,
        "mark read, large group",
        args.repeats,
    )
    .await?;

    let syncd = [
        &cold,
        &warm,
        &unchanged,
        &incremental,
        &small_marks,
        &large_marks,
    ];
    let peer = if args.redis_peer {
        Some(redis_peer(&args).await?)
    } else {
        None
    };
    print_table("operation (syncd)", syncd.iter().copied());
    let kib = |b: Option<f64>| b.map_or("unknown".into(), |b| format!("{:.1}", b / 1024.0));
    println!(
        "server KiB written per mark: small {}, large group {}",
        kib(small_bytes),
        kib(large_bytes)
    );
    if let Some(peer) = &peer {
        print_table("operation (Redis everysec)", peer.iter());
    }
    let as_json = |ts: &[&Timings]| -> serde_json::Value {
        ts.iter()
            .map(|t| (t.name.to_owned(), t.json()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let path = report::write_json(
        "readstate",
        args.out.clone(),
        &serde_json::json!({
            "conversations": args.conversations,
            "large_group_members": args.large_group_members,
            "repeats": args.repeats,
            "page": args.page,
            "store": node.store_kind(),
            "syncd": as_json(&syncd),
            "syncd_bytes_written_per_mark": {"small": small_bytes, "large_group": large_bytes},
            "redis_everysec": peer.as_ref().map(|p| as_json(&p.iter().collect::<Vec<_>>())),
        }),
    )?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// `repeats` marks, each raising the marker by one message of a backlog
/// sent first, so the window holds marks only; and the bytes the server
/// wrote per mark.
async fn marks(
    node: &Node,
    reader: &Client,
    writer: &Client,
    conversation: u64,
    name: &'static str,
    repeats: usize,
) -> anyhow::Result<(Timings, Option<f64>)> {
    let mut backlog = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        backlog.push(writer.send(conversation, "backlog", None).await?.conv_seq);
    }
    let mut timings = Timings::new(name);
    let written = node.bytes_written();
    for (i, &through) in backlog.iter().enumerate() {
        let started = Instant::now();
        let marked = reader.mark_read(conversation, Some(through)).await?;
        timings.record(started);
        anyhow::ensure!(
            marked.unread == (repeats - i - 1) as u64,
            "{name}: {} unread after a mark, expected {}",
            marked.unread,
            repeats - i - 1
        );
    }
    Ok((timings, per_op(written, node.bytes_written(), repeats)))
}

/// One line per operation: its p50 and p99.
fn print_table<'a>(title: &str, timings: impl IntoIterator<Item = &'a Timings>) {
    println!("{title:<44} {:>10} {:>10}", "p50 ms", "p99 ms");
    for t in timings {
        let h = &t.histogram;
        println!(
            "{:<44} {:>10.3} {:>10.3}",
            t.name,
            report::ms(h, 0.5),
            report::ms(h, 0.99)
        );
    }
}

fn per_op(before: Option<u64>, after: Option<u64>, ops: usize) -> Option<f64> {
    Some(after?.saturating_sub(before?) as f64 / ops as f64)
}

/// A group of `members` (the reader, the writer and others), added in
/// pages as the server takes them.
async fn large_group(service: &Client, members: u64) -> anyhow::Result<u64> {
    let first: Vec<u64> = (1..=members.min(1_000)).collect();
    let id = service
        .create_conversation(pb::ConversationKind::Group, first, "")
        .await?
        .conversation_id;
    let mut next = 1_001;
    while next <= members {
        let last = (next + 999).min(members);
        service.add_members(id, (next..=last).collect()).await?;
        next = last + 1;
    }
    Ok(id)
}

/// The same operations as a team would build them on Redis: per user a
/// sorted set `list:{u}` (score: last activity), hashes `unread:{u}` and
/// `read:{u}` (per conversation), and `last:{c}` (the preview).
async fn redis_peer(args: &ReadStateArgs) -> anyhow::Result<Vec<Timings>> {
    let dir = tempfile::tempdir()?;
    let redis = procs::start_redis(
        dir.path(),
        &["--appendonly", "yes", "--appendfsync", "everysec"],
    )
    .await?;
    let mut conn = procs::redis_connection(&redis.addr).await?;
    let user = READER;
    for chunk in (0..args.conversations).collect::<Vec<_>>().chunks(1_000) {
        let mut pipe = redis::pipe();
        for &c in chunk {
            pipe.cmd("ZADD")
                .arg(format!("list:{user}"))
                .arg(c)
                .arg(c)
                .ignore();
            pipe.cmd("HINCRBY")
                .arg(format!("unread:{user}"))
                .arg(c)
                .arg(1)
                .ignore();
            pipe.cmd("SET")
                .arg(format!("last:{c}"))
                .arg("2|hello")
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
    }
    let mut list = Timings::new("list first page");
    let mut marks = Timings::new("mark read");
    let mut incremental = Timings::new("incremental update (message -> counts)");
    let mut clock = args.conversations;
    for i in 0..args.repeats {
        let started = Instant::now();
        first_page(&mut conn, user, args.page).await?;
        list.record(started);

        let c = i as u64 % args.conversations;
        clock += 1;
        let mut message = redis::pipe();
        message
            .cmd("ZADD")
            .arg(format!("list:{user}"))
            .arg(clock)
            .arg(c)
            .ignore();
        message
            .cmd("HINCRBY")
            .arg(format!("unread:{user}"))
            .arg(c)
            .arg(1)
            .ignore();
        message
            .cmd("SET")
            .arg(format!("last:{c}"))
            .arg("2|more")
            .ignore();
        message.query_async::<()>(&mut conn).await?;
        let started = Instant::now();
        let _: Vec<(u64, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(format!("list:{user}"))
            .arg(format!("({}", clock - 1))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let _: Option<u64> = redis::cmd("HGET")
            .arg(format!("unread:{user}"))
            .arg(c)
            .query_async(&mut conn)
            .await?;
        incremental.record(started);

        let started = Instant::now();
        let mut mark = redis::pipe();
        mark.atomic();
        mark.cmd("HSET")
            .arg(format!("read:{user}"))
            .arg(c)
            .arg(clock)
            .ignore();
        mark.cmd("HSET")
            .arg(format!("unread:{user}"))
            .arg(c)
            .arg(0)
            .ignore();
        mark.query_async::<()>(&mut conn).await?;
        marks.record(started);
    }
    Ok(vec![list, incremental, marks])
}

/// Unread counts, read markers and previews of a page's conversations.
type PageFields = (Vec<Option<u64>>, Vec<Option<u64>>, Vec<Option<String>>);

/// The newest `page` conversations with their counts and previews: one
/// round trip for the ids, one for their fields.
async fn first_page(
    conn: &mut redis::aio::MultiplexedConnection,
    user: u64,
    page: u32,
) -> anyhow::Result<()> {
    let ids: Vec<u64> = redis::cmd("ZREVRANGE")
        .arg(format!("list:{user}"))
        .arg(0)
        .arg(page.saturating_sub(1))
        .query_async(conn)
        .await?;
    let mut fields = redis::pipe();
    fields.cmd("HMGET").arg(format!("unread:{user}")).arg(&ids);
    fields.cmd("HMGET").arg(format!("read:{user}")).arg(&ids);
    let lasts: Vec<String> = ids.iter().map(|c| format!("last:{c}")).collect();
    fields.cmd("MGET").arg(&lasts);
    let _: PageFields = fields.query_async(conn).await?;
    Ok(())
}
