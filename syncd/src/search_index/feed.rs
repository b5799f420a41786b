//! The hint path from commits to the indexer: which conversations have
//! new timeline entries, and how far. An observer of committed events
//! that only updates a bounded map, so a send never waits for indexing;
//! what it cannot hold it forgets, and says so, and the indexer then scans
//! the store (the timelines, not this map, are what it indexes).

use crate::horizon::Scope;
use crate::limits::SEARCH_PENDING_CONVERSATIONS;
use crate::observer::{CommitObserver, Committed};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

/// A conversation with news for the index.
struct Waiting {
    /// The highest `conv_seq` known readable.
    head: u64,
    /// Its place in the queue.
    turn: u64,
}

#[derive(Default)]
struct Pending {
    heads: HashMap<u64, Waiting>,
    /// Turn → conversation: the pending conversations in the order they
    /// are indexed. A conversation takes a turn when it is first noted and
    /// a new one, behind every other, each time it is indexed and still
    /// has news, so none waits for more than one pass over the others
    /// however busy they are.
    queue: BTreeMap<u64, u64>,
    next_turn: u64,
    /// A notice was dropped since the last scan began.
    overflowed: bool,
}

impl Pending {
    fn take_turn(&mut self, conversation: u64) -> u64 {
        let turn = self.next_turn;
        self.next_turn += 1;
        self.queue.insert(turn, conversation);
        turn
    }
}

#[derive(Default)]
pub struct Feed {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `conversation` is readable through `head`.
    pub fn note(&self, conversation: u64, head: u64) {
        {
            let mut pending = self.lock();
            let full = pending.heads.len() >= SEARCH_PENDING_CONVERSATIONS;
            match pending.heads.get_mut(&conversation) {
                // It keeps its turn: news does not send it to the back.
                Some(known) => known.head = known.head.max(head),
                None if full => {
                    pending.overflowed = true;
                    metrics::counter!("syncd_search_notices_dropped_total").increment(1);
                }
                None => {
                    let turn = pending.take_turn(conversation);
                    pending.heads.insert(conversation, Waiting { head, turn });
                }
            }
        }
        self.wake.notify_one();
    }

    /// Up to `limit` conversations with news and their heads, the one
    /// waiting longest first.
    pub fn batch(&self, limit: usize) -> Vec<(u64, u64)> {
        let pending = self.lock();
        pending
            .queue
            .values()
            .take(limit)
            .map(|c| (*c, pending.heads[c].head))
            .collect()
    }

    /// The conversation is indexed through `indexed`: forgotten unless a
    /// newer head came meanwhile, in which case it goes to the back of
    /// the queue (it had its turn).
    pub fn settle(&self, conversation: u64, indexed: u64) {
        let mut pending = self.lock();
        let Some(waiting) = pending.heads.get(&conversation) else {
            return;
        };
        let (head, old_turn) = (waiting.head, waiting.turn);
        pending.queue.remove(&old_turn);
        if head <= indexed {
            pending.heads.remove(&conversation);
        } else {
            let turn = pending.take_turn(conversation);
            pending
                .heads
                .get_mut(&conversation)
                .expect("present above")
                .turn = turn;
        }
    }

    /// Whether notices were dropped (and clears it: the scan that follows
    /// covers them).
    pub fn take_overflow(&self) -> bool {
        std::mem::take(&mut self.lock().overflowed)
    }

    /// The pending conversations and heads, at most `limit` of them.
    pub fn heads(&self, limit: usize) -> Vec<(u64, u64)> {
        self.batch(limit)
    }

    pub fn head_of(&self, conversation: u64) -> Option<u64> {
        self.lock().heads.get(&conversation).map(|w| w.head)
    }

    pub fn len(&self) -> usize {
        self.lock().heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().heads.is_empty()
    }

    pub async fn notified(&self) {
        self.wake.notified().await;
    }
}

impl CommitObserver for Feed {
    fn committed(&self, event: &Committed<'_>) {
        let entry = &event.commit.entry;
        if !entry.kind.in_conversation_timeline() {
            return;
        }
        let head = event
            .visible
            .iter()
            .find(|((scope, id), _)| *scope == Scope::Conversation && *id == entry.conversation_id)
            .map_or(0, |(_, through)| *through);
        // Nothing readable yet (a lower conv_seq still in flight): that
        // commit's own notice will carry this one too.
        if head > 0 {
            self.note(entry.conversation_id, head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_map_drops_new_conversations_and_says_so_but_raises_known_ones() {
        let feed = Feed::default();
        for c in 0..SEARCH_PENDING_CONVERSATIONS as u64 {
            feed.note(c, 1);
        }
        assert!(!feed.take_overflow());
        feed.note(0, 9);
        assert!(!feed.take_overflow());
        assert_eq!(feed.head_of(0), Some(9));
        feed.note(u64::MAX, 1);
        assert!(feed.take_overflow());
        assert!(!feed.take_overflow(), "cleared once taken");
        assert_eq!(feed.head_of(u64::MAX), None);
    }

    #[test]
    fn settling_keeps_a_conversation_whose_head_moved_on() {
        let feed = Feed::default();
        feed.note(1, 5);
        feed.settle(1, 4);
        assert_eq!(feed.head_of(1), Some(5));
        feed.settle(1, 5);
        assert!(feed.is_empty());
    }

    #[test]
    fn the_conversation_waiting_longest_is_taken_first_however_many_arrive() {
        // Each trial is a fresh map (a fresh hash order), and a stream of
        // newer conversations, more per batch than a batch takes, arrives
        // behind the first one noted.
        for trial in 0..20u64 {
            let feed = Feed::default();
            let first = 1_000_000 + trial;
            feed.note(first, 1);
            let mut next = 0u64;
            let mut taken_in = None;
            for round in 0..50 {
                for _ in 0..8 {
                    feed.note(next, 1);
                    next += 1;
                }
                let batch = feed.batch(4);
                if batch.iter().any(|&(c, _)| c == first) {
                    taken_in = Some(round);
                    break;
                }
                for (c, head) in batch {
                    feed.settle(c, head);
                }
            }
            assert_eq!(
                taken_in,
                Some(0),
                "trial {trial}: the first conversation noted waited behind newer ones"
            );
        }
    }

    #[test]
    fn a_conversation_with_more_news_goes_behind_the_others_and_keeps_its_head() {
        let feed = Feed::default();
        feed.note(1, 9);
        feed.note(2, 1);
        feed.note(3, 1);
        feed.note(1, 10);
        assert_eq!(feed.batch(1), [(1, 10)], "news keeps a conversation's turn");
        // Indexed only part of the way: its turn comes again after 2 and 3.
        feed.settle(1, 5);
        assert_eq!(feed.batch(3), [(2, 1), (3, 1), (1, 10)]);
        feed.settle(2, 1);
        feed.note(4, 1);
        assert_eq!(feed.batch(3), [(3, 1), (1, 10), (4, 1)]);
        feed.settle(7, 1);
        assert_eq!(
            feed.len(),
            3,
            "settling an unknown conversation changes nothing"
        );
    }
}
