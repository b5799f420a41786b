//! The hint path from commits to the indexer: which conversations have
//! new timeline entries, and how far. An observer of committed events
//! that only updates a bounded map, so a send never waits for indexing;
//! what it cannot hold it forgets, and says so, and the indexer then scans
//! the store (the timelines, not this map, are what it indexes).

use crate::horizon::Scope;
use crate::limits::SEARCH_PENDING_CONVERSATIONS;
use crate::observer::{CommitObserver, Committed};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Default)]
struct Pending {
    /// Conversation → the highest `conv_seq` known readable.
    heads: HashMap<u64, u64>,
    /// A notice was dropped since the last scan began.
    overflowed: bool,
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
                Some(known) => *known = (*known).max(head),
                None if full => {
                    pending.overflowed = true;
                    metrics::counter!("syncd_search_notices_dropped_total").increment(1);
                }
                None => {
                    pending.heads.insert(conversation, head);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Up to `limit` conversations with news, and their heads.
    pub fn batch(&self, limit: usize) -> Vec<(u64, u64)> {
        self.lock()
            .heads
            .iter()
            .take(limit)
            .map(|(c, h)| (*c, *h))
            .collect()
    }

    /// The conversation is indexed through `indexed`: forgotten unless a
    /// newer head came meanwhile.
    pub fn settle(&self, conversation: u64, indexed: u64) {
        let mut pending = self.lock();
        if pending
            .heads
            .get(&conversation)
            .is_some_and(|&head| head <= indexed)
        {
            pending.heads.remove(&conversation);
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
        self.lock().heads.get(&conversation).copied()
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
}
