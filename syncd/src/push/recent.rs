//! The newest inbox entries of one subscribed user, kept in memory so a
//! feed that keeps up pushes them without reading the store.
//!
//! Filled from each event before its seqs can become visible
//! ([`crate::observer::CommitObserver::before_visible`]), so when a feed
//! sees its inbox top move, the entries up to it are here unless they were
//! evicted. An entry rewritten in place (an edit's or a recall's new state)
//! is replaced here by the same path, so what a feed takes from memory is
//! what the store holds: a recall never lets an old text out.
//!
//! A feed takes entries from here only when every seq of its range is
//! present; a gap (an evicted entry, a seq skipped by a failed send, a
//! range from before the subscription) sends it to the store, as before.

use std::collections::VecDeque;
use timeline_store::Entry;

/// Entries ascending by seq, within a count and a byte bound.
#[derive(Debug, Default)]
pub struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// What one call changed in the bytes held, for the hub's global budget.
pub type BytesDelta = isize;

impl Recent {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `entry` (its `seq` set), dropping the oldest while more than
    /// `max_entries` or `max_bytes` are held. An entry larger than
    /// `max_bytes` alone is not kept.
    pub fn remember(&mut self, entry: Entry, max_entries: usize, max_bytes: usize) -> BytesDelta {
        let before = self.bytes as isize;
        let size = entry.wire_bytes();
        if size > max_bytes || max_entries == 0 {
            return 0;
        }
        // Events finish out of order: usually this appends.
        let at = self.entries.partition_point(|e| e.seq < entry.seq);
        if self.entries.get(at).is_some_and(|e| e.seq == entry.seq) {
            self.bytes -= self.entries[at].wire_bytes();
            self.entries[at] = entry;
        } else {
            self.entries.insert(at, entry);
        }
        self.bytes += size;
        while self.entries.len() > max_entries || self.bytes > max_bytes {
            let oldest = self
                .entries
                .pop_front()
                .expect("over a bound means not empty");
            self.bytes -= oldest.wire_bytes();
        }
        self.bytes as isize - before
    }

    /// Replaces the entry at `entry.seq` when it is held (a rewrite of a
    /// stored entry); one not held is left out, as the store has it.
    pub fn rewrite(&mut self, entry: Entry) -> BytesDelta {
        let at = self.entries.partition_point(|e| e.seq < entry.seq);
        match self.entries.get_mut(at) {
            Some(held) if held.seq == entry.seq => {
                let delta = entry.wire_bytes() as isize - held.wire_bytes() as isize;
                *held = entry;
                self.bytes = (self.bytes as isize + delta) as usize;
                delta
            }
            _ => 0,
        }
    }

    /// Drops the entry at `seq` if held; returns the bytes released.
    pub fn forget(&mut self, seq: u64) -> usize {
        let at = self.entries.partition_point(|e| e.seq < seq);
        if self.entries.get(at).is_some_and(|e| e.seq == seq) {
            let gone = self.entries.remove(at).expect("held");
            let size = gone.wire_bytes();
            self.bytes -= size;
            return size;
        }
        0
    }

    /// Forgets everything (the hub's budget is spent); returns the bytes
    /// released.
    pub fn clear(&mut self) -> usize {
        self.entries.clear();
        std::mem::take(&mut self.bytes)
    }

    /// The entries in `(after, through]`, when every seq of that range is
    /// held: at most `limit` and, past the first, `max_bytes` of them, the
    /// oldest first (a page of the range, like a store read). `None` when
    /// any is missing.
    pub fn range(
        &self,
        (after, through): (u64, u64),
        limit: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        if through <= after {
            return Some(Vec::new());
        }
        let start = self.entries.partition_point(|e| e.seq <= after);
        let wanted = (through - after) as usize;
        let held = self.entries.range(start..).take_while(|e| e.seq <= through);
        let contiguous = (after + 1..)
            .zip(held.clone())
            .all(|(expected, entry)| entry.seq == expected);
        if !contiguous || held.clone().count() != wanted {
            return None;
        }
        let mut page = Vec::new();
        let mut bytes = 0;
        for entry in held {
            let size = entry.wire_bytes();
            if page.len() == limit || (!page.is_empty() && bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            page.push(entry.clone());
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline_store::EntryKind;

    fn entry(seq: u64, text: &str) -> Entry {
        Entry {
            seq,
            text: text.into(),
            ..Entry::new(EntryKind::Message, 1)
        }
    }

    fn seqs(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_range_is_served_only_when_every_seq_is_held() {
        let mut recent = Recent::default();
        for seq in [3, 1, 2, 5] {
            recent.remember(entry(seq, "x"), 10, 1 << 20);
        }
        assert_eq!(seqs(&recent.range((0, 3), 10, 1 << 20).unwrap()), [1, 2, 3]);
        assert_eq!(seqs(&recent.range((1, 2), 10, 1 << 20).unwrap()), [2]);
        assert!(recent.range((0, 5), 10, 1 << 20).is_none(), "4 is missing");
        assert!(recent.range((3, 5), 10, 1 << 20).is_none(), "4 is missing");
        assert!(
            recent.range((5, 6), 10, 1 << 20).is_none(),
            "6 is not here yet"
        );
        assert_eq!(recent.range((5, 5), 10, 1 << 20).unwrap(), vec![]);
        assert_eq!(
            seqs(&recent.range((0, 3), 2, 1 << 20).unwrap()),
            [1, 2],
            "a page"
        );
    }

    #[test]
    fn bounds_drop_the_oldest_and_a_gap_at_the_start_sends_to_the_store() {
        let mut recent = Recent::default();
        for seq in 1..=10 {
            recent.remember(entry(seq, "x"), 4, 1 << 20);
        }
        assert_eq!(
            seqs(&recent.range((6, 10), 10, 1 << 20).unwrap()),
            [7, 8, 9, 10]
        );
        assert!(
            recent.range((5, 10), 10, 1 << 20).is_none(),
            "6 was dropped"
        );
        let size = entry(1, "x").wire_bytes();
        let mut tight = Recent::default();
        for seq in 1..=5 {
            tight.remember(entry(seq, "x"), 100, 2 * size);
        }
        assert_eq!(tight.bytes(), 2 * size);
        assert_eq!(seqs(&tight.range((3, 5), 10, 1 << 20).unwrap()), [4, 5]);
        assert_eq!(
            tight.remember(entry(6, &"y".repeat(3 * size)), 100, 2 * size),
            0,
            "larger than the bound alone: not kept"
        );
        assert!(tight.range((5, 6), 10, 1 << 20).is_none());
    }

    #[test]
    fn the_byte_budget_of_a_page_keeps_at_least_one_entry() {
        let mut recent = Recent::default();
        for seq in 1..=3 {
            recent.remember(entry(seq, &"z".repeat(1_000)), 10, 1 << 20);
        }
        let page = recent.range((0, 3), 10, 1_500).unwrap();
        assert_eq!(seqs(&page), [1], "the first always, then what fits");
        let page = recent.range((0, 3), 10, 10).unwrap();
        assert_eq!(seqs(&page), [1]);
    }

    #[test]
    fn a_rewrite_replaces_a_held_entry_and_accounts_its_bytes() {
        let mut recent = Recent::default();
        recent.remember(entry(1, "secret"), 10, 1 << 20);
        recent.remember(entry(2, "other"), 10, 1 << 20);
        let before = recent.bytes();
        let delta = recent.rewrite(entry(1, ""));
        assert_eq!(delta, -6);
        assert_eq!(recent.bytes() as isize, before as isize + delta);
        let page = recent.range((0, 2), 10, 1 << 20).unwrap();
        assert_eq!(page[0].text, "", "the rewritten state, never the old text");
        assert_eq!(
            recent.rewrite(entry(9, "absent")),
            0,
            "not held: nothing to do"
        );
        recent.remember(entry(3, "third"), 10, 1 << 20);
        let held = recent.bytes();
        let released = recent.forget(2);
        assert_eq!(released, held - recent.bytes());
        assert!(released > 0);
        assert!(
            recent.range((1, 3), 10, 1 << 20).is_none(),
            "2 is gone: to the store"
        );
        assert_eq!(recent.forget(2), 0);
        let expected = recent.bytes();
        let released = recent.clear();
        assert_eq!(released, expected);
        assert_eq!(recent.bytes(), 0);
        assert!(recent.range((0, 1), 10, 1 << 20).is_none());
    }
}
