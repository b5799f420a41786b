//! Membership: creation, changes in pages for huge groups, member pages,
//! the rules and access checks.

use super::*;
use crate::engine::{Engine, MembershipChange};
use crate::history::HistoryQuery;
use crate::limits::DEFAULT_LARGE_GROUP_THRESHOLD;
use crate::testkit::*;
use timeline_store::EntryKind;

/// Walks every member from the first page, `limit` at a time.
async fn walk(engine: &Engine, who: &Principal, conversation: u64, limit: usize) -> Vec<u64> {
    let (mut all, mut after) = (Vec::new(), 0);
    loop {
        let page = engine
            .list_members(who, conversation, after, limit)
            .await
            .unwrap();
        assert!(page.members.len() <= limit);
        all.extend(&page.members);
        if page.next_after == 0 {
            return all;
        }
        after = page.next_after;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_member_group_is_changed_in_pages_and_costs_one_write_per_message() {
    let fx = fixture().build().await;
    let (engine, store) = (Arc::clone(&fx.engine), Arc::clone(&fx.store));
    // Every commit, seen on its way in: what one event holds.
    let largest = Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let seen = Arc::clone(&largest);
    store.fail_commits_where(
        move |commit| {
            let mut seen = seen.lock().unwrap();
            let listed = commit.conversation.as_ref().map_or(0, |c| c.members.len());
            seen.0 = seen.0.max(commit.members.len());
            seen.1 = seen.1.max(listed);
            false
        },
        || unreachable!("no commit is failed"),
    );
    let ops = Principal::Service { name: "ops".into() };
    let first: Vec<u64> = (1..=400).collect();
    let created = engine
        .create_conversation(
            ops.clone(),
            NewConversation {
                kind: ConversationKind::Group,
                members: first,
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
        .unwrap();
    assert!(!created.read_fanout, "400 members: write fanout");
    let conversation = created.conversation_id;
    for chunk in (401..=MAX_CONVERSATION_MEMBERS as u64)
        .collect::<Vec<_>>()
        .chunks(MAX_MEMBERS_PER_CALL)
    {
        engine
            .change_members(
                ops.clone(),
                conversation,
                chunk.to_vec(),
                MembershipChange::Add,
            )
            .await
            .unwrap();
    }
    let record = engine.get_conversation(&ops, conversation).await.unwrap();
    assert_eq!(record.member_count, MAX_CONVERSATION_MEMBERS as u64);
    assert!(
        record.read_fanout && record.members.is_empty(),
        "switched to read fanout past 500 members; the record lists nobody"
    );
    let (most_rows, most_listed) = *largest.lock().unwrap();
    assert!(
        most_rows <= DEFAULT_LARGE_GROUP_THRESHOLD + MAX_MEMBERS_PER_CALL,
        "one event writes at most the switch's members, got {most_rows} rows"
    );
    assert!(
        most_listed <= DEFAULT_LARGE_GROUP_THRESHOLD,
        "no stored record lists more than a write-fanout group: {most_listed}"
    );
    // Point lookups: members read, others are refused; one more member
    // is past the limit and changes nothing.
    let query = || HistoryQuery {
        conversation_id: conversation,
        before: 0,
        after: None,
        limit: 1,
    };
    assert!(engine.history(&device(77_777, "d"), query()).await.is_ok());
    assert!(matches!(
        engine.history(&device(100_001, "d"), query()).await,
        Err(SyncdError::PermissionDenied(_))
    ));
    let full = engine
        .change_members(
            ops.clone(),
            conversation,
            vec![100_001],
            MembershipChange::Add,
        )
        .await;
    assert!(
        matches!(&full, Err(SyncdError::InvalidArgument(m)) if m.contains("at most 100000")),
        "{full:?}"
    );
    let (_, unchanged) = engine
        .change_members(
            ops.clone(),
            conversation,
            vec![5, 77_777],
            MembershipChange::Add,
        )
        .await
        .unwrap();
    assert_eq!(unchanged, 0, "adding members again is a no-op");
    let everyone = walk(&engine, &ops, conversation, MAX_MEMBERS_LIMIT).await;
    assert_eq!(
        everyone,
        (1..=MAX_CONVERSATION_MEMBERS as u64).collect::<Vec<_>>()
    );
    store.clear_aimed_fault();

    let before = store.counters().inbox_copies;
    let sent = engine
        .send(device(5, "d"), message(conversation, "to everyone", None))
        .await
        .unwrap();
    let after = store.counters().inbox_copies;
    assert_eq!(
        after - before,
        1,
        "a message to a large group writes one inbox copy whatever its size: the sender's"
    );

    // A member finds it through the sync reply and reads it by conv_seq.
    let page = engine
        .sync(&device(7_777, "d"), Some(0), 100)
        .await
        .unwrap();
    assert!(
        page.entries
            .iter()
            .any(|e| e.kind == EntryKind::MembersAdded),
        "membership events reach the inbox"
    );
    assert_eq!(
        page.large_groups
            .iter()
            .map(|g| (g.conversation_id, g.conv_seq))
            .collect::<Vec<_>>(),
        vec![(conversation, sent.receipt.conv_seq)]
    );
    let query = HistoryQuery {
        conversation_id: conversation,
        before: 0,
        after: Some(sent.receipt.conv_seq - 1),
        limit: 10,
    };
    let history = engine.history(&device(7_777, "d"), query).await.unwrap();
    assert_eq!(texts(&history.entries), ["to everyone"]);

    // Leaving removes the group from the member's sync reply.
    engine
        .change_members(ops, conversation, vec![7_777], MembershipChange::Remove)
        .await
        .unwrap();
    let page = engine
        .sync(&device(7_777, "d"), Some(0), 1_000)
        .await
        .unwrap();
    assert!(page.large_groups.is_empty());
    assert_eq!(page.entries.last().unwrap().kind, EntryKind::MembersRemoved);
}

/// A walk of ListMembers pages continues from the last id it got:
/// members present throughout are listed once, in order, while others
/// join and leave between its pages; in a write-fanout group (the
/// record's list) and in a large group (the member table) alike. Only
/// members' devices and services may list.
#[tokio::test]
async fn member_pages_hold_under_joins_and_leaves() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let ops = Principal::Service { name: "ops".into() };
    // Stayers are multiples of 10; churners join at +3 and +7.
    for size in [40u64, 1_500] {
        let stayers: Vec<u64> = (1..=size).map(|i| i * 10).collect();
        let mut pages = stayers.chunks(MAX_MEMBERS_PER_CALL);
        let created = engine
            .create_conversation(
                ops.clone(),
                NewConversation {
                    kind: ConversationKind::Group,
                    members: pages.next().unwrap().to_vec(),
                    title: String::new(),
                    client_request_id: None,
                },
            )
            .await
            .unwrap();
        let id = created.conversation_id;
        for page in pages {
            engine
                .change_members(ops.clone(), id, page.to_vec(), MembershipChange::Add)
                .await
                .unwrap();
        }
        let churn: Vec<u64> = stayers.iter().step_by(4).map(|s| s + 3).collect();
        engine
            .change_members(ops.clone(), id, churn.clone(), MembershipChange::Add)
            .await
            .unwrap();
        let record = engine.get_conversation(&ops, id).await.unwrap();
        assert_eq!(record.read_fanout, size > 500, "{size} members");

        let limit = 7;
        let (mut listed, mut after, mut round): (Vec<u64>, u64, u64) = (Vec::new(), 0, 0);
        loop {
            let page = engine.list_members(&ops, id, after, limit).await.unwrap();
            listed.extend(&page.members);
            if page.next_after == 0 {
                break;
            }
            after = page.next_after;
            // Leaves behind and ahead of the cursor, joins on both sides.
            let i = (round * 37 % churn.len() as u64) as usize;
            let j = (i + churn.len() / 2) % churn.len();
            engine
                .change_members(
                    ops.clone(),
                    id,
                    vec![churn[i], churn[j]],
                    MembershipChange::Remove,
                )
                .await
                .unwrap();
            engine
                .change_members(
                    ops.clone(),
                    id,
                    vec![churn[i] + 4, churn[j] + 4],
                    MembershipChange::Add,
                )
                .await
                .unwrap();
            round += 1;
        }
        assert!(
            listed.windows(2).all(|w| w[0] < w[1]),
            "ascending, once each"
        );
        let stayed = listed.iter().filter(|&&m| m % 10 == 0).count();
        assert_eq!(stayed, stayers.len(), "{size}: every stayer listed once");

        let member = device(stayers[3], "d");
        let page = engine.list_members(&member, id, 0, 2).await.unwrap();
        assert_eq!((page.members.len(), page.members[0]), (2, 10));
        assert_eq!(page.next_after, page.members[1]);
        assert_eq!(
            page.member_count,
            engine
                .get_conversation(&ops, id)
                .await
                .unwrap()
                .member_count
        );
        assert!(matches!(
            engine.list_members(&device(11, "d"), id, 0, 2).await,
            Err(SyncdError::PermissionDenied(_))
        ));
    }
    assert!(matches!(
        engine.list_members(&ops, 987_654, 0, 2).await,
        Err(SyncdError::NotFound(_))
    ));
}

#[tokio::test]
async fn membership_rules_and_access_checks() {
    let fx = fixture().small_sections().build().await;
    let engine = Arc::clone(&fx.engine);
    let ops = Principal::Service { name: "ops".into() };
    let conversation = group(&engine, 1, vec![2]).await;
    // Devices cannot change members; services can, and every member hears.
    let denied = engine
        .change_members(device(1, "d"), conversation, vec![3], MembershipChange::Add)
        .await;
    assert!(matches!(denied, Err(SyncdError::PermissionDenied(_))));
    let (record, conv_seq) = engine
        .change_members(ops.clone(), conversation, vec![3, 2], MembershipChange::Add)
        .await
        .unwrap();
    assert_eq!(record.members, vec![1, 2, 3]);
    assert!(conv_seq > 0);
    let (_, unchanged) = engine
        .change_members(ops.clone(), conversation, vec![3], MembershipChange::Add)
        .await
        .unwrap();
    assert_eq!(unchanged, 0, "adding an existing member is a no-op");
    engine
        .change_members(ops.clone(), conversation, vec![2], MembershipChange::Remove)
        .await
        .unwrap();
    // The removed member learned of the removal, then lost access.
    let removed = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
    let kinds: Vec<EntryKind> = removed.entries.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EntryKind::ConversationCreated,
            EntryKind::MembersAdded,
            EntryKind::MembersRemoved
        ]
    );
    let history = HistoryQuery {
        conversation_id: conversation,
        before: 0,
        after: None,
        limit: 10,
    };
    assert!(matches!(
        engine.history(&device(2, "d"), history).await,
        Err(SyncdError::PermissionDenied(_))
    ));
    assert!(matches!(
        engine
            .send(device(2, "d"), message(conversation, "x", None))
            .await,
        Err(SyncdError::PermissionDenied(_))
    ));
    // Direct conversations have fixed members.
    let direct = engine
        .create_conversation(
            device(1, "d"),
            NewConversation {
                kind: ConversationKind::Direct,
                members: vec![4],
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(direct.members, vec![1, 4]);
    let fixed = engine
        .change_members(
            ops.clone(),
            direct.conversation_id,
            vec![5],
            MembershipChange::Add,
        )
        .await;
    assert!(matches!(fixed, Err(SyncdError::FailedPrecondition(_))));
    let three = NewConversation {
        kind: ConversationKind::Direct,
        members: vec![4, 5],
        title: String::new(),
        client_request_id: None,
    };
    assert!(matches!(
        engine.create_conversation(device(1, "d"), three).await,
        Err(SyncdError::InvalidArgument(_))
    ));
    // Services have no inbox; acks cannot run ahead of the inbox.
    assert!(matches!(
        engine.sync(&ops, None, 10).await,
        Err(SyncdError::PermissionDenied(_))
    ));
    assert!(matches!(
        engine.ack(&device(1, "d"), 1_000_000).await,
        Err(SyncdError::InvalidArgument(_))
    ));
    let top = engine
        .sync(&device(1, "d"), None, 100)
        .await
        .unwrap()
        .checkpoint;
    assert_eq!(engine.ack(&device(1, "d"), top).await.unwrap(), top);
    assert!(
        engine
            .sync(&device(1, "d"), None, 100)
            .await
            .unwrap()
            .entries
            .is_empty(),
        "sync resumes from the ack"
    );
}

#[tokio::test]
async fn a_non_member_cannot_tell_a_missing_conversation_from_an_existing_one() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    let existing = group(&engine, 1, vec![2]).await;
    let missing = existing + 1_000_000;
    let stranger = device(3, "d");
    // The status and the message, with the id the caller named blanked.
    let seen = |id: u64, result: Result<(), SyncdError>| {
        let error = result.unwrap_err();
        let status = tonic::Status::from(error);
        (
            status.code(),
            status.message().replace(&id.to_string(), "<id>"),
        )
    };
    let history = |id| HistoryQuery {
        conversation_id: id,
        before: 0,
        after: None,
        limit: 10,
    };
    let mut answers = Vec::new();
    for id in [existing, missing] {
        let read = engine.history(&stranger, history(id)).await.map(drop);
        let record = engine.get_conversation(&stranger, id).await.map(drop);
        let sent = engine
            .send(stranger.clone(), message(id, "x", None))
            .await
            .map(drop);
        answers.push([seen(id, read), seen(id, record), seen(id, sent)]);
    }
    assert_eq!(answers[0], answers[1], "existing vs missing");
    assert_eq!(answers[0][0].0, tonic::Code::PermissionDenied);
    // Services may know what exists.
    let ops = Principal::Service { name: "ops".into() };
    assert!(matches!(
        engine.get_conversation(&ops, missing).await,
        Err(SyncdError::NotFound(_))
    ));
    assert!(matches!(
        engine.history(&ops, history(missing)).await,
        Err(SyncdError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_retried_creation_returns_the_first_conversation() {
    let fx = fixture().build().await;
    let (engine, store) = (Arc::clone(&fx.engine), Arc::clone(&fx.store));
    let id = Uuid::new_v4();
    let new = |members: Vec<u64>, title: &str| NewConversation {
        kind: ConversationKind::Group,
        members,
        title: title.into(),
        client_request_id: Some(id),
    };
    // The first attempt fails after allocating (UNAVAILABLE) and is
    // finished in the background; the retry waits for it and gets it.
    store.fail_next_commits(1);
    let first = engine
        .create_conversation(device(1, "d"), new(vec![2, 3], "team"))
        .await;
    assert!(
        matches!(first, Err(SyncdError::Unavailable(_))),
        "{first:?}"
    );
    let retried = engine
        .create_conversation(device(1, "d"), new(vec![3, 2], "team"))
        .await
        .unwrap();
    let again = engine
        .create_conversation(device(1, "phone"), new(vec![3, 2, 1], "team"))
        .await
        .unwrap();
    assert_eq!(retried, again, "the same members, in any order");
    let created = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
    assert_eq!(
        created
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::ConversationCreated)
            .count(),
        1,
        "one conversation"
    );
    for (members, title) in [(vec![2], "team"), (vec![2, 3], "other")] {
        let mismatch = engine
            .create_conversation(device(1, "d"), new(members, title))
            .await;
        assert!(
            matches!(&mismatch, Err(SyncdError::InvalidArgument(m)) if m.contains("client_request_id")),
            "{mismatch:?}"
        );
    }
    let direct = NewConversation {
        kind: ConversationKind::Direct,
        ..new(vec![2], "")
    };
    assert!(matches!(
        engine.create_conversation(device(1, "d"), direct).await,
        Err(SyncdError::InvalidArgument(_))
    ));
    // The id of a send is not the id of a creation.
    let conversation = retried.conversation_id;
    let msg_id = Uuid::new_v4();
    engine
        .send(device(1, "d"), message(conversation, "hi", Some(msg_id)))
        .await
        .unwrap();
    let reused = engine
        .create_conversation(
            device(1, "d"),
            NewConversation {
                client_request_id: Some(msg_id),
                ..new(vec![2, 3], "team")
            },
        )
        .await;
    assert!(
        matches!(reused, Err(SyncdError::InvalidArgument(_))),
        "{reused:?}"
    );
    // Another user's id space is their own.
    let theirs = engine
        .create_conversation(device(2, "d"), new(vec![1, 3], "team"))
        .await
        .unwrap();
    assert_ne!(theirs.conversation_id, conversation);
}
