//! The event writer's paths: at once and in the background.

use super::*;
use crate::error::SyncdError;
use crate::horizon::Key;
use crate::observer::{CommitObserver, Committed};
use crate::testkit::*;
use seqsvc::AllocatorConfig;
use std::sync::Mutex;
use uuid::Uuid;

/// Records what every announcement carried.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, Vec<Key>)>>);

impl CommitObserver for Recorder {
    fn committed(&self, event: &Committed<'_>) {
        let keys = event.visible.iter().map(|(key, _)| *key).collect();
        self.0
            .lock()
            .unwrap()
            .push((event.commit.entry.msg_id, keys));
    }
}

#[tokio::test]
async fn events_finished_in_the_background_take_the_same_announce_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), false);
    let (seqs, ids) = allocator(AllocatorConfig::default()).await;
    let recorder = Arc::new(Recorder::default());
    let lifecycle = Arc::new(Lifecycle::default());
    let writer = EventWriter::new(
        store.clone(),
        seqs.into(),
        ids,
        Horizon::new(),
        Observers::new(vec![recorder.clone()]),
        Arc::clone(&lifecycle),
        crate::limits::MAX_INFLIGHT_COMMIT_BYTES,
    );
    let conversation = record(5, &[1, 2], false);
    let message = |text: &str| {
        Event::message(
            &conversation,
            1,
            Uuid::new_v4(),
            text.into(),
            Default::default(),
        )
    };
    let expected = vec![
        (Scope::Conversation, 5),
        (Scope::Inbox, 1),
        (Scope::Inbox, 2),
    ];

    let at_once = writer
        .commit(message("at once"), Held::default())
        .await
        .unwrap();
    store.fail_next_commits(2);
    let failed = writer.commit(message("late"), Held::default()).await;
    assert!(
        matches!(failed, Err(SyncdError::Unavailable(_))),
        "{failed:?}"
    );
    // The finisher is a tracked task: shutdown waits for it, and it
    // finishes before the store has refused twice more... or stops.
    for _ in 0..200 {
        if recorder.0.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "both events announced: {seen:?}");
    assert_eq!(seen[0], (at_once.msg_id, expected.clone()));
    assert_eq!(
        seen[1].1, expected,
        "the background path announces the same keys"
    );
    lifecycle.wait_for_tasks().await;
}

#[tokio::test]
async fn a_failed_event_is_finished_in_the_background_and_a_retry_sees_it_once() {
    let fx = fixture().build().await;
    let (engine, flaky) = (Arc::clone(&fx.engine), Arc::clone(&fx.store));
    let conversation = group(&engine, 1, vec![2]).await;
    flaky.fail_next_commits(3);
    let id = Uuid::new_v4();
    let first = engine
        .send(device(1, "phone"), message(conversation, "late", Some(id)))
        .await;
    assert!(
        matches!(first, Err(SyncdError::Unavailable(_))),
        "{first:?}"
    );
    // The retry waits for the background attempt, then gets its receipt.
    let retry = engine
        .send(device(1, "phone"), message(conversation, "late", Some(id)))
        .await
        .unwrap();
    assert!(
        retry.duplicate,
        "the retry must not write the message again"
    );
    let inbox = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
    let copies: Vec<_> = inbox.entries.iter().filter(|e| e.text == "late").collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].msg_id, retry.receipt.msg_id);
}
