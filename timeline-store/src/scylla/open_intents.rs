//! Which of a fenced writer's intents are still open, and below which
//! number every one is finished.
//!
//! A writer numbers its intents in the order it makes them (within its
//! epoch), so "every intent below the lowest open one is finished" is a
//! fact the writer knows without reading the store, and one range
//! deletion removes them all. Deleting each finished intent on its own
//! left a tombstone per event in one of 16 partitions, which every later
//! conditional write and the next writer's recovery read through.
//!
//! An intent stays open until its event's rows are all written: an event
//! that failed keeps its number and timestamp for the retry (the same
//! intent row, the same row timestamps), and as long as it is open no range
//! deletion reaches it, so a crash meanwhile leaves it to the recovery.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::PENDING_SHARDS;

/// A partition's finished intents are removed at most this often while
/// events finish in it (one range deletion each time); a takeover may
/// apply again up to that much of the partition's finished intents.
pub const CLEAR_INTERVAL: Duration = Duration::from_millis(200);

/// An open intent: its number within the epoch and the write timestamp of
/// its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OpenIntent {
    pub(super) number: u64,
    pub(super) written_at: i64,
}

#[derive(Default)]
struct Book {
    next: u64,
    open: BTreeSet<u64>,
    /// Open intents by the event's message id, so a retry finds its own.
    by_event: HashMap<u64, OpenIntent>,
    /// Per partition: when its finished intents were last removed, and
    /// the mark they were removed below.
    cleared: Vec<Option<(Instant, u64)>>,
}

/// The open intents of one writer's epoch.
pub(super) struct OpenIntents {
    book: std::sync::Mutex<Book>,
}

impl OpenIntents {
    pub(super) fn new() -> Self {
        Self {
            book: std::sync::Mutex::new(Book {
                cleared: vec![None; PENDING_SHARDS as usize],
                ..Book::default()
            }),
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // The book is left consistent at every step: a panic elsewhere
        // does not make it wrong.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The intent of event `msg_id`: the one still open from an earlier
    /// attempt, or a new one numbered above every other, its timestamp
    /// taken from `now` (numbered and registered under one lock, so no
    /// number below the lowest open one is ever handed out later).
    pub(super) fn open(&self, msg_id: u64, now: impl FnOnce() -> i64) -> OpenIntent {
        let mut book = self.book();
        if let Some(&intent) = book.by_event.get(&msg_id) {
            return intent;
        }
        let intent = OpenIntent {
            number: book.next,
            written_at: now(),
        };
        book.next += 1;
        book.open.insert(intent.number);
        book.by_event.insert(msg_id, intent);
        intent
    }

    /// Event `msg_id`'s rows are all written. Answers the mark below which
    /// partition `shard`'s intents may now be removed, when it is time to.
    pub(super) fn finish(&self, msg_id: u64, shard: i32, now: Instant) -> Option<u64> {
        let mut book = self.book();
        if let Some(intent) = book.by_event.remove(&msg_id) {
            book.open.remove(&intent.number);
        }
        let mark = book.open.first().copied().unwrap_or(book.next);
        let slot = book.cleared.get_mut(shard as usize)?;
        let cleared = slot.map_or(0, |(_, cleared)| cleared);
        let recent = slot.is_some_and(|(at, _)| now.duration_since(at) < CLEAR_INTERVAL);
        if mark <= cleared || recent {
            return None;
        }
        *slot = Some((now, mark));
        Some(mark)
    }

    /// A removal answered by [`Self::finish`] failed: the next finish in
    /// the partition tries again.
    pub(super) fn clear_failed(&self, shard: i32) {
        if let Some(slot) = self.book().cleared.get_mut(shard as usize) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_intents_are_removed_below_the_lowest_open_one() {
        let intents = OpenIntents::new();
        let start = Instant::now();
        let a = intents.open(100, || 7);
        let b = intents.open(116, || 8);
        assert_eq!((a.number, b.number), (0, 1));
        // b finishes first: a is still open, and nothing is below it.
        assert_eq!(intents.finish(116, 4, start), None);
        assert_eq!(intents.finish(100, 4, start), Some(2));
        let c = intents.open(132, || 9);
        assert_eq!(c.number, 2);
        let soon = start + CLEAR_INTERVAL / 2;
        assert_eq!(intents.finish(132, 4, soon), None, "within the interval");
        let d = intents.open(148, || 10);
        assert_eq!(
            intents.finish(148, 4, start + CLEAR_INTERVAL),
            Some(d.number + 1)
        );
        assert_eq!(
            intents.finish(148, 4, start + CLEAR_INTERVAL * 2),
            None,
            "nothing new to clear"
        );
    }

    #[test]
    fn a_retry_keeps_its_number_and_timestamp() {
        let intents = OpenIntents::new();
        let first = intents.open(5, || 1_000);
        let retry = intents.open(5, || panic!("a retry takes no new timestamp"));
        assert_eq!(first, retry);
        let other = intents.open(6, || 2_000);
        assert_eq!(other.number, 1);
        // The failed event stays open: nothing from it up may be removed.
        let now = Instant::now();
        assert_eq!(intents.finish(6, 6, now), None);
        assert_eq!(intents.finish(5, 5, now), Some(2));
    }

    #[test]
    fn a_failed_removal_is_tried_again_at_the_next_finish() {
        let intents = OpenIntents::new();
        let now = Instant::now();
        intents.open(1, || 1);
        assert_eq!(intents.finish(1, 1, now), Some(1));
        intents.clear_failed(1);
        intents.open(17, || 2);
        assert_eq!(intents.finish(17, 1, now), Some(2));
    }
}
