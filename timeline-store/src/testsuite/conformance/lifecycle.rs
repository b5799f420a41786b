//! Conformance checks for what the message lifecycle needs from a store:
//! the positions of an event's inbox copies ([`ConversationReads::inbox_copies`])
//! and rewrites of stored events in place ([`EventCommit::rewrites`]).

use super::{BASE, fanout, message, read_inbox};
use crate::{
    ConversationRange, Entry, EntryKind, InboxWrite, MessageState, PreviousVersion, Removal,
    RemovalKind, Rewrite, Target, TimelineStore,
};

async fn conversation_entry<S: TimelineStore>(store: &S, conv: u64, conv_seq: u64) -> Entry {
    let range = ConversationRange::oldest_first(conv_seq - 1, conv_seq + 1, 1);
    let mut entries = store.read_conversation(conv, range).await.unwrap();
    assert_eq!(entries.len(), 1, "conversation {conv} entry {conv_seq}");
    entries.remove(0)
}

/// A message kept with its copies, edited (the conversation entry alone),
/// then recalled (every stored copy of it and of its edit rewritten): the
/// texts are gone from what the store returns, everything else stays.
pub(super) async fn rewrites_replace_stored_entries_and_copies_are_kept<S: TimelineStore>(
    store: &S,
) {
    let (conv, alice, bob) = (BASE + 400, BASE + 401, BASE + 402);
    let copies = [(alice, 7), (bob, 3)];
    let mut original = fanout(message(conv, 1, alice, "the secret"), &copies);
    original.keep_copies = true;
    store.commit_event(original.clone()).await.unwrap();
    let kept: Vec<InboxWrite> = copies
        .iter()
        .map(|&(user_id, seq)| InboxWrite { user_id, seq })
        .collect();
    assert_eq!(store.inbox_copies(conv, 1).await.unwrap(), kept);
    assert!(
        store.inbox_copies(conv, 2).await.unwrap().is_empty(),
        "no copies kept for an event that does not exist"
    );

    // An edit: its own event (kept too), and the original's conversation
    // entry rewritten with the new text and the old one as history.
    let mut edit = fanout(
        Entry {
            target: Target {
                conv_seq: 1,
                msg_id: original.entry.msg_id,
                sender_id: alice,
                ..Target::default()
            },
            ..message(conv, 2, alice, "the fixed secret")
        },
        &[(alice, 8), (bob, 4)],
    );
    edit.entry.kind = EntryKind::Edit;
    edit.keep_copies = true;
    let edited = Entry {
        text: "the fixed secret".into(),
        state: MessageState {
            version: 2,
            edited_at_ms: edit.entry.sent_at_ms,
            edits: vec![2],
            previous: vec![PreviousVersion {
                version: 0,
                text: "the secret".into(),
                at_ms: original.entry.sent_at_ms,
            }],
            removed: None,
        },
        ..original.entry.clone()
    };
    edit.rewrites = vec![Rewrite {
        entry: edited.clone(),
        inbox: Vec::new(),
    }];
    store.commit_event(edit.clone()).await.unwrap();
    assert_eq!(conversation_entry(store, conv, 1).await, edited);
    assert_eq!(
        read_inbox(store, bob, 0, 3, 10).await[0].text,
        "the secret",
        "an edit rewrites only what it lists"
    );

    // The recall: tombstones everywhere its text and the edit's were.
    let removal = Removal {
        kind: RemovalKind::Recalled,
        by: alice,
        at_ms: 1_700_000_000_100,
        conv_seq: 3,
    };
    let tombstone = Entry {
        text: String::new(),
        state: MessageState {
            removed: Some(removal),
            edits: vec![2],
            ..MessageState::default()
        },
        ..edited
    };
    let scrubbed_edit = Entry {
        text: String::new(),
        ..edit.entry.clone()
    };
    let mut recall = fanout(
        Entry {
            target: edit.entry.target.clone(),
            ..message(conv, 3, alice, "")
        },
        &[(alice, 9), (bob, 5)],
    );
    recall.entry.kind = EntryKind::Recall;
    recall.rewrites = vec![
        Rewrite {
            entry: tombstone.clone(),
            inbox: store.inbox_copies(conv, 1).await.unwrap(),
        },
        Rewrite {
            entry: scrubbed_edit.clone(),
            inbox: store.inbox_copies(conv, 2).await.unwrap(),
        },
    ];
    store.commit_event(recall.clone()).await.unwrap();
    // Applied twice (a retry, or recovery): the same rows.
    store.commit_event(recall).await.unwrap();

    assert_eq!(conversation_entry(store, conv, 1).await, tombstone);
    assert_eq!(conversation_entry(store, conv, 2).await, scrubbed_edit);
    for (user, seqs) in [(alice, [7, 8, 9]), (bob, [3, 4, 5])] {
        let inbox = read_inbox(store, user, 0, u64::MAX, 10).await;
        assert_eq!(
            inbox.iter().map(|e| e.seq).collect::<Vec<_>>(),
            seqs,
            "rewrites add no rows"
        );
        assert_eq!(
            inbox[0],
            Entry {
                seq: seqs[0],
                ..tombstone.clone()
            }
        );
        assert_eq!(
            inbox[1],
            Entry {
                seq: seqs[1],
                ..scrubbed_edit.clone()
            }
        );
        assert_eq!(inbox[2].kind, EntryKind::Recall);
        for entry in &inbox {
            assert!(!entry.text.contains("secret"), "user {user}: {entry:?}");
        }
    }
    let history = store
        .read_conversation(conv, ConversationRange::oldest_first(0, u64::MAX, 10))
        .await
        .unwrap();
    assert_eq!(history.len(), 3);
    assert!(history.iter().all(|e| !e.text.contains("secret")));
}

/// A heavy message (stored once, in the conversation entry): a recall of
/// it leaves no heavy text in any inbox read.
pub(super) async fn rewriting_a_heavy_message_reaches_every_copy<S: TimelineStore>(store: &S) {
    let (conv, alice, bob) = (BASE + 410, BASE + 411, BASE + 412);
    let heavy = "h".repeat(crate::INBOX_INLINE_PAYLOAD_BYTES + 1);
    let mut original = fanout(message(conv, 1, alice, &heavy), &[(alice, 1), (bob, 1)]);
    original.keep_copies = true;
    store.commit_event(original.clone()).await.unwrap();
    assert_eq!(read_inbox(store, bob, 0, 1, 1).await[0].text, heavy);

    let tombstone = Entry {
        text: String::new(),
        state: MessageState {
            removed: Some(Removal {
                kind: RemovalKind::Deleted,
                by: 0,
                at_ms: 1,
                conv_seq: 2,
            }),
            ..MessageState::default()
        },
        ..original.entry.clone()
    };
    let mut delete = fanout(message(conv, 2, 0, ""), &[(alice, 2), (bob, 2)]);
    delete.entry.kind = EntryKind::Delete;
    delete.rewrites = vec![Rewrite {
        entry: tombstone.clone(),
        inbox: store.inbox_copies(conv, 1).await.unwrap(),
    }];
    store.commit_event(delete).await.unwrap();
    for user in [alice, bob] {
        let copy = &read_inbox(store, user, 0, 1, 1).await[0];
        assert_eq!(
            copy,
            &Entry {
                seq: 1,
                ..tombstone.clone()
            }
        );
    }
}

/// A rewrite of an inbox copy retention already trimmed leaves it trimmed.
pub(super) async fn rewrites_do_not_bring_back_trimmed_copies<S: TimelineStore>(store: &S) {
    let (conv, user) = (BASE + 420, BASE + 421);
    let mut original = fanout(message(conv, 1, user, "old secret"), &[(user, 1)]);
    original.keep_copies = true;
    store.commit_event(original.clone()).await.unwrap();
    store
        .commit_event(fanout(message(conv, 2, user, "newer"), &[(user, 2)]))
        .await
        .unwrap();
    assert_eq!(store.trim_inbox(user, 2, 10).await.unwrap(), 1);
    let mut recall = fanout(message(conv, 3, user, ""), &[(user, 3)]);
    recall.entry.kind = EntryKind::Recall;
    recall.rewrites = vec![Rewrite {
        entry: Entry {
            text: String::new(),
            ..original.entry.clone()
        },
        inbox: store.inbox_copies(conv, 1).await.unwrap(),
    }];
    store.commit_event(recall).await.unwrap();
    let seqs: Vec<u64> = read_inbox(store, user, 0, u64::MAX, 10)
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [2, 3], "the trimmed copy is not written again");
    assert_eq!(conversation_entry(store, conv, 1).await.text, "");
}
