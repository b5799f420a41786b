//! Inbox retention (trims below a floor raised first) and device
//! checkpoints: both raised by compare-and-set only, so racing writers
//! keep the higher value.

use super::*;

#[async_trait]
impl InboxRetention for ScyllaTimelineStore {
    /// The floor is raised before anything is deleted, so a reader that
    /// misses a trimmed entry always sees a floor above it. The floor is
    /// raised by compare-and-set, so racing trimmers keep the higher one.
    async fn trim_inbox(&self, user_id: u64, below_seq: u64, max_entries: usize) -> Result<usize> {
        self.raise_inbox_floor(user_id, below_seq).await?;
        if below_seq == 0 || max_entries == 0 {
            return Ok(0);
        }
        let last = below_seq - 1;
        let mut trimmed = 0;
        for bucket in self
            .buckets(Timeline::Inbox, user_id, 0, last, false)
            .await?
        {
            // Deleted rows no longer match, so the same query pages on.
            loop {
                let wanted = (max_entries - trimmed).min(PAGE_ROWS as usize);
                let values = (big(user_id), big(bucket), big(below_seq), wanted as i32);
                let seqs: Vec<i64> = self
                    .column(&self.statements.select_trimmable, values)
                    .await?;
                let Some(&through) = seqs.last() else {
                    break;
                };
                self.execute(
                    &self.statements.delete_inbox_through,
                    (self.next_timestamp()?, big(user_id), big(bucket), through),
                )
                .await?;
                trimmed += seqs.len();
                if seqs.len() < wanted {
                    // A bucket wholly below the floor can never be written
                    // again (seqs only grow): drop its index row too.
                    if bucket < bucket_of(last) {
                        self.execute(
                            &self.statements.delete_inbox_bucket,
                            (self.next_timestamp()?, big(user_id), big(bucket)),
                        )
                        .await?;
                    }
                    break;
                }
                if trimmed >= max_entries {
                    break;
                }
            }
            if trimmed >= max_entries {
                break;
            }
        }
        Ok(trimmed)
    }

    async fn inbox_floor(&self, user_id: u64) -> Result<u64> {
        Ok(self.stored_inbox_floor(user_id).await?.unwrap_or(0))
    }

    async fn inbox_times(&self, user_id: u64, range: InboxRange) -> Result<Vec<InboxTime>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let buckets = self.inbox_buckets(user_id, &range).await?;
        let page = |bucket, from: Option<u64>, wanted: usize| async move {
            let blobs = self
                .inbox_rows(user_id, bucket, &range, from, wanted)
                .await?;
            blobs
                .iter()
                .map(|b| codec::decode_inbox_time(b))
                .collect::<Result<Vec<_>>>()
        };
        read_pages(
            buckets,
            range.limit,
            TIMES_QUERY_ROWS,
            |t: &InboxTime| t.seq,
            page,
        )
        .await
    }
}

/// Rows per query of [`InboxRetention::inbox_times`]: each row is held
/// only while it is decoded, and a stored copy is at most its inline
/// payload (4 KiB) plus an edit history (64 KiB), so a query holds at
/// most about 18 MiB however its entries are made.
const TIMES_QUERY_ROWS: usize = 256;

impl ScyllaTimelineStore {
    async fn stored_inbox_floor(&self, user_id: u64) -> Result<Option<u64>> {
        let floors: Vec<i64> = self
            .column(&self.statements.select_inbox_floor, (big(user_id),))
            .await?;
        Ok(floors.first().map(|&f| f as u64))
    }

    /// Raises the inbox's floor to `floor` unless it is already as high.
    async fn raise_inbox_floor(&self, user_id: u64, floor: u64) -> Result<()> {
        loop {
            let current = self.stored_inbox_floor(user_id).await?;
            if current.is_some_and(|current| current >= floor) {
                return Ok(());
            }
            let result = match current {
                None => {
                    self.execute(
                        &self.statements.insert_inbox_floor,
                        (big(user_id), big(floor)),
                    )
                    .await?
                }
                Some(current) => {
                    self.execute(
                        &self.statements.raise_inbox_floor,
                        (big(floor), big(user_id), big(current)),
                    )
                    .await?
                }
            };
            // Not applied: the floor moved in between; look again.
            if cql_kit::lwt::applied(result)? {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl Checkpoints for ScyllaTimelineStore {
    async fn save_checkpoint(&self, user_id: u64, device_id: &str, seq: u64) -> Result<u64> {
        // Compare-and-set until our value is stored or a higher one is.
        loop {
            let stored = self.checkpoint(user_id, device_id).await?;
            if stored >= seq {
                return Ok(stored);
            }
            let result = if stored == 0 {
                let values = (big(user_id), device_id, big(seq));
                self.execute(&self.statements.insert_checkpoint_if_absent, values)
                    .await?
            } else {
                let values = (big(seq), big(user_id), device_id, big(stored));
                self.execute(&self.statements.raise_checkpoint_if, values)
                    .await?
            };
            if cql_kit::applied(result)? {
                return Ok(seq);
            }
        }
    }

    async fn checkpoint(&self, user_id: u64, device_id: &str) -> Result<u64> {
        let seqs: Vec<i64> = self
            .column(
                &self.statements.select_checkpoint,
                (big(user_id), device_id),
            )
            .await?;
        Ok(seqs.first().map_or(0, |&s| s as u64))
    }
}
