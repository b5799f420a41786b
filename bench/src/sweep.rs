//! Rate sweeps: open-loop steps at rising rates until a system stops
//! sustaining the load, for syncd and for the peers alike, so their
//! sustainable peaks come from the same rule.

use std::time::Duration;

/// Limits of a sweep: steps at most (retries included), and the share of
/// the offered rate a system must achieve to count as keeping up.
const MAX_SWEEP_STEPS: usize = 16;
const KEEPING_UP: f64 = 0.95;

#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub start_rate: u64,
    pub factor: f64,
    /// A step is sustained while delivery p99 stays at or below this.
    pub p99_ms: f64,
    /// Times a failed step is run again before the sweep stops there.
    pub retries: u32,
    pub step_duration: Duration,
}

/// What one step measured, before the bound is applied.
pub struct StepMeasured {
    pub sends: u64,
    pub inbox_entries: u64,
    pub elapsed: Duration,
    pub ack_p99_ms: f64,
    pub delivery_p99_ms: f64,
    pub undelivered: usize,
}

pub struct SweepStep {
    pub rate: u64,
    pub sends_per_s: f64,
    pub inbox_per_s: f64,
    pub ack_p99_ms: f64,
    pub delivery_p99_ms: f64,
    pub undelivered: usize,
    pub sustained: bool,
}

/// The highest sustained step's rate and inbox entries/s.
pub fn peak(steps: &[SweepStep]) -> Option<(u64, f64)> {
    steps
        .iter()
        .filter(|s| s.sustained)
        .max_by_key(|s| s.rate)
        .map(|s| (s.rate, s.inbox_per_s))
}

/// Runs `step(rate, index)` at rising rates: each sustained step multiplies
/// the rate by the plan's factor; a failed one is run again up to
/// `retries` times, then the sweep ends.
pub async fn run(
    plan: &SweepPlan,
    system: &str,
    mut step: impl AsyncFnMut(u64, u64) -> anyhow::Result<StepMeasured>,
) -> anyhow::Result<Vec<SweepStep>> {
    anyhow::ensure!(plan.start_rate > 0, "--sweep-start-rate must be at least 1");
    anyhow::ensure!(plan.factor > 1.0, "--sweep-factor must be above 1");
    let mut steps = Vec::new();
    let mut rate = plan.start_rate as f64;
    let mut retries_left = plan.retries;
    for index in 0..MAX_SWEEP_STEPS {
        let offered = rate.round() as u64;
        eprintln!(
            "{system} sweep step {}: {offered} sends/s for {} s",
            index + 1,
            plan.step_duration.as_secs()
        );
        let measured = step(offered, index as u64).await?;
        let secs = measured.elapsed.as_secs_f64().max(1e-9);
        let sends_per_s = measured.sends as f64 / secs;
        let sustained = measured.delivery_p99_ms <= plan.p99_ms
            && sends_per_s >= KEEPING_UP * offered as f64
            && measured.undelivered == 0;
        steps.push(SweepStep {
            rate: offered,
            sends_per_s,
            inbox_per_s: measured.inbox_entries as f64 / secs,
            ack_p99_ms: measured.ack_p99_ms,
            delivery_p99_ms: measured.delivery_p99_ms,
            undelivered: measured.undelivered,
            sustained,
        });
        if !sustained {
            if retries_left == 0 {
                break;
            }
            retries_left -= 1;
            eprintln!("{system}: step not sustained; running it again");
            continue;
        }
        retries_left = plan.retries;
        rate *= plan.factor;
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(retries: u32) -> SweepPlan {
        SweepPlan {
            start_rate: 100,
            factor: 2.0,
            p99_ms: 50.0,
            retries,
            step_duration: Duration::from_secs(1),
        }
    }

    /// A system that keeps up to `limit` sends/s, with one bad step at
    /// `flaky` (run index) whatever the rate.
    fn system(
        limit: u64,
        flaky: Option<u64>,
    ) -> impl AsyncFnMut(u64, u64) -> anyhow::Result<StepMeasured> {
        async move |rate: u64, index: u64| {
            let over = rate > limit || flaky == Some(index);
            Ok(StepMeasured {
                sends: rate.min(limit),
                inbox_entries: rate.min(limit) * 10,
                elapsed: Duration::from_secs(1),
                ack_p99_ms: 1.0,
                delivery_p99_ms: if over { 500.0 } else { 5.0 },
                undelivered: 0,
            })
        }
    }

    #[tokio::test]
    async fn rates_rise_until_the_bound_breaks() {
        let steps = run(&plan(0), "test", system(500, None)).await.unwrap();
        let rates: Vec<u64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(rates, [100, 200, 400, 800]);
        assert!(!steps[3].sustained);
        assert_eq!(peak(&steps), Some((400, 4000.0)));
    }

    #[tokio::test]
    async fn a_failed_step_is_run_again_before_the_sweep_stops() {
        // The second step (index 1) fails once; the retry passes.
        let steps = run(&plan(1), "test", system(500, Some(1))).await.unwrap();
        let rates: Vec<u64> = steps.iter().map(|s| s.rate).collect();
        assert_eq!(rates, [100, 200, 200, 400, 800, 800]);
        assert_eq!(peak(&steps), Some((400, 4000.0)));
        // Without retries the flaky step ends the sweep.
        let steps = run(&plan(0), "test", system(500, Some(1))).await.unwrap();
        assert_eq!(peak(&steps), Some((100, 1000.0)));
    }

    #[tokio::test]
    async fn a_system_that_falls_behind_is_not_sustained() {
        // Delivery is fine, but only 150 of 200 sends/s get through.
        let limited = async |rate: u64, _index: u64| {
            Ok(StepMeasured {
                sends: rate.min(150),
                inbox_entries: 0,
                elapsed: Duration::from_secs(1),
                ack_p99_ms: 1.0,
                delivery_p99_ms: 1.0,
                undelivered: 0,
            })
        };
        let steps = run(&plan(0), "test", limited).await.unwrap();
        assert_eq!(steps.len(), 2);
        assert!(!steps[1].sustained);
    }
}
