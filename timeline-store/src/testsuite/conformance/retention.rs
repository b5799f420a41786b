//! The retention contracts: trims delete below the floor and raise it,
//! racing trims keep the higher floor, checkpoints never go back.

use super::*;

/// Trims everything below `below_seq` in steps of at most `step` entries,
/// as a retention pass does; returns how many entries went.
pub(super) async fn trim_all<S: TimelineStore>(
    store: &S,
    user: u64,
    below_seq: u64,
    step: usize,
) -> usize {
    let mut trimmed = 0;
    loop {
        let deleted = store.trim_inbox(user, below_seq, step).await.unwrap();
        trimmed += deleted;
        if deleted < step {
            return trimmed;
        }
    }
}

pub(super) async fn trimming_deletes_below_the_floor_and_raises_it<S: TimelineStore>(store: &S) {
    let user = BASE + 80;
    for seq in 1..=30u64 {
        store
            .commit_event(fanout(message(BASE + 10, seq, user, "t"), &[(user, seq)]))
            .await
            .unwrap();
    }
    assert_eq!(store.inbox_floor(user).await.unwrap(), 0);
    assert_eq!(trim_all(store, user, 21, 8).await, 20);
    assert_eq!(store.inbox_floor(user).await.unwrap(), 21);
    let left: Vec<u64> = read_inbox(store, user, 0, u64::MAX, 100)
        .await
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, (21..=30).collect::<Vec<_>>());
    assert_eq!(store.trim_inbox(user, 5, 100).await.unwrap(), 0);
    assert_eq!(
        store.inbox_floor(user).await.unwrap(),
        21,
        "the floor never goes back"
    );
    assert_eq!(store.last_inbox_seq(user).await.unwrap(), 30);
    assert_eq!(
        history_len(store, BASE + 10, 100).await,
        30,
        "history is kept"
    );
}

/// Two trimmers racing (a retry landing late, a writer that was frozen and
/// one that took over): the floor ends at the higher of the two, never
/// lowered by the one that lost the race.
pub(super) async fn racing_trims_keep_the_higher_floor<S: TimelineStore>(store: &S) {
    let users: Vec<u64> = (0..40).map(|i| BASE + 70_000 + i).collect();
    for &user in &users {
        store
            .commit_event(fanout(
                message(BASE + 70_000, user, user, "t"),
                &[(user, 30)],
            ))
            .await
            .unwrap();
    }
    let trims = users
        .iter()
        .flat_map(|&user| [store.trim_inbox(user, 20, 0), store.trim_inbox(user, 10, 0)]);
    for result in join_all(trims).await {
        result.unwrap();
    }
    for &user in &users {
        assert_eq!(
            store.inbox_floor(user).await.unwrap(),
            20,
            "user {user}: a lower floor overwrote a higher one"
        );
    }
}

pub(super) async fn checkpoints_never_go_back<S: TimelineStore>(store: &S) {
    let user = BASE + 40;
    assert_eq!(store.checkpoint(user, "phone").await.unwrap(), 0);
    assert_eq!(store.save_checkpoint(user, "phone", 10).await.unwrap(), 10);
    assert_eq!(store.save_checkpoint(user, "phone", 4).await.unwrap(), 10);
    assert_eq!(store.save_checkpoint(user, "laptop", 3).await.unwrap(), 3);
    assert_eq!(store.checkpoint(user, "phone").await.unwrap(), 10);
    assert_eq!(store.checkpoint(user, "laptop").await.unwrap(), 3);
    assert_eq!(store.checkpoint(user + 1, "phone").await.unwrap(), 0);
}
