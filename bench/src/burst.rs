//! `bench burst`: the members of one large write-fanout group all send large
//! messages at once (by default 32 senders x 8 messages of 64 KiB to 500
//! members), and the bench reports the syncd process's peak resident memory
//! and the bytes it wrote: the load that shows what one group's members can
//! make the commit path and the store hold (heavy entries are stored once,
//! and commits in flight are bounded in bytes).

use crate::node::{Node, NodeArgs};
use crate::report;
use client::{Client, ClientError, pb};
use futures_util::future::join_all;
use std::time::Instant;
use syncd::auth::Principal;

#[derive(clap::Args, Clone, Debug)]
pub struct BurstArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Members of the group (the node's large-group threshold is 500, so
    /// 500 members is the largest write-fanout group).
    #[arg(long, default_value_t = 500)]
    members: u64,
    /// Members that send, each over its own connection.
    #[arg(long, default_value_t = 32)]
    senders: u64,
    /// Messages per sender, all started at once.
    #[arg(long, default_value_t = 8)]
    messages: usize,
    #[arg(long, default_value_t = 64 * 1024)]
    message_bytes: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

pub async fn run(args: BurstArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.senders >= 1 && args.senders <= args.members,
        "--senders must be between 1 and --members"
    );
    let node = Node::start(&args.node, seqsvc::AllocatorConfig::default().step).await?;
    let creator = member_client(&node, 1).await?;
    let conversation = creator
        .create_conversation(
            pb::ConversationKind::Group,
            (2..=args.members).collect(),
            "",
        )
        .await?
        .conversation_id;
    let mut senders = Vec::new();
    for user_id in 1..=args.senders {
        senders.push(member_client(&node, user_id).await?);
    }
    let written_before = node.bytes_written();
    eprintln!(
        "burst: {} senders x {} messages of {} bytes to {} members",
        args.senders, args.messages, args.message_bytes, args.members
    );
    let text = "x".repeat(args.message_bytes);
    let started = Instant::now();
    let sends = senders.iter().flat_map(|client| {
        (0..args.messages).map(|_| async { client.send(conversation, &text, None).await })
    });
    let outcomes = join_all(sends).await;
    let elapsed = started.elapsed();
    let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    for outcome in &outcomes {
        if let Err(error) = outcome {
            *refused.entry(refusal(error)).or_default() += 1;
        }
    }
    let peak_rss_mib = node.peak_rss_mib();
    let written = node
        .bytes_written()
        .zip(written_before)
        .map(|(after, before)| after.saturating_sub(before));
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!("sends accepted       {accepted} of {}", outcomes.len());
    println!("sends refused        {refused:?}");
    println!("elapsed (s)          {:.2}", elapsed.as_secs_f64());
    println!(
        "server peak rss (MiB) {}",
        peak_rss_mib.map_or("unknown".into(), |m| format!("{m:.0}"))
    );
    println!(
        "server wrote (MiB)   {}",
        written.map_or("unknown".into(), |b| format!("{:.0}", mib(b)))
    );
    let path = report::write_json(
        "burst",
        args.out.clone(),
        &serde_json::json!({
            "members": args.members,
            "senders": args.senders,
            "messages_per_sender": args.messages,
            "message_bytes": args.message_bytes,
            "store": node.store_kind(),
            "accepted": accepted,
            "refused": refused,
            "elapsed_s": elapsed.as_secs_f64(),
            "server_peak_rss_mib": peak_rss_mib,
            "server_bytes_written": written,
        }),
    )?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

async fn member_client(node: &Node, user_id: u64) -> anyhow::Result<Client> {
    let token = node.token(&Principal::Device {
        user_id,
        device_id: "bench".into(),
    })?;
    Ok(Client::connect(&node.url, &token).await?)
}

/// The status code a send ended with (after the client's own retries).
fn refusal(error: &ClientError) -> String {
    match error {
        ClientError::Rpc(status) => format!("{:?}", status.code()),
        other => other.to_string(),
    }
}
