//! The sync horizon: which prefix of a timeline is safe to show.
//!
//! Seqs are allocated in one order and become visible in another: seq 9 can
//! be stored before seq 8. A device that synced then and advanced its
//! checkpoint to 9 would never fetch 8 (OpenIM #320). So reads expose only
//! seqs at or below a **safe limit**, below which nothing is still in flight
//! and nothing new can appear.
//!
//! The safe limit is the minimum of two bounds, taken in this order:
//! 1. the allocator's current seq for the id ([`seqsvc::Allocator::current`]),
//!    read *first*: every later allocation lands above it, so writes that
//!    start after the read cannot open a hole below the limit;
//! 2. this module's **in-flight limit**, read *second*: no write that
//!    allocated before step 1 is still unfinished below it.
//!
//! (The in-flight limit alone is not enough: with nothing in flight it is
//! unbounded, and two writes that start right after it was read could land
//! 9-before-8 while the reader is still reading.)
//!
//! A writer takes a [`Reservation`] *before* it allocates. Until the
//! allocation is known, the reservation holds the in-flight limit at its
//! **floor**: the highest seq registered for the key when it was taken. That
//! is safe because the allocator is linearizable per id: an allocation that
//! starts after the reservation returns a seq above every seq registered
//! before it. Once seqs are known, [`Reservation::assign`] turns the floors
//! into **pending** seqs, each holding the limit just below itself until
//! [`Assignment::complete`] reports it durable. Dropping a reservation or an
//! assignment without completing releases it (the write failed: a gap).
//!
//! Each key written in this run keeps 24 bytes (its highest registered and
//! durable seqs, so a new reservation's floor is exact) plus a heap block only
//! while writes are in flight: the same order of memory as the allocator's
//! `cur_seq` per id. Member ids are chosen by clients, so the keys kept are
//! bounded ([`MAX_HORIZON_KEYS`]): beyond it, settled keys (nothing in
//! flight) are forgotten. That is safe because a settled key's state only
//! serves as the next reservation's floor, and the writer primes a key it
//! does not know from the allocator before reserving ([`Horizon::unprimed`]);
//! a key forgotten between priming and reserving gets floor 0, which hides
//! more, never less. Keys with writes in flight are never forgotten. One process only: several syncd processes writing the
//! same user need a shared horizon (or per-user write ordering), which this
//! does not provide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Told of the keys whose safe limit a released write may have raised,
/// with the limit now (see [`Horizon::on_release`]).
pub type ReleaseHook = Box<dyn Fn(&[(Key, u64)]) + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Inbox,
    Conversation,
}

pub type Key = (Scope, u64);

const SHARDS: usize = 64;

/// Keys remembered per horizon (about 48 bytes each with the map's
/// overhead, so about 48 MiB): far more than the users written in one
/// re-prime interval, so forgetting costs one allocator read per
/// returning key, not one per write.
pub const MAX_HORIZON_KEYS: usize = 1_000_000;

pub struct Horizon {
    shards: [Mutex<HashMap<Key, KeyState>>; SHARDS],
    /// Keys per shard beyond which settled ones are forgotten.
    shard_limit: usize,
    on_release: OnceLock<ReleaseHook>,
}

impl Default for Horizon {
    fn default() -> Self {
        Self::with_key_limit(MAX_HORIZON_KEYS)
    }
}

#[derive(Default)]
struct KeyState {
    max_registered: u64,
    max_durable: u64,
    in_flight: Option<Box<InFlight>>,
}

#[derive(Default)]
struct InFlight {
    /// Floors of reservations whose seqs are not known yet (a multiset).
    floors: Vec<u64>,
    /// Seqs allocated but not yet durable.
    pending: Vec<u64>,
}

impl KeyState {
    fn limit(&self) -> u64 {
        let Some(in_flight) = &self.in_flight else {
            return u64::MAX;
        };
        let floors = in_flight.floors.iter().copied();
        let below_pending = in_flight.pending.iter().map(|&seq| seq - 1);
        floors.chain(below_pending).min().unwrap_or(u64::MAX)
    }

    fn in_flight(&mut self) -> &mut InFlight {
        self.in_flight.get_or_insert_with(Box::default)
    }

    /// The highest seq safe to announce, when anything is durable.
    fn announceable(&self) -> Option<u64> {
        (self.max_durable > 0).then(|| self.limit().min(self.max_durable))
    }

    /// Frees the in-flight block once nothing is in flight.
    fn settle(&mut self) {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.floors.is_empty() && f.pending.is_empty())
        {
            self.in_flight = None;
        }
    }
}

fn remove_one(values: &mut Vec<u64>, value: u64) {
    if let Some(at) = values.iter().position(|&v| v == value) {
        values.swap_remove(at);
    }
}

impl Horizon {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A horizon remembering about `limit` keys (more only while that many
    /// have writes in flight).
    pub fn with_key_limit(limit: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            shard_limit: limit.div_ceil(SHARDS).max(1),
            on_release: OnceLock::new(),
        }
    }

    /// Calls `hook` whenever a write is released without completing (it
    /// failed: its seqs become gaps), with the safe limit of its keys
    /// now. A later write that completed while this one was in flight was
    /// announced only up to below it; without this, nothing would announce
    /// it until the key's next write. Set once.
    pub fn on_release(&self, hook: ReleaseHook) {
        let _ = self.on_release.set(hook);
    }

    /// Calls the release hook with `visible` (each key's limit taken under
    /// its shard's lock, as the write let go of it: a key settled by the
    /// release may be forgotten before the hook could look again); called
    /// with no shard held.
    fn released(&self, visible: Vec<(Key, u64)>) {
        if let Some(hook) = self.on_release.get()
            && !visible.is_empty()
        {
            hook(&visible);
        }
    }

    /// Keys remembered now.
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// The key's state, created if new; a full shard first forgets settled
    /// keys down to three quarters of its limit (so the scan runs once per
    /// quarter of the limit of new keys).
    fn entry<'a>(&self, shard: &'a mut HashMap<Key, KeyState>, key: Key) -> &'a mut KeyState {
        if shard.len() >= self.shard_limit && !shard.contains_key(&key) {
            let mut excess = shard.len() - (self.shard_limit - self.shard_limit / 4);
            shard.retain(|_, state| {
                if excess > 0 && state.in_flight.is_none() {
                    excess -= 1;
                    return false;
                }
                true
            });
        }
        shard.entry(key).or_default()
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, HashMap<Key, KeyState>> {
        let index = (key.1 as usize)
            .wrapping_mul(31)
            .wrapping_add(key.0 as usize)
            % SHARDS;
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The in-flight limit: no write to `key` whose allocation finished
    /// before this call is still unfinished at or below it (`u64::MAX` when
    /// nothing is in flight). Combine with the allocator's current seq, read
    /// before this call, to get the safe limit (see [`safe_limit`]).
    pub fn in_flight_limit(&self, key: Key) -> u64 {
        self.shard(&key).get(&key).map_or(u64::MAX, KeyState::limit)
    }

    /// The keys whose highest allocated seq this horizon does not know yet
    /// (none registered in this run): a reservation on them could only
    /// take floor 0, which would hide the whole timeline from readers until
    /// its allocation returns. Prime them first.
    pub fn unprimed(&self, keys: &[Key]) -> Vec<Key> {
        keys.iter()
            .copied()
            .filter(|key| {
                self.shard(key)
                    .get(key)
                    .is_none_or(|state| state.max_registered == 0)
            })
            .collect()
    }

    /// Records that `seq` (the allocator's current seq for the key, read
    /// before any allocation this caller makes) is allocated, so later
    /// reservations take it as their floor. Never lowers what is known.
    pub fn prime(&self, key: Key, seq: u64) {
        let mut shard = self.shard(&key);
        let state = self.entry(&mut shard, key);
        state.max_registered = state.max_registered.max(seq);
    }

    /// Announces writes to `keys` (one seq each) before their allocation.
    pub fn reserve(self: &Arc<Self>, keys: Vec<Key>) -> Reservation {
        let floors = keys
            .iter()
            .map(|key| {
                let mut shard = self.shard(key);
                let state = self.entry(&mut shard, *key);
                let floor = state.max_registered;
                state.in_flight().floors.push(floor);
                floor
            })
            .collect();
        Reservation {
            horizon: Arc::clone(self),
            keys,
            floors,
            in_flight: Some(InFlightEvent::new()),
        }
    }
}

/// One event between its reservation and its completion (or release):
/// `syncd_horizon_inflight_events` while it lives, and its age at
/// completion in `syncd_horizon_lag_seconds` (how long the horizon kept
/// its seqs, and every later one of its keys, from readers).
struct InFlightEvent {
    reserved_at: std::time::Instant,
}

impl InFlightEvent {
    fn new() -> Self {
        metrics::gauge!("syncd_horizon_inflight_events").increment(1.0);
        Self {
            reserved_at: std::time::Instant::now(),
        }
    }

    fn completed(&self) {
        metrics::histogram!("syncd_horizon_lag_seconds")
            .record(self.reserved_at.elapsed().as_secs_f64());
    }
}

impl Drop for InFlightEvent {
    fn drop(&mut self) {
        metrics::gauge!("syncd_horizon_inflight_events").decrement(1.0);
    }
}

/// The highest seq of a key that is safe to read, given `allocated_before`:
/// the allocator's current seq for the key, read before calling this.
pub fn safe_limit(horizon: &Horizon, key: Key, allocated_before: u64) -> u64 {
    horizon.in_flight_limit(key).min(allocated_before)
}

/// Writes announced, seqs not yet known.
pub struct Reservation {
    horizon: Arc<Horizon>,
    keys: Vec<Key>,
    floors: Vec<u64>,
    /// Moves to the assignment (`Reservation` has a `Drop`).
    in_flight: Option<InFlightEvent>,
}

impl Reservation {
    /// Records the allocated seqs (`seqs[i]` for the i-th key). Panics if the
    /// lengths differ: that is a bug in the caller.
    pub fn assign(mut self, seqs: Vec<u64>) -> Assignment {
        assert_eq!(seqs.len(), self.keys.len(), "one seq per reserved key");
        let keys = std::mem::take(&mut self.keys);
        let floors = std::mem::take(&mut self.floors);
        for ((key, floor), &seq) in keys.iter().zip(floors).zip(&seqs) {
            let mut shard = self.horizon.shard(key);
            let state = shard.entry(*key).or_default();
            let in_flight = state.in_flight();
            remove_one(&mut in_flight.floors, floor);
            in_flight.pending.push(seq);
            state.max_registered = state.max_registered.max(seq);
        }
        Assignment {
            horizon: Arc::clone(&self.horizon),
            keys,
            seqs,
            in_flight: self
                .in_flight
                .take()
                .expect("a reservation is assigned at most once"),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Empty once assigned: only a reservation released unallocated
        // reports anything.
        let mut visible = Vec::new();
        for (key, &floor) in self.keys.iter().zip(&self.floors) {
            let mut shard = self.horizon.shard(key);
            if let Some(state) = shard.get_mut(key) {
                remove_one(&mut state.in_flight().floors, floor);
                state.settle();
                visible.extend(state.announceable().map(|top| (*key, top)));
            }
        }
        self.horizon.released(visible);
    }
}

/// Seqs allocated, writes not yet durable.
pub struct Assignment {
    horizon: Arc<Horizon>,
    keys: Vec<Key>,
    seqs: Vec<u64>,
    in_flight: InFlightEvent,
}

impl Assignment {
    /// Marks every seq durable. Returns, per key, the highest seq now safe
    /// to announce to subscribers (it may be below this write's seq while an
    /// earlier write to the same key is still in flight).
    pub fn complete(mut self) -> Vec<(Key, u64)> {
        self.in_flight.completed();
        let keys = std::mem::take(&mut self.keys);
        let seqs = std::mem::take(&mut self.seqs);
        keys.into_iter()
            .zip(seqs)
            .map(|(key, seq)| {
                let mut shard = self.horizon.shard(&key);
                let state = shard.entry(key).or_default();
                remove_one(&mut state.in_flight().pending, seq);
                state.settle();
                state.max_durable = state.max_durable.max(seq);
                (key, state.limit().min(state.max_durable))
            })
            .collect()
    }
}

impl Drop for Assignment {
    fn drop(&mut self) {
        // Empty once completed: only an assignment released unfinished
        // reports anything.
        let mut visible = Vec::new();
        for (key, &seq) in self.keys.iter().zip(&self.seqs) {
            let mut shard = self.horizon.shard(key);
            if let Some(state) = shard.get_mut(key) {
                remove_one(&mut state.in_flight().pending, seq);
                state.settle();
                visible.extend(state.announceable().map(|top| (*key, top)));
            }
        }
        self.horizon.released(visible);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqsvc::{Allocator, AllocatorConfig, MemoryMaxSeqStore, Namespace};
    use std::collections::BTreeSet;

    const ALICE: Key = (Scope::Inbox, 1);

    #[test]
    fn a_later_seq_stays_hidden_until_the_earlier_one_is_durable() {
        let horizon = Horizon::new();
        let first = horizon.reserve(vec![ALICE]).assign(vec![8]);
        let second = horizon.reserve(vec![ALICE]).assign(vec![9]);
        assert_eq!(horizon.in_flight_limit(ALICE), 7);
        assert_eq!(
            second.complete(),
            vec![(ALICE, 7)],
            "9 is durable but 8 is not"
        );
        assert_eq!(horizon.in_flight_limit(ALICE), 7);
        assert_eq!(first.complete(), vec![(ALICE, 9)]);
        assert_eq!(horizon.in_flight_limit(ALICE), u64::MAX);
    }

    /// A write that completed behind a failed one is announced when the
    /// failed one is released, not only at the key's next write.
    #[test]
    fn releasing_a_failed_write_announces_what_it_held_back() {
        let horizon = Horizon::new();
        let told: Arc<Mutex<Vec<(Key, u64)>>> = Arc::default();
        let sink = Arc::clone(&told);
        horizon.on_release(Box::new(move |visible| {
            sink.lock().unwrap().extend_from_slice(visible)
        }));
        let failing = horizon.reserve(vec![ALICE]).assign(vec![7]);
        let unallocated = horizon.reserve(vec![ALICE]);
        assert_eq!(
            horizon.reserve(vec![ALICE]).assign(vec![8]).complete(),
            vec![(ALICE, 6)]
        );
        assert!(
            told.lock().unwrap().is_empty(),
            "a completed write is no release"
        );
        drop(failing);
        assert_eq!(
            *told.lock().unwrap(),
            vec![(ALICE, 7)],
            "8 is still held by the unallocated reservation's floor"
        );
        drop(unallocated);
        assert_eq!(told.lock().unwrap().last(), Some(&(ALICE, 8)));
    }

    #[test]
    fn an_unallocated_reservation_holds_the_limit_at_its_floor() {
        let horizon = Horizon::new();
        let earlier = horizon.reserve(vec![ALICE]).assign(vec![5]);
        let unknown = horizon.reserve(vec![ALICE]);
        // The unknown allocation may return anything above 5.
        assert_eq!(horizon.in_flight_limit(ALICE), 4);
        earlier.complete();
        assert_eq!(horizon.in_flight_limit(ALICE), 5);
        let late = unknown.assign(vec![6]);
        assert_eq!(horizon.in_flight_limit(ALICE), 5);
        late.complete();
        assert_eq!(horizon.in_flight_limit(ALICE), u64::MAX);
    }

    /// Writes to arbitrary ids must not grow the horizon forever; a key
    /// with a write in flight keeps its state, and a forgotten one asks to
    /// be primed again (so its next floor is the allocator's, not 0).
    #[test]
    fn settled_keys_beyond_the_limit_are_forgotten_in_flight_ones_kept() {
        let limit = SHARDS * 4;
        let horizon = Arc::new(Horizon::with_key_limit(limit));
        horizon.prime(ALICE, 4);
        let held = horizon.reserve(vec![ALICE]).assign(vec![5]);
        for user in 100..10_100u64 {
            let key = (Scope::Inbox, user);
            horizon.prime(key, 7);
            horizon.reserve(vec![key]).assign(vec![8]).complete();
        }
        let tracked = horizon.tracked_keys();
        assert!(tracked <= limit, "{tracked} keys kept, limit {limit}");
        assert_eq!(
            horizon.in_flight_limit(ALICE),
            4,
            "the write in flight still holds"
        );
        assert_eq!(held.complete(), vec![(ALICE, 5)]);
        let written: Vec<Key> = (100..10_100u64).map(|u| (Scope::Inbox, u)).collect();
        let forgotten = horizon.unprimed(&written);
        assert!(
            forgotten.len() >= written.len() - limit,
            "{}",
            forgotten.len()
        );
        assert!(
            forgotten
                .iter()
                .all(|&k| horizon.in_flight_limit(k) == u64::MAX)
        );
    }

    #[test]
    fn failed_writes_release_the_horizon() {
        let horizon = Horizon::new();
        drop(horizon.reserve(vec![ALICE, (Scope::Conversation, 1)]));
        assert_eq!(horizon.in_flight_limit(ALICE), u64::MAX);
        let failed = horizon.reserve(vec![ALICE]).assign(vec![3]);
        assert_eq!(horizon.in_flight_limit(ALICE), 2);
        drop(failed);
        assert_eq!(horizon.in_flight_limit(ALICE), u64::MAX);
        let in_flight_blocks = horizon
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap()
                    .values()
                    .map(|k| k.in_flight.is_some())
                    .collect::<Vec<_>>()
            })
            .filter(|&b| b)
            .count();
        assert_eq!(in_flight_blocks, 0, "no in-flight state left behind");
    }

    /// Many writers allocate from a real allocator and "store" in random
    /// order (making each write visible *before* completing it, as a store's
    /// memtable does) while a reader repeatedly reads everything at or below
    /// the safe limit: what it sees must always be exactly 1..=n, never a set
    /// with a hole that a later write fills.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_only_ever_see_complete_prefixes() {
        let horizon = Horizon::new();
        let allocator = Allocator::new(
            AllocatorConfig {
                step: 7,
                section_size: 4,
            },
            Arc::new(MemoryMaxSeqStore::new()),
        )
        .unwrap();
        let durable: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (horizon, durable, done) = (horizon.clone(), durable.clone(), done.clone());
            let allocator = allocator.clone();
            tokio::spawn(async move {
                let mut reads = 0u64;
                let mut highest_seen = 0;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let allocated = allocator.current(Namespace::Inbox, ALICE.1).await.unwrap();
                    let limit = safe_limit(&horizon, ALICE, allocated);
                    // Let writers start between the limit and the read.
                    tokio::task::yield_now().await;
                    let seen: Vec<u64> = durable.lock().unwrap().range(..=limit).copied().collect();
                    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
                    assert_eq!(seen, expected, "hole below limit {limit}");
                    assert!(seen.len() as u64 >= highest_seen, "visible prefix shrank");
                    highest_seen = seen.len() as u64;
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        };
        let writers: Vec<_> = (0..16u64)
            .map(|w| {
                let (horizon, allocator, durable) =
                    (horizon.clone(), allocator.clone(), durable.clone());
                tokio::spawn(async move {
                    for i in 0..200u64 {
                        let reservation = horizon.reserve(vec![ALICE]);
                        let seq = allocator.next(Namespace::Inbox, ALICE.1).await.unwrap();
                        let assignment = reservation.assign(vec![seq]);
                        // Writes take uneven time, so completion order shuffles.
                        for _ in 0..((w * 7 + i * 13) % 5) {
                            tokio::task::yield_now().await;
                        }
                        durable.lock().unwrap().insert(seq);
                        assignment.complete();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        assert!(reader.await.unwrap() > 0);
        assert_eq!(horizon.in_flight_limit(ALICE), u64::MAX);
        assert_eq!(durable.lock().unwrap().len(), 16 * 200);
    }
}
