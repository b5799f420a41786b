//! The intent log (`EventLog`): an event is stored whole as an intent
//! before any of its rows (`PendingEvent`, with the write timestamp its
//! rows carry), so `recover` can finish it after a crash with exactly the
//! same rows. On one node the intent goes to `node_intents`, on a
//! cluster's writer to the fenced tables (`fencing`); both remove finished
//! intents by range (`open_intents`). `pending_events`, where earlier
//! versions kept one row per intent, is only read and emptied by
//! `recover`.

use super::node_intents::LeftoverCursor;
use super::*;

/// An [`EventCommit`] as stored in `pending_events`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PendingEvent {
    #[prost(message, optional, tag = "1")]
    entry: Option<EntryRecord>,
    #[prost(uint64, repeated, tag = "2")]
    inbox_users: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    inbox_seqs: Vec<u64>,
    #[prost(string, tag = "4")]
    receipt_principal: String,
    #[prost(bytes = "vec", tag = "5")]
    receipt_client_msg_id: Vec<u8>,
    #[prost(message, optional, tag = "6")]
    receipt: Option<ReceiptRecord>,
    #[prost(message, optional, tag = "7")]
    conversation: Option<ConversationRecord>,
    #[prost(message, repeated, tag = "8")]
    large_group_index: Vec<LargeGroupIndexChangeRecord>,
    #[prost(uint64, repeated, tag = "9")]
    reader_users: Vec<u64>,
    #[prost(uint64, repeated, tag = "10")]
    reader_marks: Vec<u64>,
    #[prost(uint64, repeated, tag = "11")]
    reader_joins: Vec<u64>,
    #[prost(bool, tag = "12")]
    keep_copies: bool,
    #[prost(message, repeated, tag = "13")]
    rewrites: Vec<PendingRewrite>,
    /// [`EventCommit::members`]: user ids, and whether each is a member.
    #[prost(uint64, repeated, tag = "14")]
    member_users: Vec<u64>,
    #[prost(bool, repeated, tag = "15")]
    member_flags: Vec<bool>,
    /// The write timestamp (microseconds) of every row the event writes,
    /// taken when the intent was made (see `writes`); 0 in intents stored
    /// before it was kept, which recovery writes with a fresh one.
    #[prost(int64, tag = "16")]
    pub(super) written_at: i64,
}

/// A [`crate::Rewrite`] inside an intent.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PendingRewrite {
    #[prost(message, optional, tag = "1")]
    entry: Option<EntryRecord>,
    #[prost(uint64, repeated, tag = "2")]
    inbox_users: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    inbox_seqs: Vec<u64>,
}

fn inbox_writes(users: Vec<u64>, seqs: Vec<u64>) -> Result<Vec<crate::InboxWrite>> {
    if users.len() != seqs.len() {
        return Err(corrupt("pending event inbox lists differ in length"));
    }
    Ok(users
        .into_iter()
        .zip(seqs)
        .map(|(user_id, seq)| crate::InboxWrite { user_id, seq })
        .collect())
}

impl PendingEvent {
    pub(super) fn from_commit(commit: &EventCommit, written_at: i64) -> Self {
        let (receipt_principal, receipt_client_msg_id, receipt) = match &commit.receipt {
            Some((key, receipt)) => (
                key.principal.clone(),
                key.client_msg_id.as_bytes().to_vec(),
                Some(ReceiptRecord::from(receipt)),
            ),
            None => (String::new(), Vec::new(), None),
        };
        Self {
            entry: Some(EntryRecord::from(&commit.entry)),
            inbox_users: commit.inbox.iter().map(|w| w.user_id).collect(),
            inbox_seqs: commit.inbox.iter().map(|w| w.seq).collect(),
            receipt_principal,
            receipt_client_msg_id,
            receipt,
            conversation: commit.conversation.as_ref().map(ConversationRecord::from),
            large_group_index: commit
                .large_group_index
                .iter()
                .map(|&change| change.into())
                .collect(),
            reader_users: commit.readers.iter().map(|r| r.user_id).collect(),
            reader_marks: commit.readers.iter().map(|r| r.read_through).collect(),
            reader_joins: commit.readers.iter().map(|r| r.joined).collect(),
            keep_copies: commit.keep_copies,
            rewrites: commit
                .rewrites
                .iter()
                .map(|rewrite| PendingRewrite {
                    entry: Some(EntryRecord::from(&rewrite.entry)),
                    inbox_users: rewrite.inbox.iter().map(|w| w.user_id).collect(),
                    inbox_seqs: rewrite.inbox.iter().map(|w| w.seq).collect(),
                })
                .collect(),
            member_users: commit.members.iter().map(|m| m.user_id).collect(),
            member_flags: commit.members.iter().map(|m| m.member).collect(),
            written_at,
        }
    }

    pub(super) fn into_commit(self) -> Result<EventCommit> {
        let entry = self
            .entry
            .ok_or_else(|| corrupt("pending event without entry"))?
            .try_into()?;
        if self.reader_users.len() != self.reader_marks.len() {
            return Err(corrupt("pending event reader lists differ in length"));
        }
        if self.member_users.len() != self.member_flags.len() {
            return Err(corrupt("pending event member lists differ in length"));
        }
        let receipt = match self.receipt {
            Some(receipt) => {
                let client_msg_id =
                    uuid::Uuid::from_slice(&self.receipt_client_msg_id).map_err(corrupt)?;
                let key = IdempotencyKey {
                    principal: self.receipt_principal,
                    client_msg_id,
                };
                Some((key, receipt.into()))
            }
            None => None,
        };
        let rewrites = self
            .rewrites
            .into_iter()
            .map(|rewrite| {
                Ok(crate::Rewrite {
                    entry: rewrite
                        .entry
                        .ok_or_else(|| corrupt("pending rewrite without entry"))?
                        .try_into()?,
                    inbox: inbox_writes(rewrite.inbox_users, rewrite.inbox_seqs)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EventCommit {
            entry,
            inbox: inbox_writes(self.inbox_users, self.inbox_seqs)?,
            keep_copies: self.keep_copies,
            rewrites,
            receipt,
            conversation: self.conversation.map(TryInto::try_into).transpose()?,
            large_group_index: self.large_group_index.into_iter().map(Into::into).collect(),
            members: self
                .member_users
                .iter()
                .zip(&self.member_flags)
                .map(|(&user_id, &member)| crate::MemberChange { user_id, member })
                .collect(),
            readers: self
                .reader_users
                .iter()
                .zip(&self.reader_marks)
                .enumerate()
                .map(|(i, (&user_id, &read_through))| crate::ReaderMark {
                    user_id,
                    read_through,
                    // Intents written before joins were kept have none.
                    joined: self.reader_joins.get(i).copied().unwrap_or(0),
                })
                .collect(),
        })
    }
}

/// The intent's partition and key: the event's message id (unique).
pub(super) fn pending_key(commit: &EventCommit) -> (i32, i64) {
    let event_id = commit.entry.msg_id;
    ((event_id % PENDING_SHARDS as u64) as i32, big(event_id))
}

/// An event whose intent is stored, with the write timestamp of its rows.
pub(super) struct StoredIntent {
    pub(super) commit: EventCommit,
    pub(super) written_at: i64,
}

impl ScyllaTimelineStore {
    /// Stores `commit`'s intent (conditionally on the fence, on a
    /// cluster's writer), its timestamp taken before.
    pub(super) async fn store_intent(&self, commit: &EventCommit) -> Result<StoredIntent> {
        let (shard, _) = pending_key(commit);
        // A retry of an event that failed keeps its intent's number and
        // timestamp: the same row, rows written the same way.
        let open = self
            .open_intents()
            .open(commit.entry.msg_id, shard, || self.next_timestamp())?;
        let intent = PendingEvent::from_commit(commit, open.written_at).encode_to_vec();
        match &self.fence {
            Some(fence) => fence.write_intent(shard, open.number, intent).await?,
            None => {
                self.node
                    .write(&self.session, shard, open.number, intent)
                    .await?
            }
        }
        let written_at = open.written_at;
        Ok(StoredIntent {
            commit: commit.clone(),
            written_at,
        })
    }

    /// The book of this writer's open intents: its epoch's on a cluster's
    /// writer, its run's on one node.
    fn open_intents(&self) -> &super::open_intents::OpenIntents {
        match &self.fence {
            Some(fence) => &fence.open,
            None => &self.node.open,
        }
    }

    /// Writes the rows of a stored intent, with its timestamp.
    pub(super) async fn apply_stored(&self, stored: &StoredIntent) -> Result<()> {
        self.apply(&stored.commit, stored.written_at).await
    }

    pub(super) fn decode_intent(&self, intent: &[u8]) -> Result<StoredIntent> {
        let pending = PendingEvent::decode(intent).map_err(corrupt)?;
        let written_at = match pending.written_at {
            0 => self.next_timestamp()?,
            at => at,
        };
        Ok(StoredIntent {
            commit: pending.into_commit()?,
            written_at,
        })
    }

    /// Finishes every leftover a paged read gives (`page` reads the page
    /// after a cursor), page after page; how many. The caller removes them
    /// once all are finished, with one range deletion.
    async fn finish_pages<Page>(
        &self,
        mut page: impl FnMut(Option<LeftoverCursor>) -> Page,
    ) -> Result<usize>
    where
        Page: std::future::Future<Output = Result<(Vec<Vec<u8>>, Option<LeftoverCursor>)>>,
    {
        let mut finished = 0;
        let mut cursor = None;
        loop {
            let (intents, next) = page(cursor).await?;
            for intent in &intents {
                let stored = self.decode_intent(intent)?;
                self.apply_stored(&stored).await?;
                finished += 1;
            }
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(finished),
            }
        }
    }
}

#[async_trait]
impl EventLog for ScyllaTimelineStore {
    async fn commit_event(&self, commit: EventCommit) -> Result<()> {
        if commit.entry.msg_id == 0 {
            // Two such events would share one recovery record: one's
            // cleanup would delete the other's, and a crash lose it.
            return Err(StoreError::InvalidArgument(
                "an event must have its own msg_id (its recovery record is keyed by it)".into(),
            ));
        }
        let started = std::time::Instant::now();
        let stored = self.store_intent(&commit).await?;
        self.apply_stored(&stored).await?;
        let (shard, _) = pending_key(&commit);
        let book = self.open_intents();
        let finished = book.finish(commit.entry.msg_id, shard, std::time::Instant::now());
        if let Some(below) = finished {
            let cleared = match &self.fence {
                Some(fence) => fence.clear_finished(&self.session, shard, below).await,
                None => self.node.clear_finished(&self.session, shard, below).await,
            };
            if let Err(error) = cleared {
                // The event is complete; its intent goes with a later
                // removal (or is finished again by the next start or
                // writer).
                book.clear_failed(shard);
                tracing::warn!(%error, shard, "could not remove finished intents");
            }
        }
        metrics::histogram!("timeline_store_scylla_commit_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Finishes every event an earlier run (or writer) left unfinished. On
    /// a cluster's writer this also applies again the finished intents its
    /// predecessor had not removed yet (at most `open_intents::CLEAR_INTERVAL`
    /// of them per partition), which changes nothing.
    async fn recover(&self) -> Result<usize> {
        let mut finished = 0;
        for shard in 0..PENDING_SHARDS {
            let intents: Vec<Vec<u8>> = self
                .column(&self.statements.select_pending, (shard,))
                .await?;
            // Left by versions that deleted each intent on its own.
            for intent in intents {
                let stored = self.decode_intent(&intent)?;
                self.apply_stored(&stored).await?;
                let (shard, event_id) = pending_key(&stored.commit);
                self.execute(&self.statements.delete_pending, (shard, event_id))
                    .await?;
                finished += 1;
            }
            let node = self
                .finish_pages(|cursor| self.node.leftovers(&self.session, shard, cursor))
                .await?;
            if node > 0 {
                self.node.clear_older(&self.session, shard).await?;
            }
            finished += node;
            if let Some(fence) = &self.fence {
                let fenced = self
                    .finish_pages(|cursor| fence.leftovers(&self.session, shard, cursor))
                    .await?;
                if fenced > 0 {
                    fence.clear_older(&self.session, shard).await?;
                }
                finished += fenced;
                let mut after = None;
                loop {
                    let (page, next) = fence
                        .unnumbered_leftovers(&self.session, shard, after)
                        .await?;
                    for (event_id, intent) in &page {
                        let stored = self.decode_intent(intent)?;
                        self.apply_stored(&stored).await?;
                        fence
                            .clear_unnumbered(&self.session, shard, *event_id)
                            .await?;
                        finished += 1;
                    }
                    match next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
            }
        }
        if finished > 0 {
            tracing::warn!(
                finished,
                "finished the events intents were left for (interrupted, or complete and not removed yet)"
            );
        }
        Ok(finished)
    }
}
