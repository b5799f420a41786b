//! A store wrapper with the faults a real deployment sees, seeded so that a
//! failing run replays.
//!
//! - **Errors**: a share of calls (or the next N, scripted) fail with
//!   [`StoreError::Io`]. A failed write either writes nothing
//!   ([`Failure::Lost`], a request that never reached the store) or lands
//!   first ([`Failure::Applied`], the ScyllaDB timeout after the replicas
//!   applied it): callers must treat both as "not acknowledged".
//! - **Delays**: every commit waits a random time before it reaches the
//!   store, so writes become durable in another order than their seqs were
//!   allocated; every inbox read waits too, so writes start between a
//!   reader's limit and its read.
//! - **Out-of-order completion**: a share of commits is held back until a
//!   commit that started later has completed.
//! - **Aimed faults**: every commit an event predicate picks fails with a
//!   chosen error until cleared (one stuck event; a poisoned store).
//! - **Counters**: commits and inbox copies that reached the store, to
//!   check what a send costs, and the most inbox-copy bytes that were in
//!   flight at once, to check a memory bound.
//!
//! Random decisions come from one seeded generator, drawn in call order: the
//! same seed and the same order of calls (a current-thread runtime with a
//! paused clock) make the same decisions.

use crate::{
    Checkpoints, Conversation, ConversationRange, ConversationReads, Entry, EventCommit, EventLog,
    IdempotencyKey, InboxRange, InboxReads, InboxRetention, InboxTime, LargeGroupMembership,
    ReadReceipts, ReadStateRow, ReadStateSnapshot, ReadStates, ReaderMark, Receipt, Receipts,
    RecordedRevocation, Result, Revocation, Revocations, RevokedBefore, StoreError,
};
use async_trait::async_trait;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

mod passthrough;
#[cfg(test)]
mod tests;

/// How an injected failure of a write behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Failure {
    /// Nothing is written; the call fails.
    #[default]
    Lost,
    /// The write lands, then the call fails anyway.
    Applied,
}

/// Which calls a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `commit_event`.
    Commit,
    /// The other writes: `trim_inbox`, `save_checkpoint`.
    Write,
    /// Every read (and `recover`, which reads before it writes).
    Read,
}

const OPS: usize = 3;

impl Op {
    fn index(self) -> usize {
        match self {
            Op::Commit => 0,
            Op::Write => 1,
            Op::Read => 2,
        }
    }
}

/// Random faults; the default injects none.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Share of commits that fail (0.0 to 1.0).
    pub commit_errors: f64,
    /// Share of trims and checkpoint saves that fail.
    pub write_errors: f64,
    /// Share of reads that fail.
    pub read_errors: f64,
    /// Of the random write failures (commits included), the share that
    /// apply the write before failing ([`Failure::Applied`]).
    pub applied_share: f64,
    /// Each commit first waits a uniform random time below this.
    pub commit_delay: Duration,
    /// Each `read_inbox` first waits a uniform random time below this.
    pub inbox_read_delay: Duration,
    /// Share of commits held back until a later-started commit completed.
    pub held_commits: f64,
    /// The longest a commit is held (when no later commit completes), so
    /// that a lone commit is delayed, never stuck.
    pub max_hold: Duration,
}

/// What reached the inner store so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commits handed to the inner store (whatever it answered, and
    /// including [`Failure::Applied`] ones).
    pub commits: u64,
    /// Inbox copies in those commits.
    pub inbox_copies: u64,
    /// Calls failed by injection, of every kind.
    pub injected_failures: u64,
    /// Commits that were held back.
    pub held_commits: u64,
}

/// Wraps `S`, implementing every capability `S` has.
pub struct FaultyStore<S> {
    inner: S,
    seed: u64,
    state: Mutex<State>,
    commits: AtomicU64,
    inbox_copies: AtomicU64,
    injected_failures: AtomicU64,
    held_commits: AtomicU64,
    /// Tickets of started commits, in order; a held commit waits for a
    /// higher ticket to complete.
    next_ticket: AtomicU64,
    /// The highest ticket of a completed commit.
    completed: tokio::sync::watch::Sender<u64>,
    /// Payload bytes the inbox copies of the commits in flight store
    /// ([`crate::inbox_copy_payload_bytes`]), and the most there ever were.
    inflight_copy_bytes: AtomicU64,
    peak_inflight_copy_bytes: AtomicU64,
    /// Commits started and not yet answered or cancelled.
    commits_in_flight: AtomicU64,
}

/// An aimed fault: which commits fail, and how.
type CommitRule =
    std::sync::Arc<dyn Fn(&EventCommit) -> Option<StoreError> + Send + Sync + 'static>;

struct State {
    rng: SplitMix64,
    faults: Faults,
    /// Scripted failures left per op, consumed before random ones.
    scripted: [(u32, Failure); OPS],
    rule: Option<CommitRule>,
}

/// What one call will suffer, drawn at once so a call's draws stay
/// together in the sequence.
struct Plan {
    delay: Duration,
    hold: bool,
    random_failure: Option<Failure>,
}

impl<S> FaultyStore<S> {
    /// A wrapper injecting nothing until faults are configured.
    pub fn new(inner: S, seed: u64) -> Self {
        Self {
            inner,
            seed,
            state: Mutex::new(State {
                rng: SplitMix64(seed),
                faults: Faults::default(),
                scripted: [(0, Failure::Lost); OPS],
                rule: None,
            }),
            commits: AtomicU64::new(0),
            inbox_copies: AtomicU64::new(0),
            injected_failures: AtomicU64::new(0),
            held_commits: AtomicU64::new(0),
            next_ticket: AtomicU64::new(1),
            completed: tokio::sync::watch::Sender::new(0),
            inflight_copy_bytes: AtomicU64::new(0),
            peak_inflight_copy_bytes: AtomicU64::new(0),
            commits_in_flight: AtomicU64::new(0),
        }
    }

    pub fn with_faults(self, faults: Faults) -> Self {
        self.set_faults(faults);
        self
    }

    /// Replaces the random faults (e.g. to stop injecting before checking).
    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    /// The next `n` calls of `op` that reach the store fail `how`
    /// (replacing what was scripted for `op` before).
    pub fn fail_next(&self, op: Op, n: u32, how: Failure) {
        self.state().scripted[op.index()] = (n, how);
    }

    /// The next `n` commits fail, writing nothing.
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_next(Op::Commit, n, Failure::Lost);
    }

    /// Every later commit for which `matches` holds fails with `error()`,
    /// writing nothing, until [`FaultyStore::clear_aimed_fault`]: a write
    /// that keeps failing for one event, or for all of them.
    pub fn fail_commits_where(
        &self,
        matches: impl Fn(&EventCommit) -> bool + Send + Sync + 'static,
        error: impl Fn() -> StoreError + Send + Sync + 'static,
    ) {
        self.state().rule = Some(std::sync::Arc::new(move |commit: &EventCommit| {
            matches(commit).then(&error)
        }));
    }

    /// Lets the commits [`FaultyStore::fail_commits_where`] picked through.
    pub fn clear_aimed_fault(&self) {
        self.state().rule = None;
    }

    /// The most text bytes times inbox copies that were inside
    /// `commit_event` at once (what a backend that stores a copy of the
    /// entry per inbox row holds for them).
    /// Commits started and not yet answered.
    pub fn commits_in_flight(&self) -> u64 {
        self.commits_in_flight.load(Ordering::SeqCst)
    }

    pub fn peak_inflight_copy_bytes(&self) -> u64 {
        self.peak_inflight_copy_bytes.load(Ordering::SeqCst)
    }

    pub fn counters(&self) -> Counters {
        Counters {
            commits: self.commits.load(Ordering::SeqCst),
            inbox_copies: self.inbox_copies.load(Ordering::SeqCst),
            injected_failures: self.injected_failures.load(Ordering::SeqCst),
            held_commits: self.held_commits.load(Ordering::SeqCst),
        }
    }

    /// The seed, to print with a failure so the run can be replayed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A std mutex: held for a few draws, never across an await.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn plan(&self, op: Op) -> Plan {
        let mut state = self.state();
        let State { rng, faults, .. } = &mut *state;
        let (error_rate, max_delay) = match op {
            Op::Commit => (faults.commit_errors, faults.commit_delay),
            Op::Write => (faults.write_errors, Duration::ZERO),
            Op::Read => (faults.read_errors, Duration::ZERO),
        };
        let delay = rng.below(max_delay);
        let hold = op == Op::Commit && rng.chance(faults.held_commits);
        let random_failure = rng.chance(error_rate).then(|| {
            if op != Op::Read && rng.chance(faults.applied_share) {
                Failure::Applied
            } else {
                Failure::Lost
            }
        });
        Plan {
            delay,
            hold,
            random_failure,
        }
    }

    /// Consumes a scripted failure if one is left, else takes the random
    /// one: decided when the call reaches the store, after its delay.
    fn failure(&self, op: Op, random: Option<Failure>) -> Option<Failure> {
        let mut state = self.state();
        let (left, how) = &mut state.scripted[op.index()];
        let failure = if *left > 0 {
            *left -= 1;
            Some(*how)
        } else {
            random
        };
        if failure.is_some() {
            self.injected_failures.fetch_add(1, Ordering::SeqCst);
        }
        failure
    }

    /// Runs `call` as `op` under the planned faults.
    async fn run<T>(&self, op: Op, call: impl Future<Output = Result<T>>) -> Result<T> {
        let plan = self.plan(op);
        sleep(plan.delay).await;
        match self.failure(op, plan.random_failure) {
            None => call.await,
            Some(Failure::Lost) => Err(injected(op)),
            Some(Failure::Applied) => {
                let _ = call.await;
                Err(injected(op))
            }
        }
    }

    async fn sleep_inbox_read(&self) {
        let delay = {
            let mut state = self.state();
            let max = state.faults.inbox_read_delay;
            state.rng.below(max)
        };
        sleep(delay).await;
    }

    async fn hold(&self, ticket: u64) {
        self.held_commits.fetch_add(1, Ordering::SeqCst);
        let max_hold = self.state().faults.max_hold;
        let mut completed = self.completed.subscribe();
        let later = completed.wait_for(|&highest| highest > ticket);
        let _ = tokio::time::timeout(max_hold, later).await;
    }
}

fn injected(op: Op) -> StoreError {
    StoreError::Io(format!("injected failure of a {op:?}").to_lowercase())
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// splitmix64: small, fast, and good enough to spread faults; no
/// dependency, and a seed fully determines the sequence (seeded tests that
/// drive a `FaultyStore` use the same generator).
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p` (never for `p <= 0`, always for `p >= 1`).
    fn chance(&mut self, p: f64) -> bool {
        // 53 random bits: a uniform f64 in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    /// A uniform duration in `[0, max)` at microsecond resolution.
    fn below(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros() as u64;
        if micros == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next_u64() % micros)
    }
}

/// Counts one call in flight until it returns or is cancelled.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
