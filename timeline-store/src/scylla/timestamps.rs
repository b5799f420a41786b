//! Write timestamps that order a cluster writer's rows after every earlier
//! writer's, whatever the nodes' clocks say.
//!
//! Cassandra keeps the write of a cell with the highest timestamp. A new
//! writer's rewrite (a recall, an edit, a membership change, a read-state
//! save) must therefore carry a higher timestamp than any statement the
//! old writer may still land late. Taking both from the nodes' wall clocks
//! would make that depend on the clocks agreeing; instead the lease row
//! carries a **ceiling**:
//! - every claim and every renewal of the lease (a lightweight transaction
//!   on `writer_lease`) records the highest timestamp the holder may use
//!   until its next renewal: `max(now, last issued) + span`, never below
//!   the ceiling it had;
//! - the holder issues timestamps only up to the ceiling of its last
//!   *applied* renewal (a renewal whose answer never came may have applied,
//!   but it only ever raised the row, so the row stays at or above what the
//!   holder uses);
//! - a claim is conditional on the row exactly as seen (epoch and renewal
//!   counter, which every write of the row changes), so the claimant saw
//!   the last ceiling the old holder could have used. That ceiling is the
//!   new writer's **floor**: it issues only above it.
//!
//! So every timestamp of epoch `e + 1` is above every timestamp of epoch
//! `e`, and within an epoch the source is monotonic. Clocks only decide how
//! far timestamps run ahead of real time: a writer whose clock is behind
//! its floor issues `floor + 1, floor + 2, ...` (one microsecond apart) until
//! its clock passes the floor.

use crate::{Result, StoreError};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The epoch of a store with no lease (one node owns the keyspace).
pub(super) const UNFENCED: u64 = 0;

/// The lease this source issues under: its epoch and the ceiling of its
/// last applied claim or renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grant {
    epoch: u64,
    ceiling: i64,
}

struct State {
    /// The last timestamp issued, or the floor the lease started from:
    /// nothing at or below it is issued again.
    last: i64,
    grant: Option<Grant>,
}

type Wall = Box<dyn Fn() -> i64 + Send + Sync>;

/// One node's source of write timestamps, shared by its lease loop (which
/// raises the ceiling as renewals apply) and its writer generations (which
/// take timestamps under their epoch).
pub struct WriterClock {
    state: Mutex<State>,
    wall: Wall,
}

/// Microseconds since the Unix epoch, the unit of CQL write timestamps.
fn system_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

fn micros(span: Duration) -> i64 {
    i64::try_from(span.as_micros()).unwrap_or(i64::MAX)
}

impl Default for WriterClock {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WriterClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("WriterClock")
            .field("last", &state.last)
            .field("grant", &state.grant)
            .finish()
    }
}

impl WriterClock {
    /// A cluster node's source: it issues nothing until a claim of the
    /// lease applied ([`super::WriterLeaseTable::claim`]).
    pub fn new() -> Self {
        Self::with_wall(Box::new(system_micros), None)
    }

    /// The source of a store no lease fences: the wall clock, monotonic,
    /// with no ceiling.
    pub(super) fn unbounded() -> Self {
        Self::with_wall(
            Box::new(system_micros),
            Some(Grant {
                epoch: UNFENCED,
                ceiling: i64::MAX,
            }),
        )
    }

    fn with_wall(wall: Wall, grant: Option<Grant>) -> Self {
        Self {
            state: Mutex::new(State { last: 0, grant }),
            wall,
        }
    }

    /// A cluster node's source reading `wall` (microseconds) instead of the
    /// system clock: a node whose clock runs ahead or behind.
    #[cfg(test)]
    pub(super) fn with_clock(wall: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self::with_wall(Box::new(wall), None)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every step leaves the state consistent: a panic elsewhere does
        // not make it wrong.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The floor and ceiling of a claim of a row whose last ceiling was
    /// `seen` (`None`: a row no ceiling was ever recorded in, by an earlier
    /// version or by none at all; this node's clock is then the floor).
    pub(super) fn claim_grant(&self, seen: Option<i64>, span: Duration) -> (i64, i64) {
        let state = self.state();
        let now = (self.wall)();
        let floor = seen.unwrap_or(now);
        let base = now.max(floor).max(state.last);
        (floor, base.saturating_add(micros(span)))
    }

    /// A claim of `epoch` with `floor` and `ceiling` applied: from now on
    /// timestamps of `epoch` lie above the floor and at most at the
    /// ceiling; earlier epochs get none.
    pub(super) fn begin(&self, epoch: u64, floor: i64, ceiling: i64) {
        let mut state = self.state();
        state.last = state.last.max(floor);
        state.grant = Some(Grant { epoch, ceiling });
    }

    /// The ceiling a renewal sent now records: a span past this node's
    /// clock or its last timestamp, whichever is later, and never below the
    /// ceiling it has.
    pub(super) fn renewal_ceiling(&self, span: Duration) -> i64 {
        let state = self.state();
        let base = (self.wall)().max(state.last).saturating_add(micros(span));
        state.grant.map_or(base, |grant| grant.ceiling.max(base))
    }

    /// A renewal of `epoch` recording `ceiling` applied.
    pub(super) fn renewed(&self, epoch: u64, ceiling: i64) {
        let mut state = self.state();
        if let Some(grant) = &mut state.grant
            && grant.epoch == epoch
        {
            grant.ceiling = grant.ceiling.max(ceiling);
        }
    }

    /// The epoch and ceiling this source issues under, if any.
    pub fn grant(&self) -> Option<(u64, i64)> {
        self.state().grant.map(|grant| (grant.epoch, grant.ceiling))
    }

    /// A timestamp for a write of `epoch`: this node's clock, but above
    /// every one issued before (and the floor), and never above the
    /// ceiling. Refused, with nothing issued, when `epoch` is not the lease
    /// this source holds or its ceiling is used up (the lease was not
    /// renewed in time): a write then must land nothing, like one after its
    /// lease ran out.
    pub(super) fn next(&self, epoch: u64) -> Result<i64> {
        let mut state = self.state();
        let grant = match state.grant {
            Some(grant) if grant.epoch == epoch => grant,
            Some(grant) => {
                return Err(StoreError::Fenced(format!(
                    "this node's writer epoch {epoch} was superseded (its clock now serves epoch {})",
                    grant.epoch
                )));
            }
            None => {
                return Err(StoreError::Fenced(format!(
                    "this node holds no writer lease to take write timestamps of epoch {epoch} under"
                )));
            }
        };
        // A clock that ran past the ceiling (a jump forward) still gets
        // the microseconds below it, one at a time: order needs only
        // monotonic and bounded.
        let next = state.last.saturating_add(1);
        let mut at = (self.wall)().max(next);
        if at > grant.ceiling {
            at = next;
        }
        if at > grant.ceiling {
            return Err(StoreError::Fenced(format!(
                "writer epoch {epoch} used up the write timestamps its lease granted (up to {}): the lease was not renewed in time; retry",
                grant.ceiling
            )));
        }
        state.last = at;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    const SPAN: Duration = Duration::from_secs(10);
    const SPAN_US: i64 = 10_000_000;

    /// A source reading a clock the test sets.
    fn source(at: i64) -> (WriterClock, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(at));
        let read = Arc::clone(&now);
        (
            WriterClock::with_clock(move || read.load(Ordering::SeqCst)),
            now,
        )
    }

    #[test]
    fn nothing_is_issued_without_a_lease_or_for_another_epoch() {
        let (clock, _) = source(1_000);
        assert!(matches!(clock.next(1), Err(StoreError::Fenced(_))));
        let (floor, ceiling) = clock.claim_grant(None, SPAN);
        assert_eq!((floor, ceiling), (1_000, 1_000 + SPAN_US));
        clock.begin(3, floor, ceiling);
        assert!(matches!(clock.next(2), Err(StoreError::Fenced(_))));
        assert_eq!(clock.next(3).unwrap(), 1_001, "above the floor");
    }

    #[test]
    fn a_new_writer_behind_the_old_ones_clock_issues_above_its_floor() {
        // The old writer's clock ran an hour ahead: its ceiling is there.
        let old_ceiling = 3_600_000_000 + SPAN_US;
        let (clock, now) = source(5_000);
        let (floor, ceiling) = clock.claim_grant(Some(old_ceiling), SPAN);
        assert_eq!(floor, old_ceiling);
        assert_eq!(ceiling, old_ceiling + SPAN_US, "room for a whole span");
        clock.begin(2, floor, ceiling);
        let first = clock.next(2).unwrap();
        now.fetch_add(1_000, Ordering::SeqCst);
        let second = clock.next(2).unwrap();
        assert_eq!((first, second), (old_ceiling + 1, old_ceiling + 2));
        // A renewal while the clock is still behind extends from the last
        // timestamp, not from the clock.
        let renewal = clock.renewal_ceiling(SPAN);
        assert_eq!(renewal, ceiling.max(second + SPAN_US));
        clock.renewed(2, renewal);
        // Once the clock passes the floor, timestamps follow it.
        now.store(old_ceiling + 500, Ordering::SeqCst);
        assert_eq!(clock.next(2).unwrap(), old_ceiling + 500);
    }

    #[test]
    fn timestamps_never_pass_the_ceiling_and_never_go_back() {
        let (clock, now) = source(10);
        clock.begin(1, 10, 13);
        // The clock jumps far ahead: the microseconds left below the
        // ceiling are still used, in order.
        now.store(1_000_000, Ordering::SeqCst);
        assert_eq!(clock.next(1).unwrap(), 11);
        assert_eq!(clock.next(1).unwrap(), 12);
        assert_eq!(clock.next(1).unwrap(), 13);
        let refused = clock.next(1);
        assert!(
            matches!(refused, Err(StoreError::Fenced(ref m)) if m.contains("not renewed in time")),
            "{refused:?}"
        );
        // A renewal raises the ceiling; then the clock goes back: still
        // monotonic.
        clock.renewed(1, clock.renewal_ceiling(SPAN));
        assert_eq!(clock.next(1).unwrap(), 1_000_000);
        now.store(50, Ordering::SeqCst);
        assert_eq!(clock.next(1).unwrap(), 1_000_001);
    }

    #[test]
    fn ceilings_only_rise() {
        let (clock, now) = source(1_000_000);
        let (floor, ceiling) = clock.claim_grant(Some(0), SPAN);
        clock.begin(1, floor, ceiling);
        // The clock goes back: a renewal keeps the ceiling it had.
        now.store(0, Ordering::SeqCst);
        assert_eq!(clock.renewal_ceiling(SPAN), ceiling);
        clock.renewed(1, ceiling - 5);
        assert_eq!(clock.grant(), Some((1, ceiling)));
        // A renewal of another epoch (a generation that ended) is ignored.
        clock.renewed(7, ceiling + 5);
        assert_eq!(clock.grant(), Some((1, ceiling)));
    }

    #[test]
    fn winning_again_starts_above_the_floor_and_the_old_epoch_gets_nothing() {
        let (clock, _) = source(100);
        clock.begin(1, 100, 1_000);
        assert_eq!(clock.next(1).unwrap(), 101);
        // Another node held epoch 2 up to ceiling 5_000; this one wins 3.
        let (floor, ceiling) = clock.claim_grant(Some(5_000), SPAN);
        clock.begin(3, floor, ceiling);
        assert!(matches!(clock.next(1), Err(StoreError::Fenced(_))));
        assert_eq!(clock.next(3).unwrap(), 5_001);
    }

    #[test]
    fn the_unfenced_source_is_the_monotonic_wall_clock() {
        let clock = WriterClock::unbounded();
        let a = clock.next(UNFENCED).unwrap();
        let b = clock.next(UNFENCED).unwrap();
        assert!(b > a);
        assert!(a > 1_700_000_000_000_000, "microseconds since 1970");
    }
}
