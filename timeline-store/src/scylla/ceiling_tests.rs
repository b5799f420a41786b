//! Row order between successive writers whose clocks disagree, against a
//! real CQL server: the lease's timestamp ceiling, not the clocks, puts a
//! new writer's rewrites above an old writer's late statements.

use super::fencing_tests::{
    SPAN, assert_rewrites_survived, inbox_texts, membership_commit, message_commit, read_state,
    recall, stored_intents,
};
use super::tests::{connect, drop_keyspace, open_store, unique_keyspace};
use super::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn wall_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_micros() as i64
}

/// A node whose clock runs `ahead` of this machine's.
fn clock_ahead_by(ahead: Duration) -> Arc<WriterClock> {
    let ahead = ahead.as_micros() as i64;
    Arc::new(WriterClock::with_clock(move || wall_micros() + ahead))
}

/// The old writer's clock runs ten seconds ahead of the new writer's. It
/// stored two intents (a message, a member added) and began a read-state
/// save, then froze; the new writer claimed the lease, finished the
/// intents, recalled the message, removed the member and saved newer read
/// states, all within those ten seconds. Then the old writer's rows land.
/// By the clocks they are newer; by the lease's ceiling they are older,
/// and the new writer's rewrites must stay.
#[tokio::test]
async fn a_new_writer_whose_clock_is_behind_still_supersedes_the_old_writers_late_rows() {
    let keyspace = unique_keyspace("skew");
    let (session, store) = open_store(&keyspace).await;
    let lease = WriterLeaseTable::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    let ahead = clock_ahead_by(Duration::from_secs(10));
    let epoch = lease.claim("old:1", None, &ahead, SPAN).await.unwrap();
    let old = store
        .fenced(&keyspace, epoch.unwrap(), Arc::clone(&ahead))
        .await
        .unwrap();
    let message = message_commit(902, 2, 12);
    let added = membership_commit(crate::EntryKind::MembersAdded, 903, 3, vec![1, 2, 3]);
    let stored = [
        old.store_intent(&message).await.unwrap(),
        old.store_intent(&added).await.unwrap(),
    ];
    let started = old.read_state_save().await.unwrap();

    // The old writer is frozen; the new one, on this machine's clock,
    // claims the row as it saw it.
    let behind = Arc::new(WriterClock::new());
    let seen = lease.read().await.unwrap().unwrap();
    let epoch = lease
        .claim("new:1", Some(&seen), &behind, SPAN)
        .await
        .unwrap()
        .expect("the claim names the row as it is");
    let new = store
        .fenced(&keyspace, epoch, Arc::clone(&behind))
        .await
        .unwrap();
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
    new.save_read_states(7, 20, vec![read_state(5, 20)])
        .await
        .unwrap();

    // The old writer resumes and its statements land.
    for intent in &stored {
        old.apply_stored(intent).await.unwrap();
    }
    old.write_read_states(started, 7, 30, vec![read_state(5, 15)])
        .await
        .unwrap();

    assert_rewrites_survived(&new, &recalled).await;
    let states = new.read_states(7).await.unwrap();
    assert_eq!(
        (states.applied_seq, states.rows),
        (20, vec![read_state(5, 20)]),
        "the newer read states stay"
    );
    drop_keyspace(&session, &keyspace).await;
}

/// A writer whose lease granted no more timestamps (it was not renewed in
/// time) is refused before anything is written; once a renewal applies it
/// writes again.
#[tokio::test]
async fn a_writer_past_its_ceiling_stores_nothing() {
    let keyspace = unique_keyspace("ceiling");
    let (session, store) = open_store(&keyspace).await;
    let lease = WriterLeaseTable::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    let clock = Arc::new(WriterClock::new());
    let epoch = lease
        .claim("a:1", None, &clock, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    // A span of zero: the claim's ceiling is its floor, nothing above it
    // is granted.
    let writer = store
        .fenced(&keyspace, epoch, Arc::clone(&clock))
        .await
        .unwrap();
    let refused = writer.commit_event(message_commit(901, 1, 11)).await;
    assert!(
        matches!(&refused, Err(StoreError::Fenced(m)) if m.contains("not renewed in time")),
        "{refused:?}"
    );
    let saved = writer
        .save_read_states(7, 10, vec![read_state(5, 10)])
        .await;
    assert!(matches!(saved, Err(StoreError::Fenced(_))), "{saved:?}");
    assert!(inbox_texts(&writer).await.is_empty());
    assert_eq!(stored_intents(&session, &keyspace).await, 0);
    assert_eq!(writer.read_states(7).await.unwrap().applied_seq, 0);

    assert!(lease.renew("a:1", epoch, 0, &clock, SPAN).await.unwrap());
    writer
        .commit_event(message_commit(901, 1, 11))
        .await
        .unwrap();
    assert_eq!(inbox_texts(&writer).await, ["message 901"]);
    drop_keyspace(&session, &keyspace).await;
}

/// A keyspace whose `writer_lease` an earlier version made has no ceiling
/// or protocol columns: opening the table adds them (twice is fine), the
/// old row reads without either, and a claim of it starts from this node's
/// clock and records both.
#[tokio::test]
async fn a_lease_table_from_an_earlier_version_gains_the_ceiling() {
    let keyspace = unique_keyspace("upgrade");
    let (config, session) = connect(&keyspace).await;
    for statement in [
        format!(
            "CREATE TABLE {keyspace}.writer_lease (name text PRIMARY KEY, holder text, epoch bigint, renewals bigint)"
        ),
        format!(
            "INSERT INTO {keyspace}.writer_lease (name, holder, epoch, renewals) VALUES ('writer', 'old:1', 3, 7)"
        ),
    ] {
        session.query_unpaged(statement, ()).await.unwrap();
    }
    let lease = WriterLeaseTable::open(Arc::clone(&session), &config.keyspace)
        .await
        .unwrap();
    WriterLeaseTable::open(Arc::clone(&session), &config.keyspace)
        .await
        .expect("a second open finds the column there");
    let seen = lease.read().await.unwrap().unwrap();
    assert_eq!(
        seen,
        LeaseRecord {
            holder: "old:1".into(),
            epoch: 3,
            renewals: 7,
            ceiling: None,
            protocol: None,
        }
    );
    let clock = WriterClock::new();
    let before = wall_micros();
    assert_eq!(
        lease
            .claim("new:1", Some(&seen), &clock, SPAN)
            .await
            .unwrap(),
        Some(4)
    );
    let claimed = lease.read().await.unwrap().unwrap();
    assert_eq!(claimed.protocol, Some(CLUSTER_PROTOCOL));
    let ceiling = claimed.ceiling.expect("the claim records a ceiling");
    assert!(ceiling >= before + SPAN.as_micros() as i64);
    assert_eq!(clock.grant(), Some((4, ceiling)));
    let first = clock.next(4).unwrap();
    assert!(first >= before && first < ceiling);
    drop_keyspace(&session, &keyspace).await;
}
