//! The storage conformance suite: every [`TimelineStore`] backend must pass
//! [`run_all`]. It panics (like any test) on the first broken guarantee.
//!
//! `open` must return a handle to the *same* storage each time (same
//! directory, same keyspace); the suite drops its handle and opens a new one
//! to check durability. Backends run it from their own tests. Each check
//! names the capability whose contract it tests.

use futures_util::future::join_all;

mod conversations;
mod lifecycle;
mod members;
mod read_states;
mod retention;
mod revocations;

use conversations::receipt_key;
use retention::trim_all;

use crate::{
    Conversation, ConversationKind, ConversationRange, Entry, EntryKind, EventCommit,
    IdempotencyKey, InboxRange, InboxWrite, Order, Receipt, Revocation, RevokedBefore,
    TimelineStore,
};

/// Ids are offset so that a shared (e.g. CQL) store never collides with
/// data from an earlier run of the suite.
const BASE: u64 = 1_000;

fn message(conversation_id: u64, conv_seq: u64, sender_id: u64, text: &str) -> Entry {
    Entry {
        conv_seq,
        msg_id: conversation_id * 1_000_000 + conv_seq,
        sender_id,
        text: text.to_owned(),
        sent_at_ms: 1_700_000_000_000 + conv_seq as i64,
        ..Entry::new(EntryKind::Message, conversation_id)
    }
}

/// A commit of `entry` with one inbox copy per `(user_id, seq)` and nothing
/// else: the plain event most store tests start from.
pub fn fanout(entry: Entry, members: &[(u64, u64)]) -> EventCommit {
    EventCommit {
        keep_copies: false,
        rewrites: Vec::new(),
        entry,
        inbox: members
            .iter()
            .map(|&(user_id, seq)| InboxWrite { user_id, seq })
            .collect(),
        receipt: None,
        conversation: None,
        large_group_index: Vec::new(),
        members: Vec::new(),
        readers: Vec::new(),
    }
}

/// The inbox entries of `user` with `after < seq <= through`, at most
/// `limit`.
async fn read_inbox<S: TimelineStore>(
    store: &S,
    user: u64,
    after: u64,
    through: u64,
    limit: usize,
) -> Vec<Entry> {
    let range = InboxRange::new(after, through, limit);
    store.read_inbox(user, range).await.unwrap()
}

/// How many inbox entries of `user` a read of at most `limit` returns.
async fn inbox_len<S: TimelineStore>(store: &S, user: u64, limit: usize) -> usize {
    read_inbox(store, user, 0, u64::MAX, limit).await.len()
}

/// How many conversation entries a forward read of at most `limit` returns.
async fn history_len<S: TimelineStore>(store: &S, conversation_id: u64, limit: usize) -> usize {
    store
        .read_conversation(
            conversation_id,
            ConversationRange::oldest_first(0, u64::MAX, limit),
        )
        .await
        .unwrap()
        .len()
}

/// Runs every check, reopening the store through `open` where durability
/// is checked.
pub async fn run_all<S, F, Fut>(open: F)
where
    S: TimelineStore,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let store = open().await;
    event_writes_conversation_entry_and_every_inbox_copy(&store).await;
    inbox_reads_respect_bounds_limits_and_owners(&store).await;
    inbox_reads_stop_past_their_byte_budget(&store).await;
    conversation_reads_page_both_ways(&store).await;
    conversation_reads_stop_past_their_byte_budget(&store).await;
    conversations::conversation_records_and_receipts_round_trip(&store).await;
    retention::checkpoints_never_go_back(&store).await;
    conversations::large_group_index_tracks_members(&store).await;
    conversations::large_group_memberships_keep_their_positions(&store).await;
    retention::trimming_deletes_below_the_floor_and_raises_it(&store).await;
    retention::racing_trims_keep_the_higher_floor(&store).await;
    retention::inbox_times_list_each_row_without_its_payload(&store).await;
    large_reads_are_complete(&store).await;
    recommitting_an_event_is_idempotent(&store).await;
    concurrent_commits_all_land(&store).await;
    every_entry_kind_round_trips(&store).await;
    heavy_payloads_read_back_whole_from_every_inbox(&store).await;
    revocations::revocations_only_rise_and_the_feed_lists_them(&store).await;
    read_states::read_states_round_trip_and_never_go_behind(&store).await;
    read_states::read_markers_stay_out_of_the_conversation_timeline(&store).await;
    read_states::readers_keep_each_members_highest_marker(&store).await;
    lifecycle::rewrites_replace_stored_entries_and_copies_are_kept(&store).await;
    lifecycle::rewriting_a_heavy_message_reaches_every_copy(&store).await;
    lifecycle::rewrites_do_not_bring_back_trimmed_copies(&store).await;
    conversations::conversation_scan_lists_every_conversation_once(&store).await;
    members::member_table_is_changed_a_call_at_a_time_and_paged(&store).await;
    members::member_pages_are_stable_under_joins_and_leaves(&store).await;
    assert_eq!(
        store.recover().await.unwrap(),
        0,
        "no event is left unfinished after successful commits"
    );
    drop(store);
    let reopened = open().await;
    everything_survives_reopen(&reopened).await;
    read_states::read_states_survive_reopen(&reopened).await;
    members::member_table_survives_reopen(&reopened).await;
}

async fn event_writes_conversation_entry_and_every_inbox_copy<S: TimelineStore>(store: &S) {
    let conv = BASE + 1;
    let commit = fanout(
        message(conv, 1, BASE + 1, "hello"),
        &[(BASE + 1, 5), (BASE + 2, 9)],
    );
    store.commit_event(commit).await.unwrap();
    let history = store
        .read_conversation(conv, ConversationRange::oldest_first(0, u64::MAX, 10))
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].text, "hello");
    assert_eq!(history[0].seq, 0, "conversation entries carry no inbox seq");
    let first = read_inbox(store, BASE + 1, 0, u64::MAX, 10).await;
    let second = read_inbox(store, BASE + 2, 0, u64::MAX, 10).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].seq, 5);
    assert_eq!(second[0].seq, 9);
    assert_eq!(second[0].conv_seq, 1);
    assert_eq!(second[0].kind, EntryKind::Message);
    assert_eq!(store.last_inbox_seq(BASE + 2).await.unwrap(), 9);
    assert_eq!(store.last_inbox_seq(BASE + 3).await.unwrap(), 0);
}

async fn inbox_reads_respect_bounds_limits_and_owners<S: TimelineStore>(store: &S) {
    let conv = BASE + 2;
    let user = BASE + 10;
    // Neighbouring user ids must not bleed into each other's ranges.
    let neighbour = BASE + 11;
    for i in 1..=20u64 {
        let commit = fanout(
            message(conv, i, user, &format!("m{i}")),
            &[(user, i * 2), (neighbour, i)],
        );
        store.commit_event(commit).await.unwrap();
    }
    let all = read_inbox(store, user, 0, u64::MAX, 100).await;
    assert_eq!(all.len(), 20);
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "ascending seq order"
    );
    let page = read_inbox(store, user, 10, 30, 100).await;
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (12..=30).step_by(2).collect::<Vec<_>>(),
        "after exclusive, through inclusive"
    );
    let limited = read_inbox(store, user, 0, u64::MAX, 3).await;
    assert_eq!(
        limited.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
    assert!(read_inbox(store, user, 40, u64::MAX, 10).await.is_empty());
    assert!(read_inbox(store, user, 5, 5, 10).await.is_empty());
    assert_eq!(inbox_len(store, neighbour, 100).await, 20);
    assert_eq!(store.last_inbox_seq(user).await.unwrap(), 40);
}

async fn conversation_reads_page_both_ways<S: TimelineStore>(store: &S) {
    let conv = BASE + 3;
    for i in 1..=10u64 {
        store
            .commit_event(fanout(message(conv, i, BASE + 20, "x"), &[(BASE + 20, i)]))
            .await
            .unwrap();
    }
    let pages = [
        // Newest first, then the page before it.
        (
            ConversationRange::newest_first(0, u64::MAX, 3),
            vec![10, 9, 8],
        ),
        (ConversationRange::newest_first(0, 8, 3), vec![7, 6, 5]),
        (
            ConversationRange::oldest_first(7, u64::MAX, 10),
            vec![8, 9, 10],
        ),
        // Both bounds exclusive.
        (ConversationRange::oldest_first(2, 6, 10), vec![3, 4, 5]),
        (ConversationRange::oldest_first(5, 6, 10), vec![]),
    ];
    for (range, expected) in pages {
        let entries = store.read_conversation(conv, range).await.unwrap();
        let conv_seqs: Vec<u64> = entries.iter().map(|e| e.conv_seq).collect();
        assert_eq!(conv_seqs, expected, "{range:?}");
    }
    assert!(
        store
            .read_conversation(BASE + 999, ConversationRange::newest_first(0, u64::MAX, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A backend may store inbox copies of a heavy entry (a long text, a long
/// member list) by reference to the conversation entry; readers always get
/// the entry whole, from every inbox and the timeline.
/// The keys a budgeted read returns of entries `(key, size)` in read
/// order: the rule stated apart from every backend. The first entry
/// always, then through the first that takes the total past the budget.
fn within_budget(entries: &[(u64, usize)], limit: usize, max_bytes: usize) -> Vec<u64> {
    let mut total = 0usize;
    let mut keys = Vec::new();
    for &(key, size) in entries.iter().take(limit) {
        total = total.saturating_add(size);
        keys.push(key);
        if keys.len() > 1 && total > max_bytes {
            break;
        }
    }
    keys
}

async fn inbox_reads_stop_past_their_byte_budget<S: TimelineStore>(store: &S) {
    let (conv, user) = (BASE + 14, BASE + 77);
    // A heavy payload among them: its copy refers to the conversation
    // entry, and its bytes count once the payload is read back.
    let texts = ["a", "bb", &"h".repeat(5_000), "ccc", &"d".repeat(300), "e"];
    for (i, text) in texts.iter().enumerate() {
        let conv_seq = i as u64 + 1;
        let entry = message(conv, conv_seq, user, text);
        store
            .commit_event(fanout(entry, &[(user, conv_seq)]))
            .await
            .unwrap();
    }
    let all = read_inbox(store, user, 0, u64::MAX, 100).await;
    assert_eq!(all.len(), texts.len());
    let sizes: Vec<usize> = all.iter().map(Entry::wire_bytes).collect();
    let keyed: Vec<(u64, usize)> = all
        .iter()
        .map(|e| e.seq)
        .zip(sizes.iter().copied())
        .collect();
    let expected = |limit: usize, max_bytes: usize| within_budget(&keyed, limit, max_bytes);
    let prefix = |n: usize| sizes[..n].iter().sum::<usize>();
    let budgets = [
        0,
        sizes[0] - 1,
        prefix(1),
        prefix(2) - 1,
        prefix(2),
        prefix(3) - 1,
        prefix(3),
        prefix(4) + 1,
        prefix(6),
        usize::MAX,
    ];
    for max_bytes in budgets {
        for limit in [1, 2, 4, 100] {
            let range = InboxRange::new(0, u64::MAX, limit).with_max_bytes(max_bytes);
            let got = store.read_inbox(user, range).await.unwrap();
            let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
            assert_eq!(
                seqs,
                expected(limit, max_bytes),
                "limit {limit}, max_bytes {max_bytes}, sizes {sizes:?}"
            );
            for (read, whole) in got.iter().zip(&all) {
                assert_eq!(read.text, whole.text, "the payload comes with its entry");
            }
        }
    }
    // From the middle of the range, the first entry read is the one that
    // always goes.
    let range = InboxRange::new(2, u64::MAX, 100).with_max_bytes(1);
    let seqs: Vec<u64> = (store.read_inbox(user, range).await.unwrap())
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [3, 4]);
}

async fn conversation_reads_stop_past_their_byte_budget<S: TimelineStore>(store: &S) {
    let conv = BASE + 16;
    let texts = ["a", &"h".repeat(5_000), "bb", &"d".repeat(300), "ccc", "e"];
    for (i, text) in texts.iter().enumerate() {
        let conv_seq = i as u64 + 1;
        let entry = message(conv, conv_seq, BASE + 12, text);
        store.commit_event(fanout(entry, &[])).await.unwrap();
    }
    for order in [Order::OldestFirst, Order::NewestFirst] {
        let whole = |limit| match order {
            Order::OldestFirst => ConversationRange::oldest_first(0, u64::MAX, limit),
            Order::NewestFirst => ConversationRange::newest_first(0, u64::MAX, limit),
        };
        let all = store.read_conversation(conv, whole(100)).await.unwrap();
        assert_eq!(all.len(), texts.len());
        let sizes: Vec<usize> = all.iter().map(Entry::wire_bytes).collect();
        let keyed: Vec<(u64, usize)> = all
            .iter()
            .map(|e| e.conv_seq)
            .zip(sizes.iter().copied())
            .collect();
        let expected = |limit: usize, max_bytes: usize| within_budget(&keyed, limit, max_bytes);
        let prefix = |n: usize| sizes[..n].iter().sum::<usize>();
        let budgets = [
            0,
            prefix(1),
            prefix(2) - 1,
            prefix(2),
            prefix(3),
            prefix(4) + 1,
            usize::MAX,
        ];
        for max_bytes in budgets {
            for limit in [1, 2, 4, 100] {
                let range = whole(limit).with_max_bytes(max_bytes);
                let got = store.read_conversation(conv, range).await.unwrap();
                let seqs: Vec<u64> = got.iter().map(|e| e.conv_seq).collect();
                assert_eq!(
                    seqs,
                    expected(limit, max_bytes),
                    "{order:?}, limit {limit}, max_bytes {max_bytes}, sizes {sizes:?}"
                );
            }
        }
    }
}

async fn heavy_payloads_read_back_whole_from_every_inbox<S: TimelineStore>(store: &S) {
    let (conv, users) = (BASE + 13, [BASE + 74, BASE + 75, BASE + 76]);
    let text = "長".repeat(30_000);
    let heavy = message(conv, 1, users[0], &text);
    let members: Vec<u64> = (1..=2_000).collect();
    let created = Entry {
        msg_id: 77_002,
        conv_seq: 2,
        members: members.clone(),
        ..Entry::new(EntryKind::ConversationCreated, conv)
    };
    let small = message(conv, 3, users[0], "small");
    for (i, entry) in [heavy, created, small].into_iter().enumerate() {
        let copies: Vec<(u64, u64)> = users.iter().map(|&u| (u, 10 + i as u64)).collect();
        store.commit_event(fanout(entry, &copies)).await.unwrap();
    }
    for user in users {
        let inbox = read_inbox(store, user, 0, u64::MAX, 10).await;
        assert_eq!(inbox.len(), 3);
        assert_eq!(inbox[0].text, text);
        assert_eq!(inbox[0].seq, 10);
        assert_eq!(inbox[1].members, members);
        assert_eq!(inbox[1].seq, 11);
        assert_eq!(inbox[2].text, "small");
    }
    let timeline = store
        .read_conversation(conv, ConversationRange::oldest_first(0, u64::MAX, 10))
        .await
        .unwrap();
    assert_eq!(timeline[0].text, text);
    assert_eq!(timeline[1].members, members);
    // Without payloads: heavy copies as stored, everything else whole.
    let range = InboxRange::new(0, u64::MAX, 10).without_payloads();
    let stubs = store.read_inbox(users[0], range).await.unwrap();
    let seen: Vec<(u64, usize, usize, u64)> = stubs
        .iter()
        .map(|e| (e.seq, e.text.len(), e.members.len(), e.conv_seq))
        .collect();
    assert_eq!(seen, [(10, 0, 0, 1), (11, 0, 0, 2), (12, 5, 0, 3)]);
}

async fn recommitting_an_event_is_idempotent<S: TimelineStore>(store: &S) {
    let conv = BASE + 5;
    let commit = fanout(message(conv, 1, BASE + 50, "again"), &[(BASE + 50, 1)]);
    store.commit_event(commit.clone()).await.unwrap();
    store.commit_event(commit).await.unwrap();
    assert_eq!(inbox_len(store, BASE + 50, 10).await, 1);
    assert_eq!(history_len(store, conv, 10).await, 1);
}

async fn concurrent_commits_all_land<S: TimelineStore>(store: &S) {
    let conv = BASE + 6;
    let user = BASE + 60;
    let writes = (1..=200u64).map(|i| {
        store.commit_event(fanout(
            message(conv, i, user, "c"),
            &[(user, i), (user + 1, i)],
        ))
    });
    for result in join_all(writes).await {
        result.unwrap();
    }
    let checkpoints = (1..=50u64).map(|i| store.save_checkpoint(user, "tablet", i));
    for result in join_all(checkpoints).await {
        result.unwrap();
    }
    assert_eq!(inbox_len(store, user, 1_000).await, 200);
    assert_eq!(inbox_len(store, user + 1, 1_000).await, 200);
    assert_eq!(history_len(store, conv, 1_000).await, 200);
    assert_eq!(store.checkpoint(user, "tablet").await.unwrap(), 50);
}

/// Reads larger than a backend's internal page (1,000 rows for CQL) must
/// still return everything asked for.
async fn large_reads_are_complete<S: TimelineStore>(store: &S) {
    let (conv, user) = (BASE + 11, BASE + 90);
    let writes = (1..=1_500u64)
        .map(|i| store.commit_event(fanout(message(conv, i, user, "p"), &[(user, i)])));
    for chunk in writes.collect::<Vec<_>>().chunks_mut(100) {
        for result in join_all(chunk.iter_mut()).await {
            result.unwrap();
        }
    }
    assert_eq!(inbox_len(store, user, 1_201).await, 1_201);
    assert_eq!(
        read_inbox(store, user, 100, u64::MAX, 2_000).await.len(),
        1_400
    );
    let newest = store
        .read_conversation(conv, ConversationRange::newest_first(0, u64::MAX, 1_201))
        .await
        .unwrap();
    assert_eq!(
        (newest.len(), newest[0].conv_seq, newest[1_200].conv_seq),
        (1_201, 1_500, 300)
    );
    let oldest = store
        .read_conversation(conv, ConversationRange::oldest_first(0, u64::MAX, 1_300))
        .await
        .unwrap();
    assert_eq!((oldest.len(), oldest[1_299].conv_seq), (1_300, 1_300));
    assert_eq!(trim_all(store, user, 1_401, 1_000).await, 1_400);
    assert_eq!(inbox_len(store, user, 2_000).await, 100);
}

/// Every kind comes back as written, in the timeline and in the inbox.
async fn every_entry_kind_round_trips<S: TimelineStore>(store: &S) {
    let (conv, user) = (BASE + 12, BASE + 95);
    let kinds = [
        EntryKind::ConversationCreated,
        EntryKind::Message,
        EntryKind::MembersAdded,
        EntryKind::MembersRemoved,
        EntryKind::Edit,
        EntryKind::Recall,
        EntryKind::Delete,
    ];
    for (i, kind) in (1u64..).zip(kinds) {
        let mut commit = fanout(message(conv, i, user, "k"), &[(user, i)]);
        commit.entry.kind = kind;
        store.commit_event(commit).await.unwrap();
    }
    let history = store
        .read_conversation(conv, ConversationRange::oldest_first(0, u64::MAX, 10))
        .await
        .unwrap();
    let inbox = read_inbox(store, user, 0, u64::MAX, 10).await;
    for entries in [history, inbox] {
        assert_eq!(entries.iter().map(|e| e.kind).collect::<Vec<_>>(), kinds);
    }
}

async fn everything_survives_reopen<S: TimelineStore>(store: &S) {
    assert_eq!(inbox_len(store, BASE + 10, 100).await, 20);
    assert_eq!(inbox_len(store, BASE + 60, 1_000).await, 200);
    assert_eq!(
        store.conversation(BASE + 4).await.unwrap().unwrap().members,
        vec![BASE + 30]
    );
    assert!(store.receipt(&receipt_key(1)).await.unwrap().is_some());
    assert_eq!(store.checkpoint(BASE + 40, "phone").await.unwrap(), 10);
    assert_eq!(store.checkpoint(BASE + 60, "tablet").await.unwrap(), 50);
    assert_eq!(store.large_groups(BASE + 70).await.unwrap(), vec![BASE + 9]);
    assert_eq!(store.inbox_floor(BASE + 80).await.unwrap(), 21);
    assert_eq!(
        store.revoked_before(BASE + 90, "phone").await.unwrap(),
        RevokedBefore {
            user: 2_000,
            device: 1_000
        }
    );
}
