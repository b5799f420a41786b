//! The open-loop driver every system's load shares: sends start on a fixed
//! schedule whatever the latency, and latency counts from the scheduled
//! start, so queueing is not hidden.

use crate::report;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sends in flight at most; past it new sends wait (and that wait counts in
/// their latency).
pub const MAX_IN_FLIGHT: usize = 4_096;

/// What an open or closed loop measured.
pub struct LoopRun {
    /// Calls completed (sends, allocations).
    pub calls: u64,
    /// What the calls resolved to, summed (inbox entries written, seqs).
    pub units: u64,
    pub elapsed: Duration,
    /// Per call in µs: in an open loop from its scheduled start until it
    /// completed, in a closed loop from its start.
    pub latency: Histogram<u64>,
}

impl LoopRun {
    pub fn empty() -> Self {
        Self {
            calls: 0,
            units: 0,
            elapsed: Duration::ZERO,
            latency: report::histogram(),
        }
    }
}

/// Starts `send(n)` for n = 1, 2, ... at `rate` per second for `duration`
/// and waits for the last one; each send resolves to its fanout (inbox
/// entries written).
pub async fn run<F, Fut>(rate: u64, duration: Duration, mut send: F) -> anyhow::Result<LoopRun>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    anyhow::ensure!(rate > 0, "an open loop needs a rate above 0");
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut result = LoopRun::empty();
    let mut record = |done: anyhow::Result<(Duration, u64)>| -> anyhow::Result<()> {
        let (took, fanout) = done?;
        result.latency.record(took.as_micros().max(1) as u64)?;
        result.calls += 1;
        result.units += fanout;
        Ok(())
    };
    let started = Instant::now();
    let deadline = started + duration;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut next = started;
    let mut issued = 0u64;
    while next < deadline {
        tokio::time::sleep_until(next.into()).await;
        while next <= Instant::now() && next < deadline {
            let scheduled = next;
            next += interval;
            issued += 1;
            let sending = send(issued);
            let slot = Arc::clone(&slots).acquire_owned().await?;
            in_flight.spawn(async move {
                let _slot = slot;
                let fanout = sending.await?;
                anyhow::Ok((scheduled.elapsed(), fanout))
            });
        }
        while let Some(done) = in_flight.try_join_next() {
            record(done?)?;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        record(done?)?;
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
