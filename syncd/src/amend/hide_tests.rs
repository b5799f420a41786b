//! Hiding for one user: delete for me, clear history, and the bound on
//! messages hidden one by one, through the engine.

use super::tests::{change, history, send, texts_of, unread};
use super::*;
use crate::engine::{Engine, HistoryQuery};
use crate::testkit::*;
use timeline_store::InboxReads;

#[tokio::test]
async fn delete_for_me_and_clear_hide_only_the_callers_view() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(send(&engine, 2, conversation, &format!("m{i}")).await);
    }
    engine
        .hide(
            device(1, "d"),
            EntryKind::DeleteForMe,
            HideCommand {
                conversation_id: conversation,
                conv_seq: Some(sent[4]),
                msg_id: 0,
                client_op_id: None,
            },
        )
        .await
        .unwrap();
    engine
        .hide(
            device(1, "d"),
            EntryKind::ClearHistory,
            HideCommand {
                conversation_id: conversation,
                conv_seq: Some(sent[2]),
                msg_id: 0,
                client_op_id: None,
            },
        )
        .await
        .unwrap();
    // An edit of the hidden message stays hidden with it.
    engine
        .amend(
            device(2, "d"),
            Operation::Edit,
            change(conversation, sent[4], "m4 edited"),
        )
        .await
        .unwrap();
    let mine = history(&engine, &device(1, "d"), conversation).await;
    assert!(
        mine.iter().all(|e| !e.text.contains("m4")),
        "nothing of a hidden message shows: {mine:?}"
    );
    let texts: Vec<&str> = mine
        .iter()
        .filter(|e| e.kind == EntryKind::Message)
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(texts, ["m3", "m5"]);
    let theirs = history(&engine, &device(2, "d"), conversation).await;
    assert_eq!(
        theirs
            .iter()
            .filter(|e| e.kind == EntryKind::Message)
            .count(),
        6,
        "other members are not affected"
    );
    assert_eq!(
        unread(&engine, 1, conversation).await.0,
        3,
        "clearing reads what it clears"
    );
    // The preview skips what the user hid: m5 is the newest.
    assert_eq!(unread(&engine, 1, conversation).await.2, "m5");
    engine
        .hide(
            device(1, "d"),
            EntryKind::DeleteForMe,
            HideCommand {
                conversation_id: conversation,
                conv_seq: Some(sent[5]),
                msg_id: 0,
                client_op_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(unread(&engine, 1, conversation).await.2, "m3");
    assert_eq!(unread(&engine, 2, conversation).await.2, "m5");
    // Paging backwards past hidden entries goes on to the visible ones.
    let page = engine
        .history(
            &device(1, "d"),
            HistoryQuery {
                conversation_id: conversation,
                before: sent[5],
                after: None,
                limit: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(texts_of(&page.entries), ["m3"]);
    let refused = engine
        .hide(
            service(),
            EntryKind::ClearHistory,
            HideCommand {
                conversation_id: conversation,
                conv_seq: None,
                msg_id: 0,
                client_op_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, SyncdError::PermissionDenied(_)));
}

/// A user's delete for me, in `conversation`, of the message at `conv_seq`.
async fn delete_for_me(
    engine: &Arc<Engine>,
    user: u64,
    conversation: u64,
    conv_seq: u64,
) -> Result<AmendOutcome> {
    engine
        .hide(
            device(user, "d"),
            EntryKind::DeleteForMe,
            HideCommand {
                conversation_id: conversation,
                conv_seq: Some(conv_seq),
                msg_id: 0,
                client_op_id: None,
            },
        )
        .await
}

/// While an earlier inbox event of the user is held back (here fenced:
/// held for the rest of the engine), the deletes they make are stored past
/// what a fold reads. They count toward the bound all the same: before,
/// each one counted as none, and the bound could be passed by as many.
#[tokio::test]
async fn deletes_for_me_past_a_held_back_event_count_toward_the_bound() {
    use crate::limits::MAX_HIDDEN_PER_CONVERSATION;
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let mut sent = Vec::new();
    for i in 0..MAX_HIDDEN_PER_CONVERSATION + 5 {
        sent.push(send(&engine, 2, conversation, &format!("m{i}")).await);
    }
    let first = MAX_HIDDEN_PER_CONVERSATION - 2;
    for &conv_seq in &sent[..first] {
        delete_for_me(&engine, 1, conversation, conv_seq)
            .await
            .unwrap();
    }
    let before_held = fx.store.last_inbox_seq(1).await.unwrap();
    fx.store.fail_commits_where(
        |commit| commit.entry.text == "held",
        || timeline_store::StoreError::Fenced("a newer writer sealed the store".into()),
    );
    let held = engine
        .send(device(2, "d"), message(conversation, "held", None))
        .await;
    assert!(held.is_err());
    fx.store.clear_aimed_fault();
    let mut stored = 0;
    for &conv_seq in &sent[first..] {
        match delete_for_me(&engine, 1, conversation, conv_seq).await {
            Ok(_) => stored += 1,
            Err(SyncdError::ResourceExhausted(m)) if m.contains("for you one by one") => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(first + stored, MAX_HIDDEN_PER_CONVERSATION);
    // The deletes were stored past a held-back seq, where no fold reads.
    assert!(fx.store.last_inbox_seq(1).await.unwrap() > before_held + 1);
    let readable = engine
        .sync(&device(1, "d"), Some(before_held), 100)
        .await
        .unwrap();
    assert!(readable.entries.is_empty(), "{:?}", readable.entries);
}

/// The bound on messages deleted one by one holds for deletes that arrive
/// together: each counts and commits under its own turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deletes_for_me_stop_at_the_bound() {
    use crate::limits::MAX_HIDDEN_PER_CONVERSATION;
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let together = 20;
    let mut sent = Vec::new();
    for i in 0..MAX_HIDDEN_PER_CONVERSATION + together {
        sent.push(send(&engine, 2, conversation, &format!("m{i}")).await);
    }
    let hide = |conv_seq| delete_for_me(&engine, 1, conversation, conv_seq);
    let first = MAX_HIDDEN_PER_CONVERSATION - together / 2;
    for &conv_seq in &sent[..first] {
        hide(conv_seq).await.unwrap();
    }
    let results = futures_util::future::join_all(sent[first..].iter().map(|&s| hide(s))).await;
    let stored = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(first + stored, MAX_HIDDEN_PER_CONVERSATION, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(refused, SyncdError::ResourceExhausted(m) if m.contains("for you one by one")),
            "{refused:?}"
        );
    }
}
