//! Connected devices: many push subscriptions held open against one syncd,
//! multiplexed over fewer connections the way an edge gateway would carry
//! its devices (many Subscribe streams per HTTP/2 connection), idle and then
//! under an open-loop send rate. Reports the server's resident memory per
//! connection and per subscription, how fast subscriptions open, and the
//! delivery latency of pushed entries (send start until every subscribed
//! device of every recipient holds it).

use crate::delivery::Tracker;
use crate::node::{Node, NodeArgs};
use crate::report;
use crate::workload::Rng;
use anyhow::{Context, bail};
use proto::timeline::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use syncd::auth::Principal;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

/// Streams syncd takes per connection (`MAX_STREAMS_PER_CONNECTION`).
const STREAMS_PER_CONNECTION: usize = syncd::limits::MAX_STREAMS_PER_CONNECTION as usize;
/// Subscriptions opened at once.
const OPENING_IN_FLIGHT: usize = 512;
/// Sends of the open loop in flight at once (beyond it the loop is behind
/// and says so).
const SENDS_IN_FLIGHT: usize = 4_096;

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
}

pub async fn run(args: DevicesArgs) -> anyhow::Result<()> {
    check(&args)?;
    let node = Node::start(&args.node, 10_000).await?;
    let pid = node
        .pid()
        .context("bench devices reads the server's memory: start it, or pass --server-pid")?;
    let users = args.subscriptions.div_ceil(args.devices_per_user) as u64;
    let conversations = create_groups(&node, users, args.group_size).await?;
    let base_rss = rss_mib(pid);

    let opened_at = Instant::now();
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect(&node.url).await?);
    }
    let connect_secs = opened_at.elapsed().as_secs_f64();
    let devices: Vec<(u64, u64)> = (0..args.subscriptions)
        .map(|i| {
            (
                i as u64 / args.devices_per_user as u64 + 1,
                (i % args.devices_per_user) as u64,
            )
        })
        .collect();
    let tracker = Tracker::new(&devices);

    // One subscription per connection first: what a connection costs.
    let first: Vec<usize> = (0..args.connections.min(args.subscriptions)).collect();
    let rest: Vec<usize> = (args.connections.min(args.subscriptions)..args.subscriptions).collect();
    let mut streams = tokio::task::JoinSet::new();
    subscribe_all(&node, &channels, &devices, &first, &tracker, &mut streams).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connections_rss = rss_mib(pid);
    let subscribing = Instant::now();
    subscribe_all(&node, &channels, &devices, &rest, &tracker, &mut streams).await?;
    let subscribe_secs = subscribing.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let idle_rss = rss_mib(pid);
    if let Some(ended) = streams.try_join_next() {
        bail!("a subscription ended while idle: {ended:?}");
    }

    let cpu_before = node.cpu_seconds().unwrap_or(0.0);
    let (sent, behind) = load(
        &node,
        &conversations,
        &tracker,
        args.rate,
        args.duration_secs,
    )
    .await?;
    // Let the last deliveries arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = node.cpu_seconds().unwrap_or(0.0) - cpu_before;
    let loaded_rss = rss_mib(pid);
    let peak_rss = node.peak_rss_mib().unwrap_or(0.0);
    let latency = tracker.latency();
    let (delivered, pending) = tracker.counts();
    streams.abort_all();

    let per_connection_kib = (connections_rss - base_rss) * 1024.0 / args.connections as f64;
    let per_subscription_kib = if rest.is_empty() {
        0.0
    } else {
        (idle_rss - connections_rss) * 1024.0 / rest.len() as f64
    };
    println!(
        "bench devices: {} subscriptions over {} connections ({} users, groups of {}), store {}",
        args.subscriptions,
        args.connections,
        users,
        args.group_size,
        node.store_kind()
    );
    println!("| figure | syncd |");
    println!("|---|---:|");
    println!(
        "| connections opened/s | {:.0} |",
        args.connections as f64 / connect_secs
    );
    println!(
        "| subscriptions opened/s (multiplexed) | {:.0} |",
        rest.len() as f64 / subscribe_secs.max(1e-9)
    );
    println!("| server RSS before, MiB | {base_rss:.1} |");
    println!("| server RSS idle, all subscribed, MiB | {idle_rss:.1} |");
    println!("| per connection (1 stream each), KiB | {per_connection_kib:.1} |");
    println!("| per further subscription, KiB | {per_subscription_kib:.2} |");
    println!("| server RSS under load / peak, MiB | {loaded_rss:.1} / {peak_rss:.1} |");
    println!(
        "| sends at {}/s for {} s (late starts) | {sent} ({behind}) |",
        args.rate, args.duration_secs
    );
    println!("| messages delivered to every subscribed device | {delivered} ({pending} pending) |");
    println!(
        "| delivery p50 / p99 / max, ms | {:.2} / {:.2} / {:.2} |",
        report::ms(&latency, 0.5),
        report::ms(&latency, 0.99),
        latency.max() as f64 / 1000.0
    );
    println!(
        "| server CPU per second of load | {:.2} |",
        cpu / args.duration_secs as f64
    );
    let path = report::write_json(
        "devices",
        args.out.clone(),
        &serde_json::json!({
            "subscriptions": args.subscriptions,
            "connections": args.connections,
            "users": users,
            "group_size": args.group_size,
            "rate": args.rate,
            "duration_secs": args.duration_secs,
            "store": node.store_kind(),
            "connections_per_s": args.connections as f64 / connect_secs,
            "subscriptions_per_s": rest.len() as f64 / subscribe_secs.max(1e-9),
            "rss_mib": {"base": base_rss, "connections": connections_rss, "idle": idle_rss,
                        "loaded": loaded_rss, "peak": peak_rss},
            "per_connection_kib": per_connection_kib,
            "per_subscription_kib": per_subscription_kib,
            "sent": sent,
            "late_starts": behind,
            "delivered": delivered,
            "pending": pending,
            "delivery_ms": {"p50": report::ms(&latency, 0.5), "p99": report::ms(&latency, 0.99),
                            "max": latency.max() as f64 / 1000.0},
            "server_cpu_per_s": cpu / args.duration_secs as f64,
        }),
    )?;
    println!("results: {}", path.display());
    Ok(())
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

/// Opens the subscriptions `which` (indexes into `devices`), device i on
/// connection i modulo their number, and waits until each is accepted.
async fn subscribe_all(
    node: &Node,
    channels: &[Channel],
    devices: &[(u64, u64)],
    which: &[usize],
    tracker: &Arc<Tracker>,
    streams: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let gate = Arc::new(Semaphore::new(OPENING_IN_FLIGHT));
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1024);
    for &i in which {
        let (user, device) = devices[i];
        let token = node.token(&Principal::Device {
            user_id: user,
            device_id: format!("d{device}"),
        })?;
        let channel = channels[i % channels.len()].clone();
        let (tracker, gate, accepted) =
            (Arc::clone(tracker), Arc::clone(&gate), accepted_tx.clone());
        streams.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let request = authorized(
                pb::SubscribeRequest {
                    after_seq: 0,
                    include_entries: true,
                },
                &token,
            )?;
            let opened = pb::timeline_client::TimelineClient::new(channel)
                .subscribe(request)
                .await;
            drop(permit);
            let mut notices = match opened {
                Ok(stream) => {
                    let _ = accepted.send(Ok(())).await;
                    stream.into_inner()
                }
                Err(status) => {
                    let _ = accepted.send(Err(status.clone().into())).await;
                    return Err(status.into());
                }
            };
            drop(accepted);
            while let Some(notice) = notices.message().await? {
                for entry in notice.entries.iter().filter(|e| e.seq > 0) {
                    tracker.arrived(&entry.text);
                }
            }
            bail!("subscription of user {user} device {device} ended")
        });
    }
    drop(accepted_tx);
    let mut accepted = 0;
    while let Some(result) = accepted_rx.recv().await {
        result.context("a subscription was refused")?;
        accepted += 1;
    }
    if accepted != which.len() {
        bail!("{accepted} of {} subscriptions opened", which.len());
    }
    Ok(())
}

/// Sends at `rate` per second for `secs` (open loop, as the system's
/// service appending for a member): (sends started, starts that came late
/// because `SENDS_IN_FLIGHT` were still open).
async fn load(
    node: &Node,
    conversations: &Arc<Vec<(u64, Vec<u64>)>>,
    tracker: &Arc<Tracker>,
    rate: u64,
    secs: u64,
) -> anyhow::Result<(u64, u64)> {
    let channels = [connect(&node.url).await?, connect(&node.url).await?];
    let token: Arc<str> = node.service_token()?.into();
    let gate = Arc::new(Semaphore::new(SENDS_IN_FLIGHT));
    let mut rng = Rng::new(7);
    let total = rate * secs;
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    let mut late = 0;
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let permit = match Arc::clone(&gate).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                late += 1;
                Arc::clone(&gate).acquire_owned().await?
            }
        };
        let next = tracker.next_send(&mut rng, conversations, format!("dev-{n}"), "hello");
        let request = authorized(
            pb::AppendMessageRequest {
                conversation_id: next.conversation_id,
                sender_id: next.sender,
                text: next.message,
                ..Default::default()
            },
            &token,
        )?;
        let channel = channels[n as usize % channels.len()].clone();
        sends.spawn(async move {
            let _permit = permit;
            pb::admin_client::AdminClient::new(channel)
                .append_message(request)
                .await?;
            anyhow::Ok(())
        });
        while let Some(done) = sends.try_join_next() {
            done??;
        }
    }
    while let Some(done) = sends.join_next().await {
        done??;
    }
    Ok((total, late))
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

/// The process's resident memory now, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
