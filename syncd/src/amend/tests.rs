//! The message lifecycle through the engine: what each operation stores,
//! who may do it, and what devices and lists see afterwards.

use super::*;
use crate::engine::{Engine, EngineConfig, HistoryQuery, ListQuery, SendCommand};
use crate::send::Mentions;
use crate::testkit::*;
use std::time::Duration;
use timeline_store::{InboxRange, TimelineStore};

pub(super) fn change(conversation_id: u64, conv_seq: u64, text: &str) -> AmendCommand {
    AmendCommand {
        conversation_id,
        conv_seq,
        msg_id: 0,
        text: text.into(),
        client_op_id: None,
    }
}

pub(super) async fn history(
    engine: &Arc<Engine>,
    who: &Principal,
    conversation_id: u64,
) -> Vec<Entry> {
    engine
        .history(
            who,
            HistoryQuery {
                conversation_id,
                before: 0,
                after: Some(0),
                limit: 100,
            },
        )
        .await
        .unwrap()
        .entries
}

pub(super) async fn send(engine: &Arc<Engine>, from: u64, conversation_id: u64, text: &str) -> u64 {
    engine
        .send(device(from, "d"), message(conversation_id, text, None))
        .await
        .unwrap()
        .receipt
        .conv_seq
}

pub(super) async fn unread(
    engine: &Arc<Engine>,
    user: u64,
    conversation_id: u64,
) -> (u64, u64, String) {
    let page = engine
        .list_conversations(&device(user, "d"), ListQuery::default())
        .await
        .unwrap();
    let state = page
        .conversations
        .into_iter()
        .find(|c| c.conversation_id == conversation_id)
        .unwrap();
    let preview = state.last_message.map(|m| m.text).unwrap_or_default();
    (state.unread, state.mentions, preview)
}

/// Every stored entry of the conversation and of the members' inboxes, as
/// the store returns them (not the API).
async fn stored(store: &dyn TimelineStore, conversation_id: u64, members: &[u64]) -> Vec<Entry> {
    let mut all = store
        .read_conversation(
            conversation_id,
            timeline_store::ConversationRange::oldest_first(0, u64::MAX, 10_000),
        )
        .await
        .unwrap();
    for &user in members {
        let range = InboxRange::new(0, u64::MAX, 10_000);
        all.extend(store.read_inbox(user, range).await.unwrap());
    }
    all
}

#[tokio::test]
async fn a_recall_leaves_no_text_in_any_stored_timeline_and_takes_back_unread() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3]).await;
    let secret = engine
        .send(
            device(2, "d"),
            SendCommand {
                mentions: Mentions {
                    users: vec![1],
                    everyone: false,
                },
                ..message(conversation, "the launch code is 1234", None)
            },
        )
        .await
        .unwrap()
        .receipt;
    assert_eq!(unread(&engine, 1, conversation).await.0, 1);
    let edit = engine
        .amend(
            device(2, "d"),
            Operation::Edit,
            change(conversation, secret.conv_seq, "the launch code is 5678"),
        )
        .await
        .unwrap();
    assert!(edit.receipt.conv_seq > secret.conv_seq);
    let (count, mentions, preview) = unread(&engine, 1, conversation).await;
    assert_eq!((count, mentions), (1, 1), "an edit is not a new message");
    assert_eq!(preview, "the launch code is 5678");
    let shown = history(&engine, &device(3, "d"), conversation).await;
    let message = shown
        .iter()
        .find(|e| e.conv_seq == secret.conv_seq)
        .unwrap();
    assert_eq!(message.text, "the launch code is 5678");
    assert_eq!(message.state.version, edit.receipt.conv_seq);
    assert_eq!(message.state.previous[0].text, "the launch code is 1234");

    let recall = engine
        .amend(
            device(2, "d"),
            Operation::Recall,
            AmendCommand {
                msg_id: secret.msg_id,
                ..change(conversation, secret.conv_seq, "")
            },
        )
        .await
        .unwrap();
    for entry in stored(fx.store.as_ref(), conversation, &[1, 2, 3]).await {
        assert!(
            !entry.text.contains("launch code"),
            "a stored entry still holds the text: {entry:?}"
        );
        assert!(entry.state.previous.is_empty());
    }
    let shown = history(&engine, &device(1, "d"), conversation).await;
    let tombstone = shown
        .iter()
        .find(|e| e.conv_seq == secret.conv_seq)
        .unwrap();
    let removal = tombstone.state.removed.unwrap();
    assert_eq!((removal.by, removal.conv_seq), (2, recall.receipt.conv_seq));
    let (count, mentions, preview) = unread(&engine, 1, conversation).await;
    assert_eq!((count, mentions, preview.as_str()), (0, 0, ""));
    // Every member's inbox has the recall, naming the target.
    for user in [1, 2, 3] {
        let page = engine.sync(&device(user, "d"), Some(0), 100).await.unwrap();
        let last = page.entries.last().unwrap();
        assert_eq!(last.kind, EntryKind::Recall);
        assert_eq!(
            (last.target.conv_seq, last.target.msg_id),
            (secret.conv_seq, secret.msg_id)
        );
    }
}

#[tokio::test]
async fn each_refusal_names_its_reason_and_changes_nothing() {
    let config = EngineConfig {
        windows: Windows {
            recall: Duration::from_millis(50),
            edit: Duration::from_secs(3600),
        },
        ..EngineConfig::default()
    };
    let fx = fixture().config(config).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let other = group(&engine, 1, vec![2]).await;
    let first = send(&engine, 2, conversation, "one").await;
    let in_other = engine
        .send(device(2, "d"), message(other, "elsewhere", None))
        .await
        .unwrap()
        .receipt;
    let before = stored(fx.store.as_ref(), conversation, &[1, 2]).await;
    let refused = [
        (
            device(1, "d"),
            Operation::Recall,
            change(conversation, first, ""),
        ),
        (
            device(1, "d"),
            Operation::Edit,
            change(conversation, first, "mine now"),
        ),
        (
            device(2, "d"),
            Operation::Delete,
            change(conversation, first, ""),
        ),
        (
            device(2, "d"),
            Operation::Recall,
            change(conversation, 999, ""),
        ),
        (
            device(2, "d"),
            Operation::Recall,
            change(conversation, 1, ""),
        ),
        (
            device(2, "d"),
            Operation::Recall,
            AmendCommand {
                msg_id: in_other.msg_id,
                ..change(conversation, first, "")
            },
        ),
        (
            device(2, "d"),
            Operation::Edit,
            change(conversation, first, ""),
        ),
        (
            device(3, "d"),
            Operation::Recall,
            change(conversation, first, ""),
        ),
    ];
    for (who, operation, command) in refused {
        let error = engine
            .amend(who.clone(), operation, command.clone())
            .await
            .unwrap_err();
        let expected = match &error {
            SyncdError::PermissionDenied(_) => {
                who != device(2, "d") || operation == Operation::Delete
            }
            SyncdError::NotFound(_) => command.conv_seq == 999,
            SyncdError::InvalidArgument(_) => {
                command.conv_seq == 1 || command.msg_id != 0 || command.text.is_empty()
            }
            _ => false,
        };
        assert!(
            expected,
            "{operation:?} by {who:?} of {command:?}: {error:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let late = engine
        .amend(
            device(2, "d"),
            Operation::Recall,
            change(conversation, first, ""),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&late, SyncdError::FailedPrecondition(m) if m.contains("window")),
        "{late:?}"
    );
    assert_eq!(
        stored(fx.store.as_ref(), conversation, &[1, 2]).await,
        before,
        "a refused change stores nothing"
    );
    // A service has no window; after the delete every change is refused.
    engine
        .amend(
            service(),
            Operation::Delete,
            change(conversation, first, ""),
        )
        .await
        .unwrap();
    for operation in [Operation::Edit, Operation::Recall, Operation::Delete] {
        let text = if operation == Operation::Edit {
            "x"
        } else {
            ""
        };
        let error = engine
            .amend(service(), operation, change(conversation, first, text))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, SyncdError::FailedPrecondition(m) if m.contains("already deleted")),
            "{error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_edits_end_with_the_one_the_server_ordered_last() {
    let fx = fixture().jitter().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let target = send(&engine, 1, conversation, "v0").await;
    let mut edits = tokio::task::JoinSet::new();
    for i in 1..=8 {
        let engine = Arc::clone(&engine);
        edits.spawn(async move {
            let outcome = engine
                .amend(
                    device(1, "d"),
                    Operation::Edit,
                    change(conversation, target, &format!("v{i}")),
                )
                .await
                .unwrap();
            (outcome.receipt.conv_seq, format!("v{i}"))
        });
    }
    let mut versions = Vec::new();
    while let Some(done) = edits.join_next().await {
        versions.push(done.unwrap());
    }
    versions.sort();
    let (newest, newest_text) = versions.last().unwrap().clone();
    let shown = history(&engine, &device(2, "d"), conversation).await;
    let message = shown.iter().find(|e| e.conv_seq == target).unwrap();
    assert_eq!(
        (message.state.version, &message.text),
        (newest, &newest_text)
    );
    assert_eq!(
        message.state.edits,
        versions.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        "every edit is recorded, in server order"
    );
    // A device applying the inbox's edit events by version ends the same.
    let page = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
    let mut applied = (0, String::new());
    for entry in page.entries.iter().filter(|e| e.kind == EntryKind::Edit) {
        if entry.conv_seq > applied.0 {
            applied = (entry.conv_seq, entry.text.clone());
        }
    }
    assert_eq!(applied, (newest, newest_text));
}

#[tokio::test]
async fn a_retry_with_the_same_operation_id_changes_nothing_more() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let target = send(&engine, 1, conversation, "hello").await;
    let op = Uuid::new_v4();
    let command = AmendCommand {
        client_op_id: Some(op),
        ..change(conversation, target, "")
    };
    let first = engine
        .amend(device(1, "d"), Operation::Recall, command.clone())
        .await
        .unwrap();
    let again = engine
        .amend(device(1, "d"), Operation::Recall, command.clone())
        .await
        .unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(again.receipt.conv_seq, first.receipt.conv_seq);
    let other = engine
        .amend(
            device(1, "d"),
            Operation::Edit,
            AmendCommand {
                text: "changed".into(),
                ..command
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(other, SyncdError::InvalidArgument(_)), "{other:?}");
}

pub(super) fn texts_of(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.text.as_str()).collect()
}

#[tokio::test]
async fn a_large_group_recall_reaches_the_timeline_the_mentioned_and_the_counts() {
    let config = EngineConfig {
        large_group_threshold: 3,
        ..EngineConfig::default()
    };
    let fx = fixture().config(config).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4, 5]).await;
    let plain = send(&engine, 2, conversation, "plain secret").await;
    let mention = engine
        .send(
            device(2, "d"),
            SendCommand {
                mentions: Mentions {
                    users: vec![3],
                    everyone: false,
                },
                ..message(conversation, "mention secret", None)
            },
        )
        .await
        .unwrap()
        .receipt
        .conv_seq;
    assert_eq!(unread(&engine, 3, conversation).await.0, 2);
    assert_eq!(unread(&engine, 3, conversation).await.1, 1);
    assert_eq!(unread(&engine, 4, conversation).await.2, "mention secret");
    for target in [plain, mention] {
        engine
            .amend(
                device(2, "d"),
                Operation::Recall,
                change(conversation, target, ""),
            )
            .await
            .unwrap();
    }
    for entry in stored(fx.store.as_ref(), conversation, &[1, 2, 3, 4, 5]).await {
        assert!(!entry.text.contains("secret"), "{entry:?}");
    }
    for user in [1, 3, 4] {
        let (count, mentions, preview) = unread(&engine, user, conversation).await;
        assert_eq!(
            (count, mentions, preview.as_str()),
            (0, 0, ""),
            "user {user}"
        );
    }
    let shown = history(&engine, &device(4, "d"), conversation).await;
    let removed: Vec<u64> = shown
        .iter()
        .filter(|e| e.is_removed())
        .map(|e| e.conv_seq)
        .collect();
    assert_eq!(removed, [plain, mention]);
}
