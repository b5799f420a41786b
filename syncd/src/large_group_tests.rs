//! Large groups across membership changes: a membership counts from the
//! moment its event is readable (never earlier), devices start reading at
//! the event that made them a member, and a former member still reads what
//! was sent while it belonged.

use crate::engine::{EngineConfig, HistoryQuery, MembershipChange};
use crate::error::SyncdError;
use crate::testkit::*;
use std::sync::Arc;
use timeline_store::EntryKind;
use timeline_store::testsuite::{Failure, Op};

/// Groups past 3 members use read fanout.
fn small_threshold() -> EngineConfig {
    EngineConfig {
        large_group_threshold: 3,
        ..EngineConfig::default()
    }
}

fn history_after(conversation_id: u64, after: u64) -> HistoryQuery {
    HistoryQuery {
        conversation_id,
        before: 0,
        after: Some(after),
        limit: 100,
    }
}

#[tokio::test]
async fn a_removed_member_reads_what_was_sent_while_it_belonged() {
    let fx = fixture().config(small_threshold()).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4]).await;
    send_numbered(&engine, 1, conversation, 3).await;
    let (_, removed_at) = engine
        .change_members(service(), conversation, vec![3], MembershipChange::Remove)
        .await
        .unwrap();
    engine
        .send(device(1, "d"), message(conversation, "after", None))
        .await
        .unwrap();

    let page = engine.sync(&device(3, "d"), Some(0), 100).await.unwrap();
    assert!(page.large_groups.is_empty(), "no longer a member");
    assert_eq!(page.left_large_groups.len(), 1);
    let left = page.left_large_groups[0];
    assert_eq!(left.conversation_id, conversation);
    assert!(left.conv_seq < removed_at, "up to the removal");
    let history = engine
        .history(
            &device(3, "d"),
            history_after(conversation, left.joined_conv_seq),
        )
        .await
        .unwrap();
    assert_eq!(texts(&history.entries), ["0", "1", "2"]);
    // Nothing from the removal on, backwards either.
    let backwards = HistoryQuery {
        conversation_id: conversation,
        before: 0,
        after: None,
        limit: 100,
    };
    let newest = engine.history(&device(3, "d"), backwards).await.unwrap();
    assert!(newest.entries.iter().all(|e| e.conv_seq < removed_at));
    // Someone who never belonged reads nothing.
    assert!(matches!(
        engine
            .history(&device(9, "d"), history_after(conversation, 0))
            .await,
        Err(SyncdError::PermissionDenied(_))
    ));
}

#[tokio::test]
async fn a_large_group_is_listed_once_its_join_is_readable_and_from_there() {
    let fx = fixture().config(small_threshold()).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4]).await;
    send_numbered(&engine, 1, conversation, 3).await;
    // The join lands in the store, but the store answers with an error:
    // the event is finished in the background, its seqs not yet readable.
    fx.store.fail_next(Op::Commit, 1, Failure::Applied);
    let joining = engine
        .change_members(service(), conversation, vec![5], MembershipChange::Add)
        .await;
    assert!(
        matches!(joining, Err(SyncdError::Unavailable(_))),
        "{joining:?}"
    );
    let early = engine.sync(&device(5, "d"), Some(0), 100).await.unwrap();
    assert!(
        early.large_groups.is_empty()
            || early
                .entries
                .iter()
                .any(|e| e.kind == EntryKind::MembersAdded),
        "the group is listed before its join is readable: {early:?}"
    );

    let mut joined = None;
    for _ in 0..100 {
        let page = engine.sync(&device(5, "d"), Some(0), 100).await.unwrap();
        if let Some(top) = page.large_groups.first() {
            let join = page
                .entries
                .iter()
                .find(|e| e.kind == EntryKind::MembersAdded)
                .expect("listed with its join in the same complete sync");
            assert_eq!(top.joined_conv_seq, join.conv_seq);
            joined = Some(*top);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let top = joined.expect("the background finisher completed the join");
    engine
        .send(device(1, "d"), message(conversation, "welcome", None))
        .await
        .unwrap();
    let history = engine
        .history(
            &device(5, "d"),
            history_after(conversation, top.joined_conv_seq),
        )
        .await
        .unwrap();
    assert_eq!(texts(&history.entries), ["welcome"], "no pre-join history");
}

#[tokio::test]
async fn members_start_reading_at_the_switch_to_read_fanout() {
    let fx = fixture().config(small_threshold()).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    engine
        .send(device(1, "d"), message(conversation, "in the inbox", None))
        .await
        .unwrap();
    let (record, switched_at) = engine
        .change_members(service(), conversation, vec![3, 4], MembershipChange::Add)
        .await
        .unwrap();
    assert!(record.read_fanout);
    engine
        .send(
            device(1, "d"),
            message(conversation, "in the timeline", None),
        )
        .await
        .unwrap();
    let page = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
    assert_eq!(
        texts(&page.entries)
            .iter()
            .filter(|t| **t == "in the inbox")
            .count(),
        1
    );
    let top = page.large_groups[0];
    assert_eq!(top.joined_conv_seq, switched_at);
    let history = engine
        .history(
            &device(2, "d"),
            history_after(conversation, top.joined_conv_seq),
        )
        .await
        .unwrap();
    assert_eq!(
        texts(&history.entries),
        ["in the timeline"],
        "nothing twice"
    );
}

/// The biggest membership event there is: a listed group of 10,000 (the
/// most a record listed before members moved to the member table, and
/// what a group past the threshold lists one last time) takes 1,000 more
/// and writes all 11,000 rows at once; from then on its record lists
/// nobody and every read pages the member table.
#[tokio::test]
async fn a_listed_group_of_10000_moves_to_the_member_table_in_one_event() {
    let config = EngineConfig {
        large_group_threshold: 10_000,
        ..EngineConfig::default()
    };
    let fx = fixture().config(config).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, (2..=1_000).collect()).await;
    for chunk in (1_001..=11_000u64).collect::<Vec<_>>().chunks(1_000) {
        let (record, _) = engine
            .change_members(
                service(),
                conversation,
                chunk.to_vec(),
                MembershipChange::Add,
            )
            .await
            .unwrap();
        let listed = chunk[chunk.len() - 1] <= 10_000;
        assert_eq!(
            record.read_fanout, !listed,
            "past 10,000 the group reads from its timeline"
        );
    }
    let record = engine
        .get_conversation(&service(), conversation)
        .await
        .unwrap();
    assert_eq!((record.member_count, record.read_fanout), (11_000, true));
    let mut everyone = Vec::new();
    let mut after = 0;
    loop {
        let page = engine
            .list_members(&service(), conversation, after, 1_000)
            .await
            .unwrap();
        everyone.extend(page.members.iter().copied());
        if page.next_after == 0 {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(everyone, (1..=11_000).collect::<Vec<u64>>());
    // Members from before the move and from the move itself can send,
    // and their messages reach the others through the timeline.
    for sender in [5, 10_500] {
        engine
            .send(
                device(sender, "d"),
                message(conversation, "still here", None),
            )
            .await
            .unwrap();
    }
    let history = engine
        .history(&device(11_000, "d"), history_after(conversation, 0))
        .await
        .unwrap();
    assert_eq!(
        texts(&history.entries)
            .iter()
            .filter(|t| **t == "still here")
            .count(),
        2
    );
}

/// A large group's membership answers are cached: a member's second send
/// reads no member row (a failing read would refuse it), and a removal or
/// an addition takes effect at once all the same.
#[tokio::test]
async fn member_answers_are_cached_and_follow_membership_changes() {
    let fx = fixture().config(small_threshold()).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2, 3, 4]).await;
    let send = |from: u64, text: &str| {
        let engine = Arc::clone(&engine);
        let command = message(conversation, text, None);
        async move { engine.send(device(from, "d"), command).await }
    };
    send(2, "first").await.unwrap();
    assert!(matches!(
        send(5, "outsider").await,
        Err(SyncdError::PermissionDenied(_))
    ));

    let injected = fx.store.counters().injected_failures;
    fx.store.fail_next(Op::Read, 1, Failure::Lost);
    send(2, "cached").await.unwrap();
    assert_eq!(
        fx.store.counters().injected_failures,
        injected,
        "no read was made"
    );
    fx.store.fail_next(Op::Read, 0, Failure::Lost);

    engine
        .change_members(service(), conversation, vec![2], MembershipChange::Remove)
        .await
        .unwrap();
    engine
        .change_members(service(), conversation, vec![5], MembershipChange::Add)
        .await
        .unwrap();
    let removed = send(2, "removed").await;
    assert!(
        matches!(removed, Err(SyncdError::PermissionDenied(_))),
        "{removed:?}"
    );
    send(5, "added").await.unwrap();
}
