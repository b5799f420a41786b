use super::*;
use crate::testsuite::MemoryStore;
use crate::{EntryKind, InboxWrite};
use std::sync::Arc;

const FIRST_TEN: InboxRange = InboxRange::new(0, 10, 10);

fn commit(conv_seq: u64, users: &[u64]) -> EventCommit {
    EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq,
            msg_id: conv_seq,
            ..Entry::new(EntryKind::Message, 1)
        },
        inbox: users
            .iter()
            .map(|&user_id| InboxWrite {
                user_id,
                seq: conv_seq,
            })
            .collect(),
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_wrapped_store_still_passes_the_conformance_suite() {
    let memory = MemoryStore::new();
    let faults = Faults {
        commit_delay: Duration::from_millis(2),
        inbox_read_delay: Duration::from_micros(500),
        held_commits: 0.2,
        max_hold: Duration::from_millis(5),
        ..Faults::default()
    };
    crate::testsuite::conformance::run_all(|| {
        let store = FaultyStore::new(memory.clone(), 7).with_faults(faults.clone());
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn a_lost_write_writes_nothing_and_an_applied_one_lands() {
    let store = FaultyStore::new(MemoryStore::new(), 1);
    store.fail_next_commits(1);
    assert!(matches!(
        store.commit_event(commit(1, &[5, 6])).await,
        Err(StoreError::Io(_))
    ));
    assert_eq!(store.inner().last_inbox_seq(5).await.unwrap(), 0);
    store.fail_next(Op::Commit, 1, Failure::Applied);
    assert!(store.commit_event(commit(2, &[5, 6])).await.is_err());
    assert_eq!(store.inner().last_inbox_seq(5).await.unwrap(), 2);
    store.commit_event(commit(3, &[5])).await.unwrap();
    assert_eq!(
        store.counters(),
        Counters {
            commits: 2,
            inbox_copies: 3,
            injected_failures: 2,
            held_commits: 0,
        }
    );
    store.fail_next(Op::Read, 1, Failure::Lost);
    assert!(store.read_inbox(5, FIRST_TEN).await.is_err());
    assert_eq!(store.read_inbox(5, FIRST_TEN).await.unwrap().len(), 2);
    store.fail_next(Op::Write, 1, Failure::Applied);
    assert!(store.save_checkpoint(5, "d", 3).await.is_err());
    assert_eq!(store.checkpoint(5, "d").await.unwrap(), 3);
}

/// Which of 200 commits fail, under a seed.
async fn failed_commits(seed: u64) -> Vec<u64> {
    let store = FaultyStore::new(MemoryStore::new(), seed).with_faults(Faults {
        commit_errors: 0.3,
        applied_share: 0.5,
        ..Faults::default()
    });
    let mut failed = Vec::new();
    for conv_seq in 1..=200 {
        if store.commit_event(commit(conv_seq, &[1])).await.is_err() {
            failed.push(conv_seq);
        }
    }
    failed
}

#[tokio::test]
async fn a_seed_replays_the_same_faults() {
    let first = failed_commits(42).await;
    assert_eq!(first, failed_commits(42).await);
    assert_ne!(first, failed_commits(43).await);
    assert!((30..=90).contains(&first.len()), "{}", first.len());
}

#[tokio::test(start_paused = true)]
async fn a_held_commit_completes_after_a_later_one() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new(), 3).with_faults(Faults {
        held_commits: 1.0,
        max_hold: Duration::from_secs(3_600),
        ..Faults::default()
    }));
    let held = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            store.commit_event(commit(1, &[9])).await.unwrap();
            store.inner().last_inbox_seq(9).await.unwrap()
        }
    });
    tokio::task::yield_now().await;
    store.set_faults(Faults::default());
    store.commit_event(commit(2, &[9])).await.unwrap();
    assert_eq!(
        store.inner().read_inbox(9, FIRST_TEN).await.unwrap().len(),
        1,
        "the earlier commit is still held"
    );
    assert_eq!(held.await.unwrap(), 2, "it landed after the later one");
    assert_eq!(store.counters().held_commits, 1);
}
