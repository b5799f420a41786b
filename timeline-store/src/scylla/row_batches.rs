//! An event's rows (its conversation row, its copies' positions, the
//! sender's reader mark and every inbox copy) go to the store in unlogged
//! batches rather than a statement each: one request carries several rows,
//! so the CQL node parses, answers and schedules once per batch instead of
//! once per row (measured: a bare loop inserts twice the rows per second in
//! batches of ten as one by one; on a node that is CPU-bound, the requests
//! are half of what a fanout row costs).
//!
//! A batch is not atomic across partitions and is not meant to be: each row
//! is an idempotent upsert with a fixed timestamp, and the intent
//! (`intents`) still finishes an event whose batches were cut short. What a
//! batch must stay under are the server's guards, so that it is neither
//! logged as a warning nor refused: Cassandra warns above
//! [`MAX_BATCH_PARTITIONS`] partitions in an unlogged batch and above 5 KiB
//! of data ([`MAX_BATCH_BYTES`] is below that), and refuses above 50 KiB. A
//! row larger than the byte bound goes alone, as a plain statement.
//!
//! The driver sends a batch to the replica of its first row, which passes
//! the others on: on a cluster of many nodes, batches of rows that share a
//! replica would save that hop (not done yet).

use super::{Result, ScyllaTimelineStore, Timeline, cql};
use futures_util::{StreamExt, TryStreamExt, stream};
use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchStatement, BatchType};
use scylla::statement::prepared::PreparedStatement;

/// Partitions (rows) per batch: Cassandra's default
/// `unlogged_batch_across_partitions_warn_threshold`.
pub const MAX_BATCH_PARTITIONS: usize = 10;
/// Bytes per batch, counting each row's blob and [`ROW_KEY_BYTES`]: under
/// Cassandra's default 5 KiB `batch_size_warn_threshold`.
pub const MAX_BATCH_BYTES: usize = 4 * 1024;
/// What a row's keys and timestamp add to its blob, about.
const ROW_KEY_BYTES: usize = 40;
/// Batches (or lone rows) of one event in flight at once: a 500-member
/// fanout is about 50 batches, and a node serving many events at once
/// gains nothing from more of one event's in flight, while each holds a
/// connection's stream.
const MAX_CONCURRENT_BATCHES: usize = 16;

/// The values of one row, in its statement's bind order.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RowValues {
    /// `(owner, bucket, seq, blob, timestamp)`: an inbox, conversation or
    /// copies row.
    Entry(i64, i64, i64, Vec<u8>, i64),
    /// `(timestamp, value, owner, user)`: a reader mark.
    Reader(i64, i64, i64, i64),
}

impl SerializeRow for RowValues {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> std::result::Result<(), SerializationError> {
        match self {
            RowValues::Entry(a, b, c, d, e) => (a, b, c, d, e).serialize(ctx, writer),
            RowValues::Reader(a, b, c, d) => (a, b, c, d).serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Which statement writes a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowKind {
    Inbox,
    Conversation,
    Copies,
    ReadThrough,
    Joined,
}

/// A row to write: its statement and values.
pub(super) struct Row {
    pub(super) kind: RowKind,
    pub(super) values: RowValues,
}

impl Row {
    fn bytes(&self) -> usize {
        row_bytes(&self.values)
    }
}

fn row_bytes(values: &RowValues) -> usize {
    ROW_KEY_BYTES
        + match values {
            RowValues::Entry(_, _, _, blob, _) => blob.len(),
            RowValues::Reader(..) => 0,
        }
}

/// Splits items into runs of at most [`MAX_BATCH_PARTITIONS`] items and
/// [`MAX_BATCH_BYTES`] bytes (as `bytes` weighs them), keeping their
/// order; an item over the byte bound is a run of its own.
pub(super) fn chunk_rows<T>(items: Vec<T>, bytes: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut filled = 0;
    for item in items {
        let size = bytes(&item);
        let fits = chunks.last().is_some_and(|last| {
            last.len() < MAX_BATCH_PARTITIONS && filled + size <= MAX_BATCH_BYTES
        });
        if fits {
            filled += size;
            chunks.last_mut().expect("checked above").push(item);
        } else {
            filled = size;
            chunks.push(vec![item]);
        }
    }
    chunks
}

impl ScyllaTimelineStore {
    /// Writes rows, each with the timestamp its values carry: first the
    /// marker of every bucket in `buckets` not known to exist (a reader
    /// finds rows through the markers, so a row must never be readable
    /// before its marker), then the rows in batches.
    pub(super) async fn write_rows(
        &self,
        buckets: Vec<(Timeline, u64, u64)>,
        rows: Vec<Row>,
        at: i64,
    ) -> Result<()> {
        let mut unknown: Vec<(Timeline, u64, u64)> = buckets
            .into_iter()
            .filter(|key| !self.known_buckets.contains(key))
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        stream::iter(
            unknown
                .into_iter()
                .map(|(timeline, owner, bucket)| self.mark_bucket(timeline, owner, bucket, at)),
        )
        .buffer_unordered(super::MAX_CONCURRENT_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
        stream::iter(
            chunk_rows(rows, Row::bytes)
                .into_iter()
                .map(|chunk| self.write_chunk(chunk)),
        )
        .buffer_unordered(MAX_CONCURRENT_BATCHES)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    fn statement(&self, kind: RowKind) -> &PreparedStatement {
        let statements = &self.statements;
        match kind {
            RowKind::Inbox => &statements.insert_inbox,
            RowKind::Conversation => &statements.insert_conv,
            RowKind::Copies => &statements.insert_copies,
            RowKind::ReadThrough => &statements.insert_reader,
            RowKind::Joined => &statements.insert_reader_join,
        }
    }

    async fn write_chunk(&self, chunk: Vec<Row>) -> Result<()> {
        if chunk.len() == 1 {
            let row = chunk.into_iter().next().expect("one row");
            return self
                .execute(self.statement(row.kind), row.values)
                .await
                .map(|_| ());
        }
        let (statements, values): (Vec<BatchStatement>, Vec<RowValues>) = chunk
            .into_iter()
            .map(|row| (self.statement(row.kind).clone().into(), row.values))
            .unzip();
        let mut batch = Batch::new_with_statements(BatchType::Unlogged, statements);
        // Every row is an upsert with a fixed timestamp: a retry stores the
        // same cells.
        batch.set_is_idempotent(true);
        self.session.batch(&batch, values).await.map_err(|error| {
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

    #[test]
    fn rows_are_cut_at_the_partition_bound_in_order() {
        let chunks = chunk_rows((0..23).collect(), |_| 100);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 3]);
        let order: Vec<i32> = chunks.into_iter().flatten().collect();
        assert_eq!(order, (0..23).collect::<Vec<_>>());
    }

    #[test]
    fn rows_are_cut_at_the_byte_bound() {
        let chunks = chunk_rows((0..5).collect(), |_| 1500);
        assert_eq!(chunks, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn a_row_over_the_byte_bound_goes_alone() {
        let sizes = [10, MAX_BATCH_BYTES + 1, 10];
        let chunks = chunk_rows(vec![0, 1, 2], |&i| sizes[i]);
        assert_eq!(chunks, vec![vec![0], vec![1], vec![2]]);
        assert!(chunk_rows(Vec::<u8>::new(), |_| 1).is_empty());
    }

    #[test]
    fn a_row_weighs_its_blob_and_its_keys() {
        let values = RowValues::Entry(1, 0, 1, vec![0; 100], 7);
        assert_eq!(row_bytes(&values), 100 + ROW_KEY_BYTES);
        assert_eq!(row_bytes(&RowValues::Reader(1, 2, 3, 4)), ROW_KEY_BYTES);
    }
}
