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

/// Retention's walk reads each row's seq and sending time, heavy copies
/// included (never completed from the conversation), within its range and
/// limit, across the store's partitions of an inbox, and not below a trim.
pub(super) async fn inbox_times_list_each_row_without_its_payload<S: TimelineStore>(store: &S) {
    let (conv, user) = (BASE + 15, BASE + 81);
    // Seqs on both sides of 65,536 and far above it: a backend that splits
    // an inbox into partitions by seq must read across them.
    let seqs = [3u64, 65_535, 65_536, 65_537, 200_000, 200_001];
    let heavy = "h".repeat(20_000);
    for (i, &seq) in seqs.iter().enumerate() {
        let conv_seq = i as u64 + 1;
        let text = if i % 2 == 0 { heavy.as_str() } else { "light" };
        let entry = Entry {
            sent_at_ms: 1_650_000_000_000 + (i as i64) * 1_000,
            ..message(conv, conv_seq, BASE + 11, text)
        };
        store
            .commit_event(fanout(entry, &[(user, seq)]))
            .await
            .unwrap();
    }
    let times = |after: u64, through: u64, limit: usize| async move {
        store
            .inbox_times(user, InboxRange::new(after, through, limit))
            .await
            .unwrap()
            .iter()
            .map(|row| (row.seq, row.sent_at_ms))
            .collect::<Vec<_>>()
    };
    let expected: Vec<(u64, i64)> = seqs
        .iter()
        .enumerate()
        .map(|(i, &seq)| (seq, 1_650_000_000_000 + (i as i64) * 1_000))
        .collect();
    assert_eq!(times(0, u64::MAX, 100).await, expected);
    assert_eq!(times(0, u64::MAX, 4).await, expected[..4]);
    assert_eq!(times(3, 65_537, 100).await, expected[1..4]);
    assert_eq!(times(65_535, 200_000, 1).await, expected[2..3]);
    assert!(times(200_001, u64::MAX, 100).await.is_empty());
    assert!(times(5, 5, 100).await.is_empty());
    assert!(times(0, u64::MAX, 0).await.is_empty());
    assert_eq!(trim_all(store, user, 65_537, 2).await, 3);
    assert_eq!(times(0, u64::MAX, 100).await, expected[3..]);
}
