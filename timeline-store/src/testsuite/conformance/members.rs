//! The [`ConversationMembers`](crate::ConversationMembers) contract: a
//! large group's member table, changed by events a call's worth at a time
//! and read by point lookups and pages.

use super::{BASE, fanout, message};
use crate::{EntryKind, MemberChange, TimelineStore};

const GROUP: u64 = BASE + 500;
const OTHER: u64 = BASE + 501;
/// A member-table page: the largest a caller asks for.
const PAGE: usize = 1_000;

fn changes(users: impl IntoIterator<Item = u64>, member: bool) -> Vec<MemberChange> {
    users
        .into_iter()
        .map(|user_id| MemberChange { user_id, member })
        .collect()
}

/// Commits one membership event of `conversation` at `conv_seq` writing
/// `rows` to its member table.
async fn commit_rows<S: TimelineStore>(
    store: &S,
    conversation: u64,
    conv_seq: u64,
    rows: Vec<MemberChange>,
) {
    let mut event = fanout(message(conversation, conv_seq, 0, ""), &[]);
    event.entry.kind = EntryKind::MembersAdded;
    event.members = rows;
    store.commit_event(event).await.unwrap();
}

/// Every member, walking pages of `limit` from the start.
pub(super) async fn walk<S: TimelineStore>(store: &S, conversation: u64, limit: usize) -> Vec<u64> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .list_members(conversation, after, limit)
            .await
            .unwrap();
        assert!(page.len() <= limit, "a page holds at most its limit");
        let done = page.len() < limit;
        if let Some(&last) = page.last() {
            after = last;
        }
        all.extend(page);
        if done {
            return all;
        }
    }
}

/// 2,500 members joined in three events, 500 of them leave in a fourth:
/// point lookups and pages see exactly the current members, per
/// conversation, and applying an event again changes nothing.
pub(super) async fn member_table_is_changed_a_call_at_a_time_and_paged<S: TimelineStore>(
    store: &S,
) {
    let users = |range: std::ops::Range<u64>| range.map(|i| BASE * 1_000 + i);
    assert!(store.list_members(GROUP, 0, 10).await.unwrap().is_empty());
    commit_rows(store, GROUP, 1, changes(users(0..1_000), true)).await;
    commit_rows(store, GROUP, 2, changes(users(1_000..2_000), true)).await;
    commit_rows(store, GROUP, 3, changes(users(2_000..2_500), true)).await;
    commit_rows(store, OTHER, 1, changes(users(0..3), true)).await;
    // Every even user of the first thousand leaves.
    let leaving: Vec<u64> = users(0..1_000).step_by(2).collect();
    commit_rows(store, GROUP, 4, changes(leaving.iter().copied(), false)).await;
    // Applied again (a retried commit, or recovery): the same rows.
    commit_rows(store, GROUP, 4, changes(leaving.iter().copied(), false)).await;

    let expected: Vec<u64> = users(0..2_500)
        .filter(|u| leaving.binary_search(u).is_err())
        .collect();
    assert_eq!(walk(store, GROUP, PAGE).await, expected);
    assert_eq!(walk(store, GROUP, 7).await, expected, "any page size");
    assert_eq!(
        walk(store, OTHER, PAGE).await,
        users(0..3).collect::<Vec<_>>()
    );

    let page = store.list_members(GROUP, expected[99], 5).await.unwrap();
    assert_eq!(page, expected[100..105], "a page starts after the cursor");
    assert!(
        store
            .list_members(GROUP, u64::MAX, 5)
            .await
            .unwrap()
            .is_empty(),
        "nothing after the largest id"
    );

    let probe: Vec<u64> = users(0..6).chain(users(2_499..2_502)).collect();
    assert_eq!(
        store.members_among(GROUP, &probe).await.unwrap(),
        [
            users(0..6).filter(|u| u % 2 == 1).collect::<Vec<_>>(),
            users(2_499..2_500).collect()
        ]
        .concat(),
        "point lookups: left, current and never members"
    );
    assert!(store.members_among(GROUP, &[]).await.unwrap().is_empty());

    // A rejoin is a member again.
    commit_rows(store, GROUP, 5, changes([leaving[0]], true)).await;
    assert_eq!(
        store.members_among(GROUP, &[leaving[0]]).await.unwrap(),
        vec![leaving[0]]
    );
}

/// A walk that continues from the last id it was given lists every member
/// present throughout exactly once, in order, while others join and leave
/// between its pages.
pub(super) async fn member_pages_are_stable_under_joins_and_leaves<S: TimelineStore>(store: &S) {
    let group = BASE + 502;
    let user = |i: u64| BASE * 2_000 + i * 10;
    // Stayers at multiples of 10; churn at +3 (leave) and +7 (join).
    let stayers: Vec<u64> = (0..600).map(user).collect();
    let churn: Vec<u64> = (0..600).map(|i| user(i) + 3).collect();
    commit_rows(store, group, 1, changes(stayers.iter().copied(), true)).await;
    commit_rows(store, group, 2, changes(churn.iter().copied(), true)).await;
    let mut listed = Vec::new();
    let mut after = 0;
    let mut conv_seq = 3;
    loop {
        let page = store.list_members(group, after, 50).await.unwrap();
        let done = page.len() < 50;
        if let Some(&last) = page.last() {
            after = last;
        }
        listed.extend(page);
        if done {
            break;
        }
        // Between pages: some of the churners leave (also ones already
        // listed and ones still ahead), newcomers join on both sides.
        let i = conv_seq * 37 % 600;
        let changes_now = vec![
            MemberChange {
                user_id: user(i) + 3,
                member: false,
            },
            MemberChange {
                user_id: user((i + 300) % 600) + 3,
                member: false,
            },
            MemberChange {
                user_id: user(i) + 7,
                member: true,
            },
            MemberChange {
                user_id: user((i + 300) % 600) + 7,
                member: true,
            },
        ];
        commit_rows(store, group, conv_seq, changes_now).await;
        conv_seq += 1;
    }
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "ascending, no repeats"
    );
    let stayed = listed
        .iter()
        .filter(|u| stayers.binary_search(u).is_ok())
        .count();
    assert_eq!(
        stayed,
        stayers.len(),
        "every member present throughout, once"
    );
}

/// What the checks above wrote, after a reopen.
pub(super) async fn member_table_survives_reopen<S: TimelineStore>(store: &S) {
    let all = walk(store, GROUP, PAGE).await;
    assert_eq!(all.len(), 2_500 - 500 + 1);
    assert_eq!(
        store.members_among(GROUP, &[BASE * 1_000]).await.unwrap(),
        vec![BASE * 1_000],
        "the rejoin"
    );
}
