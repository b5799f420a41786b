//! The allocator core: `cur_seq` per id in memory, `max_seq` per section
//! persisted in steps before any seq under it is handed out.
//!
//! Locking: each loaded section has a `std` mutex over its in-memory state
//! (held only for map updates, never across an await) and an async `raise`
//! mutex so that one task at a time persists a new `max_seq` while others
//! wait for it instead of issuing their own write.

use crate::store::MaxSeqStore;
use crate::{Namespace, Result, SeqError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Most ids accepted by one batch call; larger fanouts split their batches.
pub const MAX_BATCH_IDS: usize = 65_536;

const SHARD_COUNT: usize = 64;

#[derive(Clone, Debug)]
pub struct AllocatorConfig {
    /// How far `max_seq` moves per persisted raise (WeChat uses 10,000).
    pub step: u64,
    /// Adjacent ids sharing one persisted `max_seq`.
    pub section_size: u64,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            step: 10_000,
            section_size: 100_000,
        }
    }
}

impl AllocatorConfig {
    pub fn validate(&self) -> Result<()> {
        if self.step == 0 {
            return Err(SeqError::InvalidArgument("step must be at least 1".into()));
        }
        if self.section_size == 0 {
            return Err(SeqError::InvalidArgument(
                "section_size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A cheap-to-clone handle to one allocator.
#[derive(Clone)]
pub struct Allocator {
    inner: Arc<Inner>,
}

struct Inner {
    config: AllocatorConfig,
    store: Arc<dyn MaxSeqStore>,
    shards: Vec<Mutex<SectionMap>>,
}

/// Loaded sections by (namespace, section index).
type SectionMap = HashMap<(Namespace, u64), Arc<Section>>;

struct Section {
    namespace: Namespace,
    index: u64,
    state: Mutex<SectionState>,
    raise: tokio::sync::Mutex<()>,
    prefetching: AtomicBool,
}

struct SectionState {
    /// Durable upper bound: nothing above it may be handed out.
    max_seq: u64,
    /// `max_seq` as loaded at startup: every seq issued by an earlier run is
    /// at or below it, so an id first seen in this run starts above it.
    floor: u64,
    /// Last seq handed out per id in this run.
    cur: HashMap<u64, u64>,
    /// Highest seq handed out in this section in this run (drives prefetch).
    highest: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps half-updated in a
    // way that breaks monotonicity (updates are single inserts), so recover.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Allocator {
    pub fn new(config: AllocatorConfig, store: Arc<dyn MaxSeqStore>) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                shards: (0..SHARD_COUNT)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect(),
            }),
        })
    }

    pub fn config(&self) -> &AllocatorConfig {
        &self.inner.config
    }

    /// The section an id belongs to.
    pub fn section_of(&self, id: u64) -> u64 {
        id / self.inner.config.section_size
    }

    /// The highest seq handed out for `id` so far, counting every earlier
    /// run as having used everything up to the section's persisted
    /// `max_seq` at load. Linearizable with allocation: a seq allocated after
    /// this returns is above the value returned, and every seq allocated
    /// before it is at or below it.
    pub async fn current(&self, namespace: Namespace, id: u64) -> Result<u64> {
        let section = self.section(namespace, self.section_of(id)).await?;
        let state = lock(&section.state);
        Ok(state.cur.get(&id).copied().unwrap_or(state.floor))
    }

    /// Allocates the next seq of one id.
    pub async fn next(&self, namespace: Namespace, id: u64) -> Result<u64> {
        Ok(self.next_batch(namespace, &[id]).await?[0])
    }

    /// Allocates one seq per listed id; `result[i]` belongs to `ids[i]`. An id
    /// listed twice gets two increasing seqs, in list order.
    pub async fn next_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
        if ids.len() > MAX_BATCH_IDS {
            return Err(SeqError::InvalidArgument(format!(
                "{} ids in one batch, at most {MAX_BATCH_IDS}",
                ids.len()
            )));
        }
        let mut order: Vec<(u64, usize)> = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| (self.section_of(id), i))
            .collect();
        order.sort_unstable();
        let mut out = vec![0u64; ids.len()];
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let section = self.section(namespace, group[0].0).await?;
            self.allocate_in_section(&section, ids, group, &mut out)
                .await?;
        }
        Ok(out)
    }

    async fn allocate_in_section(
        &self,
        section: &Arc<Section>,
        ids: &[u64],
        group: &[(u64, usize)],
        out: &mut [u64],
    ) -> Result<()> {
        loop {
            let needed = {
                let mut state = lock(&section.state);
                let mut tentative: HashMap<u64, u64> = HashMap::new();
                let mut needed = 0u64;
                for &(_, i) in group {
                    let id = ids[i];
                    let last = tentative
                        .get(&id)
                        .or_else(|| state.cur.get(&id))
                        .copied()
                        .unwrap_or(state.floor);
                    let next = last.checked_add(1).ok_or(SeqError::Exhausted {
                        namespace: section.namespace,
                        id,
                    })?;
                    tentative.insert(id, next);
                    out[i] = next;
                    needed = needed.max(next);
                }
                if needed <= state.max_seq {
                    state.highest = state.highest.max(needed);
                    state.cur.extend(tentative);
                    let headroom = state.max_seq - state.highest;
                    drop(state);
                    if headroom < self.inner.config.step / 2 {
                        self.prefetch(section);
                    }
                    return Ok(());
                }
                needed
            };
            self.raise_to(section, needed, None).await?;
        }
    }

    /// Persists a `max_seq` of at least `needed`: `exact` when given, else
    /// the current value moved up in whole steps.
    async fn raise_to(&self, section: &Section, needed: u64, exact: Option<u64>) -> Result<()> {
        let _raising = section.raise.lock().await;
        let current = lock(&section.state).max_seq;
        if current >= needed {
            return Ok(());
        }
        let step = self.inner.config.step;
        let steps = (needed - current).div_ceil(step);
        let target = exact.unwrap_or_else(|| current.saturating_add(steps.saturating_mul(step)));
        let stored = self
            .inner
            .store
            .raise(section.namespace, section.index, target)
            .await?;
        let mut state = lock(&section.state);
        state.max_seq = state.max_seq.max(stored);
        Ok(())
    }

    /// Raises `max_seq` in the background when less than half a step is left,
    /// so busy sections rarely wait for the store (Leaf's double buffer). The
    /// target is one step above the highest seq issued, never more, so a
    /// restart still jumps by at most one step.
    fn prefetch(&self, section: &Arc<Section>) {
        if section.prefetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            section.prefetching.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        let section = Arc::clone(section);
        runtime.spawn(async move {
            let (needed, target) = {
                let state = lock(&section.state);
                (state.max_seq.saturating_add(1), state.highest.saturating_add(this.inner.config.step))
            };
            if let Err(error) = this.raise_to(&section, needed, Some(target.max(needed))).await {
                tracing::warn!(%error, namespace = ?section.namespace, section = section.index, "max_seq prefetch failed");
            }
            section.prefetching.store(false, Ordering::Release);
        });
    }

    async fn section(&self, namespace: Namespace, index: u64) -> Result<Arc<Section>> {
        let shard = &self.inner.shards[(index as usize ^ namespace.code() as usize) % SHARD_COUNT];
        if let Some(section) = lock(shard).get(&(namespace, index)) {
            return Ok(Arc::clone(section));
        }
        let max_seq = self.inner.store.load(namespace, index).await?;
        let mut sections = lock(shard);
        // Another task may have loaded it meanwhile and already allocated;
        // its state wins, ours is dropped.
        let section = sections.entry((namespace, index)).or_insert_with(|| {
            Arc::new(Section {
                namespace,
                index,
                state: Mutex::new(SectionState {
                    max_seq,
                    floor: max_seq,
                    cur: HashMap::new(),
                    highest: max_seq,
                }),
                raise: tokio::sync::Mutex::new(()),
                prefetching: AtomicBool::new(false),
            })
        });
        Ok(Arc::clone(section))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FjallMaxSeqStore, MemoryMaxSeqStore};

    fn small(step: u64, section_size: u64) -> AllocatorConfig {
        AllocatorConfig { step, section_size }
    }

    #[tokio::test]
    async fn seqs_increase_per_id_and_persist_in_steps() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let alloc = Allocator::new(small(100, 10), store.clone()).unwrap();
        for expected in 1..=250u64 {
            assert_eq!(alloc.next(Namespace::Inbox, 3).await.unwrap(), expected);
        }
        // Ids 0..10 share section 0, whose max_seq covers everything issued.
        assert!(store.stored(Namespace::Inbox, 0) >= 250);
        // 250 seqs at step 100: three raises (prefetch may add one more).
        assert!(store.raise_count() <= 4, "raises: {}", store.raise_count());
        // Other namespaces and ids are independent.
        assert_eq!(alloc.next(Namespace::Conversation, 3).await.unwrap(), 1);
        assert_eq!(alloc.next(Namespace::Inbox, 4).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn current_tracks_allocations_and_restarts() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let alloc = Allocator::new(small(10, 4), store.clone()).unwrap();
        assert_eq!(alloc.current(Namespace::Inbox, 1).await.unwrap(), 0);
        alloc
            .next_batch(Namespace::Inbox, &[1, 1, 2])
            .await
            .unwrap();
        assert_eq!(alloc.current(Namespace::Inbox, 1).await.unwrap(), 2);
        assert_eq!(alloc.current(Namespace::Inbox, 2).await.unwrap(), 1);
        // A new run counts everything below the persisted max_seq as used.
        let restarted = Allocator::new(small(10, 4), store.clone()).unwrap();
        let floor = store.stored(Namespace::Inbox, 0);
        assert_eq!(restarted.current(Namespace::Inbox, 3).await.unwrap(), floor);
        assert_eq!(
            restarted.next(Namespace::Inbox, 3).await.unwrap(),
            floor + 1
        );
    }

    #[tokio::test]
    async fn batch_with_repeats_and_many_sections() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let alloc = Allocator::new(small(10, 2), store.clone()).unwrap();
        let ids = [5, 1, 5, 100, 5, 1];
        let seqs = alloc.next_batch(Namespace::Inbox, &ids).await.unwrap();
        assert_eq!(seqs, vec![1, 1, 2, 1, 3, 2]);
        for (&id, &seq) in ids.iter().zip(&seqs) {
            assert!(seq <= store.stored(Namespace::Inbox, id / 2));
        }
        // A batch larger than a step raises by several steps at once.
        let many = vec![7u64; 35];
        let seqs = alloc.next_batch(Namespace::Inbox, &many).await.unwrap();
        assert_eq!(seqs, (1..=35).collect::<Vec<_>>());
        assert!(store.stored(Namespace::Inbox, 3) >= 35);
    }

    #[tokio::test]
    async fn oversized_batch_is_rejected() {
        let alloc = Allocator::new(small(10, 2), Arc::new(MemoryMaxSeqStore::new())).unwrap();
        let ids = vec![1u64; MAX_BATCH_IDS + 1];
        assert!(matches!(
            alloc.next_batch(Namespace::Inbox, &ids).await,
            Err(SeqError::InvalidArgument(_))
        ));
    }

    #[test]
    fn restart_resumes_above_every_issued_seq_within_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for run in 0..3 {
            // A runtime per run: dropping it ends every task (prefetches
            // included) at once, like a crash.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            last = runtime.block_on(async {
                let store = Arc::new(FjallMaxSeqStore::open(dir.path()).unwrap());
                let alloc = Allocator::new(small(50, 10), store).unwrap();
                let first = alloc.next(Namespace::Inbox, 9).await.unwrap();
                assert!(first > last, "run {run}: {first} after {last}");
                assert!(
                    first - last <= 50 + 1,
                    "run {run}: jumped from {last} to {first}"
                );
                let mut newest = first;
                for _ in 0..70 {
                    newest = alloc.next(Namespace::Inbox, 9).await.unwrap();
                }
                newest
            });
            drop(runtime);
        }
    }

    #[tokio::test]
    async fn store_failure_is_an_error_and_hands_out_nothing_above_stored() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let alloc = Allocator::new(small(10, 100), store.clone()).unwrap();
        for _ in 0..4 {
            alloc.next(Namespace::Inbox, 1).await.unwrap();
        }
        // Let any prefetch settle, then make every raise fail.
        tokio::task::yield_now().await;
        let stored = store.stored(Namespace::Inbox, 0);
        store.fail_next_raises(u32::MAX);
        let mut ok = 0;
        let mut failed = 0;
        for _ in 0..50 {
            match alloc.next(Namespace::Inbox, 1).await {
                Ok(seq) => {
                    assert!(seq <= stored, "seq {seq} above stored {stored}");
                    ok += 1;
                }
                Err(SeqError::Store(_)) => failed += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!(failed > 0);
        assert_eq!(store.stored(Namespace::Inbox, 0), stored);
        // Recovery: once the store works again, seqs continue upward.
        store.fail_next_raises(0);
        let next = alloc.next(Namespace::Inbox, 1).await.unwrap();
        assert_eq!(next, 4 + ok + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_allocations_never_repeat_or_go_back() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let alloc = Allocator::new(small(7, 3), store.clone()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let alloc = alloc.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..300u64 {
                    let ids = [i % 5, (i + t) % 5];
                    let seqs = alloc.next_batch(Namespace::Inbox, &ids).await.unwrap();
                    seen.extend(ids.into_iter().zip(seqs));
                }
                seen
            }));
        }
        let mut per_id: HashMap<u64, Vec<u64>> = HashMap::new();
        for task in tasks {
            for (id, seq) in task.await.unwrap() {
                per_id.entry(id).or_default().push(seq);
            }
        }
        for (id, mut seqs) in per_id {
            let n = seqs.len();
            seqs.sort_unstable();
            seqs.dedup();
            assert_eq!(seqs.len(), n, "id {id} got a seq twice");
            assert!(*seqs.last().unwrap() <= store.stored(Namespace::Inbox, id / 3));
        }
    }
}
