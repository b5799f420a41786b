//! Replies bounded in bytes as well as entries.
//!
//! A page of 1,000 entries of 64 KiB is 64 MiB: past any gRPC reply limit,
//! so a count-only page fails the same way on every retry, forever. Pages
//! therefore stop before [`MAX_PAGE_BYTES`] of entries (always taking at
//! least one, so every entry is reachable) and say `has_more`; push notices
//! inline at most [`MAX_PUSH_BYTES`]. What one request holds in memory is
//! bounded too, not only what it sends: an inbox page is one store read
//! that stops past the page's byte budget ([`InboxRange::max_bytes`]), and
//! a conversation page reads the store in chunks of at most [`READ_CHUNK`]
//! entries.

use crate::error::Result;
use std::future::Future;
use timeline_store::{ConversationRange, Entry, InboxRange, Order, TimelineStore};

/// Entry bytes in one Sync or History reply. Below the 4 MiB receive limit
/// most gRPC clients default to, with room for the reply's other fields.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// Entry bytes inlined in one push notice; a device further behind gets
/// the entries that fit and pulls the rest with Sync.
pub const MAX_PUSH_BYTES: usize = 256 * 1024;
/// Entries read from the store per call while a conversation page fills.
pub const READ_CHUNK: usize = 128;

/// A page: at most `limit` entries and `max_bytes` of them.
#[derive(Debug)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub has_more: bool,
}

/// What a page has taken so far, entry by entry in page order.
struct PageBudget {
    entries: usize,
    bytes: usize,
    limit: usize,
    max_bytes: usize,
}

impl PageBudget {
    fn new(limit: usize, max_bytes: usize) -> Self {
        Self {
            entries: 0,
            bytes: 0,
            limit,
            max_bytes,
        }
    }

    /// Takes `entry` if it fits (the first always does); `false` when it
    /// does not, and the page is full with more to come.
    fn admits(&mut self, entry: &Entry) -> bool {
        let size = entry.wire_bytes();
        let fits =
            self.entries < self.limit && (self.entries == 0 || self.bytes + size <= self.max_bytes);
        if fits {
            self.entries += 1;
            self.bytes += size;
        }
        fits
    }
}

/// Fills a page from `read(cursor, n)`, which returns up to `n` entries
/// after `cursor` in page order; `cursor_of` gives the cursor that
/// continues after an entry. Stops at `limit` entries, at `max_bytes`, or
/// when the timeline has no more.
pub async fn fill<F, Fut>(
    limit: usize,
    max_bytes: usize,
    start: u64,
    cursor_of: fn(&Entry) -> u64,
    mut read: F,
) -> Result<Page>
where
    F: FnMut(u64, usize) -> Fut,
    Fut: Future<Output = Result<Vec<Entry>>>,
{
    let mut budget = PageBudget::new(limit, max_bytes);
    let mut entries = Vec::new();
    let mut cursor = start;
    loop {
        // One more than fits, to learn whether there is more.
        let want = (limit - entries.len()).min(READ_CHUNK) + 1;
        let chunk = read(cursor, want).await?;
        let exhausted = chunk.len() < want;
        for entry in chunk {
            if !budget.admits(&entry) {
                return Ok(Page {
                    entries,
                    has_more: true,
                });
            }
            cursor = cursor_of(&entry);
            entries.push(entry);
        }
        if exhausted {
            return Ok(Page {
                entries,
                has_more: false,
            });
        }
    }
}

/// A page of the user's inbox after `after`, through `through`: one store
/// read of one entry more than the page holds, stopping past its byte
/// budget, so the read shows whether there is more either way.
pub async fn inbox(
    store: &dyn TimelineStore,
    user_id: u64,
    (after, through): (u64, u64),
    limit: usize,
    max_bytes: usize,
) -> Result<Page> {
    let range = InboxRange::new(after, through, limit.saturating_add(1)).with_max_bytes(max_bytes);
    let mut entries = store.read_inbox(user_id, range).await?;
    let mut budget = PageBudget::new(limit, max_bytes);
    // Cut in place: the read is the page, less what does not fit.
    let has_more = match entries.iter().position(|entry| !budget.admits(entry)) {
        Some(full) => {
            entries.truncate(full);
            true
        }
        None => false,
    };
    Ok(Page { entries, has_more })
}

/// A page of a conversation strictly between `after` and `before`: the
/// oldest entries first, or (`NewestFirst`) the newest, as history pages
/// forwards and backwards.
pub async fn conversation(
    store: &dyn TimelineStore,
    conversation_id: u64,
    (after, before): (u64, u64),
    order: Order,
    limit: usize,
) -> Result<Page> {
    let (start, cursor_of): (u64, fn(&Entry) -> u64) = match order {
        Order::OldestFirst => (after, |e| e.conv_seq),
        Order::NewestFirst => (before, |e| e.conv_seq),
    };
    fill(
        limit,
        MAX_PAGE_BYTES,
        start,
        cursor_of,
        |cursor, n| async move {
            let range = match order {
                Order::OldestFirst => ConversationRange::oldest_first(cursor, before, n),
                Order::NewestFirst => ConversationRange::newest_first(after, cursor, n),
            };
            Ok(store.read_conversation(conversation_id, range).await?)
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(sizes: &[usize]) -> Vec<Entry> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Entry {
                seq: i as u64 + 1,
                text: "x".repeat(size),
                ..Entry::new(timeline_store::EntryKind::Message, 1)
            })
            .collect()
    }

    async fn page(all: &[Entry], after: u64, limit: usize, max_bytes: usize) -> (Vec<u64>, bool) {
        let reads = std::cell::Cell::new(0);
        let page = fill(
            limit,
            max_bytes,
            after,
            |e| e.seq,
            |cursor, n| {
                reads.set(reads.get() + 1);
                assert!(n <= READ_CHUNK + 1, "reads are chunked");
                let chunk: Vec<Entry> = all
                    .iter()
                    .filter(|e| e.seq > cursor)
                    .take(n)
                    .cloned()
                    .collect();
                async move { Ok(chunk) }
            },
        )
        .await
        .unwrap();
        (page.entries.iter().map(|e| e.seq).collect(), page.has_more)
    }

    #[tokio::test]
    async fn pages_stop_at_the_count_the_bytes_or_the_end() {
        let small = timeline(&[10; 300]);
        assert_eq!(
            page(&small, 0, 5, MAX_PAGE_BYTES).await,
            (vec![1, 2, 3, 4, 5], true)
        );
        let (seqs, more) = page(&small, 0, 1_000, MAX_PAGE_BYTES).await;
        assert_eq!(
            (seqs.len(), more),
            (300, false),
            "several chunks, to the end"
        );
        let (seqs, more) = page(&small, 290, 10, MAX_PAGE_BYTES).await;
        assert_eq!((seqs.len(), more), (10, false), "exactly the rest");

        // 300 entries of 64 KiB: each page fits the byte budget, says
        // has_more, and paging reaches every entry.
        let large = timeline(&[64 * 1024; 300]);
        let (mut after, mut seen) = (0, Vec::new());
        loop {
            let (seqs, more) = page(&large, after, 1_000, MAX_PAGE_BYTES).await;
            let bytes: usize = seqs.len() * (64 * 1024 + 80);
            assert!(bytes <= MAX_PAGE_BYTES, "{bytes} bytes in a page");
            after = *seqs.last().unwrap();
            seen.extend(seqs);
            if !more {
                break;
            }
        }
        assert_eq!(seen, (1..=300).collect::<Vec<u64>>());

        // An entry larger than the whole budget still goes, alone.
        let huge = timeline(&[10, MAX_PAGE_BYTES, 10]);
        assert_eq!(page(&huge, 0, 10, MAX_PAGE_BYTES).await, (vec![1], true));
        assert_eq!(page(&huge, 1, 10, MAX_PAGE_BYTES).await, (vec![2], true));
    }

    /// A store whose user 1 has one inbox entry per size, seqs from 1.
    async fn inbox_of(sizes: &[usize]) -> timeline_store::testsuite::MemoryStore {
        use timeline_store::EventLog;
        let store = timeline_store::testsuite::MemoryStore::new();
        for entry in timeline(sizes) {
            let seq = entry.seq;
            let entry = Entry {
                conv_seq: seq,
                seq: 0,
                ..entry
            };
            let commit = timeline_store::testsuite::conformance::fanout(entry, &[(1, seq)]);
            store.commit_event(commit).await.unwrap();
        }
        store
    }

    async fn inbox_page(
        store: &dyn TimelineStore,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<u64>, bool) {
        let page = inbox(store, 1, (after, u64::MAX), limit, max_bytes)
            .await
            .unwrap();
        (page.entries.iter().map(|e| e.seq).collect(), page.has_more)
    }

    #[tokio::test]
    async fn inbox_pages_are_one_budgeted_read_that_still_tells_whether_there_is_more() {
        let small = inbox_of(&[10; 300]).await;
        assert_eq!(
            inbox_page(&small, 0, 5, MAX_PAGE_BYTES).await,
            (vec![1, 2, 3, 4, 5], true)
        );
        let (seqs, more) = inbox_page(&small, 0, 1_000, MAX_PAGE_BYTES).await;
        assert_eq!((seqs.len(), more), (300, false), "to the end");
        let (seqs, more) = inbox_page(&small, 290, 10, MAX_PAGE_BYTES).await;
        assert_eq!((seqs.len(), more), (10, false), "exactly the rest");

        let large = inbox_of(&[64 * 1024; 300]).await;
        let (mut after, mut seen) = (0, Vec::new());
        loop {
            let (seqs, more) = inbox_page(&large, after, 1_000, MAX_PAGE_BYTES).await;
            let bytes: usize = seqs.len() * (64 * 1024 + 80);
            assert!(bytes <= MAX_PAGE_BYTES, "{bytes} bytes in a page");
            assert!(seqs.len() > 1, "a budget holds more than one of them");
            after = *seqs.last().unwrap();
            seen.extend(seqs);
            if !more {
                break;
            }
        }
        assert_eq!(seen, (1..=300).collect::<Vec<u64>>());

        // An entry larger than the whole budget still goes, alone, and the
        // page knows there is more behind it, or that there is not.
        let huge = inbox_of(&[10, MAX_PAGE_BYTES, 10]).await;
        assert_eq!(
            inbox_page(&huge, 0, 10, MAX_PAGE_BYTES).await,
            (vec![1], true)
        );
        assert_eq!(
            inbox_page(&huge, 1, 10, MAX_PAGE_BYTES).await,
            (vec![2], true)
        );
        assert_eq!(
            inbox_page(&huge, 2, 10, MAX_PAGE_BYTES).await,
            (vec![3], false)
        );
        let last_is_huge = inbox_of(&[10, MAX_PAGE_BYTES]).await;
        assert_eq!(
            inbox_page(&last_is_huge, 1, 10, MAX_PAGE_BYTES).await,
            (vec![2], false)
        );
    }
}
