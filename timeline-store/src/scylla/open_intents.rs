//! Which of a writer's intents are still open, and below which number
//! every one is finished: a cluster writer's within its epoch (`fencing`),
//! a single node's within its run (`node_intents`).
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
//!
//! The book is kept per partition: a range deletion covers one partition,
//! so only that partition's open intents bound it. An event stuck open
//! (finished in the background while the store fails) holds back removal
//! in its own partition only; the other 15 go on removing theirs. A
//! partition with nothing open removes everything numbered so far: every
//! later intent, in any partition, is numbered above (numbers are handed
//! out and registered under one lock).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::PENDING_SHARDS;
use crate::{Result, StoreError};

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

/// One partition's part of the book.
#[derive(Clone, Default)]
struct Partition {
    /// The numbers of its open intents.
    open: BTreeSet<u64>,
    /// When its finished intents were last removed, and the mark they were
    /// removed below.
    cleared: Option<(Instant, u64)>,
}

#[derive(Default)]
struct Book {
    /// The next number, shared by every partition (one order per epoch).
    next: u64,
    /// Open intents by the event's message id (with their partition), so
    /// a retry finds its own.
    by_event: HashMap<u64, (i32, OpenIntent)>,
    partitions: Vec<Partition>,
}

/// The open intents of one writer's epoch (or one node's run).
pub(super) struct OpenIntents {
    book: std::sync::Mutex<Book>,
}

impl OpenIntents {
    pub(super) fn new() -> Self {
        Self {
            book: std::sync::Mutex::new(Book {
                partitions: vec![Partition::default(); PENDING_SHARDS as usize],
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

    /// The intent of event `msg_id` in partition `shard`: the one still
    /// open from an earlier attempt, or a new one numbered above every
    /// other, its timestamp taken from `now` (numbered and registered under
    /// one lock, so no number below a partition's lowest open one is ever
    /// handed out later). When `now` refuses, nothing is opened.
    pub(super) fn open(
        &self,
        msg_id: u64,
        shard: i32,
        now: impl FnOnce() -> Result<i64>,
    ) -> Result<OpenIntent> {
        let mut book = self.book();
        if let Some(&(_, intent)) = book.by_event.get(&msg_id) {
            return Ok(intent);
        }
        let Some(partition) = usize::try_from(shard)
            .ok()
            .filter(|&index| index < book.partitions.len())
        else {
            return Err(StoreError::InvalidArgument(format!(
                "intent partition {shard} is outside 0..{PENDING_SHARDS}"
            )));
        };
        let intent = OpenIntent {
            number: book.next,
            written_at: now()?,
        };
        book.next += 1;
        book.partitions[partition].open.insert(intent.number);
        book.by_event.insert(msg_id, (shard, intent));
        Ok(intent)
    }

    /// Event `msg_id`'s rows are all written. Answers the mark below which
    /// partition `shard`'s intents may now be removed, when it is time to.
    pub(super) fn finish(&self, msg_id: u64, shard: i32, now: Instant) -> Option<u64> {
        let mut book = self.book();
        if let Some((opened_in, intent)) = book.by_event.remove(&msg_id)
            && let Some(partition) = book.partitions.get_mut(opened_in as usize)
        {
            partition.open.remove(&intent.number);
        }
        let next = book.next;
        let partition = book.partitions.get_mut(usize::try_from(shard).ok()?)?;
        let mark = partition.open.first().copied().unwrap_or(next);
        let cleared = partition.cleared.map_or(0, |(_, cleared)| cleared);
        let recent = partition
            .cleared
            .is_some_and(|(at, _)| now.duration_since(at) < CLEAR_INTERVAL);
        if mark <= cleared || recent {
            return None;
        }
        partition.cleared = Some((now, mark));
        Some(mark)
    }

    /// A removal answered by [`Self::finish`] failed: the next finish in
    /// the partition tries again.
    pub(super) fn clear_failed(&self, shard: i32) {
        if let Some(partition) = self.book().partitions.get_mut(shard as usize) {
            partition.cleared = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens event `msg_id` in its partition (as the store does: the
    /// message id modulo the partitions) with timestamp `at`.
    fn open(intents: &OpenIntents, msg_id: u64, at: i64) -> OpenIntent {
        let shard = (msg_id % PENDING_SHARDS as u64) as i32;
        intents.open(msg_id, shard, || Ok(at)).unwrap()
    }

    fn finish(intents: &OpenIntents, msg_id: u64, now: Instant) -> Option<u64> {
        let shard = (msg_id % PENDING_SHARDS as u64) as i32;
        intents.finish(msg_id, shard, now)
    }

    #[test]
    fn finished_intents_are_removed_below_the_lowest_open_one() {
        let intents = OpenIntents::new();
        let start = Instant::now();
        // All in partition 4.
        let a = open(&intents, 100, 7);
        let b = open(&intents, 116, 8);
        assert_eq!((a.number, b.number), (0, 1));
        // b finishes first: a is still open, and nothing is below it.
        assert_eq!(finish(&intents, 116, start), None);
        assert_eq!(finish(&intents, 100, start), Some(2));
        let c = open(&intents, 132, 9);
        assert_eq!(c.number, 2);
        let soon = start + CLEAR_INTERVAL / 2;
        assert_eq!(finish(&intents, 132, soon), None, "within the interval");
        let d = open(&intents, 148, 10);
        assert_eq!(
            finish(&intents, 148, start + CLEAR_INTERVAL),
            Some(d.number + 1)
        );
        assert_eq!(
            finish(&intents, 148, start + CLEAR_INTERVAL * 2),
            None,
            "nothing new to clear"
        );
    }

    #[test]
    fn a_retry_keeps_its_number_and_timestamp() {
        let intents = OpenIntents::new();
        let first = open(&intents, 5, 1_000);
        let retry = intents
            .open(5, 5, || panic!("a retry takes no new timestamp"))
            .unwrap();
        assert_eq!(first, retry);
        let other = open(&intents, 21, 2_000);
        assert_eq!(other.number, 1);
        // The failed event stays open: nothing from it up may be removed
        // in its partition.
        let now = Instant::now();
        assert_eq!(finish(&intents, 21, now), None);
        assert_eq!(finish(&intents, 5, now), Some(2));
    }

    #[test]
    fn a_stuck_intent_holds_back_its_own_partition_only() {
        let intents = OpenIntents::new();
        let start = Instant::now();
        // Event 3 (partition 3) fails and stays open: finished in the
        // background while the store fails.
        let stuck = open(&intents, 3, 1);
        let mut now = start;
        for round in 0..3u64 {
            // Partition 7 goes on: each time everything numbered so far
            // (stuck's number included, which is no intent of partition 7)
            // is below its mark.
            let event = 7 + 16 * round;
            let intent = open(&intents, event, 2);
            assert!(intent.number > stuck.number);
            assert_eq!(
                finish(&intents, event, now),
                Some(intent.number + 1),
                "partition 7 is not held back by partition 3's stuck intent"
            );
            // Partition 3's later events finish, and nothing of partition 3
            // at or above the stuck intent goes.
            let same = 19 + 16 * round;
            open(&intents, same, 3);
            assert_eq!(finish(&intents, same, now), None);
            now += CLEAR_INTERVAL;
        }
        // Once the stuck event finishes, its partition clears past it.
        let next = open(&intents, 100, 4).number + 1;
        assert_eq!(finish(&intents, 3, now), Some(next));
    }

    #[test]
    fn a_refused_timestamp_opens_nothing() {
        let intents = OpenIntents::new();
        let refused = intents.open(9, 9, || Err(StoreError::Fenced("lapsed".into())));
        assert!(matches!(refused, Err(StoreError::Fenced(_))));
        let next = open(&intents, 9, 5);
        assert_eq!(next.number, 0, "no number was used by the refused one");
        assert_eq!(finish(&intents, 9, Instant::now()), Some(1));
        assert!(matches!(
            intents.open(10, PENDING_SHARDS, || Ok(1)),
            Err(StoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_failed_removal_is_tried_again_at_the_next_finish() {
        let intents = OpenIntents::new();
        let now = Instant::now();
        open(&intents, 1, 1);
        assert_eq!(finish(&intents, 1, now), Some(1));
        intents.clear_failed(1);
        open(&intents, 17, 2);
        assert_eq!(finish(&intents, 17, now), Some(2));
    }
}
