//! The bounded cache of loaded sections: per shard a map of sections, each
//! with its `max_seq`, its floor and its ids' last seqs in lazily
//! allocated pages, loaded on first use and evicted when idle, least
//! recently used first.

use super::{Allocator, SHARD_COUNT, lock};
use crate::{Namespace, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// While over the limit, one lookup in this many retries eviction: a scan
/// of every loaded section, so it must stay rare on the hot path.
const EVICTION_RETRY_LOOKUPS: usize = 256;

/// Ids per lazily allocated page of `cur_seq` values (8 KiB): dense ids cost
/// 8 bytes each, a lone active id at most one page.
pub(super) const PAGE_IDS: usize = 1_024;

/// Loaded sections by (namespace, section index).
pub(super) type SectionMap = HashMap<(Namespace, u64), Arc<Section>, foldhash::fast::RandomState>;

#[derive(Default)]
pub(super) struct Shard {
    pub(super) sections: SectionMap,
    /// Sections evicted from this shard so far. A load that raced with an
    /// eviction may have read a `max_seq` the evicted section raised past
    /// afterwards, so it is read again.
    pub(super) evictions: u64,
}

pub(super) struct Section {
    pub(super) namespace: Namespace,
    pub(super) index: u64,
    /// The section's first id.
    pub(super) start: u64,
    pub(super) state: Mutex<SectionState>,
    pub(super) raise: tokio::sync::Mutex<()>,
    pub(super) prefetching: AtomicBool,
    pub(super) last_used: AtomicU64,
}

impl Section {
    /// No task holds it: only the map does, and taking it from the map
    /// needs the shard lock the caller holds.
    pub(super) fn idle(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1 && !self.prefetching.load(Ordering::Acquire)
    }
}

pub(super) struct SectionState {
    /// Durable upper bound: nothing above it may be handed out.
    pub(super) max_seq: u64,
    /// `max_seq` as loaded at startup: every seq issued by an earlier run is
    /// at or below it, so an id first seen in this run starts above it.
    pub(super) floor: u64,
    /// Last seq handed out per id (by offset in the section) in this run;
    /// 0: none yet (seqs start at 1). Pages are allocated on first use.
    pub(super) pages: Vec<Option<Box<[u64]>>>,
    /// Highest seq handed out in this section in this run (drives prefetch).
    pub(super) highest: u64,
}

impl SectionState {
    /// The raw stored value: 0 when this run handed out nothing for it.
    pub(super) fn raw(&self, offset: usize) -> u64 {
        match self.pages.get(offset / PAGE_IDS) {
            Some(Some(page)) => page[offset % PAGE_IDS],
            _ => 0,
        }
    }

    /// The last seq of the id, counting earlier runs as up to the floor.
    pub(super) fn last(&self, offset: usize) -> u64 {
        match self.raw(offset) {
            0 => self.floor,
            seq => seq,
        }
    }

    pub(super) fn set(&mut self, offset: usize, seq: u64) {
        let page = offset / PAGE_IDS;
        if self.pages.len() <= page {
            self.pages.resize_with(page + 1, || None);
        }
        self.pages[page].get_or_insert_with(|| vec![0; PAGE_IDS].into_boxed_slice())
            [offset % PAGE_IDS] = seq;
    }
}

impl Allocator {
    pub(super) fn shard(&self, namespace: Namespace, index: u64) -> &Mutex<Shard> {
        &self.inner.shards[(index as usize ^ namespace.code() as usize) % SHARD_COUNT]
    }

    pub(super) async fn section(&self, namespace: Namespace, index: u64) -> Result<Arc<Section>> {
        let shard = self.shard(namespace, index);
        loop {
            let evictions = {
                let shard = lock(shard);
                if let Some(section) = shard.sections.get(&(namespace, index)) {
                    section.touch(&self.inner.epoch);
                    let section = Arc::clone(section);
                    drop(shard);
                    self.retry_eviction();
                    return Ok(section);
                }
                shard.evictions
            };
            let max_seq = self.inner.store.load(namespace, index).await?;
            let mut sections = lock(shard);
            // Another task may have loaded it meanwhile and already
            // allocated; its state wins, ours is dropped.
            if let Some(section) = sections.sections.get(&(namespace, index)) {
                section.touch(&self.inner.epoch);
                return Ok(Arc::clone(section));
            }
            if sections.evictions != evictions {
                continue;
            }
            let epoch = self.inner.epoch.fetch_add(1, Ordering::Relaxed) + 1;
            let section = Arc::new(Section {
                namespace,
                index,
                start: index * self.inner.config.section_size,
                state: Mutex::new(SectionState {
                    max_seq,
                    floor: max_seq,
                    pages: Vec::new(),
                    highest: max_seq,
                }),
                raise: tokio::sync::Mutex::new(()),
                prefetching: AtomicBool::new(false),
                last_used: AtomicU64::new(epoch),
            });
            sections
                .sections
                .insert((namespace, index), Arc::clone(&section));
            drop(sections);
            let loaded = self.inner.loaded.fetch_add(1, Ordering::Relaxed) + 1;
            if loaded > self.inner.section_limit {
                self.evict_idle();
            }
            return Ok(section);
        }
    }

    /// An eviction finds nothing to evict while every section is busy; with
    /// no new section loaded afterwards nothing would try again, so lookups
    /// of loaded sections retry now and then while over the limit.
    pub(super) fn retry_eviction(&self) {
        if self.loaded_sections() > self.inner.section_limit
            && self
                .inner
                .lookups
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(EVICTION_RETRY_LOOKUPS)
        {
            self.evict_idle();
        }
    }

    /// Evicts idle sections, least recently used first, down to three
    /// quarters of the limit, so the scan runs once per quarter of the limit
    /// of new sections. Busy sections stay; the cache may then stay over
    /// the limit until they are idle.
    pub(super) fn evict_idle(&self) {
        if self.inner.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let target = self.inner.section_limit - self.inner.section_limit / 4;
        let excess = self.loaded_sections().saturating_sub(target);
        let mut candidates: Vec<(u64, usize, (Namespace, u64))> = Vec::new();
        for (at, shard) in self.inner.shards.iter().enumerate() {
            let shard = lock(shard);
            candidates.extend(
                shard
                    .sections
                    .iter()
                    .filter(|(_, section)| section.idle())
                    .map(|(&key, section)| (section.last_used.load(Ordering::Relaxed), at, key)),
            );
        }
        candidates.sort_unstable_by_key(|&(last_used, ..)| last_used);
        for (_, at, key) in candidates.into_iter().take(excess) {
            let mut shard = lock(&self.inner.shards[at]);
            if shard.sections.get(&key).is_some_and(Section::idle) {
                shard.sections.remove(&key);
                shard.evictions += 1;
                self.inner.loaded.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.inner.evicting.store(false, Ordering::Release);
    }
}

impl Section {
    pub(super) fn touch(&self, epoch: &AtomicU64) {
        let now = epoch.load(Ordering::Relaxed);
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}
