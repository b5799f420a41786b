//! `bench seq`: sequence allocation side by side, in one run: the
//! in-process allocator on one core, a seqsvc cluster (store, arbiter,
//! AllocSvr processes) over gRPC one id per call and batched, and Redis
//! `INCR` per id key (no persistence) unpipelined and pipelined, all at the
//! same concurrency.

use crate::open_loop::LoopRun;
use crate::procs::{self, Proc};
use crate::report::{self, ms};
use hdrhistogram::Histogram;
use seqsvc::client::RoutingClient;
use seqsvc::{Allocator, AllocatorConfig, FjallMaxSeqStore, Namespace};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct SeqArgs {
    /// Measured seconds per mode (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Concurrent callers for the networked modes.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Ids per call in the batched and pipelined modes.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Ids drawn uniformly from 0..ids.
    #[arg(long, default_value_t = 1_000_000)]
    ids: u64,
    /// The in-process modes also run on this many ids (a hot set that stays
    /// in cache), to separate the allocator's cost from memory latency.
    #[arg(long, default_value_t = 1_000)]
    hot_ids: u64,
    /// Routing clients the seqsvc callers share (each keeps one connection
    /// per AllocSvr); 1 is one syncd process with `concurrency` calls in
    /// flight. Redis gets one connection per caller (redis-benchmark -c).
    #[arg(long, default_value_t = 1)]
    seqsvc_clients: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Result file (default: bench/results/seq-<unix time>.json).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

struct Row {
    mode: &'static str,
    seqs: u64,
    calls: u64,
    elapsed: Duration,
    /// Per-call latency in µs; `None` where timing each call would cost
    /// more than the call (in-process).
    latency: Option<Histogram<u64>>,
    server_cpu_seconds: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

impl Row {
    fn seqs_per_s(&self) -> f64 {
        self.seqs as f64 / self.elapsed.as_secs_f64()
    }
}

fn rng_next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

pub async fn run(args: SeqArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(
        (1..=seqsvc::allocator::MAX_BATCH_IDS).contains(&args.batch),
        "--batch must be 1 to {}",
        seqsvc::allocator::MAX_BATCH_IDS
    );
    anyhow::ensure!(args.ids > 0, "--ids must be at least 1");
    let duration = Duration::from_secs(args.duration_secs.max(1));
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();

    eprintln!("in-process allocator, one core");
    for ids in [args.hot_ids, args.ids] {
        rows.push(in_process(&args, duration, dir.path(), 1, ids).await?);
        rows.push(in_process(&args, duration, dir.path(), args.batch, ids).await?);
    }

    eprintln!("starting a seqsvc cluster (store, arbiter, one AllocSvr)");
    let cluster = SeqCluster::start(dir.path())?;
    let warm = RoutingClient::new(
        std::slice::from_ref(&cluster.arbiter.addr),
        Duration::from_secs(60),
    )?;
    warm.next(Namespace::Inbox, 0).await?;
    rows.push(seqsvc_mode(&args, duration, &cluster, 1).await?);
    rows.push(seqsvc_mode(&args, duration, &cluster, args.batch).await?);
    drop(cluster);

    eprintln!("starting redis-server (no persistence)");
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let redis = procs::start_redis(&redis_dir, &["--appendonly", "no"]).await?;
    rows.push(redis_mode(&args, duration, &redis, 1).await?);
    rows.push(redis_mode(&args, duration, &redis, args.batch).await?);
    drop(redis);

    print_and_save(&args, &rows)
}

/// One thread, one current-thread runtime, so "one core" is literal.
async fn in_process(
    args: &SeqArgs,
    duration: Duration,
    dir: &std::path::Path,
    batch: usize,
    ids: u64,
) -> anyhow::Result<Row> {
    let store_dir = dir.join(format!("inproc-{batch}-{ids}"));
    let seed = args.seed;
    let mode = match (batch == 1, ids == args.hot_ids) {
        (true, true) => "in-process, 1 id, hot ids",
        (false, true) => "in-process, batched, hot ids",
        (true, false) => "in-process, 1 id per call",
        (false, false) => "in-process, batched",
    };
    let handle = std::thread::spawn(move || -> anyhow::Result<Row> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let store = Arc::new(FjallMaxSeqStore::open(&store_dir)?);
            let allocator = Allocator::new(AllocatorConfig::default(), store)?;
            let mut rng = seed;
            measure_in_process(&allocator, batch, ids, &mut rng, duration / 5).await?;
            let (seqs, calls, elapsed) =
                measure_in_process(&allocator, batch, ids, &mut rng, duration).await?;
            Ok(Row {
                mode,
                seqs,
                calls,
                elapsed,
                latency: None,
                server_cpu_seconds: None,
                server_peak_rss_mib: None,
            })
        })
    });
    tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("in-process benchmark thread panicked"))?
}

async fn measure_in_process(
    allocator: &Allocator,
    batch: usize,
    ids: u64,
    rng: &mut u64,
    until: Duration,
) -> anyhow::Result<(u64, u64, Duration)> {
    let mut batch_ids = vec![0u64; batch];
    let start = Instant::now();
    let (mut seqs, mut calls) = (0u64, 0u64);
    while start.elapsed() < until {
        // Check the clock once per 256 calls: it costs more than a call.
        for _ in 0..256 {
            if batch == 1 {
                allocator
                    .next(Namespace::Inbox, rng_next(rng) % ids)
                    .await?;
            } else {
                for id in batch_ids.iter_mut() {
                    *id = rng_next(rng) % ids;
                }
                allocator.next_batch(Namespace::Inbox, &batch_ids).await?;
            }
        }
        calls += 256;
        seqs += 256 * batch as u64;
    }
    Ok((seqs, calls, start.elapsed()))
}

struct SeqCluster {
    _store: Proc,
    arbiter: Proc,
    alloc: Proc,
}

impl SeqCluster {
    fn start(dir: &std::path::Path) -> anyhow::Result<Self> {
        let bin = procs::sibling_binary("seqsvc")?;
        let data = dir.join("seqsvc-store");
        let store = procs::start_listening(
            &bin,
            &[
                "store",
                "--data-dir",
                data.to_str().unwrap_or("seqsvc-store"),
                "--listen",
                "127.0.0.1:0",
            ],
        )?;
        let store_url = format!("http://{}", store.addr);
        // Short timings so the first assignment activates quickly.
        let arbiter = procs::start_listening(
            &bin,
            &[
                "arbiter",
                "--store",
                &store_url,
                "--listen",
                "127.0.0.1:0",
                "--lease-ms",
                "2000",
                "--sync-interval-ms",
                "500",
                "--activation-ms",
                "2600",
                "--dead-after-ms",
                "1500",
            ],
        )?;
        let alloc = procs::start_listening(
            &bin,
            &[
                "alloc",
                "--store",
                &store_url,
                "--arbiter",
                &arbiter.addr,
                "--listen",
                "127.0.0.1:0",
            ],
        )?;
        Ok(Self {
            _store: store,
            arbiter,
            alloc,
        })
    }
}

/// Runs `concurrency` callers of `call` for the warm-up and the measured
/// window; each call returns how many seqs it got.
async fn closed_loop<F, Fut>(
    concurrency: usize,
    duration: Duration,
    seed: u64,
    call: F,
) -> anyhow::Result<LoopRun>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let caller = |i: usize| {
        let call = call.clone();
        let mut rng = seed ^ ((i as u64 + 1) * 0x9E37_79B9);
        move |_| call(rng_next(&mut rng))
    };
    crate::closed_loop::run(concurrency, duration / 5, caller).await?;
    let progress = report::Progress::start("seq", duration);
    let run = crate::closed_loop::run(concurrency, duration, caller).await?;
    drop(progress);
    Ok(run)
}

/// A mode's name for one id per call (`single`) or several (`batched`).
fn by_batch(batch: usize, single: &'static str, batched: &'static str) -> &'static str {
    if batch == 1 { single } else { batched }
}

/// A row of a networked mode: `server` is the process that serves the calls.
fn networked_row(mode: &'static str, run: LoopRun, server: &Proc, cpu_before: f64) -> Row {
    Row {
        mode,
        seqs: run.units,
        calls: run.calls,
        elapsed: run.elapsed,
        latency: Some(run.latency),
        server_cpu_seconds: Some(procs::cpu_seconds_of(server.pid()) - cpu_before),
        server_peak_rss_mib: Some(procs::peak_rss_mib_of(server.pid())),
    }
}

async fn seqsvc_mode(
    args: &SeqArgs,
    duration: Duration,
    cluster: &SeqCluster,
    batch: usize,
) -> anyhow::Result<Row> {
    eprintln!(
        "seqsvc over gRPC, {batch} id(s) per call, {} callers",
        args.concurrency
    );
    let clients: Vec<RoutingClient> = (0..args.seqsvc_clients.max(1))
        .map(|_| {
            RoutingClient::new(
                std::slice::from_ref(&cluster.arbiter.addr),
                Duration::from_secs(10),
            )
        })
        .collect::<Result<_, _>>()?;
    let clients = Arc::new(clients);
    let ids = args.ids;
    let cpu_before = procs::cpu_seconds_of(cluster.alloc.pid());
    let run = closed_loop(args.concurrency, duration, args.seed, move |r| {
        let clients = Arc::clone(&clients);
        async move {
            let client = &clients[(r % clients.len() as u64) as usize];
            if batch == 1 {
                client.next(Namespace::Inbox, r % ids).await?;
            } else {
                let mut state = r;
                let batch_ids: Vec<u64> = (0..batch).map(|_| rng_next(&mut state) % ids).collect();
                client.next_batch(Namespace::Inbox, &batch_ids).await?;
            }
            Ok(batch as u64)
        }
    })
    .await?;
    let mode = by_batch(batch, "seqsvc gRPC, 1 id per call", "seqsvc gRPC, batched");
    Ok(networked_row(mode, run, &cluster.alloc, cpu_before))
}

async fn redis_mode(
    args: &SeqArgs,
    duration: Duration,
    redis: &Proc,
    batch: usize,
) -> anyhow::Result<Row> {
    eprintln!(
        "Redis INCR, {} per round trip, {} connections",
        batch, args.concurrency
    );
    let mut connections = Vec::new();
    for _ in 0..args.concurrency {
        connections.push(procs::redis_connection(&redis.addr).await?);
    }
    let connections = Arc::new(connections);
    let ids = args.ids;
    let cpu_before = procs::cpu_seconds_of(redis.pid());
    let run = closed_loop(args.concurrency, duration, args.seed, move |r| {
        let connections = Arc::clone(&connections);
        async move {
            let mut conn = connections[(r % connections.len() as u64) as usize].clone();
            if batch == 1 {
                let _: u64 = redis::cmd("INCR")
                    .arg(format!("seq:{}", r % ids))
                    .query_async(&mut conn)
                    .await?;
            } else {
                let mut pipe = redis::pipe();
                let mut state = r;
                for _ in 0..batch {
                    pipe.cmd("INCR")
                        .arg(format!("seq:{}", rng_next(&mut state) % ids));
                }
                let _: Vec<u64> = pipe.query_async(&mut conn).await?;
            }
            Ok(batch as u64)
        }
    })
    .await?;
    let mode = by_batch(batch, "Redis INCR, unpipelined", "Redis INCR, pipelined");
    Ok(networked_row(mode, run, redis, cpu_before))
}

fn print_and_save(args: &SeqArgs, rows: &[Row]) -> anyhow::Result<()> {
    let rate = |mode: &str| {
        rows.iter()
            .find(|r| r.mode == mode)
            .map_or(f64::NAN, Row::seqs_per_s)
    };
    let redis_single = rate("Redis INCR, unpipelined");
    let redis_pipelined = rate("Redis INCR, pipelined");
    println!();
    println!(
        "seq allocation: {} callers, {} ids per batch, ids uniform in 0..{} (hot: 0..{}), {} s per mode",
        args.concurrency, args.batch, args.ids, args.hot_ids, args.duration_secs
    );
    println!(
        "| {:<28} | {:>12} | {:>10} | {:>8} | {:>8} | {:>10} | {:>12} |",
        "mode", "seqs/s", "calls/s", "p50 ms", "p99 ms", "server CPU", "vs Redis"
    );
    println!("|{}|", ["-"; 7].map(|_| "---").join("|"));
    let mut json_rows = Vec::new();
    for row in rows {
        let versus = if row.mode.contains("1 id per call") && row.mode.starts_with("seqsvc") {
            format!("{:.2}x", row.seqs_per_s() / redis_single)
        } else if row.mode.ends_with("batched") && row.mode.starts_with("seqsvc") {
            format!("{:.2}x", row.seqs_per_s() / redis_pipelined)
        } else {
            "-".to_owned()
        };
        let (p50, p99) = match &row.latency {
            Some(h) => (format!("{:.3}", ms(h, 0.5)), format!("{:.3}", ms(h, 0.99))),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let cpu = row.server_cpu_seconds.map_or("-".to_owned(), |c| {
            format!("{:.0}%", 100.0 * c / row.elapsed.as_secs_f64())
        });
        println!(
            "| {:<28} | {:>12.0} | {:>10.0} | {:>8} | {:>8} | {:>10} | {:>12} |",
            row.mode,
            row.seqs_per_s(),
            row.calls as f64 / row.elapsed.as_secs_f64(),
            p50,
            p99,
            cpu,
            versus
        );
        json_rows.push(serde_json::json!({
            "mode": row.mode,
            "seqs": row.seqs,
            "calls": row.calls,
            "seconds": row.elapsed.as_secs_f64(),
            "seqs_per_s": row.seqs_per_s(),
            "p50_ms": row.latency.as_ref().map(|h| ms(h, 0.5)),
            "p99_ms": row.latency.as_ref().map(|h| ms(h, 0.99)),
            "p999_ms": row.latency.as_ref().map(|h| ms(h, 0.999)),
            "server_cpu_seconds": row.server_cpu_seconds,
            "server_peak_rss_mib": row.server_peak_rss_mib,
        }));
    }
    println!(
        "in-process runs on one thread; the seqsvc store, arbiter, AllocSvr and redis-server share this machine's cores with the load generator"
    );
    let path = report::write_json(
        "seq",
        args.out.clone(),
        &serde_json::json!({
            "benchmark": "seq",
            "config": {
                "duration_secs": args.duration_secs,
                "concurrency": args.concurrency,
                "batch": args.batch,
                "ids": args.ids,
                "hot_ids": args.hot_ids,
                "seqsvc_clients": args.seqsvc_clients,
                "seed": args.seed,
            },
            "rows": json_rows,
            "ratios": {
                "seqsvc_unbatched_vs_redis_incr": rate("seqsvc gRPC, 1 id per call") / redis_single,
                "seqsvc_batched_vs_redis_pipelined": rate("seqsvc gRPC, batched") / redis_pipelined,
            },
        }),
    )?;
    println!("results: {}", path.display());
    Ok(())
}
