//! `bench fanout`: sends through a syncd node over gRPC, closed loop at a
//! fixed concurrency, and (for CQL stores) the bare-driver peer.

use crate::delivery::{NextSend, Tracker};
use crate::node::{Node, NodeArgs};
use crate::report::{self, ms};
use crate::sweep::{StepMeasured, SweepPlan, SweepStep};
use crate::workload::{self, Mix, Rng};
use client::Client;
use futures_util::future::try_join_all;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Duration;
use summary::print_and_save;
use syncd::auth::Principal;
use syncd::server::StoreLocation;

mod summary;

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) users: u64,
    #[arg(long, default_value_t = 2_000)]
    pub(crate) conversations: u64,
    /// Share of direct (2-member) conversations.
    #[arg(long, default_value_t = 0.70)]
    pub(crate) direct_share: f64,
    /// Share of small groups; the rest are large groups.
    #[arg(long, default_value_t = 0.25)]
    pub(crate) small_group_share: f64,
    #[arg(long, default_value_t = 20)]
    pub(crate) small_group_size: u64,
    #[arg(long, default_value_t = 200)]
    pub(crate) large_group_size: u64,
    #[arg(long, default_value_t = 100)]
    pub(crate) message_bytes: usize,
    /// Sends in flight at once (closed loop); ignored with --rate.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Open loop: start this many sends per second whatever the latency
    /// (latency counts from the scheduled start). 0: closed loop.
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Measured seconds (after a warm-up of a tenth of it).
    #[arg(long, default_value_t = 10)]
    pub(crate) duration_secs: u64,
    /// Also insert the same rows with a bare prepared-statement loop at the
    /// same concurrency (CQL stores only).
    #[arg(long)]
    pub(crate) bare_cql: bool,
    /// Each user has 1 to this many devices.
    #[arg(long, default_value_t = 3)]
    pub(crate) max_devices: u64,
    /// Share of all devices that hold a push stream, for delivery latency:
    /// from Send start until every subscribed recipient device has it. The
    /// default subscribes about 200 of W1's 20,000 devices.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) subscribed_share: f64,
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// seqsvc step: sequence numbers per persisted max_seq write.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) seq_step: u64,
    /// Sweep: run open loop at rising rates (from --sweep-start-rate, times
    /// --sweep-factor each step) until delivery p99 exceeds --sweep-p99-ms or
    /// the node falls behind the offered rate; reports the sustainable peak.
    #[arg(long)]
    pub(crate) sweep: bool,
    #[arg(long, default_value_t = 500)]
    pub(crate) sweep_start_rate: u64,
    #[arg(long, default_value_t = 1.5)]
    pub(crate) sweep_factor: f64,
    #[arg(long, default_value_t = 100.0)]
    sweep_p99_ms: f64,
    /// Times a step that breaks the bound is run again before the sweep
    /// stops there (one disk stall should not decide the peak).
    #[arg(long, default_value_t = 1)]
    pub(crate) sweep_retries: u32,
    /// Also run the Redis Streams peer (redis-server from the system, run
    /// with appendfsync always and everysec) on the same conversations,
    /// concurrency and rate.
    #[arg(long)]
    pub(crate) redis_peer: bool,
    /// Result file (default: bench/results/fanout-<unix time>.json).
    #[arg(long)]
    pub(crate) out: Option<std::path::PathBuf>,
    /// The huge-group mix instead: a share of the sends go into one group
    /// of this many members (created a call of 1,000 at a time), open loop
    /// at --rate (200/s when 0). 0: the plain W1 mix.
    #[arg(long, default_value_t = 0)]
    pub(crate) huge_group_members: u64,
    /// Share of sends into the huge group.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) huge_group_share: f64,
    /// Huge-group members holding a Subscribe stream.
    #[arg(long, default_value_t = 500)]
    pub(crate) huge_group_online: u64,
}

struct Measured {
    delivered: u64,
    undelivered: usize,
    delivery: Histogram<u64>,
    sends: u64,
    inbox_entries: u64,
    conversation_entries: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// The load generator's (this process's) CPU.
    bench_cpu_seconds: f64,
    subscribed_devices: usize,
    /// The server's, when its process is known.
    server_cpu_seconds: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

impl Measured {
    fn empty() -> Self {
        Self {
            delivered: 0,
            undelivered: 0,
            delivery: report::histogram(),
            sends: 0,
            inbox_entries: 0,
            conversation_entries: 0,
            elapsed: Duration::ZERO,
            latency: report::histogram(),
            bench_cpu_seconds: 0.0,
            subscribed_devices: 0,
            server_cpu_seconds: None,
            server_peak_rss_mib: None,
        }
    }
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(args.users >= 2, "--users must be at least 2");
    if args.huge_group_members > 0 {
        return crate::huge_group::run(&args).await;
    }
    let node = Node::start(&args.node, args.seq_step).await?;
    let store_kind = node.store_kind();
    let location = node.location.clone();
    let url = node.url.clone();
    let token = node.service_token()?;

    let mix = Mix {
        users: args.users,
        conversations: args.conversations,
        direct_share: args.direct_share,
        small_group_share: args.small_group_share,
        small_group_size: args.small_group_size,
        large_group_size: args.large_group_size,
    };
    let mut rng = Rng::new(args.seed);
    let member_lists = workload::conversations(&mix, &mut rng);
    eprintln!(
        "setup: creating {} conversations for {} users",
        member_lists.len(),
        args.users
    );
    let client = Client::connect(&url, &token).await?;
    let conversations = create_all(&client, &member_lists, args.concurrency).await?;
    // Senders and devices spread over the nodes (one with a single node).
    let mut senders = Vec::with_capacity(node.urls.len());
    for url in &node.urls {
        senders.push(Client::connect(url, &token).await?);
    }
    let users: Vec<u64> = (1..=args.users).collect();
    let subscribed =
        workload::subscribed_devices(&users, args.max_devices, args.subscribed_share, &mut rng);
    anyhow::ensure!(
        subscribed.len() <= MAX_SUBSCRIBED_DEVICES,
        "{} subscribed devices; at most {MAX_SUBSCRIBED_DEVICES} (lower --subscribed-share)",
        subscribed.len()
    );
    eprintln!("setup: {} subscribed devices", subscribed.len());
    let tracker = Tracker::new(&subscribed);
    let mut followers = Vec::new();
    for (i, &(user_id, device)) in subscribed.iter().enumerate() {
        let token = node.token(&Principal::Device {
            user_id,
            device_id: format!("bench-{device}"),
        })?;
        let url = &node.urls[i % node.urls.len()];
        followers.push(tracker.follow(Client::connect(url, &token).await?));
    }

    let warmup = Duration::from_secs(args.duration_secs.max(1)).mul_f64(0.1);
    drive(
        &senders,
        &conversations,
        &args,
        warmup,
        args.seed + 1,
        &tracker,
    )
    .await?;
    // Warm-up deliveries do not count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tracker.reset();
    let peer_load = crate::redis_peer::PeerLoad {
        conversations: &conversations,
        concurrency: args.concurrency,
        rate: args.rate,
        message_bytes: args.message_bytes,
        seed: args.seed,
        warmup,
        duration: Duration::from_secs(args.duration_secs),
        subscribed: &subscribed,
    };
    if args.sweep {
        let steps = sweep(&senders, &conversations, &args, &tracker).await?;
        for follower in followers {
            follower.abort();
        }
        drop(node);
        let mut peer_steps = Vec::new();
        if args.redis_peer {
            for fsync in ["always", "everysec"] {
                eprintln!("Redis Streams peer, appendfsync {fsync}: the same sweep");
                let steps = crate::redis_peer::sweep(fsync, &peer_load, &sweep_plan(&args)).await?;
                peer_steps.push((fsync, steps));
            }
        }
        return print_sweep(&args, store_kind, &steps, &peer_steps);
    }
    eprintln!(
        "measuring {} s at concurrency {}",
        args.duration_secs, args.concurrency
    );
    let progress = report::Progress::start("fanout", Duration::from_secs(args.duration_secs));
    let server_cpu_before = node.cpu_seconds();
    let mut timeline = drive(
        &senders,
        &conversations,
        &args,
        Duration::from_secs(args.duration_secs),
        args.seed + 2,
        &tracker,
    )
    .await?;
    drop(progress);
    timeline.server_cpu_seconds = node
        .cpu_seconds()
        .zip(server_cpu_before)
        .map(|(after, before)| after - before);
    // Let the last sends arrive, then stop following.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (delivered, undelivered) = tracker.counts();
    timeline.delivered = delivered;
    timeline.undelivered = undelivered;
    timeline.delivery = tracker.latency();
    for follower in followers {
        follower.abort();
    }
    timeline.server_peak_rss_mib = node.peak_rss_mib();
    timeline.subscribed_devices = subscribed.len();
    drop(node);

    let mut peers = Vec::new();
    if args.redis_peer {
        for fsync in ["always", "everysec"] {
            eprintln!("Redis Streams peer, appendfsync {fsync}");
            peers.push(crate::redis_peer::run(fsync, &peer_load).await?);
        }
    }
    let bare = match (&location, args.bare_cql) {
        (Some(StoreLocation::Scylla(config)), true) => Some(
            crate::bare_cql::run(
                config,
                args.concurrency,
                args.message_bytes,
                timeline.inbox_entries,
                &conversations,
            )
            .await?,
        ),
        (_, true) => anyhow::bail!("--bare-cql needs a scylla:// store the bench starts"),
        _ => None,
    };
    print_and_save(&args, store_kind, &timeline, bare.as_ref(), &peers)
}

/// Push streams the bench holds at most (one connection each).
const MAX_SUBSCRIBED_DEVICES: usize = 5_000;

fn sweep_plan(args: &FanoutArgs) -> SweepPlan {
    SweepPlan {
        start_rate: args.sweep_start_rate,
        factor: args.sweep_factor,
        p99_ms: args.sweep_p99_ms,
        retries: args.sweep_retries,
        step_duration: Duration::from_secs(args.duration_secs),
    }
}

async fn sweep(
    clients: &[Client],
    conversations: &[(u64, Vec<u64>)],
    args: &FanoutArgs,
    tracker: &Arc<Tracker>,
) -> anyhow::Result<Vec<SweepStep>> {
    crate::sweep::run(&sweep_plan(args), "syncd", async |rate, index| {
        let mut step_args = args.clone();
        step_args.rate = rate;
        tracker.reset();
        let progress = report::Progress::start("sweep", Duration::from_secs(args.duration_secs));
        let measured = drive(
            clients,
            conversations,
            &step_args,
            Duration::from_secs(args.duration_secs),
            args.seed + 10 + index,
            tracker,
        )
        .await?;
        drop(progress);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, undelivered) = tracker.counts();
        Ok(StepMeasured {
            sends: measured.sends,
            inbox_entries: measured.inbox_entries,
            elapsed: measured.elapsed,
            ack_p99_ms: ms(&measured.latency, 0.99),
            delivery_p99_ms: ms(&tracker.latency(), 0.99),
            undelivered,
        })
    })
    .await
}

fn print_sweep_table(system: &str, steps: &[SweepStep]) {
    println!();
    println!("{system}:");
    println!(
        "| {:>9} | {:>9} | {:>15} | {:>11} | {:>16} | {:>11} | {:>9} |",
        "offered/s",
        "sends/s",
        "inbox entries/s",
        "ack p99 ms",
        "delivery p99 ms",
        "undelivered",
        "sustained"
    );
    println!("|{}|", ["---"; 7].join("|"));
    for step in steps {
        println!(
            "| {:>9} | {:>9.0} | {:>15.0} | {:>11.2} | {:>16.2} | {:>11} | {:>9} |",
            step.rate,
            step.sends_per_s,
            step.inbox_per_s,
            step.ack_p99_ms,
            step.delivery_p99_ms,
            step.undelivered,
            if step.sustained { "yes" } else { "no" }
        );
    }
}

fn steps_json(steps: &[SweepStep]) -> serde_json::Value {
    steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "offered_per_sec": s.rate, "sends_per_sec": s.sends_per_s, "inbox_entries_per_sec": s.inbox_per_s,
                "ack_p99_ms": s.ack_p99_ms, "delivery_p99_ms": s.delivery_p99_ms,
                "undelivered": s.undelivered, "sustained": s.sustained,
            })
        })
        .collect()
}

fn print_sweep(
    args: &FanoutArgs,
    store_kind: &str,
    steps: &[SweepStep],
    peers: &[(&str, Vec<SweepStep>)],
) -> anyhow::Result<()> {
    println!();
    println!(
        "fanout sweep: bound delivery p99 <= {} ms, {} s per step, a failed step run again up to {} times",
        args.sweep_p99_ms, args.duration_secs, args.sweep_retries
    );
    let syncd_name = format!("syncd, {store_kind} store");
    print_sweep_table(&syncd_name, steps);
    for (fsync, peer_steps) in peers {
        print_sweep_table(&format!("Redis Streams, appendfsync {fsync}"), peer_steps);
    }
    println!();
    let syncd_peak = crate::sweep::peak(steps);
    let describe = |peak: Option<(u64, f64)>| match peak {
        Some((rate, inbox)) => format!("{rate} sends/s ({inbox:.0} inbox entries/s)"),
        None => format!("below the first step ({} sends/s)", args.sweep_start_rate),
    };
    println!("sustainable peak, {syncd_name}: {}", describe(syncd_peak));
    let mut json_peers = Vec::new();
    for (fsync, peer_steps) in peers {
        let peer_peak = crate::sweep::peak(peer_steps);
        let ratio = match (syncd_peak, peer_peak) {
            (Some((_, ours)), Some((_, theirs))) if theirs > 0.0 => {
                format!(" (syncd / peer: {:.2}x)", ours / theirs)
            }
            _ => String::new(),
        };
        println!(
            "sustainable peak, Redis Streams, appendfsync {fsync}: {}{ratio}",
            describe(peer_peak)
        );
        json_peers.push(serde_json::json!({
            "system": "redis-streams", "appendfsync": fsync,
            "steps": steps_json(peer_steps),
            "sustainable_peak_per_sec": peer_peak.map(|(rate, _)| rate),
            "sustainable_peak_inbox_entries_per_sec": peer_peak.map(|(_, inbox)| inbox),
        }));
    }
    let json = serde_json::json!({
        "benchmark": "fanout-sweep",
        "config": {
            "store": store_kind, "users": args.users, "conversations": args.conversations,
            "concurrency": args.concurrency, "duration_secs": args.duration_secs, "seed": args.seed,
            "sweep_start_rate": args.sweep_start_rate, "sweep_factor": args.sweep_factor,
            "sweep_p99_ms": args.sweep_p99_ms, "sweep_retries": args.sweep_retries,
            "max_devices": args.max_devices, "subscribed_share": args.subscribed_share,
        },
        "steps": steps_json(steps),
        "sustainable_peak_per_sec": syncd_peak.map(|(rate, _)| rate),
        "sustainable_peak_inbox_entries_per_sec": syncd_peak.map(|(_, inbox)| inbox),
        "redis_peers": json_peers,
    });
    let path = report::write_json("fanout-sweep", args.out.clone(), &json)?;
    let mut systems: Vec<(String, &[SweepStep])> = vec![(syncd_name, steps)];
    for (fsync, peer_steps) in peers {
        systems.push((format!("Redis ({fsync})"), peer_steps));
    }
    let series = |value: fn(&SweepStep) -> f64| -> Vec<crate::plot::Series> {
        systems
            .iter()
            .map(|(name, steps)| crate::plot::Series {
                name: name.clone(),
                points: steps.iter().map(|s| (s.rate as f64, value(s))).collect(),
            })
            .collect()
    };
    let chart = |title: &str, y_label: &str, value: fn(&SweepStep) -> f64| {
        crate::plot::line_chart(title, "offered sends/s", y_label, &series(value), false)
    };
    let throughput = chart(
        "fanout: achieved vs offered send rate",
        "achieved sends/s",
        |s| s.sends_per_s,
    );
    let latency = chart(
        "fanout: delivery p99 vs offered send rate",
        "delivery p99 ms",
        |s| s.delivery_p99_ms,
    );
    let throughput_path = path.with_extension("throughput.svg");
    let latency_path = path.with_extension("latency.svg");
    std::fs::write(&throughput_path, throughput)?;
    std::fs::write(&latency_path, latency)?;
    println!("results: {}", path.display());
    println!(
        "plots: {} {}",
        throughput_path.display(),
        latency_path.display()
    );
    Ok(())
}

/// Creates every conversation (setup, not measured). Returns member lists
/// by conversation id.
pub(crate) async fn create_all(
    client: &Client,
    member_lists: &[Vec<u64>],
    concurrency: usize,
) -> anyhow::Result<Vec<(u64, Vec<u64>)>> {
    let mut created = Vec::with_capacity(member_lists.len());
    for chunk in member_lists.chunks(concurrency.max(1)) {
        let batch = chunk.iter().map(|members| {
            let client = client.clone();
            let members = members.clone();
            async move {
                let kind = if members.len() == 2 {
                    proto::timeline::v1::ConversationKind::Direct
                } else {
                    proto::timeline::v1::ConversationKind::Group
                };
                let conversation = client
                    .create_conversation(kind, members.clone(), "")
                    .await?;
                anyhow::Ok((conversation.conversation_id, members))
            }
        });
        created.extend(try_join_all(batch).await?);
    }
    Ok(created)
}

/// Runs the load for `duration`, sends spread over `clients` (one per node).
async fn drive(
    clients: &[Client],
    conversations: &[(u64, Vec<u64>)],
    args: &FanoutArgs,
    duration: Duration,
    seed: u64,
    tracker: &Arc<Tracker>,
) -> anyhow::Result<Measured> {
    let text: Arc<str> = "x".repeat(args.message_bytes).into();
    let cpu_before = report::cpu_seconds();
    let run = if args.rate > 0 {
        let mut rng = Rng::new(seed);
        crate::open_loop::run(args.rate, duration, |issued| {
            let key = format!("s{seed}-o{issued}");
            append(
                &clients[issued as usize % clients.len()],
                tracker.next_send(&mut rng, conversations, key, &text),
            )
        })
        .await?
    } else {
        let conversations = Arc::new(conversations.to_vec());
        crate::closed_loop::run(args.concurrency, duration, |worker| {
            let client = clients[worker % clients.len()].clone();
            let key_prefix = format!("s{seed}");
            tracker.worker_sends(
                &conversations,
                &text,
                key_prefix,
                seed,
                worker,
                move |send| append(&client, send),
            )
        })
        .await?
    };
    let mut measured = Measured::empty();
    measured.sends = run.calls;
    measured.conversation_entries = run.calls;
    measured.inbox_entries = run.units;
    measured.elapsed = run.elapsed;
    measured.latency = run.latency;
    measured.bench_cpu_seconds = report::cpu_seconds() - cpu_before;
    Ok(measured)
}

/// A send of the load as a backend service; resolves to its fanout.
fn append(
    client: &Client,
    send: NextSend<'_>,
) -> impl Future<Output = anyhow::Result<u64>> + Send + use<> {
    let (client, fanout) = (client.clone(), send.members.len() as u64);
    let (conversation_id, sender, message) = (send.conversation_id, send.sender, send.message);
    async move {
        client
            .append(conversation_id, sender, &message, None)
            .await?;
        Ok(fanout)
    }
}
