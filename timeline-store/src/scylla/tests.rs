use super::row_batches::{Row, RowKind};
use super::writes::entry_values;
use super::*;
use crate::ConversationMembers;

/// The CQL server the README's test command starts; these tests fail
/// (never skip) without one.
pub(super) fn cql_nodes() -> String {
    std::env::var("TIMELINE_CQL_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

pub(super) fn unique_keyspace(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tl_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

pub(super) async fn drop_keyspace(session: &Session, keyspace: &str) {
    session
        .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
        .await
        .unwrap();
}

pub(super) async fn connect(keyspace: &str) -> (ScyllaConfig, Arc<Session>) {
    let url = format!("scylla://{}/{keyspace}?replication=1", cql_nodes());
    let config = ScyllaConfig::parse(&url).unwrap();
    let session = config.connect().await.unwrap_or_else(|e| {
        panic!(
            "no CQL server at {}: {e}. Start one with `scripts/cql-server start`",
            cql_nodes()
        )
    });
    (config, session)
}

/// A store on a keyspace of its own, and the session to drop it with.
pub(super) async fn open_store(keyspace: &str) -> (Arc<Session>, ScyllaTimelineStore) {
    let (config, session) = connect(keyspace).await;
    let store = ScyllaTimelineStore::open(Arc::clone(&session), &config.keyspace)
        .await
        .unwrap();
    (session, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scylla_store_passes_the_conformance_suite() {
    let keyspace = unique_keyspace("conformance");
    let (config, session) = connect(&keyspace).await;
    let open = || {
        let session = Arc::clone(&session);
        let keyspace = config.keyspace.clone();
        async move { ScyllaTimelineStore::open(session, &keyspace).await.unwrap() }
    };
    crate::testsuite::conformance::run_all(open).await;
    drop_keyspace(&session, &keyspace).await;
}

#[tokio::test]
async fn interrupted_events_are_finished_by_recover() {
    let keyspace = unique_keyspace("recover");
    let (session, store) = open_store(&keyspace).await;
    let key = IdempotencyKey {
        principal: "u:1".into(),
        client_msg_id: uuid::Uuid::from_u128(77),
    };
    let receipt = Receipt {
        conversation_id: 5,
        conv_seq: 3,
        msg_id: 900,
        sent_at_ms: 1,
        fingerprint: 0,
    };
    let commit = EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq: 3,
            msg_id: 900,
            text: "half".into(),
            ..Entry::new(crate::EntryKind::Message, 5)
        },
        inbox: (1..=20)
            .map(|user_id| crate::InboxWrite {
                user_id,
                seq: 40 + user_id,
            })
            .collect(),
        receipt: Some((key.clone(), receipt.clone())),
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    };
    // A crash after the intent and the first inbox copy, before the rest.
    let at = store.store_intent(&commit).await.unwrap().written_at;
    let copy = Row {
        kind: RowKind::Inbox,
        values: entry_values(1, 41, EntryEncoder::new(&commit.entry).inbox(41), at),
    };
    store
        .write_rows(vec![(Timeline::Inbox, 1, bucket_of(41))], vec![copy], at)
        .await
        .unwrap();
    assert!(store.receipt(&key).await.unwrap().is_none());

    let reopened = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(reopened.recover().await.unwrap(), 1);
    for user in 1..=20u64 {
        let inbox = reopened
            .read_inbox(user, InboxRange::new(0, 1_000, 10))
            .await
            .unwrap();
        assert_eq!(inbox.len(), 1, "user {user} has the entry exactly once");
        assert_eq!((inbox[0].seq, inbox[0].text.as_str()), (40 + user, "half"));
    }
    assert_eq!(
        reopened
            .read_conversation(5, ConversationRange::oldest_first(0, 100, 10))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(reopened.receipt(&key).await.unwrap(), Some(receipt));
    assert_eq!(
        reopened.recover().await.unwrap(),
        0,
        "intents are deleted once finished"
    );
    drop_keyspace(&session, &keyspace).await;
}

/// A membership event of a large group interrupted after its intent: its
/// member-table rows are written by `recover`, and an older event applied
/// again never undoes a later change of the same row.
#[tokio::test]
async fn an_interrupted_membership_change_is_finished_by_recover() {
    let keyspace = unique_keyspace("members");
    let (session, store) = open_store(&keyspace).await;
    let event = |conv_seq: u64, users: std::ops::RangeInclusive<u64>, member: bool| EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq,
            msg_id: 700 + conv_seq,
            ..Entry::new(crate::EntryKind::MembersAdded, 8)
        },
        inbox: Vec::new(),
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: users
            .map(|user_id| crate::MemberChange { user_id, member })
            .collect(),
        readers: Vec::new(),
    };
    let joined = event(5, 1..=1_000, true);
    // Only the intent, as a crash right after it leaves it.
    store.store_intent(&joined).await.unwrap();
    assert!(store.list_members(8, 0, 10).await.unwrap().is_empty());

    let reopened = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(reopened.recover().await.unwrap(), 1);
    let all = reopened.list_members(8, 0, 2_000).await.unwrap();
    assert_eq!(all, (1..=1_000).collect::<Vec<_>>());

    reopened
        .commit_event(event(6, 1..=10, false))
        .await
        .unwrap();
    // The join applied once more, as a late retry would: still removed.
    reopened.commit_event(joined).await.unwrap();
    assert_eq!(
        reopened.list_members(8, 0, 5).await.unwrap(),
        vec![11, 12, 13, 14, 15],
        "former members' rows are skipped"
    );
    assert_eq!(
        reopened
            .members_among(8, &[1, 10, 11, 2_000])
            .await
            .unwrap(),
        vec![11]
    );
    drop_keyspace(&session, &keyspace).await;
}

#[tokio::test]
async fn reads_cross_buckets_and_skip_empty_ones() {
    let keyspace = unique_keyspace("buckets");
    let (session, store) = open_store(&keyspace).await;
    // Seqs far apart, as after restarts: buckets 0, 1 and 40 only.
    let seqs = [5u64, 65_535, 65_536, 70_000, 40 << BUCKET_BITS];
    for (i, &seq) in seqs.iter().enumerate() {
        let entry = Entry {
            msg_id: 900 + i as u64,
            conv_seq: seq,
            text: format!("e{i}"),
            ..Entry::new(crate::EntryKind::Message, 9)
        };
        let commit = EventCommit {
            keep_copies: false,
            rewrites: Vec::new(),
            entry,
            inbox: vec![crate::InboxWrite { user_id: 3, seq }],
            receipt: None,
            conversation: None,
            large_group_index: Vec::new(),
            members: Vec::new(),
            readers: Vec::new(),
        };
        store.commit_event(commit).await.unwrap();
    }
    let all = store
        .read_inbox(3, InboxRange::new(0, u64::MAX >> 1, 100))
        .await
        .unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    let middle = store
        .read_inbox(3, InboxRange::new(65_535, 70_000, 100))
        .await
        .unwrap();
    assert_eq!(
        middle.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [65_536, 70_000]
    );
    let limited = store
        .read_inbox(3, InboxRange::new(0, u64::MAX >> 1, 2))
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(store.last_inbox_seq(3).await.unwrap(), 40 << BUCKET_BITS);
    let newest = store
        .read_conversation(9, ConversationRange::newest_first(0, u64::MAX >> 1, 3))
        .await
        .unwrap();
    assert_eq!(
        newest.iter().map(|e| e.conv_seq).collect::<Vec<_>>(),
        [40 << BUCKET_BITS, 70_000, 65_536]
    );
    let oldest = store
        .read_conversation(9, ConversationRange::oldest_first(0, 65_536, 10))
        .await
        .unwrap();
    assert_eq!(
        oldest.iter().map(|e| e.conv_seq).collect::<Vec<_>>(),
        [5, 65_535]
    );
    drop_keyspace(&session, &keyspace).await;
}

/// A user's large-group index is read in pages: more groups than one
/// page holds all come back, in order, none twice.
#[tokio::test]
async fn large_group_index_reads_in_pages() {
    let keyspace = unique_keyspace("large_group_pages");
    let (session, store) = open_store(&keyspace).await;
    let insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.large_groups (user_id, conversation_id) VALUES (?, ?)"
        ))
        .await
        .unwrap();
    let groups: Vec<u64> = (1..=(2 * PAGE_ROWS as u64 + 345)).map(|i| i * 3).collect();
    for &group in &groups {
        session
            .execute_unpaged(&insert, (7i64, group as i64))
            .await
            .unwrap();
    }
    session
        .execute_unpaged(&insert, (8i64, 1i64))
        .await
        .unwrap();
    assert_eq!(store.large_groups(7).await.unwrap(), groups);
    assert_eq!(store.large_groups(8).await.unwrap(), vec![1]);
    assert!(store.large_groups(9).await.unwrap().is_empty());
    drop_keyspace(&session, &keyspace).await;
}

/// Receipts expire: every receipt row carries the retention window as
/// its TTL (they were kept forever).
#[tokio::test]
async fn receipts_expire_after_the_retention_window() {
    let keyspace = unique_keyspace("receipt_ttl");
    let (session, store) = open_store(&keyspace).await;
    let key = IdempotencyKey {
        principal: "u:1".into(),
        client_msg_id: uuid::Uuid::from_u128(5),
    };
    let receipt = Receipt {
        conversation_id: 1,
        conv_seq: 1,
        msg_id: 10,
        sent_at_ms: 1,
        fingerprint: 0,
    };
    let commit = EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq: 1,
            msg_id: 10,
            ..Entry::new(crate::EntryKind::Message, 1)
        },
        inbox: vec![crate::InboxWrite { user_id: 1, seq: 1 }],
        receipt: Some((key.clone(), receipt.clone())),
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    };
    store.commit_event(commit).await.unwrap();
    assert_eq!(store.receipt(&key).await.unwrap(), Some(receipt));
    let ttl: Option<i32> = session
        .query_unpaged(format!("SELECT TTL(receipt) FROM {keyspace}.receipts"), ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(Option<i32>,)>()
        .unwrap()
        .0;
    let window = crate::RECEIPT_RETENTION.as_secs() as i32;
    let ttl = ttl.expect("the receipt row has no TTL");
    assert!(ttl > window - 60 && ttl <= window, "TTL {ttl}");
    drop_keyspace(&session, &keyspace).await;
}

/// Two events without ids would share one recovery record, and one's
/// cleanup would delete the other's: refused before anything is written.
#[tokio::test]
async fn an_event_without_an_id_is_refused() {
    let keyspace = unique_keyspace("no_id");
    let (_session, store) = open_store(&keyspace).await;
    let commit = EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry: Entry {
            conv_seq: 1,
            ..Entry::new(crate::EntryKind::ReadMarker, 4)
        },
        inbox: vec![crate::InboxWrite { user_id: 1, seq: 1 }],
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    };
    let refused = store.commit_event(commit).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidArgument(_))),
        "{refused:?}"
    );
    let range = InboxRange::new(0, 10, 10);
    assert!(store.read_inbox(1, range).await.unwrap().is_empty());
}

/// A recall cut short after its intent (before any rewrite landed):
/// `recover` rewrites the message and every inbox copy without text.
#[tokio::test]
async fn an_interrupted_recall_is_finished_by_recover() {
    let keyspace = unique_keyspace("recall");
    let (session, store) = open_store(&keyspace).await;
    let copies: Vec<crate::InboxWrite> = (1..=5)
        .map(|user_id| crate::InboxWrite {
            user_id,
            seq: 10 + user_id,
        })
        .collect();
    let message = Entry {
        conv_seq: 2,
        msg_id: 700,
        sender_id: 1,
        text: "unsend me".into(),
        ..Entry::new(crate::EntryKind::Message, 8)
    };
    store
        .commit_event(EventCommit {
            keep_copies: true,
            rewrites: Vec::new(),
            entry: message.clone(),
            inbox: copies.clone(),
            receipt: None,
            conversation: None,
            large_group_index: Vec::new(),
            members: Vec::new(),
            readers: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(store.inbox_copies(8, 2).await.unwrap(), copies);
    let tombstone = Entry {
        text: String::new(),
        state: crate::MessageState {
            removed: Some(crate::Removal {
                kind: crate::RemovalKind::Recalled,
                by: 1,
                at_ms: 5,
                conv_seq: 3,
            }),
            ..crate::MessageState::default()
        },
        ..message.clone()
    };
    let recall = EventCommit {
        keep_copies: false,
        rewrites: vec![crate::Rewrite {
            entry: tombstone.clone(),
            inbox: copies.clone(),
        }],
        entry: Entry {
            conv_seq: 3,
            msg_id: 701,
            sender_id: 1,
            ..Entry::new(crate::EntryKind::Recall, 8)
        },
        inbox: (1..=5)
            .map(|user_id| crate::InboxWrite {
                user_id,
                seq: 20 + user_id,
            })
            .collect(),
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    };
    // Only the intent, as a crash right after it leaves it.
    store.store_intent(&recall).await.unwrap();
    let reopened = ScyllaTimelineStore::open(Arc::clone(&session), &keyspace)
        .await
        .unwrap();
    assert_eq!(reopened.recover().await.unwrap(), 1);
    for user in 1..=5u64 {
        let inbox = reopened
            .read_inbox(user, InboxRange::new(0, 1_000, 10))
            .await
            .unwrap();
        assert_eq!(inbox.len(), 2, "user {user}: the tombstone and the recall");
        assert_eq!(
            inbox[0],
            Entry {
                seq: 10 + user,
                ..tombstone.clone()
            }
        );
        assert_eq!(inbox[1].kind, crate::EntryKind::Recall);
    }
    let history = reopened
        .read_conversation(8, ConversationRange::oldest_first(0, 100, 10))
        .await
        .unwrap();
    assert_eq!(history[0], tombstone);
    drop_keyspace(&session, &keyspace).await;
}

/// A member who leaves has no row left in the member table (they stayed
/// as `member = false` rows forever, and every page of a churning group
/// read past them), and the deletion is ordered by `conv_seq` like the
/// inserts: a late join of an earlier event stays deleted, a later
/// rejoin comes back.
#[tokio::test]
async fn a_leave_deletes_the_member_row_in_conv_seq_order() {
    use crate::MemberChange;
    let keyspace = unique_keyspace("member_rows");
    let (session, store) = open_store(&keyspace).await;
    let group = 77;
    let change = |user_id, member| MemberChange { user_id, member };
    for user in 1..=5 {
        store
            .write_member(group, 1, change(user, true))
            .await
            .unwrap();
    }
    for user in [2, 4] {
        store
            .write_member(group, 2, change(user, false))
            .await
            .unwrap();
    }
    let rows = |session: Arc<Session>, keyspace: String| async move {
        let result = session
            .query_unpaged(
                format!("SELECT user_id FROM {keyspace}.conversation_members WHERE conversation_id = {group}"),
                (),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        result
            .rows::<(i64,)>()
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect::<Vec<i64>>()
    };
    assert_eq!(
        rows(Arc::clone(&session), keyspace.clone()).await,
        vec![1, 3, 5]
    );
    assert_eq!(
        store.list_members(group, 0, 10).await.unwrap(),
        vec![1, 3, 5]
    );

    // The join of event 1 applied again late (a recovery) loses to the
    // leave of event 2; a rejoin at event 3 wins.
    store.write_member(group, 1, change(2, true)).await.unwrap();
    store.write_member(group, 3, change(4, true)).await.unwrap();
    assert_eq!(
        store.list_members(group, 0, 10).await.unwrap(),
        vec![1, 3, 4, 5]
    );
    assert_eq!(store.members_among(group, &[2, 4]).await.unwrap(), vec![4]);
    drop_keyspace(&session, &keyspace).await;
}

/// Past the readable horizon an event may be half written: a heavy
/// message's inbox copy stored before its conversation entry. Read with
/// payloads, that copy is an error (the entry is missing); read as stored,
/// it is the copy without its text, which is what a reader past the
/// horizon (the delete-for-me count) asks for.
#[tokio::test]
async fn a_heavy_copy_without_its_conversation_entry_reads_as_stored() {
    let keyspace = unique_keyspace("stubs");
    let (session, store) = open_store(&keyspace).await;
    let entry = Entry {
        conv_seq: 4,
        msg_id: 901,
        text: "h".repeat(crate::INBOX_INLINE_PAYLOAD_BYTES + 1),
        ..Entry::new(crate::EntryKind::Message, 6)
    };
    let at = store.next_timestamp().unwrap();
    let copy = Row {
        kind: RowKind::Inbox,
        values: entry_values(3, 12, EntryEncoder::new(&entry).inbox(12), at),
    };
    store
        .write_rows(vec![(Timeline::Inbox, 3, bucket_of(12))], vec![copy], at)
        .await
        .unwrap();
    let whole = store.read_inbox(3, InboxRange::new(0, 100, 10)).await;
    assert!(matches!(whole, Err(StoreError::Corrupt(_))), "{whole:?}");
    let stubs = store
        .read_inbox(3, InboxRange::new(0, 100, 10).without_payloads())
        .await
        .unwrap();
    let seen: Vec<(u64, u64, usize)> = stubs
        .iter()
        .map(|e| (e.seq, e.conv_seq, e.text.len()))
        .collect();
    assert_eq!(seen, [(12, 4, 0)]);
    drop_keyspace(&session, &keyspace).await;
}
