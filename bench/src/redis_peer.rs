//! The Redis Streams peer for `bench fanout`: the same job done the way a
//! team would with Redis. A conversation is a stream, each user's inbox is a
//! stream; a send is one MULTI/EXEC transaction: XADD to the conversation
//! and XADD to every member's inbox (stream ids, increasing per stream, are
//! the seqs). redis-server runs with `appendonly yes` and the given
//! `appendfsync` (`always`: every acknowledged write is on disk, like
//! syncd; `everysec`: up to a second of acknowledged writes can be lost).
//! Each subscribed device follows its user's inbox stream with XREAD BLOCK
//! from the last id it holds, so delivery is measured the same way as for
//! syncd: from the start of a send until every subscribed recipient has it.
//! [`catch_up`] is the peer of a device's sync: XRANGE pages from a
//! checkpoint id.

use crate::delivery::{NextSend, Tracker};
use crate::open_loop::LoopRun;
use crate::procs;
use crate::report;
use crate::sweep::{StepMeasured, SweepPlan, SweepStep};
use crate::workload::Rng;
use anyhow::Context;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct PeerMeasured {
    pub fsync: &'static str,
    pub sends: u64,
    pub inbox_entries: u64,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
    pub delivery: Histogram<u64>,
    pub delivered: u64,
    pub undelivered: usize,
    pub server_cpu_seconds: f64,
    pub server_peak_rss_mib: f64,
}

/// Where the peer's load differs from syncd's: it is the bench that fans
/// out (Redis has no members), which is the point of the comparison.
#[derive(Clone, Copy)]
pub struct PeerLoad<'a> {
    pub conversations: &'a [(u64, Vec<u64>)],
    pub concurrency: usize,
    pub rate: u64,
    pub message_bytes: usize,
    pub seed: u64,
    pub warmup: Duration,
    pub duration: Duration,
    /// (user, device) of the devices following their user's inbox stream.
    pub subscribed: &'a [(u64, u64)],
}

/// How long one XREAD waits for new entries before asking again.
const XREAD_BLOCK_MS: u64 = 1_000;
/// Entries per XREAD or XRANGE reply.
const READ_COUNT: usize = 1_000;

/// `(id, text)` of each entry of an XRANGE reply (or of one stream of an
/// XREAD reply): `[[id, [field, value, ...]], ...]`.
fn stream_entries(entries: &redis::Value) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use redis::Value;
    let Value::Array(entries) = entries else {
        anyhow::bail!("unexpected stream reply {entries:?}");
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            anyhow::bail!("unexpected stream entry {entry:?}");
        };
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
            (parts.first(), parts.get(1))
        else {
            anyhow::bail!("unexpected stream entry {entry:?}");
        };
        let text = fields
            .chunks(2)
            .find(|pair| matches!(&pair[0], Value::BulkString(name) if name == b"text"))
            .and_then(|pair| match pair.get(1) {
                Some(Value::BulkString(text)) => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_default();
        out.push((String::from_utf8(id.clone())?, text));
    }
    Ok(out)
}

/// Follows `inbox:<user>` as a device would, until aborted: XREAD BLOCK
/// from the last id it holds, reporting each entry to the tracker.
fn follow(
    addr: String,
    user: u64,
    tracker: Arc<Tracker>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut conn = procs::redis_connection(&addr).await?;
        let stream = format!("inbox:{user}");
        let mut last = "0-0".to_owned();
        loop {
            let reply: redis::Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(XREAD_BLOCK_MS)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&last)
                .query_async(&mut conn)
                .await?;
            // Nil on timeout; otherwise [[stream, entries]].
            let redis::Value::Array(streams) = reply else {
                continue;
            };
            for one in &streams {
                let redis::Value::Array(named) = one else {
                    anyhow::bail!("unexpected XREAD reply {one:?}");
                };
                let entries = named.get(1).context("XREAD reply without entries")?;
                for (id, text) in stream_entries(entries)? {
                    tracker.arrived(&String::from_utf8_lossy(&text));
                    last = id;
                }
            }
        }
    })
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

/// A redis-server with the peer's connections and followers, warmed up.
struct Peer {
    _dir: tempfile::TempDir,
    redis: procs::Proc,
    connections: Vec<redis::aio::MultiplexedConnection>,
    conversations: Arc<Vec<(u64, Vec<u64>)>>,
    text: Arc<str>,
    tracker: Arc<Tracker>,
    followers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Peer {
    async fn start(fsync: &str, load: &PeerLoad<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let redis =
            procs::start_redis(dir.path(), &["--appendonly", "yes", "--appendfsync", fsync])
                .await?;
        let mut connections = Vec::new();
        for _ in 0..load.concurrency.max(1) {
            connections.push(procs::redis_connection(&redis.addr).await?);
        }
        let tracker = Tracker::new(load.subscribed);
        let followers = load
            .subscribed
            .iter()
            .map(|&(user, _)| follow(redis.addr.clone(), user, Arc::clone(&tracker)))
            .collect();
        let peer = Self {
            _dir: dir,
            redis,
            connections,
            conversations: Arc::new(load.conversations.to_vec()),
            text: "x".repeat(load.message_bytes).into(),
            tracker,
            followers,
        };
        peer.drive(load, load.warmup, load.seed + 1).await?;
        // Warm-up deliveries do not count.
        tokio::time::sleep(Duration::from_millis(500)).await;
        peer.tracker.reset();
        Ok(peer)
    }

    async fn drive(
        &self,
        load: &PeerLoad<'_>,
        duration: Duration,
        seed: u64,
    ) -> anyhow::Result<LoopRun> {
        drive(
            &self.connections,
            &self.conversations,
            &self.text,
            load,
            duration,
            seed,
            &self.tracker,
        )
        .await
    }

    /// Stops the followers, surfacing an error one of them ended with.
    async fn stop_following(&mut self) -> anyhow::Result<()> {
        for follower in self.followers.drain(..) {
            if follower.is_finished() {
                follower.await??;
            } else {
                follower.abort();
            }
        }
        Ok(())
    }
}

pub async fn run(fsync: &'static str, load: &PeerLoad<'_>) -> anyhow::Result<PeerMeasured> {
    let mut peer = Peer::start(fsync, load).await?;
    let cpu_before = procs::cpu_seconds_of(peer.redis.pid());
    let progress = report::Progress::start(&format!("redis peer ({fsync})"), load.duration);
    let LoopRun {
        calls: sends,
        units: inbox_entries,
        elapsed,
        latency,
    } = peer.drive(load, load.duration, load.seed + 2).await?;
    drop(progress);
    let server_cpu_seconds = procs::cpu_seconds_of(peer.redis.pid()) - cpu_before;
    // Let the last sends arrive, as for syncd.
    tokio::time::sleep(Duration::from_secs(2)).await;
    peer.stop_following().await?;
    let (delivered, undelivered) = peer.tracker.counts();
    Ok(PeerMeasured {
        fsync,
        sends,
        inbox_entries,
        elapsed,
        latency,
        delivery: peer.tracker.latency(),
        delivered,
        undelivered,
        server_cpu_seconds,
        server_peak_rss_mib: procs::peak_rss_mib_of(peer.redis.pid()),
    })
}

/// The same rate sweep as syncd's, against this peer.
pub async fn sweep(
    fsync: &'static str,
    load: &PeerLoad<'_>,
    plan: &SweepPlan,
) -> anyhow::Result<Vec<SweepStep>> {
    let mut peer = Peer::start(fsync, load).await?;
    let system = format!("Redis ({fsync})");
    let steps = crate::sweep::run(plan, &system, async |rate, index| {
        let step_load = PeerLoad { rate, ..*load };
        peer.tracker.reset();
        let progress = report::Progress::start("sweep", plan.step_duration);
        let run = peer
            .drive(&step_load, plan.step_duration, load.seed + 10 + index)
            .await?;
        drop(progress);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, undelivered) = peer.tracker.counts();
        Ok(StepMeasured {
            sends: run.calls,
            inbox_entries: run.units,
            elapsed: run.elapsed,
            ack_p99_ms: report::ms(&run.latency, 0.99),
            delivery_p99_ms: report::ms(&peer.tracker.latency(), 0.99),
            undelivered,
        })
    })
    .await?;
    peer.stop_following().await?;
    Ok(steps)
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
    tracker: &Arc<Tracker>,
) -> anyhow::Result<LoopRun> {
    if load.rate > 0 {
        let mut rng = Rng::new(seed);
        return crate::open_loop::run(load.rate, duration, |issued| {
            let conn = &connections[issued as usize % connections.len()];
            let key = format!("r{seed}-o{issued}");
            send(conn, tracker.next_send(&mut rng, conversations, key, text))
        })
        .await;
    }
    crate::closed_loop::run(connections.len(), duration, |worker| {
        let conn = connections[worker].clone();
        let key_prefix = format!("r{seed}");
        tracker.worker_sends(conversations, text, key_prefix, seed, worker, move |next| {
            send(&conn, next)
        })
    })
    .await
}

/// A send of the load through [`send_one`]; resolves to its fanout.
fn send(
    conn: &redis::aio::MultiplexedConnection,
    next: NextSend<'_>,
) -> impl Future<Output = anyhow::Result<u64>> + Send + use<> {
    let (mut conn, members) = (conn.clone(), next.members.to_vec());
    let (conversation_id, sender, message) = (next.conversation_id, next.sender, next.message);
    async move {
        send_one(&mut conn, conversation_id, &members, sender, &message).await?;
        Ok(members.len() as u64)
    }
}

/// One timed catch-up: what was read, in how many pages, how long it took.
pub struct CatchUpRound {
    pub received: u64,
    pub pages: u64,
    pub elapsed: Duration,
    pub page_latency: Histogram<u64>,
}

/// The peer of a device's catch-up: `entries` XADDs to one inbox stream
/// (setup, pipelined), then `rounds` catch-ups of the whole stream in
/// XRANGE pages of `page` entries from the checkpoint id after the last
/// one read, as a Redis-based client would.
pub async fn catch_up(
    entries: u64,
    message_bytes: usize,
    page: usize,
    rounds: usize,
) -> anyhow::Result<Vec<CatchUpRound>> {
    let dir = tempfile::tempdir()?;
    let redis = procs::start_redis(
        dir.path(),
        &["--appendonly", "yes", "--appendfsync", "everysec"],
    )
    .await?;
    let mut conn = procs::redis_connection(&redis.addr).await?;
    let text = "x".repeat(message_bytes);
    let mut written = 0u64;
    while written < entries {
        let batch = (entries - written).min(READ_COUNT as u64);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("XADD")
                .arg("inbox:2")
                .arg("*")
                .arg("conv")
                .arg(1)
                .arg("sender")
                .arg(1)
                .arg("text")
                .arg(&text)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        written += batch;
    }
    let mut timed = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        timed.push(xrange_all(&mut conn, page).await?);
    }
    Ok(timed)
}

async fn xrange_all(
    conn: &mut redis::aio::MultiplexedConnection,
    page: usize,
) -> anyhow::Result<CatchUpRound> {
    let started = Instant::now();
    let mut page_latency = report::histogram();
    let (mut received, mut pages) = (0u64, 0u64);
    let mut after = "-".to_owned();
    loop {
        let asked = Instant::now();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg("inbox:2")
            .arg(&after)
            .arg("+")
            .arg("COUNT")
            .arg(page)
            .query_async(conn)
            .await?;
        let got = stream_entries(&reply)?;
        page_latency.record(asked.elapsed().as_micros().max(1) as u64)?;
        pages += 1;
        received += got.len() as u64;
        match got.last() {
            // An exclusive start: the checkpoint itself was read already.
            Some((id, _)) if got.len() == page => after = format!("({id}"),
            _ => break,
        }
    }
    Ok(CatchUpRound {
        received,
        pages,
        elapsed: started.elapsed(),
        page_latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn stream_entries_reads_ids_and_text() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("5-0"),
                Value::Array(vec![
                    bulk("conv"),
                    bulk("7"),
                    bulk("text"),
                    bulk("k1 hello"),
                ]),
            ]),
            Value::Array(vec![
                bulk("5-1"),
                Value::Array(vec![bulk("conv"), bulk("7")]),
            ]),
        ]);
        let entries = stream_entries(&reply).unwrap();
        assert_eq!(
            entries,
            vec![
                ("5-0".to_owned(), b"k1 hello".to_vec()),
                ("5-1".to_owned(), Vec::new())
            ]
        );
        assert!(
            stream_entries(&Value::Array(Vec::new()))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn stream_entries_refuses_other_shapes() {
        assert!(stream_entries(&Value::Nil).is_err());
        assert!(stream_entries(&Value::Array(vec![bulk("5-0")])).is_err());
        assert!(stream_entries(&Value::Array(vec![Value::Array(vec![bulk("5-0")])])).is_err());
    }
}
