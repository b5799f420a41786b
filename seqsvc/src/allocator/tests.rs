use super::*;
use crate::store::FjallMaxSeqStore;
use crate::testsuite::MemoryMaxSeqStore;
use std::collections::HashMap;

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

/// Arbitrary member ids each load a section of their own; the cache of
/// loaded sections must stay bounded, and an evicted section's ids must
/// resume above everything they were given.
#[tokio::test]
async fn sections_of_arbitrary_ids_stay_bounded_and_never_reissue() {
    let store = Arc::new(MemoryMaxSeqStore::new());
    let alloc = Allocator::new(small(10, 4), store.clone()).unwrap();
    let spread = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let ids: Vec<u64> = (0..(MAX_LOADED_SECTIONS as u64 + 1_000))
        .map(spread)
        .collect();
    let mut last: HashMap<u64, u64> = HashMap::new();
    for round in 0..2 {
        for chunk in ids.chunks(500) {
            let seqs = alloc.next_batch(Namespace::Inbox, chunk).await.unwrap();
            for (&id, seq) in chunk.iter().zip(seqs) {
                let before = last.insert(id, seq).unwrap_or(0);
                assert!(
                    seq > before,
                    "round {round}: id {id} got {seq} after {before}"
                );
            }
        }
    }
    let loaded = alloc.loaded_sections();
    assert!(
        loaded <= MAX_LOADED_SECTIONS,
        "{loaded} sections loaded for {} ids",
        ids.len()
    );
    let bytes = alloc.loaded_bytes();
    eprintln!(
        "{} ids in distinct sections: {loaded} sections, {bytes} bytes loaded",
        ids.len()
    );
    assert!(bytes <= MAX_LOADED_SECTIONS * 9 * 1024, "{bytes} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evictions_under_concurrent_allocation_never_repeat_or_go_back() {
    let store = Arc::new(MemoryMaxSeqStore::new());
    let alloc = Allocator::with_section_limit(small(3, 1), store.clone(), 4).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let alloc = alloc.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..400u64 {
                let id = (i * 7 + t) % 40;
                let seq = if i % 2 == 0 {
                    alloc.next(Namespace::Inbox, id).await.unwrap()
                } else {
                    alloc.next_batch(Namespace::Inbox, &[id]).await.unwrap()[0]
                };
                let current = alloc.current(Namespace::Inbox, id).await.unwrap();
                assert!(current >= seq, "current {current} below issued {seq}");
                seen.push((id, seq));
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
        assert!(*seqs.last().unwrap() <= store.stored(Namespace::Inbox, id));
    }
    // Once idle, the next loads bring the cache back under its limit.
    for id in 1_000..1_004 {
        alloc.next(Namespace::Inbox, id).await.unwrap();
    }
    assert!(alloc.loaded_sections() <= 4, "{}", alloc.loaded_sections());
}

/// Counts store calls that persist (each is one sync on the embedded
/// store) over an in-memory store.
#[derive(Default)]
struct CountingStore {
    inner: MemoryMaxSeqStore,
    syncs: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl MaxSeqStore for CountingStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        self.inner.load(namespace, section).await
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.raise(namespace, section, at_least).await
    }

    async fn raise_many(&self, namespace: Namespace, raises: &[(u64, u64)]) -> Result<Vec<u64>> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let mut stored = Vec::new();
        for &(section, at_least) in raises {
            stored.push(self.inner.raise(namespace, section, at_least).await?);
        }
        Ok(stored)
    }
}

/// A fanout to 1,000 ids in 1,000 new sections used to persist each
/// section's first step on its own: 1,000 syncs for one message.
#[tokio::test]
async fn a_batch_over_many_new_sections_persists_once() {
    let store = Arc::new(CountingStore::default());
    let alloc = Allocator::new(small(100, 10), store.clone()).unwrap();
    let ids: Vec<u64> = (0..1_000u64).map(|i| i * 1_000 + 3).collect();
    let seqs = alloc.next_batch(Namespace::Inbox, &ids).await.unwrap();
    assert!(seqs.iter().all(|&seq| seq == 1));
    for &id in &ids {
        assert!(store.inner.stored(Namespace::Inbox, id / 10) >= 1);
    }
    let syncs = store.syncs.load(Ordering::SeqCst);
    assert!(syncs <= 2, "{syncs} persisting store calls for one batch");
    let again = alloc.next_batch(Namespace::Inbox, &ids).await.unwrap();
    assert!(again.iter().all(|&seq| seq == 2));
}
