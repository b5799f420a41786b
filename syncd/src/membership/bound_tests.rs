//! The bound on conversations per user: joins past it refused whole,
//! concurrent joins of one user counted one after another, and joins
//! stored past the readable horizon counted or waited for.

use super::*;
use crate::engine::{Engine, MembershipChange};
use crate::read_state::ListQuery;
use crate::testkit::*;

/// A group of `members` created by a service.
async fn group_of(engine: &Engine, members: Vec<u64>) -> Result<Conversation> {
    engine
        .create_conversation(
            service(),
            NewConversation {
                kind: ConversationKind::Group,
                members,
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
}

fn bounded(most: usize) -> crate::engine::EngineConfig {
    crate::engine::EngineConfig {
        max_conversations_per_user: most,
        ..Default::default()
    }
}

/// Anyone may create a conversation naming anyone, and each of a user's
/// conversations costs every list and count of theirs: past the bound a
/// join is refused, whole, and a removal makes room again.
#[tokio::test]
async fn a_user_in_the_most_conversations_joins_no_more_until_removed() {
    let fx = fixture().config(bounded(3)).build().await;
    let engine = Arc::clone(&fx.engine);
    let ops = Principal::Service { name: "ops".into() };
    let mut groups = Vec::new();
    for _ in 0..3 {
        groups.push(group_of(&engine, vec![2, 3]).await.unwrap().conversation_id);
    }
    let before = engine
        .list_conversations(&device(3, "d"), ListQuery::default())
        .await;
    let refused = group_of(&engine, vec![2, 4]).await.unwrap_err();
    assert!(
        matches!(&refused, SyncdError::ResourceExhausted(m) if m.contains("user 2") && m.contains("3 conversations")),
        "{refused:?}"
    );
    // A device naming the full user is refused the same way, and nothing
    // of either attempt was stored for the user who had room.
    let by_device = engine
        .create_conversation(
            device(4, "d"),
            NewConversation {
                kind: ConversationKind::Direct,
                members: vec![2],
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(by_device, SyncdError::ResourceExhausted(_)),
        "{by_device:?}"
    );
    let lists_of_4 = engine
        .list_conversations(&device(4, "d"), ListQuery::default())
        .await
        .unwrap();
    assert!(lists_of_4.conversations.is_empty(), "user 4 joined nothing");
    // Adding the full user to a group with room for others adds no one.
    let other = group_of(&engine, vec![5]).await.unwrap().conversation_id;
    let add = engine
        .change_members(ops.clone(), other, vec![2, 6], MembershipChange::Add)
        .await
        .unwrap_err();
    assert!(matches!(add, SyncdError::ResourceExhausted(_)), "{add:?}");
    let record = engine.get_conversation(&ops, other).await.unwrap();
    assert_eq!(record.members, vec![5], "refused whole");
    // User 3 is in 3 conversations too, and was not touched.
    assert_eq!(
        before.unwrap().conversations.len(),
        engine
            .list_conversations(&device(3, "d"), ListQuery::default())
            .await
            .unwrap()
            .conversations
            .len()
    );
    engine
        .change_members(ops.clone(), groups[0], vec![2], MembershipChange::Remove)
        .await
        .unwrap();
    engine
        .change_members(ops.clone(), other, vec![2, 6], MembershipChange::Add)
        .await
        .expect("a removal made room");
    let refused_again = group_of(&engine, vec![2]).await.unwrap_err();
    assert!(matches!(refused_again, SyncdError::ResourceExhausted(_)));
}

/// Joins of one user race through separate conversations (each holds its
/// own lock); the admission lock makes them count one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_of_one_user_cannot_pass_the_bound() {
    // Delays on commits and reads, so the joins overlap.
    let fx = fixture().jitter().config(bounded(3)).build().await;
    let engine = Arc::clone(&fx.engine);
    let attempts = (0..12u64).map(|i| {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { group_of(&engine, vec![7, 100 + i]).await })
    });
    let results = futures_util::future::join_all(attempts).await;
    let joined = results
        .iter()
        .filter(|r| r.as_ref().unwrap().is_ok())
        .count();
    let refused = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Err(SyncdError::ResourceExhausted(_))))
        .count();
    assert_eq!((joined, refused), (3, 9));
    let listed = engine
        .list_conversations(&device(7, "d"), ListQuery::default())
        .await
        .unwrap();
    assert_eq!(listed.conversations.len(), 3);
}

/// Joins stored past the user's readable horizon (held back by an event
/// still in flight) are counted from the stored tail; a heavy one, which
/// the tail holds without its members, makes the next join wait.
#[tokio::test]
async fn joins_past_a_held_back_event_are_counted_or_waited_for() {
    let fx = fixture().config(bounded(3)).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    hold_back(&fx, 2, conversation).await;
    // Small joins past the held-back seq: counted from the tail.
    group_of(&engine, vec![1, 5]).await.unwrap();
    group_of(&engine, vec![1, 6]).await.unwrap();
    let refused = group_of(&engine, vec![1, 7]).await.unwrap_err();
    assert!(
        matches!(&refused, SyncdError::ResourceExhausted(m) if m.contains("user 1 is")),
        "{refused:?}"
    );
    assert_eq!(engine.read_state().memberships(1).await.unwrap(), 3);

    // A heavy join (its member list over the inline payload) past the
    // horizon cannot be counted from the tail: the next join waits.
    let fx = fixture().config(bounded(3)).build().await;
    let engine = Arc::clone(&fx.engine);
    let conversation = group(&engine, 1, vec![2]).await;
    hold_back(&fx, 2, conversation).await;
    let many: Vec<u64> = std::iter::once(1).chain(1_000..1_600).collect();
    group_of(&engine, many.clone()).await.unwrap();
    for _ in 0..2 {
        let waited = group_of(&engine, many.clone()).await.unwrap_err();
        assert!(
            matches!(&waited, SyncdError::Unavailable(m) if m.contains("still being stored")),
            "{waited:?}"
        );
    }
}

/// A join that failed at the fence stays parked with its admissions held
/// for the rest of the engine: a later join of the same user is refused
/// as UNAVAILABLE after the admission wait, rather than waiting for good
/// (while it held a conversation's lock and other users' admissions).
#[tokio::test(start_paused = true)]
async fn a_join_behind_a_parked_one_is_refused_after_the_admission_wait() {
    let fx = fixture().build().await;
    let engine = Arc::clone(&fx.engine);
    fx.store.fail_commits_where(
        |commit| commit.entry.members.contains(&2),
        || timeline_store::StoreError::Fenced("a newer writer sealed the store".into()),
    );
    assert!(group_of(&engine, vec![1, 2]).await.is_err());
    fx.store.clear_aimed_fault();
    let started = tokio::time::Instant::now();
    let waited = group_of(&engine, vec![1, 3]).await.unwrap_err();
    assert!(
        matches!(&waited, SyncdError::Unavailable(m) if m.contains("user 1") && m.contains("in flight")),
        "{waited:?}"
    );
    assert!(started.elapsed() >= crate::limits::MAX_ADMISSION_WAIT);
    group_of(&engine, vec![3, 4])
        .await
        .expect("users not held are admitted");
}
