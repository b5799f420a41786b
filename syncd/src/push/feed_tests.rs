//! Feeds: entries inline while keeping up, from memory or the store.

use super::*;
use crate::testkit::*;

/// A group of users 1 and 2, and a feed of user 2 with inline entries that
/// has taken its first notice (the group's creation).
async fn watched_group() -> (Fixture, Arc<crate::engine::Engine>, u64, Feed) {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let mut feed = engine.subscribe(&device(2, "w"), 0, true).await.unwrap();
    feed.next().await.unwrap().unwrap();
    (fx, engine, conversation, feed)
}

/// User 1 edits or recalls its message `sent`.
async fn amend_sent(
    engine: &crate::engine::Engine,
    operation: crate::amend::Operation,
    sent: &crate::engine::SendOutcome,
    text: impl Into<String>,
) -> crate::error::Result<crate::amend::AmendOutcome> {
    let command = crate::amend::AmendCommand {
        conversation_id: sent.receipt.conversation_id,
        conv_seq: sent.receipt.conv_seq,
        msg_id: sent.receipt.msg_id,
        text: text.into(),
        client_op_id: None,
    };
    engine.amend(device(1, "d"), operation, command).await
}

#[tokio::test]
async fn push_feed_delivers_entries_and_coalesces_when_far_behind() {
    let fx = fixture().small_sections().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let mut feed = engine
        .subscribe(&device(2, "watch"), 0, true)
        .await
        .unwrap();
    let first = feed.next().await.unwrap().unwrap();
    assert_eq!(
        first.entries.len(),
        1,
        "the creation event is pushed at once"
    );
    engine
        .send(device(1, "d"), message(conversation, "pushed", None))
        .await
        .unwrap();
    let notice = feed.next().await.unwrap().unwrap();
    assert_eq!(texts(&notice.entries), ["pushed"]);
    assert_eq!(notice.up_to_seq, notice.entries[0].seq);
    send_numbered(&engine, 1, conversation, MAX_PUSH_ENTRIES + 10).await;
    let behind = feed.next().await.unwrap().unwrap();
    assert!(
        behind.entries.is_empty(),
        "far behind: a bare notice, the device pulls"
    );
    assert!(behind.up_to_seq >= notice.up_to_seq + MAX_PUSH_ENTRIES as u64);
    engine.begin_shutdown();
    assert!(
        feed.next().await.unwrap().is_none(),
        "feeds end on shutdown"
    );
}

/// A feed that keeps up is served from memory: with every store read
/// failing, its notices still carry their entries, equal to what the
/// store holds.
#[tokio::test]
async fn a_feed_that_keeps_up_reads_no_store() {
    let (fx, engine, conversation, mut feed) = watched_group().await;
    fx.store.fail_next(
        timeline_store::testsuite::Op::Read,
        1_000,
        Default::default(),
    );
    for text in ["one", "two"] {
        engine
            .send(device(1, "d"), message(conversation, text, None))
            .await
            .unwrap();
    }
    let mut pushed = Vec::new();
    while pushed.len() < 2 {
        pushed.extend(feed.next().await.unwrap().unwrap().entries);
    }
    fx.store
        .fail_next(timeline_store::testsuite::Op::Read, 0, Default::default());
    assert_eq!(texts(&pushed), ["one", "two"]);
    let stored = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
    let tail = &stored.entries[stored.entries.len() - 2..];
    assert_eq!(pushed, tail, "the entries as stored, seqs and all");
}

/// A fenced commit is not a gap: its intent may have landed before the
/// seal, and the newer writer would write it at its seqs. So nothing
/// after it is announced by this node (it used to be released, and the
/// next message pushed past the seq the newer writer then fills).
#[tokio::test]
async fn a_fenced_event_holds_back_what_follows_it() {
    let (fx, engine, conversation, mut feed) = watched_group().await;
    let first_top = feed.last_sent;
    fx.store.fail_commits_where(
        |commit| commit.entry.text == "fenced",
        || timeline_store::StoreError::Fenced("a newer writer sealed the store".into()),
    );
    let fenced = engine
        .send(device(1, "d"), message(conversation, "fenced", None))
        .await;
    assert!(fenced.is_err());
    fx.store.clear_aimed_fault();
    engine
        .send(device(1, "d"), message(conversation, "after", None))
        .await
        .unwrap();
    let page = engine
        .sync(&device(2, "d"), Some(first_top), 100)
        .await
        .unwrap();
    assert!(
        page.entries.is_empty(),
        "held back: {:?}",
        texts(&page.entries)
    );
    let waited = tokio::time::timeout(std::time::Duration::from_millis(200), feed.next()).await;
    assert!(waited.is_err(), "nothing announced past the fenced seq");
}

/// A heavy message's inbox copies refer to its conversation entry,
/// which an edit rewrites alone: such an entry is pushed from the
/// store, which has the edit, never from a copy kept before it.
#[tokio::test]
async fn a_heavy_message_edited_before_its_push_is_pushed_as_edited() {
    let (_fx, engine, conversation, mut feed) = watched_group().await;
    let heavy = "h".repeat(timeline_store::INBOX_INLINE_PAYLOAD_BYTES + 1);
    let sent = engine
        .send(device(1, "d"), message(conversation, &heavy, None))
        .await
        .unwrap();
    amend_sent(&engine, crate::amend::Operation::Edit, &sent, "edited")
        .await
        .unwrap();
    let mut pushed = Vec::new();
    while pushed.len() < 2 {
        pushed.extend(feed.next().await.unwrap().unwrap().entries);
    }
    assert_eq!(pushed[0].text, "edited", "the message as stored now");
}

/// A recall whose commit failed after it landed is finished in the
/// background and announced only then; meanwhile a lagging feed must
/// not push the recalled text from memory (the store has the recall).
#[tokio::test]
async fn a_recall_finishing_in_the_background_already_hides_the_text() {
    let (fx, engine, conversation, mut feed) = watched_group().await;
    let sent = engine
        .send(
            device(1, "d"),
            message(conversation, "the code is 1234", None),
        )
        .await
        .unwrap();
    fx.store.fail_next(
        timeline_store::testsuite::Op::Commit,
        3,
        timeline_store::testsuite::Failure::Applied,
    );
    let recall = amend_sent(
        &engine,
        crate::amend::Operation::Recall,
        &sent,
        String::new(),
    )
    .await;
    assert!(
        recall.is_err(),
        "stored, then the call failed: finished in the background"
    );
    let notice = feed.next().await.unwrap().unwrap();
    assert!(
        notice.entries.iter().all(|e| !e.text.contains("1234")),
        "{:?}",
        notice.entries
    );
}

/// A recall that lands before a lagging feed pushes its message
/// leaves the feed the recalled state, never the text: the memory is
/// rewritten with the store.
#[tokio::test]
async fn a_recalled_message_is_pushed_without_its_text() {
    let (_fx, engine, conversation, mut feed) = watched_group().await;
    let sent = engine
        .send(
            device(1, "d"),
            message(conversation, "the code is 1234", None),
        )
        .await
        .unwrap();
    amend_sent(
        &engine,
        crate::amend::Operation::Recall,
        &sent,
        String::new(),
    )
    .await
    .unwrap();
    let mut pushed = Vec::new();
    while pushed.len() < 2 {
        pushed.extend(feed.next().await.unwrap().unwrap().entries);
    }
    assert!(
        pushed.iter().all(|e| !e.text.contains("1234")),
        "{pushed:?}"
    );
    assert!(
        pushed[0].state.removed.is_some(),
        "the message as the recall left it"
    );
}
