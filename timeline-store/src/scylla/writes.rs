//! How an event's rows and a user's read states are written, and with
//! which write timestamp.
//!
//! Every row an event writes carries one timestamp, `at`: the time its
//! intent was made, stored in the intent, so recovery re-applies the rows
//! with the same one. Cassandra keeps the newest write of a cell, so a
//! statement that lands late (issued by a writer that froze after storing
//! its intent, or a hint replayed long after) is either a duplicate of the
//! recovery's write or older than whatever rewrote the row since (an edit,
//! a recall, a membership change, a trim). The member table and the reader
//! index keep their own timestamps (the event's `conv_seq`, the marker),
//! which order them the same way.
//!
//! A fenced writer takes `at` from its lease's grant (`timestamps`): at
//! most the ceiling its last applied renewal recorded, which a newer
//! writer's timestamps all lie above, whatever the nodes' clocks say. Read
//! states have no intent: a save takes its timestamp, then checks the
//! fence, so a save begun after a newer writer sealed is refused, and one
//! begun before loses to the newer writer's saves. Trims take their
//! deletions' timestamps from the same source, so they cover rows written
//! with timestamps ahead of this node's clock.

use super::row_batches::{Row, RowKind, RowValues};
use super::{
    EntryEncoder, EventCommit, MAX_CONCURRENT_WRITES, ReadStateRow, Result, ScyllaTimelineStore,
    Timeline, big, bucket_of, codec,
};
use crate::InboxRetention;
use futures_util::{StreamExt, TryStreamExt, stream};

/// A read-state save begun: its write timestamp, taken before the fence
/// was checked.
pub(super) struct ReadStateSave {
    at: i64,
}

impl ScyllaTimelineStore {
    pub(super) async fn mark_bucket(
        &self,
        timeline: Timeline,
        owner: u64,
        bucket: u64,
        at: i64,
    ) -> Result<()> {
        let key = (timeline, owner, bucket);
        if self.known_buckets.contains(&key) {
            return Ok(());
        }
        let statement = match timeline {
            Timeline::Inbox => &self.statements.insert_inbox_bucket,
            Timeline::Conversation => &self.statements.insert_conv_bucket,
        };
        self.execute(statement, (big(owner), big(bucket), at))
            .await?;
        self.known_buckets.insert(key);
        Ok(())
    }

    /// A first join sets `joined`; a rejoin only clears `left`; a removal
    /// sets only `left` (an update keeps the other columns).
    async fn write_index(
        &self,
        change: crate::LargeGroupIndexChange,
        position: crate::EventPosition,
        at: i64,
    ) -> Result<()> {
        let key = (big(change.user_id), big(change.conversation_id));
        let statement = if change.member {
            // A rejoin (or a join applied again by `recover`) keeps the
            // first join, as every backend does: devices read on from
            // where they stopped.
            let existing: Vec<Option<i64>> = self
                .column(&self.statements.select_large_group_member, key)
                .await?;
            if !existing.is_empty() {
                return self
                    .execute(&self.statements.rejoin_large_group, (at, key.0, key.1))
                    .await
                    .map(|_| ());
            }
            &self.statements.join_large_group
        } else {
            self.execute(
                &self.statements.delete_legacy_large_group,
                (at, key.0, key.1),
            )
            .await?;
            &self.statements.leave_large_group
        };
        let values = (
            at,
            big(position.inbox_seq),
            big(position.conv_seq),
            key.0,
            key.1,
        );
        self.execute(statement, values).await.map(|_| ())
    }

    /// The event's conv_seq is the row's write time: an older event
    /// applied again (by `recover`) never undoes a later change.
    pub(super) async fn write_member(
        &self,
        conversation_id: u64,
        conv_seq: u64,
        change: crate::MemberChange,
    ) -> Result<()> {
        // A former member leaves no row behind (a churning group would
        // otherwise be read past its leavers on every page). The delete
        // is timestamped like the insert, so the later event wins either
        // way, whatever order recovery applies them in.
        if !change.member {
            let values = (big(conv_seq), big(conversation_id), big(change.user_id));
            return self
                .execute(&self.statements.delete_member, values)
                .await
                .map(|_| ());
        }
        let values = (
            big(conversation_id),
            big(change.user_id),
            true,
            big(conv_seq),
        );
        self.execute(&self.statements.upsert_member, values)
            .await
            .map(|_| ())
    }

    /// Writes every row of an event, each with the write timestamp `at`
    /// (idempotent: applying it twice stores the same rows, and a late
    /// application loses to any newer write of the same rows).
    pub(super) async fn apply(&self, commit: &EventCommit, at: i64) -> Result<()> {
        let conversation_id = commit.entry.conversation_id;
        let conv_seq = commit.entry.conv_seq;
        let mut buckets = Vec::new();
        let mut rows = Vec::new();
        let conv_row = |seq: u64, entry: Vec<u8>, buckets: &mut Vec<_>, rows: &mut Vec<_>| {
            buckets.push((Timeline::Conversation, conversation_id, bucket_of(seq)));
            rows.push(Row {
                kind: RowKind::Conversation,
                values: entry_values(conversation_id, seq, entry, at),
            });
        };
        let mut encoder = EntryEncoder::new(&commit.entry);
        // The entry, its copies' positions, the sender's mark and the
        // copies are independent rows (none is read before the event is
        // complete): all written side by side, in batches.
        if commit.entry.kind.in_conversation_timeline() {
            conv_row(conv_seq, encoder.conversation(), &mut buckets, &mut rows);
        }
        if commit.keep_copies {
            rows.push(Row {
                kind: RowKind::Copies,
                values: entry_values(
                    conversation_id,
                    conv_seq,
                    codec::encode_inbox_copies(&commit.inbox),
                    at,
                ),
            });
        }
        for mark in &commit.readers {
            rows.extend(reader_rows(conversation_id, *mark));
        }
        for write in &commit.inbox {
            buckets.push((Timeline::Inbox, write.user_id, bucket_of(write.seq)));
            rows.push(Row {
                kind: RowKind::Inbox,
                values: entry_values(write.user_id, write.seq, encoder.inbox(write.seq), at),
            });
        }
        // Rewrites of earlier events: their new rows, written like the
        // event's own (idempotent upserts, no delete).
        let mut floors: std::collections::HashMap<u64, u64> = Default::default();
        for rewrite in &commit.rewrites {
            let mut encoder = EntryEncoder::new(&rewrite.entry);
            if rewrite.entry.kind.in_conversation_timeline() {
                conv_row(
                    rewrite.entry.conv_seq,
                    encoder.conversation(),
                    &mut buckets,
                    &mut rows,
                );
            }
            for write in &rewrite.inbox {
                // A copy retention trimmed stays trimmed (and its bucket,
                // which the trim may have dropped from the index, too).
                let floor = match floors.get(&write.user_id) {
                    Some(&floor) => floor,
                    None => {
                        let floor = self.inbox_floor(write.user_id).await?;
                        floors.insert(write.user_id, floor);
                        floor
                    }
                };
                if write.seq >= floor {
                    buckets.push((Timeline::Inbox, write.user_id, bucket_of(write.seq)));
                    rows.push(Row {
                        kind: RowKind::Inbox,
                        values: entry_values(
                            write.user_id,
                            write.seq,
                            encoder.inbox(write.seq),
                            at,
                        ),
                    });
                }
            }
        }
        let row_writes = self.write_rows(buckets, rows, at);
        let index_writes = stream::iter(
            commit
                .large_group_index
                .clone()
                .into_iter()
                .map(|change| self.write_index(change, commit.position_of(change.user_id), at)),
        )
        .buffer_unordered(MAX_CONCURRENT_WRITES)
        .try_collect::<Vec<_>>();
        let member_writes =
            stream::iter(
                commit.members.clone().into_iter().map(|change| {
                    self.write_member(conversation_id, commit.entry.conv_seq, change)
                }),
            )
            .buffer_unordered(MAX_CONCURRENT_WRITES)
            .try_collect::<Vec<()>>();
        futures_util::try_join!(row_writes, index_writes, member_writes)?;

        // Only once every entry exists: the record, then the receipt.
        if let Some(conversation) = &commit.conversation {
            let values = (
                big(conversation.conversation_id),
                codec::encode_conversation(conversation),
                at,
            );
            self.execute(&self.statements.insert_conversation, values)
                .await?;
        }
        if let Some((key, receipt)) = &commit.receipt {
            let values = (
                key.principal.as_str(),
                key.client_msg_id.as_bytes().as_slice(),
                codec::encode_receipt(receipt),
                at,
            );
            self.execute(&self.statements.insert_receipt, values)
                .await?;
        }
        Ok(())
    }

    /// Takes a read-state save's timestamp, then checks that this writer
    /// was not superseded (see the module doc).
    pub(super) async fn read_state_save(&self) -> Result<ReadStateSave> {
        let at = self.next_timestamp()?;
        if let Some(fence) = &self.fence {
            fence.check(&self.session).await?;
        }
        Ok(ReadStateSave { at })
    }

    /// Each row of a save is written on its own (a partition's rows can
    /// exceed a batch's size limit), then the applied seq: a save cut
    /// short leaves rows ahead of the stored seq, which a fold from that
    /// seq skips, since a row records the newest inbox seq folded into it
    /// (`last_seq`).
    pub(super) async fn write_read_states(
        &self,
        started: ReadStateSave,
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    ) -> Result<()> {
        let at = started.at;
        let stored: Vec<i64> = self
            .column(&self.statements.select_read_state_applied, (big(user_id),))
            .await?;
        if stored.first().is_some_and(|&seq| seq as u64 > applied_seq) {
            return Ok(());
        }
        let encoded: Vec<(i64, i64, Vec<u8>, i64)> = rows
            .iter()
            .map(|row| {
                (
                    big(user_id),
                    big(row.conversation_id),
                    codec::encode_read_state(row),
                    at,
                )
            })
            .collect();
        stream::iter(encoded.into_iter().map(|values| async move {
            self.execute(&self.statements.insert_read_state, values)
                .await
                .map(|_| ())
        }))
        .buffer_unordered(MAX_CONCURRENT_WRITES)
        .try_collect::<Vec<()>>()
        .await?;
        self.execute(
            &self.statements.insert_read_state_applied,
            (big(user_id), big(applied_seq), at),
        )
        .await?;
        Ok(())
    }
}

/// The values of an entry-shaped row (inbox, conversation or copies).
pub(super) fn entry_values(owner: u64, seq: u64, blob: Vec<u8>, at: i64) -> RowValues {
    RowValues::Entry(big(owner), big(bucket_of(seq)), big(seq), blob, at)
}

/// A reader mark's rows: one row per (conversation, user), each cell with
/// the marker as its write timestamp (see `insert_reader`).
fn reader_rows(conversation_id: u64, mark: crate::ReaderMark) -> Vec<Row> {
    let (conversation, user) = (big(conversation_id), big(mark.user_id));
    let mut rows = Vec::new();
    if mark.read_through > 0 {
        let marker = big(mark.read_through);
        rows.push(Row {
            kind: RowKind::ReadThrough,
            values: RowValues::Reader(marker, marker, conversation, user),
        });
    }
    if mark.joined > 0 {
        let marker = big(mark.joined);
        rows.push(Row {
            kind: RowKind::Joined,
            values: RowValues::Reader(marker, marker, conversation, user),
        });
    }
    rows
}
