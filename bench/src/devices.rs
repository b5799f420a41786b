//! Connected devices: many push subscriptions held open against one syncd,
//! multiplexed over fewer connections the way an edge gateway would carry
//! its devices (many Subscribe streams per HTTP/2 connection), idle and then
//! under an open-loop send rate. Reports the server's resident memory per
//! connection and per subscription, how fast subscriptions open, and the
//! delivery latency of pushed entries (send start until every subscribed
//! device of every recipient holds it).

use crate::centrifugo;
use crate::delivery::{NextSend, Tracker};
use crate::node::{Node, NodeArgs};
use crate::procs;
use crate::report;
use crate::workload::Rng;
use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
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
    print_table(&args, &syncd, peer.as_ref());
    println!("syncd: {SYNCD_DURABILITY}");
    if let Some(binary) = &centrifugo {
        println!("{}: {}", binary.version, centrifugo::DURABILITY);
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
    if let (Some(peer), Some(binary)) = (&peer, &centrifugo) {
        let mut json = peer.json();
        merge(&mut json, centrifugo::settings_json(binary));
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

/// What one system measured in this mode.
pub struct Measured {
    pub connections_per_s: f64,
    pub subscriptions_per_s: f64,
    /// Server RSS in MiB: before any device, with one stream per
    /// connection, all subscribed and idle, under load, and the peak.
    pub rss_base: f64,
    pub rss_connections: f64,
    pub rss_idle: f64,
    pub rss_loaded: f64,
    pub rss_peak: f64,
    pub per_connection_kib: f64,
    pub per_subscription_kib: f64,
    pub sent: u64,
    pub late_starts: u64,
    pub delivered: u64,
    pub pending: usize,
    pub latency: Histogram<u64>,
    pub server_cpu_per_s: f64,
}

impl Measured {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "connections_per_s": self.connections_per_s,
            "subscriptions_per_s": self.subscriptions_per_s,
            "rss_mib": {"base": self.rss_base, "connections": self.rss_connections,
                        "idle": self.rss_idle, "loaded": self.rss_loaded, "peak": self.rss_peak},
            "per_connection_kib": self.per_connection_kib,
            "per_subscription_kib": self.per_subscription_kib,
            "sent": self.sent,
            "late_starts": self.late_starts,
            "delivered": self.delivered,
            "pending": self.pending,
            "delivery_ms": {"p50": report::ms(&self.latency, 0.5),
                            "p99": report::ms(&self.latency, 0.99),
                            "max": self.latency.max() as f64 / 1000.0},
            "server_cpu_per_s": self.server_cpu_per_s,
        })
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
    row("server CPU per second of load", &|m| {
        format!("{:.2}", m.server_cpu_per_s)
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

/// A device's subscription once its server accepted it: it reads the
/// device's pushes, reporting arrivals, until the stream ends or fails.
pub type Following = BoxFuture<'static, anyhow::Result<()>>;
/// A subscription being opened: resolves once the server accepted it.
pub type Opening = BoxFuture<'static, anyhow::Result<Following>>;
/// One send of the load, started.
pub type Sending = BoxFuture<'static, anyhow::Result<()>>;

/// The measured phases, the same for every system: `connections`
/// connections from `connect`, one subscription on each (what a connection
/// costs), then the rest multiplexed over them (what a subscription costs),
/// idle for `settle_secs`, then the open-loop load through `send` (one
/// call per send, numbered), reading the server process `pid` from /proc.
/// `open(channel, user, device, tracker)` opens one device's subscription.
pub async fn measure<C, CF, O, S>(
    args: &DevicesArgs,
    pid: u32,
    conversations: &Arc<Vec<(u64, Vec<u64>)>>,
    mut connect: C,
    open: O,
    send: S,
) -> anyhow::Result<Measured>
where
    C: FnMut() -> CF,
    CF: Future<Output = anyhow::Result<Channel>>,
    O: Fn(Channel, u64, u64, Arc<Tracker>) -> anyhow::Result<Opening>,
    S: FnMut(u64, NextSend<'_>) -> anyhow::Result<Sending>,
{
    let rss_base = procs::rss_mib_of(pid);
    let opened_at = Instant::now();
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        channels.push(connect().await?);
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
    subscribe_all(&channels, &devices, &first, &tracker, &open, &mut streams).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connections = procs::rss_mib_of(pid);
    let subscribing = Instant::now();
    subscribe_all(&channels, &devices, &rest, &tracker, &open, &mut streams).await?;
    let subscribe_secs = subscribing.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_idle = procs::rss_mib_of(pid);
    if let Some(ended) = streams.try_join_next() {
        bail!("a subscription ended while idle: {ended:?}");
    }

    let cpu_before = procs::cpu_seconds_of(pid);
    let (sent, late_starts) =
        load(conversations, &tracker, args.rate, args.duration_secs, send).await?;
    // Let the last deliveries arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = procs::cpu_seconds_of(pid) - cpu_before;
    let rss_loaded = procs::rss_mib_of(pid);
    let rss_peak = procs::peak_rss_mib_of(pid);
    let (delivered, pending) = tracker.counts();
    if let Some(ended) = streams.try_join_next() {
        bail!("a subscription ended under load: {ended:?}");
    }
    streams.abort_all();
    Ok(Measured {
        connections_per_s: args.connections as f64 / connect_secs,
        subscriptions_per_s: rest.len() as f64 / subscribe_secs.max(1e-9),
        rss_base,
        rss_connections,
        rss_idle,
        rss_loaded,
        rss_peak,
        per_connection_kib: (rss_connections - rss_base) * 1024.0 / args.connections as f64,
        per_subscription_kib: if rest.is_empty() {
            0.0
        } else {
            (rss_idle - rss_connections) * 1024.0 / rest.len() as f64
        },
        sent,
        late_starts,
        delivered,
        pending,
        latency: tracker.latency(),
        server_cpu_per_s: cpu / args.duration_secs as f64,
    })
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
async fn subscribe_all<O>(
    channels: &[Channel],
    devices: &[(u64, u64)],
    which: &[usize],
    tracker: &Arc<Tracker>,
    open: &O,
    streams: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()>
where
    O: Fn(Channel, u64, u64, Arc<Tracker>) -> anyhow::Result<Opening>,
{
    let gate = Arc::new(Semaphore::new(OPENING_IN_FLIGHT));
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1024);
    for &i in which {
        let (user, device) = devices[i];
        let channel = channels[i % channels.len()].clone();
        let opening = open(channel, user, device, Arc::clone(tracker))?;
        let (gate, accepted) = (Arc::clone(&gate), accepted_tx.clone());
        streams.spawn(async move {
            let permit = gate.acquire_owned().await?;
            let opened = opening.await;
            drop(permit);
            let following = match opened {
                Ok(following) => {
                    let _ = accepted.send(Ok(())).await;
                    following
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    let _ = accepted.send(Err(error)).await;
                    bail!("user {user} device {device}: {message}");
                }
            };
            drop(accepted);
            following.await
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

/// Sends at `rate` per second for `secs` (open loop; for syncd the
/// system's service appending for a member): (sends started, starts that
/// came late because `SENDS_IN_FLIGHT` were still open).
async fn load<S>(
    conversations: &Arc<Vec<(u64, Vec<u64>)>>,
    tracker: &Arc<Tracker>,
    rate: u64,
    secs: u64,
    mut send: S,
) -> anyhow::Result<(u64, u64)>
where
    S: FnMut(u64, NextSend<'_>) -> anyhow::Result<Sending>,
{
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
        let sending = send(n, next)?;
        sends.spawn(async move {
            let _permit = permit;
            sending.await
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
