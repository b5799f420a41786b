//! The writer lease and the fence against a real CQL server: what a
//! superseded writer can still do, and what it can no longer change.

use super::tests::{connect, drop_keyspace, open_store, unique_keyspace};
use super::*;
use std::time::Duration;

/// The ceiling span of these tests' leases.
pub(super) const SPAN: Duration = Duration::from_secs(60);

/// A clock holding `epoch` from now on, as a claim of a row without a
/// ceiling would begin it.
pub(super) fn clock(epoch: u64) -> Arc<WriterClock> {
    let clock = WriterClock::new();
    let (floor, ceiling) = clock.claim_grant(None, SPAN);
    clock.begin(epoch, floor, ceiling);
    Arc::new(clock)
}

pub(super) fn message_commit(msg_id: u64, conv_seq: u64, inbox_seq: u64) -> EventCommit {
    EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq,
            msg_id,
            text: format!("message {msg_id}"),
            ..Entry::new(crate::EntryKind::Message, 5)
        },
        inbox: vec![crate::InboxWrite {
            user_id: 1,
            seq: inbox_seq,
        }],
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        readers: Vec::new(),
        members: Vec::new(),
    }
}

pub(super) async fn inbox_texts(store: &ScyllaTimelineStore) -> Vec<String> {
    store
        .read_inbox(1, InboxRange::new(0, 1_000, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|entry| entry.text)
        .collect()
}

#[tokio::test]
async fn the_writer_lease_is_won_by_one_claim_and_renewed_only_by_its_holder() {
    let keyspace = unique_keyspace("lease");
    let (config, session) = connect(&keyspace).await;
    let lease = WriterLeaseTable::open(Arc::clone(&session), &config.keyspace)
        .await
        .unwrap();
    let (a, b) = (WriterClock::new(), WriterClock::new());
    assert_eq!(lease.read().await.unwrap(), None);
    assert_eq!(lease.claim("a:1", None, &a, SPAN).await.unwrap(), Some(1));
    assert_eq!(
        lease.claim("b:1", None, &b, SPAN).await.unwrap(),
        None,
        "already claimed"
    );
    assert_eq!(b.grant(), None, "a claim that did not apply grants nothing");
    let first = lease.read().await.unwrap().unwrap();
    assert_eq!(
        (first.holder.as_str(), first.epoch, first.renewals),
        ("a:1", 1, 0)
    );
    assert_eq!(a.grant(), Some((1, first.ceiling.unwrap())));
    assert!(lease.renew("a:1", 1, 0, &a, SPAN).await.unwrap());
    assert!(
        !lease.renew("b:1", 1, 1, &b, SPAN).await.unwrap(),
        "not the holder"
    );
    assert!(
        !lease.renew("a:1", 1, 0, &a, SPAN).await.unwrap(),
        "a renewal from a stale read (one that timed out and applied) leaves the row alone"
    );
    // A takeover must name the row exactly as it is now.
    assert_eq!(
        lease.claim("b:1", Some(&first), &b, SPAN).await.unwrap(),
        None
    );
    let renewed = lease.read().await.unwrap().unwrap();
    assert_eq!(renewed.renewals, 1);
    assert!(
        renewed.ceiling >= first.ceiling,
        "a renewal never lowers it"
    );
    assert_eq!(a.grant(), Some((1, renewed.ceiling.unwrap())));
    assert_eq!(
        lease.claim("b:1", Some(&renewed), &b, SPAN).await.unwrap(),
        Some(2)
    );
    assert!(
        !lease.renew("a:1", 1, 1, &a, SPAN).await.unwrap(),
        "taken over"
    );
    let now = lease.read().await.unwrap().unwrap();
    assert_eq!(
        (now.holder.as_str(), now.epoch, now.renewals),
        ("b:1", 2, 0)
    );
    // The new holder issues above the ceiling the old one last had.
    assert!(b.next(2).unwrap() > renewed.ceiling.unwrap());
    assert!(now.ceiling.unwrap() > renewed.ceiling.unwrap());
    drop_keyspace(&session, &keyspace).await;
}

/// Every claim records this version's protocol with its epoch; an epoch
/// claimed by a version that does not record one reads as `None`, even
/// though the row keeps the protocol an earlier claim wrote.
#[tokio::test]
async fn a_claim_records_its_protocol_for_its_epoch_only() {
    let keyspace = unique_keyspace("protocol");
    let (config, session) = connect(&keyspace).await;
    let lease = WriterLeaseTable::open(Arc::clone(&session), &config.keyspace)
        .await
        .unwrap();
    let clock = WriterClock::new();
    lease.claim("a:1", None, &clock, SPAN).await.unwrap();
    let first = lease.read().await.unwrap().unwrap();
    assert_eq!(first.protocol, Some(CLUSTER_PROTOCOL));
    assert!(lease.renew("a:1", 1, 0, &clock, SPAN).await.unwrap());
    assert_eq!(
        lease.read().await.unwrap().unwrap().protocol,
        Some(CLUSTER_PROTOCOL),
        "a renewal keeps the epoch's protocol"
    );
    // What an earlier version's takeover writes: holder, epoch, counter.
    session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.writer_lease SET holder = 'old:1', epoch = 2, renewals = 0 WHERE name = 'writer' IF epoch = 1"
            ),
            (),
        )
        .await
        .unwrap();
    let old = lease.read().await.unwrap().unwrap();
    assert_eq!((old.holder.as_str(), old.epoch), ("old:1", 2));
    assert_eq!(old.protocol, None, "epoch 2 was claimed without a protocol");
    let other = WriterClock::new();
    assert_eq!(
        lease.claim("b:1", Some(&old), &other, SPAN).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        lease.read().await.unwrap().unwrap().protocol,
        Some(CLUSTER_PROTOCOL)
    );
    drop_keyspace(&session, &keyspace).await;
}

#[tokio::test]
async fn a_superseded_writer_stores_nothing_and_its_stored_intents_are_finished_by_the_next() {
    let keyspace = unique_keyspace("fence");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    old.commit_event(message_commit(901, 1, 11)).await.unwrap();
    // The old writer stored an intent and froze before writing its rows.
    let frozen = message_commit(902, 2, 12);
    old.store_intent(&frozen).await.unwrap();
    assert_eq!(inbox_texts(&store).await, ["message 901"]);

    let new = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    // Sealed: the old writer can store no further intent, so none of its
    // rows can follow.
    let late = old.commit_event(message_commit(903, 3, 13)).await;
    assert!(
        matches!(late, Err(StoreError::Fenced(_))),
        "a superseded writer's commit must be refused: {late:?}"
    );
    assert_eq!(
        new.recover().await.unwrap(),
        1,
        "the frozen intent is finished"
    );
    assert_eq!(inbox_texts(&new).await, ["message 901", "message 902"]);
    assert_eq!(new.recover().await.unwrap(), 0, "and removed");
    new.commit_event(message_commit(904, 4, 14)).await.unwrap();
    assert_eq!(
        inbox_texts(&new).await,
        ["message 901", "message 902", "message 904"]
    );
    // An older epoch can never seal again.
    assert!(matches!(
        store.fenced(&keyspace, 1, clock(1)).await,
        Err(StoreError::Fenced(_))
    ));
    drop_keyspace(&session, &keyspace).await;
}

pub(super) fn conversation_record(members: Vec<u64>) -> Conversation {
    Conversation {
        conversation_id: 5,
        kind: crate::ConversationKind::Group,
        member_count: members.len() as u64,
        members,
        title: "fenced".into(),
        created_at_ms: 1,
        read_fanout: false,
    }
}

/// A recall of `message`, made by event `msg_id` at `conv_seq`.
pub(super) fn recall(message: &EventCommit, msg_id: u64, conv_seq: u64) -> (EventCommit, Entry) {
    let recalled = Entry {
        text: String::new(),
        state: crate::MessageState {
            removed: Some(crate::Removal {
                kind: crate::RemovalKind::Recalled,
                by: 0,
                at_ms: 5,
                conv_seq,
            }),
            ..crate::MessageState::default()
        },
        ..message.entry.clone()
    };
    let commit = EventCommit {
        rewrites: vec![crate::Rewrite {
            entry: recalled.clone(),
            inbox: message.inbox.clone(),
        }],
        entry: Entry {
            conv_seq,
            msg_id,
            ..Entry::new(crate::EntryKind::Recall, 5)
        },
        ..message_commit(msg_id, conv_seq, conv_seq + 10)
    };
    (commit, recalled)
}
/// A membership change of conversation 5 leaving `members` in its record.
pub(super) fn membership_commit(
    kind: crate::EntryKind,
    msg_id: u64,
    conv_seq: u64,
    members: Vec<u64>,
) -> EventCommit {
    EventCommit {
        entry: Entry {
            conv_seq,
            msg_id,
            ..Entry::new(kind, 5)
        },
        conversation: Some(conversation_record(members)),
        ..message_commit(msg_id, conv_seq, conv_seq + 10)
    }
}

/// The new writer's recall of message 902 (conv_seq 2, inbox seq 12) and
/// its removal of member 3 survived the old writer's late rows.
pub(super) async fn assert_rewrites_survived(new: &ScyllaTimelineStore, recalled: &Entry) {
    let inbox = new
        .read_inbox(1, InboxRange::new(0, 100, 10))
        .await
        .unwrap();
    assert_eq!(
        inbox[0],
        Entry {
            seq: 12,
            ..recalled.clone()
        },
        "the recalled copy stays recalled"
    );
    let history = new
        .read_conversation(5, ConversationRange::oldest_first(0, 100, 10))
        .await
        .unwrap();
    assert_eq!(history[0], *recalled, "the recalled message stays recalled");
    assert_eq!(
        new.conversation(5).await.unwrap().unwrap().members,
        vec![1, 2],
        "the removed member stays removed"
    );
}

/// A writer froze after storing two intents and before issuing their rows
/// (a message and a membership change); the next writer finished both,
/// then recalled the message and removed a member. The rows the frozen
/// writer issues when it resumes must lose to those newer writes.
#[tokio::test]
async fn a_frozen_writers_late_rows_lose_to_the_next_writers_rewrites() {
    let keyspace = unique_keyspace("late");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    let message = message_commit(902, 2, 12);
    let added = membership_commit(crate::EntryKind::MembersAdded, 903, 3, vec![1, 2, 3]);
    let frozen = [message.clone(), added.clone()];
    let mut stored = Vec::new();
    for commit in &frozen {
        stored.push(old.store_intent(commit).await.unwrap());
    }

    let new = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    assert_eq!(new.recover().await.unwrap(), 2);
    let (recall, recalled) = recall(&message, 904, 4);
    new.commit_event(recall).await.unwrap();
    new.commit_event(membership_commit(
        crate::EntryKind::MembersRemoved,
        905,
        5,
        vec![1, 2],
    ))
    .await
    .unwrap();

    // The frozen writer resumes and issues the rows of its stored intents.
    for intent in &stored {
        old.apply_stored(intent).await.unwrap();
    }
    assert_rewrites_survived(&new, &recalled).await;
    drop_keyspace(&session, &keyspace).await;
}

pub(super) fn read_state(conversation_id: u64, read_through: u64) -> ReadStateRow {
    ReadStateRow {
        conversation_id,
        member: true,
        read_through,
        last_seq: read_through,
        ..ReadStateRow::default()
    }
}

/// Read states are no event (no intent): a superseded writer's save is
/// refused, and one it had started before it froze loses to the next
/// writer's.
#[tokio::test]
async fn a_superseded_writer_cannot_set_read_states_back() {
    let keyspace = unique_keyspace("readstate");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    old.save_read_states(7, 10, vec![read_state(5, 10)])
        .await
        .unwrap();
    let started = old.read_state_save().await.unwrap();

    let new = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    new.save_read_states(7, 20, vec![read_state(5, 20)])
        .await
        .unwrap();
    let refused = old.save_read_states(7, 30, vec![read_state(5, 15)]).await;
    assert!(
        matches!(refused, Err(StoreError::Fenced(_))),
        "a superseded writer's save must be refused: {refused:?}"
    );
    // A save the old writer began before it froze lands late.
    old.write_read_states(started, 7, 30, vec![read_state(5, 15)])
        .await
        .unwrap();
    let snapshot = new.read_states(7).await.unwrap();
    assert_eq!(snapshot.applied_seq, 20);
    assert_eq!(snapshot.rows, vec![read_state(5, 20)]);
    drop_keyspace(&session, &keyspace).await;
}

/// The intent rows (not the fence) the partitions hold now.
pub(super) async fn stored_intents(session: &Session, keyspace: &str) -> usize {
    let result = session
        .query_unpaged(format!("SELECT event FROM {keyspace}.fenced_intents"), ())
        .await
        .unwrap();
    let rows = result.into_rows_result().unwrap();
    rows.rows::<(Option<Vec<u8>>,)>()
        .unwrap()
        .filter(|row| row.as_ref().unwrap().0.is_some())
        .count()
}

/// A commit of one message per partition, to user 1 from `seq` up.
async fn one_per_partition(store: &ScyllaTimelineStore, first_msg: u64, seq: u64) {
    for i in 0..PENDING_SHARDS as u64 {
        store
            .commit_event(message_commit(first_msg + i, seq + i, seq + i))
            .await
            .unwrap();
    }
}

/// Finished intents go by range deletions, below the lowest one still
/// open in their partition; a takeover finds the open ones (and finished
/// ones above them in the same partition, which it applies again,
/// changing nothing).
#[tokio::test]
async fn finished_intents_are_removed_below_the_lowest_open_one() {
    let keyspace = unique_keyspace("clear");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    for i in 0..32 {
        old.commit_event(message_commit(1_000 + i, 100 + i, 100 + i))
            .await
            .unwrap();
    }
    tokio::time::sleep(open_intents::CLEAR_INTERVAL).await;
    one_per_partition(&old, 2_000, 200).await;
    assert_eq!(stored_intents(&session, &keyspace).await, 0);

    let frozen = message_commit(3_000, 300, 300);
    old.store_intent(&frozen).await.unwrap();
    tokio::time::sleep(open_intents::CLEAR_INTERVAL).await;
    one_per_partition(&old, 3_001, 301).await;
    // Only the open intent's own partition keeps what lies above it (its
    // one later intent); the other partitions removed theirs.
    assert_eq!(
        stored_intents(&session, &keyspace).await,
        2,
        "nothing at or above the open intent goes, and nothing else stays"
    );

    let new = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    assert_eq!(new.recover().await.unwrap(), 2);
    assert_eq!(stored_intents(&session, &keyspace).await, 0);
    assert_eq!(new.recover().await.unwrap(), 0);
    let texts = inbox_texts(&new).await;
    assert_eq!(texts.len(), 32 + 2 * PENDING_SHARDS as usize + 1);
    assert!(texts.contains(&"message 3000".to_owned()));
    drop_keyspace(&session, &keyspace).await;
}

/// Intents of one partition waiting together are stored by one
/// conditional batch: fewer transactions than intents, every one stored
/// (one larger than a batch goes alone); once a newer writer sealed, every
/// one of a batch is refused and none is stored.
#[tokio::test]
async fn intents_waiting_on_one_partition_are_stored_together_or_refused_together() {
    let keyspace = unique_keyspace("batches");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    // Message ids that all fall in intent partition 0.
    let partition_zero = |k: u64| (k + 1) * PENDING_SHARDS as u64;
    let mut commits: Vec<EventCommit> = (0..64)
        .map(|k| message_commit(partition_zero(k), 100 + k, 100 + k))
        .collect();
    commits[7].entry.text = "x".repeat(intent_batches::MAX_BATCH_BYTES + 1);
    let before = old.fence.as_ref().unwrap().intent_transactions();
    let stored =
        futures_util::future::join_all(commits.iter().map(|commit| old.store_intent(commit))).await;
    let errors: Vec<&StoreError> = stored.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let transactions = old.fence.as_ref().unwrap().intent_transactions() - before;
    // Queued before the partition's task runs: 0..7, the oversized one
    // alone, then two batches cut by the count bound (7 + 1 + 32 + 24).
    assert!(
        transactions <= 4,
        "64 intents waiting on one partition took {transactions} transactions, not 4"
    );
    assert_eq!(stored_intents(&session, &keyspace).await, 64);

    let new = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    let late: Vec<EventCommit> = (64..128)
        .map(|k| message_commit(partition_zero(k), 100 + k, 100 + k))
        .collect();
    let refused =
        futures_util::future::join_all(late.iter().map(|commit| old.store_intent(commit))).await;
    let not_fenced = refused
        .iter()
        .filter(|result| !matches!(result, Err(StoreError::Fenced(_))))
        .count();
    assert_eq!(
        not_fenced, 0,
        "a sealed partition refuses every intent of a batch"
    );
    assert_eq!(stored_intents(&session, &keyspace).await, 64);
    assert_eq!(new.recover().await.unwrap(), 64);
    assert_eq!(inbox_texts(&new).await.len(), 64);
    drop_keyspace(&session, &keyspace).await;
}

/// A batch that fails (here: its table is gone) fails every intent it
/// carries: no caller is left waiting, none is told its intent was stored
/// or fenced.
#[tokio::test]
async fn a_failed_batch_is_the_error_of_every_intent_it_carried() {
    let keyspace = unique_keyspace("batch_fails");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    session
        .query_unpaged(format!("DROP TABLE {keyspace}.fenced_intents"), ())
        .await
        .unwrap();
    let partition_zero = |k: u64| (k + 1) * PENDING_SHARDS as u64;
    let commits: Vec<EventCommit> = (0..64)
        .map(|k| message_commit(partition_zero(k), 100 + k, 100 + k))
        .collect();
    let before = old.fence.as_ref().unwrap().intent_transactions();
    let stored =
        futures_util::future::join_all(commits.iter().map(|commit| old.store_intent(commit))).await;
    let transactions = old.fence.as_ref().unwrap().intent_transactions() - before;
    assert!(
        (1..64).contains(&transactions),
        "{transactions} transactions for 64 intents: no batch of several failed"
    );
    for (k, result) in stored.iter().enumerate() {
        match result {
            Ok(_) => panic!("intent {k} of a failed batch was answered as stored"),
            Err(error @ StoreError::Fenced(_)) => {
                panic!("intent {k} of a failed batch was answered {error:?}")
            }
            Err(_) => {}
        }
    }
    drop_keyspace(&session, &keyspace).await;
}

/// Intents of a writer from before intents were numbered (one row per
/// event in `fenced_events`) are finished and removed by the next writer.
#[tokio::test]
async fn intents_left_in_the_unnumbered_table_are_finished() {
    let keyspace = unique_keyspace("legacy");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    let left = message_commit(950, 1, 11);
    let (shard, event_id) = pending_key(&left);
    session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.fenced_events (shard, event_id, event) VALUES (?, ?, ?)"
            ),
            (
                shard,
                event_id,
                PendingEvent::from_commit(&left, 0).encode_to_vec(),
            ),
        )
        .await
        .unwrap();
    drop(old);
    let new = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    assert_eq!(new.recover().await.unwrap(), 1);
    assert_eq!(inbox_texts(&new).await, ["message 950"]);
    assert_eq!(new.recover().await.unwrap(), 0, "and removed");
    drop_keyspace(&session, &keyspace).await;
}

/// More intents than a page in one partition, as a writer that froze
/// under load leaves them: the next writer reads and finishes them page
/// by page, then removes them.
#[tokio::test]
async fn a_takeover_finishes_a_partition_of_many_intents_page_by_page() {
    use futures_util::StreamExt;
    let keyspace = unique_keyspace("fence_pages");
    let (session, store) = open_store(&keyspace).await;
    let old = store.fenced(&keyspace, 1, clock(1)).await.unwrap();
    let events = super::node_intents::LEFTOVER_PAGE as u64 * 2 + 7;
    // Every intent in partition 0, none of its rows written.
    futures_util::stream::iter((1..=events).map(|i| {
        let old = &old;
        async move {
            let commit = message_commit(i * PENDING_SHARDS as u64, i, 10 + i);
            old.store_intent(&commit).await.map(|_| ())
        }
    }))
    .buffer_unordered(32)
    .for_each(|stored| async move { stored.unwrap() })
    .await;
    // A second writer froze too, leaving intents of its own epoch: the
    // pages run across both epochs.
    let second = store.fenced(&keyspace, 2, clock(2)).await.unwrap();
    let more = 10;
    for i in events + 1..=events + more {
        let commit = message_commit(i * PENDING_SHARDS as u64, i, 10 + i);
        second.store_intent(&commit).await.unwrap();
    }
    let events = events + more;
    let new = store.fenced(&keyspace, 3, clock(3)).await.unwrap();
    assert_eq!(new.recover().await.unwrap(), events as usize);
    let inbox = new
        .read_inbox(1, InboxRange::new(0, u64::MAX, 10_000))
        .await
        .unwrap();
    assert_eq!(inbox.len() as u64, events);
    assert_eq!(new.recover().await.unwrap(), 0, "and removed");
    drop_keyspace(&session, &keyspace).await;
}
