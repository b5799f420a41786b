//! The ScyllaDB backend (portable CQL: also runs on Apache Cassandra 5).
//!
//! # Schema and bucketing
//! Timelines are partitioned by `(owner, bucket)` with `bucket = seq >> 16`,
//! so one partition holds at most 65,536 seqs (about 13 MB at 200-byte
//! entries, well under the ~100 MB where ScyllaDB partitions start to hurt)
//! and none grows without bound. Seqs are sparse (a restart jumps a whole
//! section to its persisted `max_seq`), so reads do not walk bucket numbers:
//! a small per-owner index table lists the non-empty buckets.
//!
//! ```text
//! inbox         ((user_id, bucket), seq)               entry blob
//! inbox_buckets (user_id, bucket)                        -- one row per non-empty bucket
//! conv          ((conversation_id, bucket), conv_seq)  entry blob
//! conv_buckets  (conversation_id, bucket)
//! conversations (conversation_id)                      record blob
//! receipts      ((principal, client_msg_id))           receipt blob, TTL RECEIPT_RETENTION
//! checkpoints   (user_id, device_id)                   seq bigint, raised by LWT only
//! large_group_members (user_id, conversation_id)       joined and left positions of a user's large (read-fanout) groups
//! large_groups  (user_id, conversation_id)             -- the same before positions were kept (read, deleted on leave)
//! inbox_floors  (user_id)                              floor bigint, below it entries are trimmed
//! conversation_members (conversation_id, user_id)     the member table of large groups: a join inserts, a leave deletes, both USING TIMESTAMP of the event's conv_seq (rows of older versions may say member = false)
//! event_copies  ((conversation_id, bucket), conv_seq) where an event's inbox copies went (messages, edits)
//! node_intents  ((shard), run, intent)                event blob: intents of unfinished events (one node), removed by range
//! node_runs     (name)                                 the last run of the node intent log
//! pending_events ((shard), event_id)                   the same as written by earlier versions: only read and emptied by recovery
//! fenced_intents ((shard), epoch, intent)             the same for a cluster's writer, fenced by its epoch, removed by range
//! fenced_events ((shard), event_id)                    the same before intents were numbered: only emptied by recovery
//! writer_lease  (name)                                 the cluster's writer: holder, epoch, renewals, timestamp ceiling
//! revocations   (user_id, device_id)                   before bigint ('' = every device), raised only
//! revocation_feed ((hour), recorded_at_ms, user_id, device_id)  before bigint, TTL REVOCATION_FEED_RETENTION
//! ```
//! Records are the same prost encodings the embedded backend stores.
//!
//! # Writes
//! Every statement is prepared once, marked idempotent (retrying an upsert
//! with the same values is harmless) and runs under one execution profile
//! (LOCAL_QUORUM unless configured otherwise). An event writes the bucket
//! markers it needs, then its rows in unlogged batches of a few (at most
//! 16 batches in flight, see `row_batches`), then the conversation record
//! and the receipt *last*, so a
//! receipt only exists once every entry does.
//!
//! CQL has no atomic multi-partition write of this size (a logged batch of a
//! 500-member fanout exceeds batch size limits), so every event is first
//! recorded whole in `node_intents` (an intent; `fenced_intents` on a
//! cluster's writer), then written; finished intents are removed by range
//! deletions (`node_intents`, `open_intents`). An event interrupted anywhere in between (a crash, a
//! timeout) still has its intent; [`EventLog::recover`] re-applies it
//! with the same seqs and ids (every write is an idempotent upsert) before the
//! node serves again. Intents are spread over [`PENDING_SHARDS`] partitions.
//! Every row of an event is written with one timestamp, taken when its
//! intent was made and kept in it, so a statement that lands late never
//! overwrites a newer write of its row (`writes`).
//!
//! # Layout
//! This file: the store handle, read states and receipts. `statements`:
//! the tables and every prepared statement on them. `members`: the member table and reader marks. `retention`: inbox trims, floors and
//! checkpoints. `intents`: the intent log
//! of one node (`node_intents`: its table); `writes`: an event's rows (`row_batches`: most of them
//! in unlogged batches); `reads`: inbox and conversation
//! pages; `fencing`, `open_intents`, `timestamps`: a cluster's writer (the
//! lease, the fence, intent numbering and its timestamp source);
//! `revocations`: token cutoffs.

use crate::codec::{
    self, ConversationRecord, EntryEncoder, EntryRecord, LargeGroupIndexChangeRecord, ReceiptRecord,
};
use crate::{
    Checkpoints, Conversation, ConversationRange, ConversationReads, Entry, EventCommit, EventLog,
    EventPosition, IdempotencyKey, InboxRange, InboxReads, InboxRetention, InboxTime, InboxWrite,
    LargeGroupMembership, Order, ReadReceipts, ReadStateRow, ReadStateSnapshot, ReadStates,
    Receipt, Receipts, Result, StoreError,
};
use async_trait::async_trait;
use cql_kit::read_pages;
use futures_util::{StreamExt, TryStreamExt, stream};
use prost::Message;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use std::sync::Arc;

pub use cql_kit::ScyllaConfig;
#[cfg(test)]
use intents::PendingEvent;
#[cfg(test)]
use intents::pending_key;
use statements::{SCHEMA, Statements};

/// log2 of the seqs one partition covers.
pub const BUCKET_BITS: u32 = 16;
/// Writes of one event in flight at once.
pub const MAX_CONCURRENT_WRITES: usize = 64;
/// Bucket markers remembered as already written (saves one write per entry).
pub const KNOWN_BUCKETS_CACHE: usize = 1_000_000;
/// Partitions of the intent tables (intents of unfinished events).
pub const PENDING_SHARDS: i32 = 16;
/// Rows fetched per page when a read must scan.
const PAGE_ROWS: i32 = 1_000;
/// Users per `IN` list when reading reader marks.
const READER_LOOKUP_CHUNK: usize = 100;

pub fn bucket_of(seq: u64) -> u64 {
    seq >> BUCKET_BITS
}

fn cql(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("cql: {error}"))
}

impl From<cql_kit::CqlError> for StoreError {
    fn from(error: cql_kit::CqlError) -> Self {
        use cql_kit::CqlError;
        let message = error.to_string();
        match error {
            CqlError::InvalidUrl { .. } => StoreError::InvalidArgument(message),
            CqlError::Unavailable { .. } => StoreError::Unavailable(message),
            CqlError::Query(_) => StoreError::Io(message),
            CqlError::MissingApplied(_) => StoreError::Corrupt(message),
        }
    }
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// CQL `bigint` is signed; our ids and seqs stay below 2^63.
fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[derive(Clone, Copy, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Timeline {
    Inbox,
    Conversation,
}

/// A cheap-to-clone handle on one keyspace.
#[derive(Clone)]
pub struct ScyllaTimelineStore {
    session: Arc<Session>,
    statements: Arc<Statements>,
    revocations: Arc<revocations::Statements>,
    known_buckets: Arc<known_buckets::KnownBuckets>,
    /// Set on a cluster's writer: its intents are written conditionally on
    /// its epoch (see `fencing`).
    fence: Option<Arc<fencing::Fence>>,
    /// The intent log used without a fence (one node), see `node_intents`.
    node: Arc<node_intents::NodeIntents>,
    /// Write timestamps of intents, read-state saves and trims (see
    /// `writes`); on a cluster's writer, bounded by its lease (see
    /// `timestamps`).
    clock: Arc<timestamps::WriterClock>,
}

impl ScyllaTimelineStore {
    /// Creates the tables if needed and prepares every statement.
    pub async fn open(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        for ddl in SCHEMA.iter().chain(node_intents::SCHEMA) {
            session
                .query_unpaged(ddl.replace("{ks}", keyspace), ())
                .await
                .map_err(cql)?;
        }
        session.await_schema_agreement().await.map_err(cql)?;
        let statements = Statements::prepare(&session, keyspace).await?;
        let revocations = Arc::new(revocations::Statements::prepare(&session, keyspace).await?);
        let node = Arc::new(node_intents::NodeIntents::open(&session, keyspace).await?);
        Ok(Self {
            node,
            session,
            statements: Arc::new(statements),
            revocations,
            known_buckets: Arc::new(known_buckets::KnownBuckets::new(KNOWN_BUCKETS_CACHE)),
            fence: None,
            clock: Arc::new(timestamps::WriterClock::unbounded()),
        })
    }

    /// This store as the writer of `epoch` (a lease won in
    /// [`WriterLeaseTable`]): seals every intent partition with the epoch,
    /// so no intent of an earlier writer can be stored from now on, and
    /// writes its own intents conditionally on it. Its write timestamps
    /// come from `clock`, which the claim of `epoch` began (above every
    /// earlier writer's, see `timestamps`). Run [`EventLog::recover`] on
    /// the result before serving: it finishes whatever the earlier writers
    /// left.
    pub async fn fenced(
        &self,
        keyspace: &str,
        epoch: u64,
        clock: Arc<timestamps::WriterClock>,
    ) -> Result<Self> {
        let fence = fencing::Fence::prepare(&self.session, keyspace, epoch).await?;
        fence.seal(&self.session).await?;
        Ok(Self {
            fence: Some(Arc::new(fence)),
            clock,
            ..self.clone()
        })
    }

    async fn execute(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<scylla::response::query_result::QueryResult> {
        self.session
            .execute_unpaged(statement, values)
            .await
            .map_err(|error| {
                metrics::counter!("timeline_store_errors_total", "backend" => "scylla", "kind" => "cql")
                    .increment(1);
                cql(error)
            })
    }

    /// Runs a single-column query and decodes every row's value.
    async fn column<T>(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<T>>
    where
        T: for<'f, 'm> scylla::deserialize::value::DeserializeValue<'f, 'm>,
    {
        let result = self.execute(statement, values).await?;
        let rows = result.into_rows_result().map_err(cql)?;
        let values: std::result::Result<Vec<(T,)>, _> = rows.rows::<(T,)>().map_err(cql)?.collect();
        Ok(values.map_err(corrupt)?.into_iter().map(|(v,)| v).collect())
    }

    /// Buckets of a timeline between two seqs, ascending (or descending).
    async fn buckets(
        &self,
        timeline: Timeline,
        owner: u64,
        from_seq: u64,
        to_seq: u64,
        descending: bool,
    ) -> Result<Vec<u64>> {
        let statement = match (timeline, descending) {
            (Timeline::Inbox, false) => &self.statements.select_inbox_buckets,
            (Timeline::Conversation, false) => &self.statements.select_conv_buckets,
            (Timeline::Conversation, true) => &self.statements.select_conv_buckets_desc,
            (Timeline::Inbox, true) => unreachable!("inbox reads are ascending"),
        };
        let values = (big(owner), big(bucket_of(from_seq)), big(bucket_of(to_seq)));
        let buckets: Vec<i64> = self.column(statement, values).await?;
        Ok(buckets.into_iter().map(|b| b as u64).collect())
    }

    /// An inbox copy stored without its payload, completed from its
    /// conversation entry.
    async fn with_payload(&self, mut entry: Entry) -> Result<Entry> {
        let (id, conv_seq) = (entry.conversation_id, entry.conv_seq);
        let values = (
            big(id),
            big(bucket_of(conv_seq)),
            big(conv_seq - 1),
            big(conv_seq + 1),
            1i32,
        );
        let blobs: Vec<Vec<u8>> = self
            .column(&self.statements.select_conv_range, values)
            .await?;
        codec::fill_payload(&mut entry, blobs.first().map(Vec::as_slice))?;
        Ok(entry)
    }

    fn decode_entries(blobs: Vec<Vec<u8>>) -> Result<Vec<Entry>> {
        blobs.iter().map(|b| codec::decode_entry(b)).collect()
    }
}

impl ScyllaTimelineStore {
    /// Every row of one partition, read a page at a time (a partition has
    /// no bound of its own, so never in one unpaged response).
    /// `statement` takes (partition key, after, limit) and selects rows
    /// ordered by the bigint clustering column `cursor_of` returns.
    async fn partition_rows<R>(
        &self,
        statement: &PreparedStatement,
        partition: u64,
        cursor_of: impl Fn(&R) -> i64,
    ) -> Result<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        let page = |(), after: Option<i64>, wanted: usize| {
            let values = (
                big(partition),
                after.unwrap_or(i64::MIN),
                i32::try_from(wanted).unwrap_or(PAGE_ROWS),
            );
            async move {
                let result = self.execute(statement, values).await?;
                let rows = result.into_rows_result().map_err(cql)?;
                let rows: std::result::Result<Vec<R>, _> = rows.rows::<R>().map_err(cql)?.collect();
                rows.map_err(corrupt)
            }
        };
        read_pages([()], usize::MAX, PAGE_ROWS as usize, cursor_of, page).await
    }
}

/// Each row of a save is written on its own (a partition's rows can exceed
/// a batch's size limit), then the applied seq: a save cut short leaves
/// rows ahead of the stored seq, which a fold from that seq skips, since a
/// row records the newest inbox seq folded into it (`last_seq`).
#[async_trait]
impl ReadStates for ScyllaTimelineStore {
    async fn read_states(&self, user_id: u64) -> Result<ReadStateSnapshot> {
        let applied: Vec<i64> = self
            .column(&self.statements.select_read_state_applied, (big(user_id),))
            .await?;
        type Row = (i64, Vec<u8>);
        let rows: Vec<Row> = self
            .partition_rows(&self.statements.select_read_states, user_id, |r: &Row| r.0)
            .await?;
        let rows = rows
            .iter()
            .map(|(_, state)| codec::decode_read_state(state))
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadStateSnapshot {
            applied_seq: applied.first().map_or(0, |&seq| seq as u64),
            rows,
        })
    }

    async fn save_read_states(
        &self,
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    ) -> Result<()> {
        let started = self.read_state_save().await?;
        self.write_read_states(started, user_id, applied_seq, rows)
            .await
    }
}

impl ScyllaTimelineStore {
    /// A write timestamp (microseconds), never the same twice in this
    /// process; on a cluster's writer, within its lease's grant (refused
    /// as fenced otherwise, before anything is written).
    fn next_timestamp(&self) -> Result<i64> {
        let epoch = self
            .fence
            .as_ref()
            .map_or(timestamps::UNFENCED, |fence| fence.epoch);
        self.clock.next(epoch)
    }
}

#[async_trait]
impl Receipts for ScyllaTimelineStore {
    async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>> {
        let values = (
            key.principal.as_str(),
            key.client_msg_id.as_bytes().as_slice(),
        );
        let receipts: Vec<Vec<u8>> = self.column(&self.statements.select_receipt, values).await?;
        receipts
            .first()
            .map(|r| codec::decode_receipt(r))
            .transpose()
    }
}

mod fencing;
mod intent_batches;
mod intents;
mod known_buckets;
mod members;
mod node_intents;
mod open_intents;
mod reads;
mod retention;
mod revocations;
mod row_batches;
mod statements;
mod timestamps;
mod writes;

pub use fencing::{CLUSTER_PROTOCOL, LeaseRecord, WriterLeaseTable};
pub use timestamps::WriterClock;
#[cfg(test)]
mod ceiling_tests;
#[cfg(test)]
mod fencing_tests;
#[cfg(test)]
mod intent_log_tests;
#[cfg(test)]
mod tests;
