//! The single-node intent log over many events: finished intents must not
//! pile up as one tombstone each, which the next start's recovery reads
//! through (Cassandra refuses a read past 100,000 of them, so a node that
//! had sent about 1.6 million messages within the tombstones' grace period
//! could not start again).

use super::tests::{drop_keyspace, open_store, unique_keyspace};
use super::*;
use futures_util::StreamExt;

/// Cassandra's default `tombstone_warn_threshold`: a read past it answers
/// with a warning.
const TOMBSTONE_WARNING: u64 = 1_000;

fn event(msg_id: u64) -> EventCommit {
    EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq: msg_id,
            msg_id,
            text: "many".into(),
            ..Entry::new(crate::EntryKind::Message, 7)
        },
        inbox: vec![InboxWrite {
            user_id: 1,
            seq: msg_id,
        }],
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    }
}

/// How many entries user 1's inbox holds (every test event copies into it).
async fn entries_of_user_1(store: &ScyllaTimelineStore) -> u64 {
    let range = InboxRange::new(0, u64::MAX, 10_000);
    store.read_inbox(1, range).await.unwrap().len() as u64
}

/// The warnings each intent table's partition 0 answers a full read with,
/// as recovery reads it.
async fn intent_read_warnings(session: &Session, keyspace: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for table in ["pending_events", "node_intents"] {
        let result = session
            .query_unpaged(
                format!("SELECT event FROM {keyspace}.{table} WHERE shard = 0"),
                (),
            )
            .await
            .unwrap();
        warnings.extend(result.warnings().map(|w| format!("{table}: {w}")));
    }
    warnings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_intents_leave_no_tombstone_per_event() {
    let keyspace = unique_keyspace("intent_log");
    let (session, store) = open_store(&keyspace).await;
    // Every event's intent in partition 0 (message ids divisible by the
    // partition count), more of them than the warning threshold.
    let events = TOMBSTONE_WARNING + 200;
    let msg_ids = (1..=events).map(|i| i * PENDING_SHARDS as u64);
    futures_util::stream::iter(msg_ids.map(|msg_id| store.commit_event(event(msg_id))))
        .buffer_unordered(32)
        .for_each(|committed| async move { committed.unwrap() })
        .await;
    let warnings = intent_read_warnings(&session, &keyspace).await;
    assert!(
        warnings.is_empty(),
        "recovery's read of the intents of {events} finished events: {warnings:?}"
    );
    // One more event once the removal interval has passed: everything
    // below it is finished, so the partition holds no intent any more.
    tokio::time::sleep(open_intents::CLEAR_INTERVAL + std::time::Duration::from_millis(50)).await;
    store
        .commit_event(event((events + 1) * PENDING_SHARDS as u64))
        .await
        .unwrap();
    let left: Vec<i64> = store
        .column(
            &session
                .prepare(format!(
                    "SELECT count(*) FROM {keyspace}.node_intents WHERE shard = 0"
                ))
                .await
                .unwrap(),
            (),
        )
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![0],
        "intents left stored after every event finished"
    );
    let reopened = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(reopened.recover().await.unwrap(), 0);
    assert_eq!(entries_of_user_1(&reopened).await, events + 1);
    drop_keyspace(&session, &keyspace).await;
}

/// An intent an earlier version left in `pending_events` (one row per
/// event, deleted on its own) is finished by the recovery, and removed.
#[tokio::test]
async fn an_intent_left_in_the_old_table_is_finished() {
    let keyspace = unique_keyspace("intent_legacy");
    let (session, store) = open_store(&keyspace).await;
    let commit = event(16);
    let (shard, event_id) = intents::pending_key(&commit);
    let intent = intents::PendingEvent::from_commit(&commit, store.next_timestamp().unwrap())
        .encode_to_vec();
    session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.pending_events (shard, event_id, event) VALUES (?, ?, ?)"
            ),
            (shard, event_id, intent),
        )
        .await
        .unwrap();
    let reopened = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(reopened.recover().await.unwrap(), 1);
    assert_eq!(
        reopened.recover().await.unwrap(),
        0,
        "removed once finished"
    );
    assert_eq!(entries_of_user_1(&reopened).await, 1);
    drop_keyspace(&session, &keyspace).await;
}

/// Every opening takes a run above the last one, so a later run's intents
/// never fall under an earlier run's range deletions.
#[tokio::test]
async fn every_opening_takes_a_later_run() {
    let keyspace = unique_keyspace("intent_runs");
    let (session, first) = open_store(&keyspace).await;
    let second = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(second.node.run, first.node.run + 1);
    // An intent of the first run, never finished: the second run's
    // recovery finishes it and removes it, and the third finds nothing.
    first.store_intent(&event(32)).await.unwrap();
    assert_eq!(second.recover().await.unwrap(), 1);
    let third = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(third.recover().await.unwrap(), 0);
    drop_keyspace(&session, &keyspace).await;
}

/// Openings at the same moment still take runs of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openings_at_once_take_distinct_runs() {
    let keyspace = unique_keyspace("intent_runs_at_once");
    let (session, first) = open_store(&keyspace).await;
    let opened = futures_util::future::try_join_all(
        (0..6).map(|_| ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)),
    )
    .await
    .unwrap();
    let mut runs: Vec<u64> = opened.iter().map(|store| store.node.run).collect();
    runs.sort_unstable();
    assert_eq!(
        runs,
        (first.node.run + 1..=first.node.run + 6).collect::<Vec<_>>()
    );
    drop_keyspace(&session, &keyspace).await;
}

/// More unfinished intents in one partition than a page of the recovery:
/// every one is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recovery_reads_leftovers_page_by_page() {
    let keyspace = unique_keyspace("intent_pages");
    let (session, store) = open_store(&keyspace).await;
    let events = node_intents::LEFTOVER_PAGE as u64 * 2 + 7;
    let msg_ids = (1..=events).map(|i| i * PENDING_SHARDS as u64);
    // Only the intents, as a crash right after them leaves them.
    futures_util::stream::iter(msg_ids.map(|msg_id| {
        let store = store.clone();
        async move { store.store_intent(&event(msg_id)).await.map(|_| ()) }
    }))
    .buffer_unordered(32)
    .for_each(|stored| async move { stored.unwrap() })
    .await;
    let reopened = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(reopened.recover().await.unwrap(), events as usize);
    assert_eq!(entries_of_user_1(&reopened).await, events);
    drop_keyspace(&session, &keyspace).await;
}
