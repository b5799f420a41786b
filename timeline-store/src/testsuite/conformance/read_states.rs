//! The [`ReadStates`](crate::ReadStates) contract, and read markers as
//! inbox-only entries.

use super::{BASE, fanout, history_len, read_inbox};
use crate::{Entry, EntryKind, MessagePreview, ReadStateRow, TimelineStore};

fn row(conversation_id: u64, last_seq: u64, unread: u64) -> ReadStateRow {
    ReadStateRow {
        conversation_id,
        member: true,
        read_through: 3,
        unread,
        counted_through: 9,
        joined_conv_seq: 1,
        last_seq,
        last_activity_ms: 1_700_000_000_000 + last_seq as i64,
        last_message: Some(MessagePreview {
            conv_seq: 9,
            msg_id: 77,
            sender_id: 5,
            text: "préview".into(),
            sent_at_ms: 1_700_000_000_009,
            removed: false,
            edited: true,
        }),
        mentions: unread / 2,
        peer_read_through: 2,
        cleared_through: 1,
        hidden: vec![3, 5],
    }
}

pub(super) async fn read_states_round_trip_and_never_go_behind<S: TimelineStore>(store: &S) {
    let user = BASE + 300;
    let empty = store.read_states(user).await.unwrap();
    assert_eq!(empty.applied_seq, 0, "a user never saved starts at seq 0");
    assert!(empty.rows.is_empty());

    let (a, b) = (BASE + 301, BASE + 302);
    store
        .save_read_states(user, 10, vec![row(a, 10, 2), row(b, 8, 0)])
        .await
        .unwrap();
    let mut first = row(a, 10, 2);
    first.last_message = None;
    // A later save replaces one row and keeps the other.
    store
        .save_read_states(user, 12, vec![row(a, 12, 5)])
        .await
        .unwrap();
    let snapshot = store.read_states(user).await.unwrap();
    assert_eq!(snapshot.applied_seq, 12);
    let mut rows = snapshot.rows.clone();
    rows.sort_by_key(|r| r.conversation_id);
    assert_eq!(rows, vec![row(a, 12, 5), row(b, 8, 0)]);

    // A late save of an older fold changes nothing.
    store.save_read_states(user, 11, vec![first]).await.unwrap();
    let after = store.read_states(user).await.unwrap();
    assert_eq!(after.applied_seq, 12, "the applied seq never goes back");
    let mut rows = after.rows;
    rows.sort_by_key(|r| r.conversation_id);
    assert_eq!(rows, vec![row(a, 12, 5), row(b, 8, 0)]);

    // Another user's state is its own.
    assert!(store.read_states(user + 1).await.unwrap().rows.is_empty());
}

pub(super) async fn read_markers_stay_out_of_the_conversation_timeline<S: TimelineStore>(
    store: &S,
) {
    let (conv, user) = (BASE + 310, BASE + 311);
    let marker = Entry {
        msg_id: 31_001,
        conv_seq: 4,
        read_through: 3,
        unread: 1,
        sent_at_ms: 1_700_000_000_000,
        ..Entry::new(EntryKind::ReadMarker, conv)
    };
    store
        .commit_event(fanout(marker.clone(), &[(user, 1)]))
        .await
        .unwrap();
    assert_eq!(
        history_len(store, conv, 10).await,
        0,
        "History never shows a marker"
    );
    let inbox = read_inbox(store, user, 0, u64::MAX, 10).await;
    assert_eq!(inbox, vec![Entry { seq: 1, ..marker }]);
}

pub(super) async fn read_states_survive_reopen<S: TimelineStore>(store: &S) {
    let snapshot = store.read_states(BASE + 300).await.unwrap();
    assert_eq!(snapshot.applied_seq, 12);
    assert_eq!(snapshot.rows.len(), 2);
}

pub(super) async fn readers_keep_each_members_highest_marker<S: TimelineStore>(store: &S) {
    use crate::ReaderMark;
    let conv = BASE + 320;
    let mark = |user_id, read_through, joined| ReaderMark {
        user_id,
        read_through,
        joined,
    };
    for (seq, marks) in [
        (1, vec![mark(2, 5, 0), mark(3, 1, 1)]),
        (2, vec![mark(2, 3, 0), mark(4, 0, 2)]),
        (3, vec![mark(3, 7, 0), mark(4, 2, 0)]),
        (4, vec![mark(3, 0, 0)]),
    ] {
        let mut commit = fanout(
            Entry {
                msg_id: 32_000 + seq,
                conv_seq: seq,
                ..Entry::new(EntryKind::ReadMarker, conv)
            },
            &[(BASE + 321, seq)],
        );
        commit.readers = marks;
        store.commit_event(commit).await.unwrap();
    }
    assert_eq!(
        store.reader_marks(conv, &[2, 3, 4]).await.unwrap(),
        vec![mark(2, 5, 0), mark(3, 7, 1), mark(4, 2, 2)],
        "a lower marker or join never replaces a higher one"
    );
    assert_eq!(
        store.reader_marks(conv, &[9, 4, 2, 4]).await.unwrap(),
        vec![mark(2, 5, 0), mark(4, 2, 2)],
        "only the users asked about, each once, ascending; users without a mark are left out"
    );
    assert!(store.reader_marks(conv, &[]).await.unwrap().is_empty());
    assert!(
        store
            .reader_marks(conv + 1, &[2, 3, 4])
            .await
            .unwrap()
            .is_empty()
    );

    // More users than one lookup asks the backend for at once.
    let big = conv + 2;
    let mut commit = fanout(
        Entry {
            msg_id: 32_100,
            conv_seq: 1,
            ..Entry::new(EntryKind::ReadMarker, big)
        },
        &[(BASE + 322, 1)],
    );
    commit.readers = (1..=250).map(|u| mark(u * 2, u, 0)).collect();
    store.commit_event(commit).await.unwrap();
    let asked: Vec<u64> = (1..=500).rev().collect();
    let expected: Vec<ReaderMark> = (1..=250).map(|u| mark(u * 2, u, 0)).collect();
    assert_eq!(store.reader_marks(big, &asked).await.unwrap(), expected);
}
