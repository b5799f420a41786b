//! The allocator core: `cur_seq` per id in memory, `max_seq` per section
//! persisted in steps before any seq under it is handed out.
//!
//! Loaded sections are a bounded cache ([`MAX_LOADED_SECTIONS`]): member ids
//! are chosen by clients, and every id in a new section costs a section and
//! a page. An idle section (no task holds it) is evicted least recently used
//! first; loading it again resumes its ids above its persisted `max_seq`,
//! exactly as a restart does, so nothing is reissued.
//!
//! Locking: each loaded section has a `std` mutex over its in-memory state
//! (held only for map updates, never across an await) and an async `raise`
//! mutex so that one task at a time persists a new `max_seq` while others
//! wait for it instead of issuing their own write.
//!
//! Layout: allocation here; `sections`: the cache of loaded sections.

use crate::store::MaxSeqStore;
use crate::{Namespace, Result, SeqError};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Most ids accepted by one batch call; larger fanouts split their batches.
pub const MAX_BATCH_IDS: usize = 65_536;

/// Largest section size accepted: a section's `cur_seq` pages are indexed
/// by offset, so this bounds the page table of one section.
pub const MAX_SECTION_SIZE: u64 = 10_000_000;

const SHARD_COUNT: usize = 64;

/// Sections kept loaded per allocator; beyond it idle ones are evicted. A
/// section of sparse ids costs about one page (8 KiB), so sections of
/// arbitrary ids stay under about 34 MiB, while dense ids (a default section
/// holds 100,000 of them) rarely need more than a few hundred sections.
pub const MAX_LOADED_SECTIONS: usize = 4_096;

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
        if self.section_size == 0 || self.section_size > MAX_SECTION_SIZE {
            return Err(SeqError::InvalidArgument(format!(
                "section_size must be 1 to {MAX_SECTION_SIZE}"
            )));
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
    shards: Vec<Mutex<Shard>>,
    section_limit: usize,
    loaded: AtomicUsize,
    /// Advances on every section load; a section's `last_used` is the
    /// epoch it was last touched in (a load on the hot path, no write).
    epoch: AtomicU64,
    evicting: AtomicBool,
    /// Section lookups while over the limit (paces eviction retries).
    lookups: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the maps half-updated in a
    // way that breaks monotonicity (updates are single inserts), so recover.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Allocator {
    pub fn new(config: AllocatorConfig, store: Arc<dyn MaxSeqStore>) -> Result<Self> {
        Self::with_section_limit(config, store, MAX_LOADED_SECTIONS)
    }

    /// An allocator keeping at most about `section_limit` sections loaded
    /// (more only while tasks hold them).
    pub fn with_section_limit(
        config: AllocatorConfig,
        store: Arc<dyn MaxSeqStore>,
        section_limit: usize,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                shards: (0..SHARD_COUNT).map(|_| Mutex::default()).collect(),
                section_limit: section_limit.max(1),
                loaded: AtomicUsize::new(0),
                epoch: AtomicU64::new(0),
                evicting: AtomicBool::new(false),
                lookups: AtomicUsize::new(0),
            }),
        })
    }

    /// Why the allocator's store can take no more raises, if so (see
    /// [`MaxSeqStore::poisoned`]).
    pub fn store_poisoned(&self) -> Option<String> {
        self.inner.store.poisoned()
    }

    /// Sections loaded now.
    pub fn loaded_sections(&self) -> usize {
        self.inner.loaded.load(Ordering::Relaxed)
    }

    /// The memory the loaded sections' state takes, in bytes (section
    /// records and `cur_seq` pages, without map overhead).
    pub fn loaded_bytes(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|shard| {
                lock(shard)
                    .sections
                    .values()
                    .map(|section| {
                        let state = lock(&section.state);
                        let pages = state.pages.iter().flatten().count();
                        std::mem::size_of::<Section>()
                            + state.pages.capacity() * std::mem::size_of::<Option<Box<[u64]>>>()
                            + pages * PAGE_IDS * std::mem::size_of::<u64>()
                    })
                    .sum::<usize>()
            })
            .sum()
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
        Ok(state.last((id - section.start) as usize))
    }

    /// Allocates the next seq of one id. The hot path: one map lookup, one
    /// lock, no allocation.
    pub async fn next(&self, namespace: Namespace, id: u64) -> Result<u64> {
        let index = self.section_of(id);
        if let Some(done) = self.next_in_loaded(namespace, index, id) {
            return done;
        }
        let section = self.section(namespace, index).await?;
        let offset = (id - section.start) as usize;
        loop {
            let needed = {
                let mut state = lock(&section.state);
                let next = state
                    .last(offset)
                    .checked_add(1)
                    .ok_or(SeqError::Exhausted { namespace, id })?;
                if next <= state.max_seq {
                    state.set(offset, next);
                    state.highest = state.highest.max(next);
                    let headroom = state.max_seq - state.highest;
                    drop(state);
                    if headroom < self.inner.config.step / 2 {
                        self.prefetch(&section);
                    }
                    return Ok(next);
                }
                next
            };
            self.raise_to(&section, needed, None).await?;
        }
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
        let groups: Vec<&[(u64, usize)]> = order.chunk_by(|a, b| a.0 == b.0).collect();
        let mut sections = Vec::with_capacity(groups.len());
        for group in &groups {
            sections.push(self.section(namespace, group[0].0).await?);
        }
        // What fits under the loaded max_seq is handed out at once; the
        // sections that need a raise get it in one store call (one sync for
        // a batch of ids spread over many new sections), then retry.
        let mut short = Vec::new();
        for (at, (group, section)) in groups.iter().zip(&sections).enumerate() {
            if let Some(needed) = self.try_allocate(section, ids, group, &mut out)? {
                short.push((at, needed));
            }
        }
        if short.len() > 1 {
            self.raise_many(&sections, &short).await?;
        }
        for (at, _) in short {
            self.allocate_in_section(&sections[at], ids, groups[at], &mut out)
                .await?;
        }
        Ok(out)
    }

    /// Raises the `max_seq` of several sections of one namespace, sorted by
    /// index, in one store call. Their raise locks are taken in index order,
    /// the one order every multi-section raise uses, so two cannot deadlock
    /// (single raises and prefetches hold one lock at a time).
    async fn raise_many(&self, sections: &[Arc<Section>], short: &[(usize, u64)]) -> Result<()> {
        let mut held = Vec::with_capacity(short.len());
        let mut raises = Vec::with_capacity(short.len());
        let step = self.inner.config.step;
        for &(at, needed) in short {
            let section = &sections[at];
            let guard = section.raise.lock().await;
            let current = lock(&section.state).max_seq;
            if current >= needed {
                continue;
            }
            let steps = (needed - current).div_ceil(step);
            raises.push((
                section.index,
                current.saturating_add(steps.saturating_mul(step)),
            ));
            held.push((guard, section));
        }
        if raises.is_empty() {
            return Ok(());
        }
        let namespace = held[0].1.namespace;
        let stored = timed_raise(self.inner.store.raise_many(namespace, &raises)).await?;
        for ((_, section), stored) in held.iter().zip(stored) {
            let mut state = lock(&section.state);
            state.max_seq = state.max_seq.max(stored);
        }
        Ok(())
    }

    async fn allocate_in_section(
        &self,
        section: &Arc<Section>,
        ids: &[u64],
        group: &[(u64, usize)],
        out: &mut [u64],
    ) -> Result<()> {
        while let Some(needed) = self.try_allocate(section, ids, group, out)? {
            self.raise_to(section, needed, None).await?;
        }
        Ok(())
    }

    /// Hands out one seq per listed id if all fit under `max_seq`; otherwise
    /// changes nothing and returns the `max_seq` they need.
    fn try_allocate(
        &self,
        section: &Arc<Section>,
        ids: &[u64],
        group: &[(u64, usize)],
        out: &mut [u64],
    ) -> Result<Option<u64>> {
        let mut state = lock(&section.state);
        // Apply in list order (repeats of an id see their own earlier
        // increments), remembering old values to roll back if the batch
        // does not fit under max_seq.
        let mut undo: Vec<(usize, u64)> = Vec::with_capacity(group.len());
        let mut needed = 0u64;
        let mut exhausted = None;
        for &(_, i) in group {
            let offset = (ids[i] - section.start) as usize;
            let Some(next) = state.last(offset).checked_add(1) else {
                exhausted = Some(ids[i]);
                break;
            };
            undo.push((offset, state.raw(offset)));
            state.set(offset, next);
            out[i] = next;
            needed = needed.max(next);
        }
        if exhausted.is_none() && needed <= state.max_seq {
            state.highest = state.highest.max(needed);
            let headroom = state.max_seq - state.highest;
            drop(state);
            if headroom < self.inner.config.step / 2 {
                self.prefetch(section);
            }
            return Ok(None);
        }
        for &(offset, old) in undo.iter().rev() {
            state.set(offset, old);
        }
        if let Some(id) = exhausted {
            return Err(SeqError::Exhausted {
                namespace: section.namespace,
                id,
            });
        }
        Ok(Some(needed))
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
        let stored = timed_raise(
            self.inner
                .store
                .raise(section.namespace, section.index, target),
        )
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

    /// [`Allocator::next`] without touching the section's reference count:
    /// `None` when the section is not loaded or `max_seq` must be raised.
    fn next_in_loaded(&self, namespace: Namespace, index: u64, id: u64) -> Option<Result<u64>> {
        let shard = lock(self.shard(namespace, index));
        let section = shard.sections.get(&(namespace, index))?;
        section.touch(&self.inner.epoch);
        let mut state = lock(&section.state);
        let offset = (id - section.start) as usize;
        let Some(next) = state.last(offset).checked_add(1) else {
            return Some(Err(SeqError::Exhausted { namespace, id }));
        };
        if next > state.max_seq {
            return None;
        }
        state.set(offset, next);
        state.highest = state.highest.max(next);
        if state.max_seq - state.highest < self.inner.config.step / 2 {
            let section = Arc::clone(section);
            drop(state);
            drop(shard);
            self.prefetch(&section);
        }
        Some(Ok(next))
    }
}

/// A durable `max_seq` write, timed and counted: its latency is the stall
/// an allocation sees when its step runs out, its failures are refusals.
async fn timed_raise<T>(raise: impl Future<Output = Result<T>>) -> Result<T> {
    let started = std::time::Instant::now();
    let result = raise.await;
    metrics::histogram!("seqsvc_max_seq_raise_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("seqsvc_max_seq_raises_total", "result" => outcome).increment(1);
    result
}

mod sections;
#[cfg(test)]
mod tests;

use sections::{PAGE_IDS, Section, Shard};
