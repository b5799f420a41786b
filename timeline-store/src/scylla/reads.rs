//! Reads of the timelines: inbox ranges and conversation pages, each
//! bucket listed from its index table and read in pages, and the scan of
//! conversation ids.

use super::*;
use cql_kit::read_pages_until;

/// Rows per query of an inbox read with a byte budget (a stored copy of a
/// heavy message is a reference, completed after the query).
const BUDGETED_QUERY_ROWS: usize = 128;

/// Rows per query of a conversation read with a byte budget: a stored
/// entry is whole (up to 64 KiB of text and as much edit history), so a
/// query holds at most about 4 MiB whatever the budget.
const BUDGETED_CONVERSATION_QUERY_ROWS: usize = 32;

#[async_trait]
impl InboxReads for ScyllaTimelineStore {
    async fn read_inbox(&self, user_id: u64, range: InboxRange) -> Result<Vec<Entry>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let buckets = self.inbox_buckets(user_id, &range).await?;
        let page = |bucket, from: Option<u64>, wanted: usize| async move {
            let blobs = self
                .inbox_rows(user_id, bucket, &range, from, wanted)
                .await?;
            let copies = blobs
                .iter()
                .map(|b| codec::decode_inbox_entry(b))
                .collect::<Result<Vec<_>>>()?;
            stream::iter(copies.into_iter().map(|(entry, referenced)| async move {
                if referenced && range.payloads {
                    self.with_payload(entry).await
                } else {
                    Ok(entry)
                }
            }))
            .buffered(MAX_CONCURRENT_WRITES)
            .try_collect::<Vec<Entry>>()
            .await
        };
        // A budgeted read (a page of Sync) queries a few rows at a time, so
        // what it holds past the budget is a few entries, not a page of them.
        let query_rows = match range.max_bytes {
            usize::MAX => PAGE_ROWS as usize,
            _ => BUDGETED_QUERY_ROWS,
        };
        let mut budget = range.budget();
        read_pages_until(
            buckets,
            range.limit,
            query_rows,
            |e: &Entry| e.seq,
            |e| budget.spend(e),
            page,
        )
        .await
    }

    async fn last_inbox_seq(&self, user_id: u64) -> Result<u64> {
        let mut below = i64::MAX;
        // Normally the first bucket found has entries; a marker without
        // entries (an event that failed halfway) sends us one bucket lower.
        loop {
            let buckets: Vec<i64> = self
                .column(
                    &self.statements.select_last_inbox_bucket,
                    (big(user_id), below),
                )
                .await?;
            let Some(&bucket) = buckets.first() else {
                return Ok(0);
            };
            let seqs: Vec<i64> = self
                .column(
                    &self.statements.select_last_inbox_seq,
                    (big(user_id), bucket),
                )
                .await?;
            if let Some(&seq) = seqs.first() {
                return Ok(seq as u64);
            }
            if bucket == 0 {
                return Ok(0);
            }
            below = bucket - 1;
        }
    }
}

#[async_trait]
impl crate::ConversationScan for ScyllaTimelineStore {
    async fn conversation_ids(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let ids: Vec<i64> = match after {
            None => {
                self.column(&self.statements.scan_conversations_first, (limit,))
                    .await?
            }
            Some(after) => {
                self.column(
                    &self.statements.scan_conversations_after,
                    (big(after), limit),
                )
                .await?
            }
        };
        Ok(ids.into_iter().map(|id| id as u64).collect())
    }
}

#[async_trait]
impl ConversationReads for ScyllaTimelineStore {
    async fn conversation(&self, conversation_id: u64) -> Result<Option<Conversation>> {
        let records: Vec<Vec<u8>> = self
            .column(
                &self.statements.select_conversation,
                (big(conversation_id),),
            )
            .await?;
        records
            .first()
            .map(|r| codec::decode_conversation(r))
            .transpose()
    }

    async fn large_group_memberships(&self, user_id: u64) -> Result<Vec<LargeGroupMembership>> {
        // A user's index partition has no bound of its own, so it is read a
        // page at a time instead of in one unpaged response.
        type Row = (i64, Option<i64>, Option<i64>, Option<i64>, Option<i64>);
        let rows: Vec<Row> = self
            .partition_rows(
                &self.statements.select_large_group_members,
                user_id,
                |r: &Row| r.0,
            )
            .await?;
        let mut groups = std::collections::BTreeMap::new();
        for (id, joined_seq, joined_conv_seq, left_seq, left_conv_seq) in rows {
            let position = |seq: Option<i64>, conv_seq: Option<i64>| EventPosition {
                inbox_seq: seq.unwrap_or(0) as u64,
                conv_seq: conv_seq.unwrap_or(0) as u64,
            };
            let membership = LargeGroupMembership {
                conversation_id: id as u64,
                joined: position(joined_seq, joined_conv_seq),
                left: left_seq.map(|_| position(left_seq, left_conv_seq)),
            };
            groups.insert(id as u64, membership);
        }
        let legacy_page = |(), after: Option<i64>, wanted: usize| {
            let values = (
                big(user_id),
                after.unwrap_or(i64::MIN),
                i32::try_from(wanted).unwrap_or(PAGE_ROWS),
            );
            async move {
                self.column::<i64>(&self.statements.select_legacy_large_groups, values)
                    .await
            }
        };
        let legacy = read_pages(
            [()],
            usize::MAX,
            PAGE_ROWS as usize,
            |g: &i64| *g,
            legacy_page,
        )
        .await?;
        for id in legacy {
            groups
                .entry(id as u64)
                .or_insert_with(|| LargeGroupMembership {
                    conversation_id: id as u64,
                    joined: EventPosition::default(),
                    left: None,
                });
        }
        Ok(groups.into_values().collect())
    }

    async fn inbox_copies(&self, conversation_id: u64, conv_seq: u64) -> Result<Vec<InboxWrite>> {
        let values = (
            big(conversation_id),
            big(bucket_of(conv_seq)),
            big(conv_seq),
        );
        let blobs: Vec<Vec<u8>> = self.column(&self.statements.select_copies, values).await?;
        blobs
            .first()
            .map_or(Ok(Vec::new()), |bytes| codec::decode_inbox_copies(bytes))
    }

    async fn read_conversation(&self, id: u64, range: ConversationRange) -> Result<Vec<Entry>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let ConversationRange {
            after,
            before,
            order,
            limit,
            ..
        } = range;
        let newest_first = order == Order::NewestFirst;
        let statement = if newest_first {
            &self.statements.select_conv_range_desc
        } else {
            &self.statements.select_conv_range
        };
        let buckets = self
            .buckets(
                Timeline::Conversation,
                id,
                after.saturating_add(1),
                before - 1,
                newest_first,
            )
            .await?;
        // The cursor moves the bound on the side we read from.
        let page = |bucket, cursor: Option<u64>, wanted: usize| async move {
            let (low, high) = match (cursor, newest_first) {
                (Some(last), true) => (after, last),
                (Some(last), false) => (last, before),
                (None, _) => (after, before),
            };
            let values = (big(id), big(bucket), big(low), big(high), wanted as i32);
            Self::decode_entries(self.column(statement, values).await?)
        };
        // As for the inbox: a budgeted read holds a few rows past its
        // budget, never a whole page of them.
        let query_rows = match range.max_bytes {
            usize::MAX => PAGE_ROWS as usize,
            _ => BUDGETED_CONVERSATION_QUERY_ROWS,
        };
        let mut budget = range.budget();
        read_pages_until(
            buckets,
            limit,
            query_rows,
            |e: &Entry| e.conv_seq,
            |e| budget.spend(e),
            page,
        )
        .await
    }
}

impl ScyllaTimelineStore {
    /// The non-empty buckets of the user's inbox that `range` spans.
    pub(super) async fn inbox_buckets(&self, user_id: u64, range: &InboxRange) -> Result<Vec<u64>> {
        let from = range.after.saturating_add(1);
        self.buckets(Timeline::Inbox, user_id, from, range.through, false)
            .await
    }

    /// One query of `bucket`'s stored inbox rows in `range` (after `from`
    /// when paging on), at most `wanted`, as stored.
    pub(super) async fn inbox_rows(
        &self,
        user_id: u64,
        bucket: u64,
        range: &InboxRange,
        from: Option<u64>,
        wanted: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let values = (
            big(user_id),
            big(bucket),
            big(from.unwrap_or(range.after)),
            big(range.through),
            wanted as i32,
        );
        self.column(&self.statements.select_inbox_range, values)
            .await
    }
}
