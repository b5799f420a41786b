//! Connected devices: many push subscriptions held open against one syncd,
//! multiplexed over fewer connections the way an edge gateway would carry
//! its devices (many Subscribe streams per HTTP/2 connection), idle and then
//! under an open-loop send rate. Reports the server's resident memory per
//! connection and per subscription, how fast subscriptions open, and the
//! delivery latency of pushed entries (send start until every subscribed
//! device of every recipient holds it). `--centrifugo-peer` then measures
//! the same devices and sends against Centrifugo (`crate::centrifugo`) in
//! the same phases (`phases.rs`) and prints both side by side.

mod phases;

pub use phases::{Following, Measured, Opening, Sending, measure};

use crate::centrifugo;
use crate::delivery::Tracker;
use crate::node::{Node, NodeArgs};
use crate::report;
use anyhow::{Context, bail};
use proto::timeline::v1 as pb;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use syncd::auth::Principal;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

/// Streams syncd takes per connection (`MAX_STREAMS_PER_CONNECTION`).
const STREAMS_PER_CONNECTION: usize = syncd::limits::MAX_STREAMS_PER_CONNECTION as usize;

#[derive(clap::Args, Clone, Debug)]
pub struct DevicesArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Push subscriptions held open (one device each).
    #[arg(long, default_value_t = 10_000)]
    pub subscriptions: usize,
    /// TCP connections they are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub connections: usize,
    /// Devices per user (a user's devices all get its inbox).
    #[arg(long, default_value_t = 4)]
    pub devices_per_user: usize,
    /// Members per group conversation.
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Sends per second during the load phase.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Idle time after everything is subscribed, before memory is read.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// After the syncd run, the same workload against Centrifugo (built
    /// with the Go toolchain on first use): one client per device on the
    /// unidirectional gRPC transport, multiplexed over as many HTTP/2
    /// connections, subscribed to its user's personal channel with history
    /// and recovery on; a send is one Broadcast to the members' channels.
    #[arg(long)]
    pub centrifugo_peer: bool,
    /// The Centrifugo binary to run instead of the one the bench builds.
    #[arg(long, requires = "centrifugo_peer")]
    pub centrifugo_bin: Option<std::path::PathBuf>,
}

pub async fn run(args: DevicesArgs) -> anyhow::Result<()> {
    check(&args)?;
    // Before the syncd run: a peer that cannot start fails the bench early.
    let centrifugo = match args.centrifugo_peer {
        true => Some(centrifugo::binary(args.centrifugo_bin.as_deref()).await?),
        false => None,
    };
    let users = args.subscriptions.div_ceil(args.devices_per_user) as u64;
    let (syncd, store, conversations) = measure_syncd(&args, users).await?;
    let peer = match &centrifugo {
        Some(binary) => {
            eprintln!("syncd measured; the same against {}", binary.version);
            Some(centrifugo::measure(binary, &args, &conversations).await?)
        }
        None => None,
    };
    println!(
        "bench devices: {} subscriptions over {} connections ({} users, groups of {}), store {store}",
        args.subscriptions, args.connections, users, args.group_size,
    );
    print_table(&args, &syncd, peer.as_ref().map(|(measured, _)| measured));
    println!("syncd: {SYNCD_DURABILITY}");
    if let (Some(binary), Some((_, recovery))) = (&centrifugo, &peer) {
        println!("{}: {}", binary.version, centrifugo::DURABILITY);
        println!(
            "Centrifugo reconnects with recovery (after a disconnect such as 3010 insufficient \
             state): {}, of which not fully recovered: {}",
            recovery.reconnects.load(Ordering::Relaxed),
            recovery.unrecovered.load(Ordering::Relaxed)
        );
    }
    let mut result = serde_json::json!({
        "subscriptions": args.subscriptions,
        "connections": args.connections,
        "users": users,
        "group_size": args.group_size,
        "rate": args.rate,
        "duration_secs": args.duration_secs,
        "store": store,
        "durability": SYNCD_DURABILITY,
    });
    merge(&mut result, syncd.json());
    if let (Some((peer, recovery)), Some(binary)) = (&peer, &centrifugo) {
        let mut json = peer.json();
        merge(&mut json, centrifugo::settings_json(binary));
        json["reconnects"] = recovery.reconnects.load(Ordering::Relaxed).into();
        json["unrecovered_reconnects"] = recovery.unrecovered.load(Ordering::Relaxed).into();
        result["centrifugo"] = json;
    }
    let path = report::write_json("devices", args.out.clone(), &result)?;
    println!("results: {}", path.display());
    Ok(())
}

/// What syncd's embedded store promises for a pushed entry.
const SYNCD_DURABILITY: &str =
    "inbox entries are on disk (fsynced group commit) before a send is acknowledged";

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

fn print_table(args: &DevicesArgs, syncd: &Measured, peer: Option<&Measured>) {
    let systems: Vec<&Measured> = std::iter::once(syncd).chain(peer).collect();
    let row = |figure: &str, cell: &dyn Fn(&Measured) -> String| {
        let cells: Vec<String> = systems.iter().map(|m| cell(m)).collect();
        println!("| {figure} | {} |", cells.join(" | "));
    };
    if peer.is_some() {
        println!("| figure | syncd | Centrifugo |");
        println!("|---|---:|---:|");
    } else {
        println!("| figure | syncd |");
        println!("|---|---:|");
    }
    row("connections opened/s", &|m| {
        format!("{:.0}", m.connections_per_s)
    });
    row("subscriptions opened/s (multiplexed)", &|m| {
        format!("{:.0}", m.subscriptions_per_s)
    });
    row("server RSS before, MiB", &|m| format!("{:.1}", m.rss_base));
    row("server RSS idle, all subscribed, MiB", &|m| {
        format!("{:.1}", m.rss_idle)
    });
    row("per connection (1 stream each), KiB", &|m| {
        format!("{:.1}", m.per_connection_kib)
    });
    row("per further subscription, KiB", &|m| {
        format!("{:.2}", m.per_subscription_kib)
    });
    row("server RSS under load / peak, MiB", &|m| {
        format!("{:.1} / {:.1}", m.rss_loaded, m.rss_peak)
    });
    row(
        &format!(
            "sends at {}/s for {} s (late starts)",
            args.rate, args.duration_secs
        ),
        &|m| format!("{} ({})", m.sent, m.late_starts),
    );
    row("messages delivered to every subscribed device", &|m| {
        format!("{} ({} pending)", m.delivered, m.pending)
    });
    row("delivery p50 / p99 / max, ms", &|m| {
        format!(
            "{:.2} / {:.2} / {:.2}",
            report::ms(&m.latency, 0.5),
            report::ms(&m.latency, 0.99),
            m.latency.max() as f64 / 1000.0
        )
    });
    row(
        "worst second of the load: delivery p99, ms (second)",
        &|m| {
            m.worst_second()
                .map_or("-".into(), |(second, p99)| format!("{p99:.2} ({second})"))
        },
    );
    row("server CPU per second of load", &|m| {
        format!("{:.2}", m.server_cpu_per_s)
    });
    row("load generator CPU per second of load", &|m| {
        format!("{:.2}", m.bench_cpu_per_s)
    });
    row("machine load average (1 min) after the load", &|m| {
        format!("{:.2}", m.load_average)
    });
}

/// The syncd run: a node, its groups, then [`measure`]. Returns the store
/// kind and the groups, so a peer sends the very same sequence.
async fn measure_syncd(
    args: &DevicesArgs,
    users: u64,
) -> anyhow::Result<(Measured, &'static str, Arc<Vec<(u64, Vec<u64>)>>)> {
    let node = Node::start(&args.node, 10_000).await?;
    let pid = node
        .pid()
        .context("bench devices reads the server's memory: start it, or pass --server-pid")?;
    let conversations = create_groups(&node, users, args.group_size).await?;
    let senders = [connect(&node.url).await?, connect(&node.url).await?];
    let service: Arc<str> = node.service_token()?.into();
    let url = node.url.clone();
    let measured = measure(
        args,
        pid,
        &conversations,
        || connect(&url),
        |channel, user, device, tracker| {
            let token = node.token(&Principal::Device {
                user_id: user,
                device_id: format!("d{device}"),
            })?;
            Ok(Box::pin(subscribe_one(
                channel, token, user, device, tracker,
            )))
        },
        |n, next| {
            let request = authorized(
                pb::AppendMessageRequest {
                    conversation_id: next.conversation_id,
                    sender_id: next.sender,
                    text: next.message,
                    ..Default::default()
                },
                &service,
            )?;
            let channel = senders[n as usize % senders.len()].clone();
            Ok(Box::pin(async move {
                pb::admin_client::AdminClient::new(channel)
                    .append_message(request)
                    .await?;
                Ok(())
            }))
        },
    )
    .await?;
    Ok((measured, node.store_kind(), conversations))
}

fn check(args: &DevicesArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.subscriptions == 0 || args.devices_per_user == 0 {
        bail!("--connections, --subscriptions and --devices-per-user must be above 0");
    }
    if args.subscriptions.div_ceil(args.connections) > STREAMS_PER_CONNECTION {
        bail!(
            "{} subscriptions over {} connections is more than the server's {STREAMS_PER_CONNECTION} \
             streams per connection: open more connections",
            args.subscriptions,
            args.connections
        );
    }
    if args.devices_per_user > syncd::limits::MAX_SUBSCRIPTIONS_PER_USER {
        bail!(
            "at most {} subscriptions per user",
            syncd::limits::MAX_SUBSCRIPTIONS_PER_USER
        );
    }
    if args.group_size < 2 {
        bail!("--group-size must be at least 2");
    }
    Ok(())
}

/// Groups of `group_size` consecutive users (the last one may be smaller),
/// created by the bench's service.
async fn create_groups(
    node: &Node,
    users: u64,
    group_size: usize,
) -> anyhow::Result<Arc<Vec<(u64, Vec<u64>)>>> {
    let channel = connect(&node.url).await?;
    let token: Arc<str> = node.service_token()?.into();
    let members: Vec<Vec<u64>> = (1..=users)
        .collect::<Vec<_>>()
        .chunks(group_size)
        .filter(|chunk| chunk.len() >= 2)
        .map(<[u64]>::to_vec)
        .collect();
    let gate = Arc::new(Semaphore::new(64));
    let mut created = tokio::task::JoinSet::new();
    for group in members {
        let (channel, token, gate) = (channel.clone(), Arc::clone(&token), Arc::clone(&gate));
        created.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let request = authorized(
                pb::CreateConversationRequest {
                    kind: pb::ConversationKind::Group as i32,
                    members: group.clone(),
                    ..Default::default()
                },
                &token,
            )?;
            let reply = pb::timeline_client::TimelineClient::new(channel)
                .create_conversation(request)
                .await?
                .into_inner();
            let id = reply
                .conversation
                .context("no conversation")?
                .conversation_id;
            anyhow::Ok((id, group))
        });
    }
    let mut conversations = Vec::new();
    while let Some(done) = created.join_next().await {
        conversations.push(done??);
    }
    conversations.sort();
    Ok(Arc::new(conversations))
}

/// One syncd Subscribe stream, entries inline.
async fn subscribe_one(
    channel: Channel,
    token: String,
    user: u64,
    device: u64,
    tracker: Arc<Tracker>,
) -> anyhow::Result<Following> {
    let request = authorized(
        pb::SubscribeRequest {
            after_seq: 0,
            include_entries: true,
        },
        &token,
    )?;
    let mut notices = pb::timeline_client::TimelineClient::new(channel)
        .subscribe(request)
        .await?
        .into_inner();
    Ok(Box::pin(async move {
        while let Some(notice) = notices.message().await? {
            for entry in notice.entries.iter().filter(|e| e.seq > 0) {
                tracker.arrived(&entry.text);
            }
        }
        bail!("subscription of user {user} device {device} ended")
    }))
}

async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}
