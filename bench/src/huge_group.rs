//! `bench fanout --huge-group-members N`: the W1 mix with a share of its
//! sends going into one group of N members (a service creates it a call
//! of 1,000 at a time), of which `--huge-group-online` hold a Subscribe
//! stream, multiplexed over a few connections as a gateway would carry
//! them. Reported: the huge group's delivery (send start until a member's
//! stream names a `conv_seq` at or past the message), and the server's CPU
//! (from /proc) per delivered notice.
//!
//! The Redis Streams peer does the same with one stream per group: a
//! huge-group send is one XADD to the group's stream, and each online
//! member follows that stream with XREAD BLOCK on a connection of its own
//! (a blocked connection serves nobody else); the other sends go into
//! the conversation's stream and every member's inbox stream, as in the
//! plain peer.

use crate::fanout::FanoutArgs;
use crate::node::Node;
use crate::open_loop::LoopRun;
use crate::procs;
use crate::report;
use crate::workload::{self, Mix, Rng};
use client::{Client, pb};
use hdrhistogram::Histogram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use syncd::auth::Principal;
use tonic::transport::{Channel, Endpoint};

/// Members named per membership call (the server's `MAX_MEMBERS_PER_CALL`).
const PAGE: u64 = syncd::limits::MAX_MEMBERS_PER_CALL as u64;
/// Subscribe streams per connection (below the server's 256).
const STREAMS_PER_CONNECTION: usize = 200;

/// When each huge-group send started, by its index; and, per online
/// member, each notice or entry it heard (the index it covers, arrival).
struct Heard {
    started: Mutex<Vec<Option<Instant>>>,
    per_member: Vec<Mutex<Vec<(u64, Instant)>>>,
}

impl Heard {
    fn new(members: usize) -> Arc<Self> {
        Arc::new(Self {
            started: Mutex::default(),
            per_member: (0..members).map(|_| Mutex::default()).collect(),
        })
    }

    fn sent(&self, index: usize, at: Instant) {
        let mut started = self.started.lock().unwrap();
        if started.len() <= index {
            started.resize(index + 1, None);
        }
        started[index] = Some(at);
    }

    fn heard(&self, member: usize, through: u64) {
        self.per_member[member]
            .lock()
            .unwrap()
            .push((through, Instant::now()));
    }

    /// Delivery latency of every (send, online member) pair, the pairs
    /// never delivered, and the notices counted.
    fn latency(&self, key_of: impl Fn(usize) -> Option<u64>) -> (Histogram<u64>, u64, u64) {
        let started = self.started.lock().unwrap();
        let mut latency = report::histogram();
        let (mut missing, mut notices) = (0, 0);
        for member in &self.per_member {
            let log = member.lock().unwrap();
            notices += log.len() as u64;
            for (index, at) in started.iter().enumerate() {
                let (Some(at), Some(key)) = (at, key_of(index)) else {
                    continue;
                };
                match log.iter().find(|(through, _)| *through >= key) {
                    Some((_, when)) => {
                        let micros = when.saturating_duration_since(*at).as_micros().max(1);
                        let _ = latency.record(micros as u64);
                    }
                    None => missing += 1,
                }
            }
        }
        (latency, missing, notices)
    }
}

/// One system's results.
struct Outcome {
    system: String,
    sends: u64,
    huge_sends: u64,
    latency: Histogram<u64>,
    undelivered: u64,
    notices: u64,
    server_cpu_seconds: f64,
    elapsed: Duration,
}

pub async fn run(args: &FanoutArgs) -> anyhow::Result<()> {
    let members = args.huge_group_members;
    let online = args.huge_group_online;
    anyhow::ensure!(
        members as usize <= syncd::limits::MAX_CONVERSATION_MEMBERS,
        "--huge-group-members is at most {}",
        syncd::limits::MAX_CONVERSATION_MEMBERS
    );
    anyhow::ensure!(
        (1..=members).contains(&online),
        "--huge-group-online must be between 1 and --huge-group-members"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.huge_group_share),
        "--huge-group-share is a share (0 to 1)"
    );
    let rate = if args.rate > 0 { args.rate } else { 200 };
    let duration = Duration::from_secs(args.duration_secs.max(1));
    let mix = Mix {
        users: args.users,
        conversations: args.conversations,
        direct_share: args.direct_share,
        small_group_share: args.small_group_share,
        small_group_size: args.small_group_size,
        large_group_size: args.large_group_size,
    };
    let member_lists = workload::conversations(&mix, &mut Rng::new(args.seed));

    let node = Node::start(&args.node, args.seq_step).await?;
    let url = node.url.clone();
    let ops = Client::connect(&url, &node.service_token()?).await?;
    eprintln!(
        "setup: {} conversations, and one of {members} members",
        member_lists.len()
    );
    let conversations = crate::fanout::create_all(&ops, &member_lists, args.concurrency).await?;
    let setup = Instant::now();
    let huge = create_huge(&ops, members).await?;
    eprintln!(
        "setup: the group of {members} took {} calls, {:.1} s",
        members.div_ceil(PAGE),
        setup.elapsed().as_secs_f64()
    );
    let heard = Heard::new(online as usize);
    // The notice names a conv_seq; the send's reply says which.
    let conv_seqs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let streams = subscribe(&node, &url, huge, online, &heard).await?;
    let cpu_before = node.cpu_seconds();
    let progress = report::Progress::start("huge group (syncd)", duration);
    let run = drive(rate, duration, args, &conversations, &heard, {
        let ops = ops.clone();
        let conv_seqs = Arc::clone(&conv_seqs);
        move |target: Target, index| {
            let ops = ops.clone();
            let conv_seqs = Arc::clone(&conv_seqs);
            async move {
                match target {
                    Target::Huge => {
                        let reply = ops
                            .append(huge, members, &format!("h{index}"), None)
                            .await?;
                        let mut seqs = conv_seqs.lock().unwrap();
                        if seqs.len() <= index {
                            seqs.resize(index + 1, 0);
                        }
                        seqs[index] = reply.conv_seq;
                        Ok(1)
                    }
                    Target::Other(id, sender, fanout) => {
                        ops.append(id, sender, "x", None).await?;
                        Ok(fanout)
                    }
                }
            }
        }
    })
    .await?;
    drop(progress);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = node
        .cpu_seconds()
        .zip(cpu_before)
        .map_or(0.0, |(after, before)| after - before);
    for stream in streams {
        stream.abort();
    }
    let seqs = conv_seqs.lock().unwrap().clone();
    let (latency, undelivered, notices) =
        heard.latency(|i| seqs.get(i).copied().filter(|&s| s > 0));
    let syncd = Outcome {
        system: format!("syncd, {} store", node.store_kind()),
        sends: run.0.calls,
        huge_sends: run.1,
        latency,
        undelivered,
        notices,
        server_cpu_seconds: cpu,
        elapsed: run.0.elapsed,
    };
    drop(node);

    let mut outcomes = vec![syncd];
    if args.redis_peer {
        outcomes.push(redis(args, rate, duration, &conversations, members, online).await?);
    }
    print(args, rate, &outcomes)
}

async fn create_huge(ops: &Client, members: u64) -> anyhow::Result<u64> {
    let first: Vec<u64> = (1..=members.min(PAGE)).collect();
    let created = ops
        .create_conversation(pb::ConversationKind::Group, first, "huge")
        .await?;
    let mut next = PAGE + 1;
    while next <= members {
        let last = (next + PAGE - 1).min(members);
        ops.add_members(created.conversation_id, (next..=last).collect())
            .await?;
        next = last + 1;
    }
    Ok(created.conversation_id)
}

/// One stream per online member (users 1..=online), over connections of
/// [`STREAMS_PER_CONNECTION`]; returns once each has had its first notice.
async fn subscribe(
    node: &Node,
    url: &str,
    huge: u64,
    online: u64,
    heard: &Arc<Heard>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..(online as usize).div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(
            Endpoint::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut streams = Vec::with_capacity(online as usize);
    for user in 1..=online {
        let member = (user - 1) as usize;
        let token = node.token(&Principal::Device {
            user_id: user,
            device_id: "huge".into(),
        })?;
        let mut request = tonic::Request::new(pb::SubscribeRequest {
            after_seq: 0,
            include_entries: false,
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let mut timeline = pb::timeline_client::TimelineClient::new(
            channels[member / STREAMS_PER_CONNECTION].clone(),
        );
        let mut notices = timeline.subscribe(request).await?.into_inner();
        let (heard, ready) = (Arc::clone(heard), ready_tx.clone());
        streams.push(tokio::spawn(async move {
            let mut first = true;
            while let Some(notice) = notices.message().await? {
                if std::mem::take(&mut first) {
                    let _ = ready.send(());
                }
                for group in notice.groups.iter().filter(|g| g.conversation_id == huge) {
                    heard.heard(member, group.conv_seq);
                }
            }
            anyhow::Ok(())
        }));
    }
    for _ in 0..online {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .map_err(|_| anyhow::anyhow!("a Subscribe stream had no first notice in 60 s"))?;
    }
    Ok(streams)
}

#[derive(Clone, Copy)]
enum Target {
    Huge,
    /// A W1 conversation, a member to send as, and its fanout.
    Other(u64, u64, u64),
}

/// Open loop at `rate` for `duration`: each send goes into the huge group
/// with the configured share, else into a W1 conversation. Returns the
/// loop's counts and how many went into the huge group.
async fn drive<F, Fut>(
    rate: u64,
    duration: Duration,
    args: &FanoutArgs,
    conversations: &[(u64, Vec<u64>)],
    heard: &Arc<Heard>,
    send: F,
) -> anyhow::Result<(LoopRun, u64)>
where
    F: Fn(Target, usize) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let mut rng = Rng::new(args.seed + 7);
    let mut huge_sends = 0u64;
    let threshold = (args.huge_group_share * 1_000_000.0) as u64;
    let run = crate::open_loop::run(rate, duration, |_| {
        if rng.below(1_000_000) < threshold {
            let index = huge_sends as usize;
            huge_sends += 1;
            heard.sent(index, Instant::now());
            send(Target::Huge, index)
        } else {
            let (id, members, sender) = workload::pick(&mut rng, conversations);
            send(Target::Other(id, sender, members.len() as u64), 0)
        }
    })
    .await?;
    Ok((run, huge_sends))
}

/// The same load against redis-server (appendfsync always: acknowledged
/// writes are on disk, as with syncd).
async fn redis(
    args: &FanoutArgs,
    rate: u64,
    duration: Duration,
    conversations: &[(u64, Vec<u64>)],
    members: u64,
    online: u64,
) -> anyhow::Result<Outcome> {
    eprintln!("Redis Streams peer: the same mix, one stream per group");
    let dir = tempfile::tempdir()?;
    let redis = procs::start_redis(
        dir.path(),
        &["--appendonly", "yes", "--appendfsync", "always"],
    )
    .await?;
    let mut connections = Vec::new();
    for _ in 0..args.concurrency.clamp(1, 64) {
        connections.push(procs::redis_connection(&redis.addr).await?);
    }
    let heard = Heard::new(online as usize);
    let mut followers = Vec::new();
    for member in 0..online as usize {
        let mut conn = procs::redis_connection(&redis.addr).await?;
        let heard = Arc::clone(&heard);
        followers.push(tokio::spawn(async move {
            let mut last = "$".to_owned();
            loop {
                let reply: redis::Value = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1_000)
                    .arg("BLOCK")
                    .arg(1_000)
                    .arg("STREAMS")
                    .arg("group:huge")
                    .arg(&last)
                    .query_async(&mut conn)
                    .await?;
                let Some((id, index)) = newest_entry(&reply)? else {
                    continue;
                };
                heard.heard(member, index);
                last = id;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }));
    }
    // The followers block from "$" (what comes next): let them get there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conversations = Arc::new(conversations.to_vec());
    let cpu_before = procs::cpu_seconds_of(redis.pid());
    let progress = report::Progress::start("huge group (redis)", duration);
    let run = drive(
        rate,
        duration,
        args,
        &conversations,
        &heard,
        |target, index| {
            let mut conn = connections[index % connections.len()].clone();
            let conversations = Arc::clone(&conversations);
            async move {
                match target {
                    Target::Huge => {
                        let _: String = redis::cmd("XADD")
                            .arg("group:huge")
                            .arg("*")
                            .arg("sender")
                            .arg(members)
                            .arg("i")
                            .arg(index)
                            .query_async(&mut conn)
                            .await?;
                        Ok(1)
                    }
                    Target::Other(id, sender, fanout) => {
                        let group = conversations
                            .iter()
                            .find(|(c, _)| *c == id)
                            .map(|(_, m)| m.clone())
                            .unwrap_or_default();
                        let mut pipe = redis::pipe();
                        pipe.atomic();
                        pipe.cmd("XADD")
                            .arg(format!("conv:{id}"))
                            .arg("*")
                            .arg("sender")
                            .arg(sender)
                            .ignore();
                        for member in group {
                            pipe.cmd("XADD")
                                .arg(format!("inbox:{member}"))
                                .arg("*")
                                .arg("conv")
                                .arg(id)
                                .ignore();
                        }
                        pipe.query_async::<()>(&mut conn).await?;
                        Ok(fanout)
                    }
                }
            }
        },
    )
    .await?;
    drop(progress);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = procs::cpu_seconds_of(redis.pid()) - cpu_before;
    for follower in followers {
        follower.abort();
    }
    // An entry carries its send's index: it covers that send only, and
    // the follower reads every entry in order.
    let (latency, undelivered, notices) = heard.latency(|i| Some(i as u64));
    Ok(Outcome {
        system: "Redis Streams, appendfsync always".into(),
        sends: run.0.calls,
        huge_sends: run.1,
        latency,
        undelivered,
        notices,
        server_cpu_seconds: cpu,
        elapsed: run.0.elapsed,
    })
}

/// The id and send index of the newest entry of an XREAD reply
/// (`[[stream, [[id, [field, value, ...]], ...]]]`); `None` on a timeout.
fn newest_entry(reply: &redis::Value) -> anyhow::Result<Option<(String, u64)>> {
    use redis::Value;
    let Value::Array(streams) = reply else {
        return Ok(None);
    };
    let entries = streams
        .first()
        .and_then(|s| match s {
            Value::Array(named) => named.get(1),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("unexpected XREAD reply {reply:?}"))?;
    let Value::Array(entries) = entries else {
        anyhow::bail!("unexpected XREAD entries {entries:?}");
    };
    let Some(Value::Array(parts)) = entries.last() else {
        return Ok(None);
    };
    let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (parts.first(), parts.get(1))
    else {
        anyhow::bail!("unexpected stream entry {parts:?}");
    };
    let index = fields
        .chunks(2)
        .find(|pair| matches!(&pair[0], Value::BulkString(name) if name == b"i"))
        .and_then(|pair| match pair.get(1) {
            Some(Value::BulkString(value)) => std::str::from_utf8(value).ok()?.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("stream entry without its index"))?;
    Ok(Some((String::from_utf8(id.clone())?, index)))
}

fn print(args: &FanoutArgs, rate: u64, outcomes: &[Outcome]) -> anyhow::Result<()> {
    println!(
        "bench fanout, huge-group mix: {rate} sends/s for {} s, {:.0}% into one group of {} members \
         with {} online, the rest W1 ({} conversations)",
        args.duration_secs,
        args.huge_group_share * 100.0,
        args.huge_group_members,
        args.huge_group_online,
        args.conversations
    );
    println!(
        "| system | sends | into the huge group | notices delivered | undelivered | delivery p50 / p99 / max, ms | server CPU, s | server CPU per delivered notice, µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for o in outcomes {
        let per_notice_us = o.server_cpu_seconds * 1e6 / o.notices.max(1) as f64;
        println!(
            "| {} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} | {:.2} | {:.1} |",
            o.system,
            o.sends,
            o.huge_sends,
            o.notices,
            o.undelivered,
            report::ms(&o.latency, 0.5),
            report::ms(&o.latency, 0.99),
            o.latency.max() as f64 / 1000.0,
            o.server_cpu_seconds,
            per_notice_us
        );
        json.push(serde_json::json!({
            "system": o.system, "sends": o.sends, "huge_sends": o.huge_sends,
            "notices": o.notices, "undelivered": o.undelivered,
            "delivery_ms": {"p50": report::ms(&o.latency, 0.5), "p99": report::ms(&o.latency, 0.99),
                            "max": o.latency.max() as f64 / 1000.0},
            "server_cpu_seconds": o.server_cpu_seconds,
            "server_cpu_us_per_notice": per_notice_us,
            "elapsed_secs": o.elapsed.as_secs_f64(),
        }));
    }
    let path = report::write_json(
        "fanout-huge-group",
        args.out.clone(),
        &serde_json::json!({
            "benchmark": "fanout-huge-group",
            "config": {"rate": rate, "duration_secs": args.duration_secs,
                       "huge_group_members": args.huge_group_members,
                       "huge_group_share": args.huge_group_share,
                       "huge_group_online": args.huge_group_online,
                       "conversations": args.conversations, "users": args.users, "seed": args.seed},
            "systems": json,
        }),
    )?;
    println!("results: {}", path.display());
    Ok(())
}
