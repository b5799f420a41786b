//! An event's inbox rows go to the store in unlogged batches rather than a
//! statement each: one request carries several rows, so the CQL node parses,
//! answers and schedules once per batch instead of once per row (on a node
//! that is CPU-bound, that is most of what a fanout row costs).
//!
//! A batch is not atomic across partitions and is not meant to be: each row
//! is an idempotent upsert with the event's timestamp, and the intent
//! (`intents`) still finishes an event whose batches were cut short. What a
//! batch must stay under are the server's guards, so it never shows up in
//! the node's logs as a warning nor is refused: Cassandra warns above
//! [`MAX_BATCH_PARTITIONS`] partitions in an unlogged batch and above 5 KiB
//! of data ([`MAX_BATCH_BYTES`] is below that), and refuses above 50 KiB. A
//! row larger than the byte bound alone goes as a plain statement.

use super::{Result, ScyllaTimelineStore, Timeline, big, bucket_of, cql};
use futures_util::{StreamExt, TryStreamExt, stream};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

/// Partitions (inbox rows) per batch: Cassandra's default
/// `unlogged_batch_across_partitions_warn_threshold`.
pub const MAX_BATCH_PARTITIONS: usize = 10;
/// Entry bytes per batch: under Cassandra's default 5 KiB
/// `batch_size_warn_threshold`, with room for keys and timestamps.
pub const MAX_BATCH_BYTES: usize = 4 * 1024;
/// Batches (or lone rows) of one event in flight at once.
const MAX_CONCURRENT_BATCHES: usize = 16;

/// An inbox row to write: user, seq and encoded entry.
pub(super) type InboxRow = (u64, u64, Vec<u8>);

/// Splits rows into runs of at most [`MAX_BATCH_PARTITIONS`] rows and
/// [`MAX_BATCH_BYTES`] entry bytes, keeping their order; a row over the byte
/// bound is a run of its own.
pub(super) fn chunk_rows(rows: Vec<InboxRow>) -> Vec<Vec<InboxRow>> {
    let mut chunks: Vec<Vec<InboxRow>> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let size = row.2.len();
        let fits = chunks.last().is_some_and(|last| {
            last.len() < MAX_BATCH_PARTITIONS && bytes + size <= MAX_BATCH_BYTES
        });
        if fits {
            bytes += size;
            chunks.last_mut().expect("checked above").push(row);
        } else {
            bytes = size;
            chunks.push(vec![row]);
        }
    }
    chunks
}

/// One unlogged batch of `n` inbox inserts for every `n` in
/// 2..=[`MAX_BATCH_PARTITIONS`], built once (index `n - 2`).
pub(super) fn inbox_batches(insert_inbox: &PreparedStatement) -> Vec<Batch> {
    (2..=MAX_BATCH_PARTITIONS)
        .map(|n| {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in 0..n {
                batch.append_statement(insert_inbox.clone());
            }
            // Every row is an upsert with a fixed timestamp: a retry stores
            // the same cells.
            batch.set_is_idempotent(true);
            batch
        })
        .collect()
}

impl ScyllaTimelineStore {
    /// Writes inbox rows, each with timestamp `at`: first the bucket marker
    /// of every bucket not known to exist (a reader finds rows through the
    /// markers, so a row must never be readable before its marker), then
    /// the rows in batches.
    pub(super) async fn write_inbox_rows(&self, rows: Vec<InboxRow>, at: i64) -> Result<()> {
        let mut buckets: Vec<(u64, u64)> = rows
            .iter()
            .map(|(user_id, seq, _)| (*user_id, bucket_of(*seq)))
            .filter(|&(user_id, bucket)| {
                !self
                    .known_buckets
                    .contains_key(&(Timeline::Inbox, user_id, bucket))
            })
            .collect();
        buckets.sort_unstable();
        buckets.dedup();
        stream::iter(
            buckets
                .into_iter()
                .map(|(user_id, bucket)| self.mark_bucket(Timeline::Inbox, user_id, bucket, at)),
        )
        .buffer_unordered(super::MAX_CONCURRENT_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
        stream::iter(
            chunk_rows(rows)
                .into_iter()
                .map(|chunk| self.write_inbox_chunk(chunk, at)),
        )
        .buffer_unordered(MAX_CONCURRENT_BATCHES)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    async fn write_inbox_chunk(&self, chunk: Vec<InboxRow>, at: i64) -> Result<()> {
        let values: Vec<(i64, i64, i64, Vec<u8>, i64)> = chunk
            .into_iter()
            .map(|(user_id, seq, entry)| (big(user_id), big(bucket_of(seq)), big(seq), entry, at))
            .collect();
        if values.len() == 1 {
            let row = values.into_iter().next().expect("one row");
            return self
                .execute(&self.statements.insert_inbox, row)
                .await
                .map(|_| ());
        }
        let batch = &self.inbox_batches[values.len() - 2];
        self.session.batch(batch, values).await.map_err(|error| {
            metrics::counter!("timeline_store_errors_total", "backend" => "scylla", "kind" => "cql")
                .increment(1);
            cql(error)
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user_id: u64, bytes: usize) -> InboxRow {
        (user_id, 1, vec![0; bytes])
    }

    #[test]
    fn rows_are_cut_at_the_partition_bound_in_order() {
        let rows: Vec<InboxRow> = (0..23).map(|user| row(user, 100)).collect();
        let chunks = chunk_rows(rows);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 3]);
        let users: Vec<u64> = chunks.iter().flatten().map(|r| r.0).collect();
        assert_eq!(users, (0..23).collect::<Vec<_>>());
    }

    #[test]
    fn rows_are_cut_at_the_byte_bound() {
        let rows: Vec<InboxRow> = (0..5).map(|user| row(user, 1500)).collect();
        let sizes: Vec<usize> = chunk_rows(rows).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }

    #[test]
    fn a_row_over_the_byte_bound_goes_alone() {
        let rows = vec![row(1, 10), row(2, MAX_BATCH_BYTES + 1), row(3, 10)];
        let sizes: Vec<usize> = chunk_rows(rows).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert!(chunk_rows(Vec::new()).is_empty());
    }
}
