//! The measured phases of `bench devices`, the same for every system: the
//! connections, one subscription on each, the rest multiplexed over them,
//! idle, then an open-loop send rate; the server process's memory and CPU
//! read from /proc between them.

use super::DevicesArgs;
use crate::delivery::{NextSend, Tracker};
use crate::procs;
use crate::report;
use crate::workload::Rng;
use anyhow::{Context, bail};
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Subscriptions opened at once.
const OPENING_IN_FLIGHT: usize = 512;
/// Sends of the open loop in flight at once (beyond it the loop is behind
/// and says so).
const SENDS_IN_FLIGHT: usize = 4_096;

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
    /// Delivery p99 (ms) of the sends started in each second of the load.
    pub p99_by_second: Vec<Option<f64>>,
    pub server_cpu_per_s: f64,
    /// This process's CPU over the same window: the load generator shares
    /// the machine with the server.
    pub bench_cpu_per_s: f64,
    /// The machine's 1-minute load average after the load: other work on
    /// the machine shows here.
    pub load_average: f64,
}

impl Measured {
    /// The second of the load whose sends had the highest delivery p99, and
    /// that p99.
    pub fn worst_second(&self) -> Option<(usize, f64)> {
        self.p99_by_second
            .iter()
            .enumerate()
            .filter_map(|(second, p99)| p99.map(|p99| (second, p99)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    pub fn json(&self) -> serde_json::Value {
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
            "delivery_p99_ms_by_second": self.p99_by_second,
            "server_cpu_per_s": self.server_cpu_per_s,
            "bench_cpu_per_s": self.bench_cpu_per_s,
            "load_average": self.load_average,
        })
    }
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
    let bench_cpu_before = report::cpu_seconds();
    let (sent, late_starts) =
        load(conversations, &tracker, args.rate, args.duration_secs, send).await?;
    // Let the last deliveries arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = procs::cpu_seconds_of(pid) - cpu_before;
    let bench_cpu = report::cpu_seconds() - bench_cpu_before;
    let load_average = load_average();
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
        p99_by_second: tracker.p99_by_second(),
        server_cpu_per_s: cpu / args.duration_secs as f64,
        bench_cpu_per_s: bench_cpu / args.duration_secs as f64,
        load_average,
    })
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

/// The 1-minute load average (0 when /proc/loadavg cannot be read).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
