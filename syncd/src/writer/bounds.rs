//! Nothing freezes or piles up while the store fails: events stuck in the
//! background hold only what they must (see the module doc), fatal store
//! errors stop the node, and commits in flight stay within a byte budget.
//! Every test runs on the in-memory store with a paused clock, so retries
//! and timeouts pass in virtual time.

use crate::auth::Principal;
use crate::engine::{EngineConfig, MembershipChange};
use crate::error::SyncdError;
use crate::limits::MAX_BACKGROUND_FINISHERS;
use crate::testkit::*;
use std::sync::Arc;
use std::time::Duration;
use timeline_store::StoreError;
use timeline_store::testsuite::Faults;
use tokio::time::timeout;
use uuid::Uuid;

/// Far longer than any bounded wait: reaching it means a call hung.
const HUNG: Duration = Duration::from_secs(300);

fn service() -> Principal {
    Principal::Service {
        name: "backend".into(),
    }
}

/// Commits of messages with this text fail until the fault is cleared.
fn stick(store: &MemoryTestStore, text: &'static str) {
    store.fail_commits_where(
        move |commit| commit.entry.text == text,
        || StoreError::Io("injected: the store times out".into()),
    );
}

fn poisoned() -> StoreError {
    StoreError::Poisoned("injected: an earlier fsync failed".into())
}

async fn texts_of(engine: &Arc<crate::engine::Engine>, user: u64) -> Vec<String> {
    let page = engine.sync(&device(user, "d"), Some(0), 100).await.unwrap();
    page.entries.iter().map(|e| e.text.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_stuck_send_holds_up_neither_membership_changes_nor_later_sends() {
    let (engine, store) = memory_engine(EngineConfig::default()).await;
    let conversation = group(&engine, 1, vec![2]).await;
    stick(&store, "stuck");
    let stuck = engine
        .send(
            device(1, "d"),
            message(conversation, "stuck", Some(Uuid::new_v4())),
        )
        .await;
    assert!(
        matches!(stuck, Err(SyncdError::Unavailable(_))),
        "{stuck:?}"
    );

    let change = engine.change_members(service(), conversation, vec![3], MembershipChange::Add);
    timeout(HUNG, change)
        .await
        .expect("the membership change waited for the stuck send")
        .unwrap();
    let later = engine.send(device(1, "d"), message(conversation, "later", None));
    timeout(HUNG, later)
        .await
        .expect("a later send waited for the membership change")
        .unwrap();

    store.clear_aimed_fault();
    let mut landed = false;
    for _ in 0..60 {
        if texts_of(&engine, 2).await.iter().any(|t| t == "stuck") {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(landed, "the stuck send lands once the store takes it");
    // Its recipients were fixed before the change: the new member gets
    // only what was sent after it joined.
    assert_eq!(count_of(&engine, 2, "stuck").await, 1);
    assert!(!texts_of(&engine, 3).await.iter().any(|t| t == "stuck"));
    assert!(texts_of(&engine, 3).await.iter().any(|t| t == "later"));
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_a_stuck_send_answers_unavailable_instead_of_waiting() {
    let (engine, store) = memory_engine(EngineConfig::default()).await;
    let conversation = group(&engine, 1, vec![2]).await;
    stick(&store, "stuck");
    let id = Uuid::new_v4();
    let first = engine
        .send(device(1, "d"), message(conversation, "stuck", Some(id)))
        .await;
    assert!(
        matches!(first, Err(SyncdError::Unavailable(_))),
        "{first:?}"
    );
    let retry = engine.send(device(1, "d"), message(conversation, "stuck", Some(id)));
    let retry = timeout(HUNG, retry)
        .await
        .expect("the retry waited for the stuck send (holding a send slot)");
    assert!(
        matches!(retry, Err(SyncdError::Unavailable(_))),
        "{retry:?}"
    );

    store.clear_aimed_fault();
    let retry = engine.send(device(1, "d"), message(conversation, "stuck", Some(id)));
    let retry = timeout(HUNG, retry).await.unwrap().unwrap();
    assert!(retry.duplicate, "the background attempt stored it once");
    assert_eq!(count_of(&engine, 2, "stuck").await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_poisoned_store_stops_the_node_and_spawns_nothing() {
    let (engine, store) = memory_engine(EngineConfig::default()).await;
    let conversation = group(&engine, 1, vec![2]).await;
    store.fail_commits_where(|_| true, poisoned);
    for text in ["a", "b", "c"] {
        let sent = engine
            .send(device(1, "d"), message(conversation, text, None))
            .await;
        assert!(matches!(sent, Err(SyncdError::Unavailable(_))), "{sent:?}");
    }
    assert!(
        engine
            .failure()
            .is_some_and(|reason| reason.contains("poisoned")),
        "{:?}",
        engine.failure()
    );
    assert_eq!(
        store.counters().injected_failures,
        1,
        "after the first, no send reaches the store"
    );
    let refused = engine
        .change_members(service(), conversation, vec![3], MembershipChange::Add)
        .await;
    assert!(
        matches!(refused, Err(SyncdError::Unavailable(_))),
        "{refused:?}"
    );
    tokio::task::yield_now().await;
    assert_eq!(
        engine.running_tasks(),
        0,
        "no background retry of a write that cannot succeed in this process"
    );
}

#[tokio::test(start_paused = true)]
async fn background_finishers_are_bounded() {
    let (engine, store) = memory_engine(EngineConfig::default()).await;
    let conversation = group(&engine, 1, vec![2]).await;
    store.fail_commits_where(
        |_| true,
        || StoreError::Io("injected: the store times out".into()),
    );
    let extra = 3;
    for i in 0..MAX_BACKGROUND_FINISHERS + extra {
        let sent = engine
            .send(device(1, "d"), message(conversation, &i.to_string(), None))
            .await;
        assert!(matches!(sent, Err(SyncdError::Unavailable(_))), "{sent:?}");
    }
    assert!(
        engine.running_tasks() <= MAX_BACKGROUND_FINISHERS,
        "{} tasks running",
        engine.running_tasks()
    );
    assert_eq!(
        store.counters().injected_failures as usize,
        MAX_BACKGROUND_FINISHERS,
        "once the finishers are full, new events do not reach the store"
    );
}

#[tokio::test(start_paused = true)]
async fn inbox_copies_in_flight_stay_within_the_byte_budget() {
    let budget = 1024 * 1024;
    let config = EngineConfig {
        commit_budget_bytes: budget,
        ..EngineConfig::default()
    };
    let (engine, store) = memory_engine(config).await;
    let members: Vec<u64> = (2..=50).collect();
    let conversation = group(&engine, 1, members).await;
    store.set_faults(Faults {
        commit_delay: Duration::from_millis(50),
        ..Faults::default()
    });
    // Light enough to be copied into every inbox (heavier texts are
    // stored once and cost little).
    let text = "x".repeat(2 * 1024);
    let mut sends = tokio::task::JoinSet::new();
    for sender in 1..=32 {
        let (engine, text) = (Arc::clone(&engine), text.clone());
        sends.spawn(async move {
            engine
                .send(device(sender, "d"), message(conversation, &text, None))
                .await
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent.unwrap().unwrap();
    }
    let peak = store.peak_inflight_copy_bytes();
    assert!(peak > 0);
    assert!(
        peak <= budget as u64,
        "{peak} bytes of inbox copies were in flight at once, budget {budget}"
    );
    assert_eq!(texts_of(&engine, 50).await.len(), 33, "every send landed");
}

/// One user's events in flight take at most their share of the commit
/// budget: past it their next send is refused at once, and other users'
/// sends are admitted as before.
#[tokio::test(start_paused = true)]
async fn one_users_events_in_flight_stay_within_their_share_of_the_budget() {
    let config = EngineConfig {
        commit_budget_bytes: 1024 * 1024,
        ..EngineConfig::default()
    };
    let (engine, store) = memory_engine(config).await;
    let conversation = group(&engine, 1, (2..=50).collect()).await;
    store.set_faults(Faults {
        commit_delay: Duration::from_millis(50),
        ..Faults::default()
    });
    // About 106 KB to commit each (50 inbox copies of 2 KiB): a user's
    // share of 128 KiB holds one at a time.
    let text = "x".repeat(2 * 1024);
    let send = |sender: u64| {
        let (engine, text) = (Arc::clone(&engine), text.clone());
        tokio::spawn(async move {
            engine
                .send(device(sender, "d"), message(conversation, &text, None))
                .await
        })
    };
    let flood: Vec<_> = (0..4).map(|_| send(1)).collect();
    let other = send(2);
    let mut stored = 0;
    for sent in flood {
        match sent.await.unwrap() {
            Ok(_) => stored += 1,
            Err(SyncdError::Unavailable(message)) => {
                assert!(message.contains("user 1's events"), "{message}")
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(stored, 1, "one event of user 1 at a time");
    other
        .await
        .unwrap()
        .expect("another user's send is admitted");
    // Stored, the share is free again.
    send(1).await.unwrap().unwrap();
}

/// A heavy text to a large write-fanout group is stored once: its inbox
/// copies refer to the conversation entry, so it costs the budget (and
/// the store) its text once, not once per member.
#[tokio::test(start_paused = true)]
async fn a_large_text_to_a_large_write_fanout_group_costs_one_copy() {
    let config = EngineConfig {
        large_group_threshold: 5_000,
        commit_budget_bytes: 1024 * 1024,
        ..EngineConfig::default()
    };
    let (engine, store) = memory_engine(config).await;
    let conversation = group(&engine, 1, (2..=1_000).collect()).await;
    let more = (1_001..=1_600).collect();
    engine
        .change_members(service(), conversation, more, MembershipChange::Add)
        .await
        .unwrap();
    let large = "x".repeat(64 * 1024);
    engine
        .send(device(1, "d"), message(conversation, &large, None))
        .await
        .unwrap();
    assert_eq!(
        store.peak_inflight_copy_bytes(),
        0,
        "no inbox copy held the text"
    );
    let inbox = engine
        .sync(&device(1_234, "d"), Some(0), 100)
        .await
        .unwrap();
    assert_eq!(inbox.entries.last().unwrap().text, large);
}

/// How many of the user's inbox entries have this text.
async fn count_of(engine: &Arc<crate::engine::Engine>, user: u64, text: &str) -> usize {
    texts_of(engine, user)
        .await
        .iter()
        .filter(|t| *t == text)
        .count()
}
