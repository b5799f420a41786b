//! What the conversation list shows of mentions and receipts, through the
//! engine: mention counts, how far a direct peer read, the bound on a
//! send's mention list.

use crate::engine::{EngineConfig, ListQuery};
use crate::testkit::*;
use std::sync::Arc;
use timeline_store::EntryKind;

fn mentioning(conversation: u64, users: &[u64], everyone: bool) -> crate::engine::SendCommand {
    crate::engine::SendCommand {
        mentions: crate::send::Mentions {
            users: users.to_vec(),
            everyone,
        },
        ..message(conversation, "hey", None)
    }
}

async fn state(
    engine: &Arc<crate::engine::Engine>,
    user: u64,
    conversation: u64,
) -> crate::engine::ConversationState {
    let page = engine
        .list_conversations(&device(user, "d"), ListQuery::default())
        .await
        .unwrap();
    page.conversations
        .into_iter()
        .find(|c| c.conversation_id == conversation)
        .unwrap()
}

#[tokio::test]
async fn mentions_count_until_read_and_only_from_others() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3]).await;
    engine
        .send(device(2, "d"), mentioning(conversation, &[1], false))
        .await
        .unwrap();
    engine
        .send(device(3, "d"), mentioning(conversation, &[], true))
        .await
        .unwrap();
    engine
        .send(device(3, "d"), mentioning(conversation, &[2], false))
        .await
        .unwrap();
    let mine = state(&engine, 1, conversation).await;
    assert_eq!((mine.unread, mine.mentions), (3, 2));
    let theirs = state(&engine, 2, conversation).await;
    assert_eq!(
        (theirs.unread, theirs.mentions),
        (2, 2),
        "own @all does not count, the others do"
    );
    let bad = engine
        .send(device(2, "d"), mentioning(conversation, &[99], false))
        .await;
    assert!(
        matches!(bad, Err(crate::error::SyncdError::InvalidArgument(_))),
        "{bad:?}"
    );
    let marked = engine
        .mark_read(device(1, "d"), conversation, None)
        .await
        .unwrap();
    assert_eq!((marked.unread, marked.mentions), (0, 0));
}

#[tokio::test]
async fn a_large_group_mention_reaches_the_inbox_and_is_counted_once() {
    let config = EngineConfig {
        large_group_threshold: 3,
        ..EngineConfig::default()
    };
    let fx = fixture().config(config).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4]).await;
    engine
        .send(device(2, "d"), mentioning(conversation, &[1], true))
        .await
        .unwrap();
    engine
        .send(device(2, "d"), mentioning(conversation, &[], true))
        .await
        .unwrap();
    send_numbered(&engine, 3, conversation, 1).await;
    let inbox = engine.sync(&device(1, "d"), Some(0), 100).await.unwrap();
    let copies: Vec<_> = inbox
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::Message)
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the named mention, and nothing else, in the inbox"
    );
    assert!(copies[0].read_fanout);
    let mine = state(&engine, 1, conversation).await;
    assert_eq!((mine.unread, mine.mentions), (3, 2));
    let fourth = state(&engine, 4, conversation).await;
    assert_eq!(
        (fourth.unread, fourth.mentions),
        (3, 2),
        "both mention everyone"
    );
}

#[tokio::test]
async fn the_sender_of_a_direct_message_learns_how_far_the_peer_read() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = engine
        .create_conversation(
            device(1, "d"),
            crate::engine::NewConversation {
                kind: timeline_store::ConversationKind::Direct,
                members: vec![2],
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
        .unwrap()
        .conversation_id;
    let sent = engine
        .send(device(1, "d"), message(conversation, "hi", None))
        .await
        .unwrap();
    assert_eq!(state(&engine, 1, conversation).await.peer_read_through, 0);
    engine
        .mark_read(device(2, "d"), conversation, None)
        .await
        .unwrap();
    let mine = state(&engine, 1, conversation).await;
    assert_eq!(mine.peer_read_through, sent.receipt.conv_seq);
    assert_eq!(mine.unread, 0, "the peer's marker is not mine");
    let inbox = engine.sync(&device(1, "d"), Some(0), 100).await.unwrap();
    let receipt = inbox.entries.last().unwrap();
    assert_eq!(
        (receipt.kind, receipt.sender_id),
        (EntryKind::ReadMarker, 2)
    );
}

#[tokio::test]
async fn a_mention_list_past_the_bound_is_refused_however_many_repeats_it_holds() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3]).await;
    let limit = crate::limits::MAX_MENTIONS;
    // Repeats of one member: a list this long is refused before the send
    // waits for a slot or sorts it.
    let refused = engine
        .send(
            device(1, "d"),
            mentioning(conversation, &vec![2; 2 * limit + 1], false),
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&refused, crate::error::SyncdError::InvalidArgument(m) if m.contains("mentions, at most")),
        "{refused:?}"
    );
    // Repeats within the bound are the one name they repeat.
    engine
        .send(
            device(1, "d"),
            mentioning(conversation, &vec![2; limit], false),
        )
        .await
        .unwrap();
    assert_eq!(state(&engine, 2, conversation).await.mentions, 1);
}
