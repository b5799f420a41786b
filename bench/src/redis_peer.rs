//! The Redis Streams peer for `bench fanout`: the same job done the way a
//! team would with Redis. A conversation is a stream, each user's inbox is a
//! stream; a send is one MULTI/EXEC transaction: XADD to the conversation
//! and XADD to every member's inbox (stream ids, increasing per stream, are
//! the seqs). redis-server runs with `appendonly yes` and the given
//! `appendfsync` (`always`: every acknowledged write is on disk, like
//! syncd; `everysec`: up to a second of acknowledged writes can be lost).

use crate::procs;
use crate::report;
use crate::workload::Rng;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct PeerMeasured {
    pub fsync: &'static str,
    pub sends: u64,
    pub inbox_entries: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub server_cpu_seconds: f64,
    pub server_peak_rss_mib: f64,
}

/// Where the peer's load differs from syncd's: it is the bench that fans
/// out (Redis has no members), which is the point of the comparison.
pub struct PeerLoad<'a> {
    pub conversations: &'a [(u64, Vec<u64>)],
    pub concurrency: usize,
    pub rate: u64,
    pub message_bytes: usize,
    pub seed: u64,
    pub warmup: Duration,
    pub duration: Duration,
}

async fn send_one(
    conn: &mut redis::aio::MultiplexedConnection,
    conversation_id: u64,
    members: &[u64],
    sender: u64,
    text: &str,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let sender = sender.to_string();
    pipe.cmd("XADD")
        .arg(format!("conv:{conversation_id}"))
        .arg("*")
        .arg("sender")
        .arg(&sender)
        .arg("text")
        .arg(text)
        .ignore();
    for member in members {
        pipe.cmd("XADD")
            .arg(format!("inbox:{member}"))
            .arg("*")
            .arg("conv")
            .arg(conversation_id)
            .arg("sender")
            .arg(&sender)
            .arg("text")
            .arg(text)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

pub async fn run(fsync: &'static str, load: &PeerLoad<'_>) -> anyhow::Result<PeerMeasured> {
    let dir = tempfile::tempdir()?;
    let redis =
        procs::start_redis(dir.path(), &["--appendonly", "yes", "--appendfsync", fsync]).await?;
    let mut connections = Vec::new();
    for _ in 0..load.concurrency.max(1) {
        connections.push(procs::redis_connection(&redis.addr).await?);
    }
    let conversations = Arc::new(load.conversations.to_vec());
    let text: Arc<str> = "x".repeat(load.message_bytes).into();
    drive(
        &connections,
        &conversations,
        &text,
        load,
        load.warmup,
        load.seed + 1,
    )
    .await?;
    let cpu_before = procs::cpu_seconds_of(redis.pid());
    let progress = report::Progress::start(&format!("redis peer ({fsync})"), load.duration);
    let (sends, inbox_entries, elapsed, latency) = drive(
        &connections,
        &conversations,
        &text,
        load,
        load.duration,
        load.seed + 2,
    )
    .await?;
    drop(progress);
    Ok(PeerMeasured {
        fsync,
        sends,
        inbox_entries,
        elapsed,
        latency,
        server_cpu_seconds: procs::cpu_seconds_of(redis.pid()) - cpu_before,
        server_peak_rss_mib: procs::peak_rss_mib_of(redis.pid()),
    })
}

/// Closed loop (`rate` 0: one send in flight per connection) or open loop
/// at `rate` sends/s (latency from the scheduled start).
async fn drive(
    connections: &[redis::aio::MultiplexedConnection],
    conversations: &Arc<Vec<(u64, Vec<u64>)>>,
    text: &Arc<str>,
    load: &PeerLoad<'_>,
    duration: Duration,
    seed: u64,
) -> anyhow::Result<(u64, u64, Duration, Histogram<u64>)> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut latency = report::histogram();
    let (mut sends, mut inbox_entries) = (0u64, 0u64);
    if load.rate == 0 {
        let workers: Vec<_> = connections
            .iter()
            .enumerate()
            .map(|(worker, conn)| {
                let (mut conn, conversations, text) =
                    (conn.clone(), Arc::clone(conversations), Arc::clone(text));
                tokio::spawn(async move {
                    let mut rng =
                        Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(worker as u64));
                    let mut latency = report::histogram();
                    let (mut sends, mut entries) = (0u64, 0u64);
                    while Instant::now() < deadline {
                        let (id, members) =
                            &conversations[rng.below(conversations.len() as u64) as usize];
                        let sender = members[rng.below(members.len() as u64) as usize];
                        let begun = Instant::now();
                        send_one(&mut conn, *id, members, sender, &text).await?;
                        latency.record(begun.elapsed().as_micros().max(1) as u64)?;
                        sends += 1;
                        entries += members.len() as u64;
                    }
                    anyhow::Ok((sends, entries, latency))
                })
            })
            .collect();
        for worker in workers {
            let (s, e, l) = worker.await??;
            sends += s;
            inbox_entries += e;
            latency.add(&l)?;
        }
        return Ok((sends, inbox_entries, started.elapsed(), latency));
    }
    let interval = Duration::from_secs_f64(1.0 / load.rate as f64);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        crate::fanout::MAX_OPEN_LOOP_IN_FLIGHT,
    ));
    let mut rng = Rng::new(seed);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut next = started;
    let mut issued = 0usize;
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        while next <= Instant::now() && next < deadline {
            let scheduled = next;
            next += interval;
            let (id, members) =
                conversations[rng.below(conversations.len() as u64) as usize].clone();
            let sender = members[rng.below(members.len() as u64) as usize];
            let mut conn = connections[issued % connections.len()].clone();
            issued += 1;
            let text = Arc::clone(text);
            let slot = Arc::clone(&slots).acquire_owned().await?;
            in_flight.spawn(async move {
                let _slot = slot;
                send_one(&mut conn, id, &members, sender, &text).await?;
                anyhow::Ok((scheduled.elapsed(), members.len() as u64))
            });
        }
        while let Some(done) = in_flight.try_join_next() {
            let (took, fanout) = done??;
            latency.record(took.as_micros().max(1) as u64)?;
            sends += 1;
            inbox_entries += fanout;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        let (took, fanout) = done??;
        latency.record(took.as_micros().max(1) as u64)?;
        sends += 1;
        inbox_entries += fanout;
    }
    Ok((sends, inbox_entries, started.elapsed(), latency))
}
