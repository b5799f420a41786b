//! Regressions for the anchors' read-state bugs, through the engine.

use crate::engine::{EngineConfig, ListQuery, MembershipChange};
use crate::testkit::*;
use std::sync::Arc;
use timeline_store::EntryKind;

async fn unread(engine: &Arc<crate::engine::Engine>, user: u64, conversation: u64) -> u64 {
    let page = engine
        .list_conversations(&device(user, "d"), ListQuery::default())
        .await
        .unwrap();
    page.conversations
        .iter()
        .find(|c| c.conversation_id == conversation)
        .map_or(0, |c| c.unread)
}

#[tokio::test]
async fn own_messages_never_count_and_sending_reads_what_came_before() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    send_numbered(&engine, 2, conversation, 3).await;
    assert_eq!(unread(&engine, 1, conversation).await, 3);
    send_numbered(&engine, 1, conversation, 2).await;
    assert_eq!(
        unread(&engine, 1, conversation).await,
        0,
        "own messages read the rest"
    );
    assert_eq!(unread(&engine, 2, conversation).await, 2);
    let page = engine
        .list_conversations(&device(2, "d"), ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total_unread, 2);
}

#[tokio::test]
async fn marks_only_raise_and_reach_every_device_through_the_inbox() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    send_numbered(&engine, 2, conversation, 4).await;
    let history = engine
        .history(
            &device(1, "d"),
            crate::engine::HistoryQuery {
                conversation_id: conversation,
                before: 0,
                after: Some(0),
                limit: 10,
            },
        )
        .await
        .unwrap();
    let second = history.entries[2].conv_seq; // created, "0", "1"
    let marked = engine
        .mark_read(device(1, "phone"), conversation, Some(second))
        .await
        .unwrap();
    assert_eq!((marked.read_through, marked.unread), (second, 2));
    // A stale mark, a duplicate, and one below: nothing changes.
    for through in [second, second - 1] {
        let again = engine
            .mark_read(device(1, "laptop"), conversation, Some(through))
            .await
            .unwrap();
        assert_eq!(
            (again.read_through, again.unread, again.seq),
            (second, 2, 0)
        );
    }
    let laptop = engine
        .sync(&device(1, "laptop"), Some(0), 100)
        .await
        .unwrap();
    let markers: Vec<_> = laptop
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::ReadMarker)
        .collect();
    assert_eq!(
        markers.len(),
        1,
        "one marker, in the inbox every device syncs"
    );
    assert_eq!((markers[0].read_through, markers[0].unread), (second, 2));
    let all = engine
        .mark_read(device(1, "phone"), conversation, None)
        .await
        .unwrap();
    assert_eq!(all.unread, 0);
    assert_eq!(unread(&engine, 1, conversation).await, 0);
    let beyond = engine
        .mark_read(
            device(1, "phone"),
            conversation,
            Some(all.read_through + 10),
        )
        .await;
    assert!(matches!(
        beyond,
        Err(crate::error::SyncdError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn leaving_clears_the_counts_and_a_rejoin_counts_from_the_rejoin() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3]).await;
    send_numbered(&engine, 1, conversation, 2).await;
    assert_eq!(unread(&engine, 3, conversation).await, 2);
    engine
        .change_members(service(), conversation, vec![3], MembershipChange::Remove)
        .await
        .unwrap();
    let page = engine
        .list_conversations(&device(3, "d"), ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total_unread, 0, "a left conversation counts nothing");
    assert!(!page.conversations[0].member);
    send_numbered(&engine, 1, conversation, 2).await;
    engine
        .change_members(service(), conversation, vec![3], MembershipChange::Add)
        .await
        .unwrap();
    assert_eq!(
        unread(&engine, 3, conversation).await,
        0,
        "counting starts at the rejoin"
    );
    send_numbered(&engine, 2, conversation, 1).await;
    assert_eq!(unread(&engine, 3, conversation).await, 1);
}

#[tokio::test]
async fn conversations_active_in_the_same_millisecond_all_appear_across_pages() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let mut conversations = Vec::new();
    for _ in 0..7 {
        conversations.push(group(&engine, 1, vec![2]).await);
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = engine
            .list_conversations(
                &device(1, "d"),
                ListQuery {
                    limit: 2,
                    cursor: cursor.clone(),
                    ..ListQuery::default()
                },
            )
            .await
            .unwrap();
        seen.extend(page.conversations.iter().map(|c| c.conversation_id));
        if page.cursor.is_empty() {
            break;
        }
        cursor = page.cursor;
    }
    seen.sort_unstable();
    conversations.sort_unstable();
    assert_eq!(seen, conversations, "each once, none lost to a tie");
}

#[tokio::test]
async fn an_unchanged_list_answers_not_modified() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    let first = engine
        .list_conversations(&device(1, "d"), ListQuery::default())
        .await
        .unwrap();
    let again = engine
        .list_conversations(
            &device(1, "d"),
            ListQuery {
                known_version: first.version.clone(),
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(again.not_modified && again.conversations.is_empty());
    send_numbered(&engine, 2, conversation, 1).await;
    let changed = engine
        .list_conversations(
            &device(1, "d"),
            ListQuery {
                known_version: first.version,
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert!(!changed.not_modified);
    assert_eq!(
        changed.conversations[0].last_message.as_ref().unwrap().text,
        "0"
    );
}

#[tokio::test]
async fn counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), false);
    let seqs: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(seqsvc::MemoryMaxSeqStore::new());
    let engine = engine_on(&store, Arc::clone(&seqs), EngineConfig::default()).await;
    let conversation = group(&engine, 1, vec![2]).await;
    send_numbered(&engine, 2, conversation, 3).await;
    assert_eq!(unread(&engine, 1, conversation).await, 3);
    send_numbered(&engine, 2, conversation, 2).await;
    engine.begin_shutdown();
    engine.shutdown().await;
    drop(engine);
    let engine = engine_on(&store, seqs, EngineConfig::default()).await;
    assert_eq!(
        unread(&engine, 1, conversation).await,
        5,
        "folded from the saved seq on"
    );
}

#[tokio::test]
async fn large_groups_count_from_their_timeline_and_a_send_reads_them() {
    let config = EngineConfig {
        large_group_threshold: 3,
        ..EngineConfig::default()
    };
    let fx = fixture().config(config).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4]).await;
    send_numbered(&engine, 2, conversation, 3).await;
    assert_eq!(unread(&engine, 1, conversation).await, 3);
    assert_eq!(
        unread(&engine, 2, conversation).await,
        0,
        "own messages never count"
    );
    send_numbered(&engine, 1, conversation, 1).await;
    assert_eq!(
        unread(&engine, 1, conversation).await,
        0,
        "a send reads what came before"
    );
    send_numbered(&engine, 3, conversation, 2).await;
    assert_eq!(unread(&engine, 1, conversation).await, 2);
    let marked = engine
        .mark_read(device(1, "d"), conversation, None)
        .await
        .unwrap();
    assert_eq!(marked.unread, 0);
    assert_eq!(unread(&engine, 1, conversation).await, 0);
    let page = engine
        .list_conversations(&device(4, "d"), ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.conversations[0].unread, 6);
    assert!(page.conversations[0].read_fanout);
}

#[tokio::test]
async fn group_receipts_name_who_read_a_message() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4]).await;
    let sent = engine
        .send(device(1, "d"), message(conversation, "hi", None))
        .await
        .unwrap();
    let at = sent.receipt.conv_seq;
    let nobody = engine
        .read_receipts(&device(1, "d"), conversation, at, Default::default())
        .await
        .unwrap();
    assert_eq!((nobody.member_count, nobody.read_by.len()), (3, 0));
    engine
        .mark_read(device(3, "d"), conversation, None)
        .await
        .unwrap();
    engine
        .send(device(4, "d"), message(conversation, "re", None))
        .await
        .unwrap();
    let some = engine
        .read_receipts(&service(), conversation, at, Default::default())
        .await
        .unwrap();
    assert_eq!(
        some.read_by,
        vec![3, 4],
        "a mark, and a later message of one's own"
    );
    let missing = engine
        .read_receipts(&device(1, "d"), conversation, at + 100, Default::default())
        .await;
    assert!(matches!(
        missing,
        Err(crate::error::SyncdError::NotFound(_))
    ));
    let outsider = engine
        .read_receipts(&device(9, "d"), conversation, at, Default::default())
        .await;
    assert!(matches!(
        outsider,
        Err(crate::error::SyncdError::PermissionDenied(_))
    ));
}

#[tokio::test]
async fn a_mark_in_a_10000_member_group_writes_one_inbox_entry() {
    let config = EngineConfig {
        large_group_threshold: 3,
        ..EngineConfig::default()
    };
    let fx = fixture().config(config).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, (2..=1_000).collect()).await;
    for chunk in (1_001..=10_000u64).collect::<Vec<_>>().chunks(1_000) {
        engine
            .change_members(
                service(),
                conversation,
                chunk.to_vec(),
                MembershipChange::Add,
            )
            .await
            .unwrap();
    }
    send_numbered(&engine, 2, conversation, 3).await;
    let before = fx.store.counters().inbox_copies;
    let marked = engine
        .mark_read(device(5, "d"), conversation, None)
        .await
        .unwrap();
    assert_eq!(marked.unread, 0);
    assert_eq!(
        fx.store.counters().inbox_copies - before,
        1,
        "the reader's own marker only"
    );
    let first = engine
        .read_receipts(
            &device(1, "d"),
            conversation,
            marked.read_through,
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        (first.member_count, first.next_after_member),
        (999, 1_000),
        "a page covers at most 1,000 members (the sender, 2, is among them but not counted)"
    );
    let (member_count, read_by, pages) =
        all_receipts(&engine, conversation, marked.read_through, 0).await;
    assert_eq!((member_count, read_by, pages), (9_999, vec![5], 10));
    let (member_count, read_by, pages) =
        all_receipts(&engine, conversation, marked.read_through, 3_333).await;
    assert_eq!(
        (member_count, read_by, pages),
        (9_999, vec![5], 10),
        "a limit above the cap is cut to it"
    );
}

/// Receipts summed over every page of `limit` members, and how many pages
/// it took.
pub(super) async fn all_receipts(
    engine: &crate::engine::Engine,
    conversation: u64,
    conv_seq: u64,
    limit: usize,
) -> (u64, Vec<u64>, usize) {
    let (mut member_count, mut read_by, mut pages) = (0, Vec::new(), 0);
    let mut after_member = 0;
    loop {
        let page = super::ReceiptsPage {
            after_member,
            limit,
        };
        let receipts = engine
            .read_receipts(&service(), conversation, conv_seq, page)
            .await
            .unwrap();
        pages += 1;
        let cap = if limit == 0 { 1_000 } else { limit.min(1_000) };
        assert!(
            receipts.member_count as usize <= cap,
            "a page covers at most its limit"
        );
        member_count += receipts.member_count;
        read_by.extend(receipts.read_by);
        if receipts.next_after_member == 0 {
            return (member_count, read_by, pages);
        }
        assert!(
            receipts.next_after_member > after_member,
            "the cursor moves on"
        );
        after_member = receipts.next_after_member;
    }
}

/// The preview reads a few entries first (4, then 16, then the rest of 64)
/// and more only when it must: past a hidden newest message and the
/// membership changes before it, it finds the one before them, at each
/// edge of those reads, and nothing past the 64th entry.
#[tokio::test]
async fn the_preview_looks_back_past_hidden_messages_and_other_events() {
    // The wanted message's position, newest first: the hidden newest is
    // the first, the membership changes come between.
    for (position, found) in [
        (2, true),
        (5, true),
        (6, true),
        (21, true),
        (64, true),
        (65, false),
    ] {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2, 3]).await;
        let text = |text| message(conversation, text, None);
        engine.send(device(1, "d"), text("older")).await.unwrap();
        for i in 0..position - 2 {
            let change = if i % 2 == 0 {
                MembershipChange::Add
            } else {
                MembershipChange::Remove
            };
            engine
                .change_members(service(), conversation, vec![9], change)
                .await
                .unwrap();
        }
        let newest = engine
            .send(device(1, "d"), text("newest"))
            .await
            .unwrap()
            .receipt
            .conv_seq;
        let preview = |user| {
            let engine = Arc::clone(&engine);
            async move {
                let page = engine
                    .list_conversations(&device(user, "d"), ListQuery::default())
                    .await
                    .unwrap();
                page.conversations[0]
                    .last_message
                    .as_ref()
                    .map(|m| m.text.clone())
            }
        };
        assert_eq!(preview(2).await.as_deref(), Some("newest"));
        engine
            .hide(
                device(2, "d"),
                EntryKind::DeleteForMe,
                crate::engine::HideCommand {
                    conversation_id: conversation,
                    conv_seq: Some(newest),
                    msg_id: 0,
                    client_op_id: None,
                },
            )
            .await
            .unwrap();
        let expected = found.then_some("older");
        assert_eq!(
            preview(2).await.as_deref(),
            expected,
            "at position {position}"
        );
        assert_eq!(preview(3).await.as_deref(), Some("newest"));
    }
}

/// History, search, marks and admissions fold the reader's state on every
/// call: one with nothing new to fold shares the cached snapshot instead
/// of copying a row per conversation, and a later fold never changes a
/// snapshot a caller still holds.
#[tokio::test]
async fn a_fold_with_nothing_new_shares_the_snapshot_and_a_new_one_leaves_it_alone() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    send_numbered(&engine, 2, conversation, 2).await;
    let read_state = engine.read_state();
    let first = read_state.fold(1).await.unwrap();
    let again = read_state.fold(1).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "nothing new: the same rows");
    send_numbered(&engine, 2, conversation, 1).await;
    let newer = read_state.fold(1).await.unwrap();
    assert!(newer.applied_seq > first.applied_seq);
    let unread = |snapshot: &timeline_store::ReadStateSnapshot| {
        snapshot
            .rows
            .iter()
            .find(|row| row.conversation_id == conversation)
            .map(|row| row.unread)
    };
    assert_eq!((unread(&first), unread(&newer)), (Some(2), Some(3)));
}
