//! The conversation contracts: records and send receipts, the scan that
//! lists every conversation, and a large group's member index and
//! membership positions.

use super::*;

pub(super) fn conversation(id: u64, members: Vec<u64>) -> Conversation {
    Conversation {
        conversation_id: id,
        kind: ConversationKind::Group,
        member_count: members.len() as u64,
        members,
        title: "team".into(),
        created_at_ms: 1_700_000_000_000,
        read_fanout: false,
    }
}

pub(super) fn receipt_key(n: u128) -> IdempotencyKey {
    IdempotencyKey {
        principal: format!("u:{}", BASE + 30),
        client_msg_id: uuid::Uuid::from_u128(0xfeed_0000 + n),
    }
}

/// ConversationScan: paging by the last id returned lists each
/// conversation once, and only conversations with a record.
pub(super) async fn conversation_scan_lists_every_conversation_once<S: TimelineStore>(store: &S) {
    let ids = [BASE + 901, BASE + 902, BASE + 903];
    for &conv in &ids {
        let mut created = fanout(message(conv, 1, BASE + 90, ""), &[(BASE + 90, 1)]);
        created.entry.kind = EntryKind::ConversationCreated;
        created.entry.members = vec![BASE + 90];
        created.conversation = Some(conversation(conv, vec![BASE + 90]));
        store.commit_event(created).await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut after = None;
    loop {
        let page = store.conversation_ids(after, 2).await.unwrap();
        assert!(page.len() <= 2, "a scan page holds at most its limit");
        for &id in &page {
            assert!(seen.insert(id), "conversation {id} listed twice");
        }
        if page.len() < 2 {
            break;
        }
        after = page.last().copied();
    }
    for id in ids {
        assert!(
            seen.contains(&id),
            "conversation {id} missing from the scan"
        );
    }
    for &id in seen.iter().take(20) {
        assert!(
            store.conversation(id).await.unwrap().is_some(),
            "the scan lists only conversations with a record"
        );
    }
}

pub(super) async fn conversation_records_and_receipts_round_trip<S: TimelineStore>(store: &S) {
    let conv = BASE + 4;
    assert!(store.conversation(conv).await.unwrap().is_none());
    let mut created = fanout(
        message(conv, 1, BASE + 30, ""),
        &[(BASE + 30, 1), (BASE + 31, 1)],
    );
    created.entry.kind = EntryKind::ConversationCreated;
    created.entry.members = vec![BASE + 30, BASE + 31];
    created.conversation = Some(conversation(conv, vec![BASE + 30, BASE + 31]));
    store.commit_event(created).await.unwrap();
    let stored = store.conversation(conv).await.unwrap().expect("created");
    assert_eq!(stored.members, vec![BASE + 30, BASE + 31]);
    assert_eq!(stored.member_count, 2);
    assert_eq!(
        (
            stored.listed_member(BASE + 31),
            stored.listed_member(BASE + 32)
        ),
        (Some(true), Some(false))
    );
    // A large group's record keeps its count, not its list.
    let mut large = conversation(BASE + 5, Vec::new());
    (large.read_fanout, large.member_count) = (true, 100_000);
    let mut created_large = fanout(message(BASE + 5, 1, 0, ""), &[]);
    created_large.entry.kind = EntryKind::ConversationCreated;
    created_large.conversation = Some(large.clone());
    store.commit_event(created_large).await.unwrap();
    let stored_large = store.conversation(BASE + 5).await.unwrap().unwrap();
    assert_eq!(stored_large, large);
    assert_eq!(
        stored_large.listed_member(BASE + 30),
        None,
        "ask the member table"
    );

    let mut send = fanout(
        message(conv, 2, BASE + 30, "once"),
        &[(BASE + 30, 2), (BASE + 31, 2)],
    );
    let receipt = Receipt {
        conversation_id: conv,
        conv_seq: 2,
        msg_id: 77,
        sent_at_ms: 5,
        fingerprint: 0xfeed_f00d_dead_beef,
    };
    send.receipt = Some((receipt_key(1), receipt.clone()));
    assert!(store.receipt(&receipt_key(1)).await.unwrap().is_none());
    store.commit_event(send).await.unwrap();
    assert_eq!(store.receipt(&receipt_key(1)).await.unwrap(), Some(receipt));
    assert!(store.receipt(&receipt_key(2)).await.unwrap().is_none());
    let other_principal = IdempotencyKey {
        principal: format!("u:{}", BASE + 31),
        ..receipt_key(1)
    };
    assert!(
        store.receipt(&other_principal).await.unwrap().is_none(),
        "receipts are per principal"
    );

    let mut removed = fanout(message(conv, 3, 0, ""), &[(BASE + 30, 3), (BASE + 31, 3)]);
    removed.entry.kind = EntryKind::MembersRemoved;
    removed.conversation = Some(conversation(conv, vec![BASE + 30]));
    store.commit_event(removed).await.unwrap();
    assert_eq!(
        store.conversation(conv).await.unwrap().unwrap().members,
        vec![BASE + 30]
    );
}

pub(super) async fn large_group_index_tracks_members<S: TimelineStore>(store: &S) {
    use crate::LargeGroupIndexChange;
    let (user, other) = (BASE + 70, BASE + 71);
    assert!(store.large_groups(user).await.unwrap().is_empty());
    let change = |user_id, conversation_id, member| LargeGroupIndexChange {
        user_id,
        conversation_id,
        member,
    };
    let mut joined = fanout(message(BASE + 8, 1, 0, ""), &[]);
    joined.large_group_index = vec![change(user, BASE + 8, true), change(other, BASE + 8, true)];
    store.commit_event(joined).await.unwrap();
    let mut second = fanout(message(BASE + 9, 1, 0, ""), &[]);
    second.large_group_index = vec![change(user, BASE + 9, true)];
    store.commit_event(second).await.unwrap();
    assert_eq!(
        store.large_groups(user).await.unwrap(),
        vec![BASE + 8, BASE + 9]
    );
    let mut left = fanout(message(BASE + 8, 2, 0, ""), &[]);
    left.large_group_index = vec![change(user, BASE + 8, false)];
    store.commit_event(left).await.unwrap();
    assert_eq!(store.large_groups(user).await.unwrap(), vec![BASE + 9]);
    assert_eq!(store.large_groups(other).await.unwrap(), vec![BASE + 8]);
}

/// The index records where a membership began and ended in the member's
/// timelines (the event's inbox seq for them and its conv_seq); a removal
/// keeps the join, a rejoin clears the removal and keeps the first join
/// (devices read on from where they stopped, in the earlier membership).
pub(super) async fn large_group_memberships_keep_their_positions<S: TimelineStore>(store: &S) {
    use crate::{EventPosition, LargeGroupIndexChange, LargeGroupMembership};
    let (user, group) = (BASE + 72, BASE + 73);
    let change = |member| LargeGroupIndexChange {
        user_id: user,
        conversation_id: group,
        member,
    };
    let at = |inbox_seq, conv_seq| EventPosition {
        inbox_seq,
        conv_seq,
    };
    let mut joined = fanout(message(group, 5, 0, ""), &[(user, 40)]);
    joined.large_group_index = vec![change(true)];
    store.commit_event(joined).await.unwrap();
    let membership = |left| LargeGroupMembership {
        conversation_id: group,
        joined: at(40, 5),
        left,
    };
    assert_eq!(
        store.large_group_memberships(user).await.unwrap(),
        vec![membership(None)]
    );
    let mut left = fanout(message(group, 9, 0, ""), &[(user, 47)]);
    left.large_group_index = vec![change(false)];
    store.commit_event(left.clone()).await.unwrap();
    assert_eq!(
        store.large_group_memberships(user).await.unwrap(),
        vec![membership(Some(at(47, 9)))],
        "a former member keeps its interval"
    );
    assert!(store.large_groups(user).await.unwrap().is_empty());
    // Re-applying the removal (a retry) changes nothing.
    store.commit_event(left).await.unwrap();
    assert_eq!(
        store.large_group_memberships(user).await.unwrap(),
        vec![membership(Some(at(47, 9)))]
    );
    let mut rejoined = fanout(message(group, 12, 0, ""), &[(user, 50)]);
    rejoined.large_group_index = vec![change(true)];
    store.commit_event(rejoined).await.unwrap();
    let now = store.large_group_memberships(user).await.unwrap();
    assert_eq!(now[0].joined, at(40, 5), "a rejoin keeps the first join");
    assert_eq!(now[0].left, None);
    assert_eq!(store.large_groups(user).await.unwrap(), vec![group]);
}
