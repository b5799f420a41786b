//! The closed-loop driver every system's load shares: a fixed number of
//! workers, each with one call in flight, until a deadline. Latency counts
//! from each call's start (its service time: a closed loop never queues), so
//! compare closed-loop latencies with each other, not with open-loop ones.

use crate::open_loop::LoopRun;
use futures_util::future::try_join_all;
use std::time::{Duration, Instant};

/// Runs `workers` workers for `duration` and waits for their last calls.
/// `worker(i)` makes worker i's call function, which owns that worker's
/// state (its random stream, its connection); it is called with 0, 1, 2, ...
/// and its future resolves to what the call did (inbox entries written,
/// seqs allocated). Work done before the future is awaited (picking a
/// conversation, announcing the message) is not timed.
pub async fn run<W, F, Fut>(
    workers: usize,
    duration: Duration,
    mut worker: W,
) -> anyhow::Result<LoopRun>
where
    W: FnMut(usize) -> F,
    F: FnMut(u64) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..workers).map(|i| {
        let mut call = worker(i);
        tokio::spawn(async move {
            let mut run = LoopRun::empty();
            while Instant::now() < deadline {
                let calling = call(run.calls);
                let begun = Instant::now();
                run.units += calling.await?;
                run.latency
                    .record(begun.elapsed().as_micros().max(1) as u64)?;
                run.calls += 1;
            }
            anyhow::Ok(run)
        })
    });
    let mut total = LoopRun::empty();
    for run in try_join_all(tasks).await? {
        let run = run?;
        total.calls += run.calls;
        total.units += run.units;
        total.latency.add(&run.latency)?;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}
