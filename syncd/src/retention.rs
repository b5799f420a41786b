//! Inbox retention: trimming inboxes to a count or age policy.
//!
//! Inboxes written since the last pass are noted as trim candidates by the
//! one announce path ([`RetentionQueue`] is a commit observer), and every
//! `interval` the retention loop trims each of them. Conversation timelines
//! (history) are kept regardless. The store raises an inbox's floor before
//! it deletes below it, so a device whose checkpoint falls below what is
//! kept gets "checkpoint expired" from Sync, never a silent gap.

use crate::error::Result;
use crate::event::now_ms;
use crate::horizon::Scope;
use crate::lifecycle::{Lifecycle, stopped};
use crate::limits::{
    MAX_TRIM_CANDIDATES, RECEIPT_SWEEP_INTERVAL, RETENTION_INTERVAL, RETENTION_SCAN_MAX,
    RETENTION_SCAN_PAGE, RETENTION_TRIM_BATCH,
};
use crate::observer::{CommitObserver, Committed};
use crate::read_state::ReadState;
use crate::visibility::Visibility;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timeline_store::{InboxRange, TimelineStore};

/// How long inbox entries are kept.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Keep at most this many of the newest entries (0: no limit).
    pub max_entries: u64,
    /// Trim entries older than this (`None`: no limit).
    pub max_age: Option<Duration>,
    /// Time between retention passes.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_entries: 0,
            max_age: None,
            interval: RETENTION_INTERVAL,
        }
    }
}

impl Retention {
    pub fn enabled(&self) -> bool {
        self.max_entries > 0 || self.max_age.is_some()
    }
}

/// Inboxes written since the last retention pass (bounded: when full, a
/// user is noted again on their next entry).
pub struct RetentionQueue {
    enabled: bool,
    candidates: Mutex<HashSet<u64>>,
}

impl RetentionQueue {
    pub fn new(policy: &Retention) -> Self {
        Self {
            enabled: policy.enabled(),
            candidates: Mutex::default(),
        }
    }

    pub fn note(&self, user_id: u64) {
        if self.enabled {
            let mut candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
            if candidates.len() < MAX_TRIM_CANDIDATES {
                candidates.insert(user_id);
            }
        }
    }

    fn drain(&self) -> Vec<u64> {
        let mut candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        candidates.drain().collect()
    }

    #[cfg(test)]
    pub fn contains(&self, user_id: u64) -> bool {
        let candidates = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        candidates.contains(&user_id)
    }
}

impl CommitObserver for RetentionQueue {
    fn committed(&self, event: &Committed<'_>) {
        for &((scope, user_id), _) in event.visible {
            if scope == Scope::Inbox {
                self.note(user_id);
            }
        }
    }
}

pub struct Retainer {
    policy: Retention,
    store: Arc<dyn TimelineStore>,
    visibility: Arc<Visibility>,
    queue: Arc<RetentionQueue>,
    /// Folded before a trim: the read state is folded from the inbox, so
    /// nothing may leave the inbox before it is folded.
    read_state: Arc<ReadState>,
}

impl Retainer {
    pub fn new(
        policy: Retention,
        store: Arc<dyn TimelineStore>,
        visibility: Arc<Visibility>,
        queue: Arc<RetentionQueue>,
        read_state: Arc<ReadState>,
    ) -> Self {
        Self {
            policy,
            store,
            visibility,
            queue,
            read_state,
        }
    }

    /// Starts the retention loop as a tracked task (nothing without a
    /// policy): every interval it trims the inboxes written since the last
    /// pass, until shutdown.
    pub fn start(self: &Arc<Self>, lifecycle: &Lifecycle) {
        if !self.policy.enabled() {
            return;
        }
        let this = Arc::clone(self);
        let mut stopping = lifecycle.stopping();
        lifecycle.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(this.policy.interval) => {}
                    () = stopped(&mut stopping) => return,
                }
                for user_id in this.queue.drain() {
                    if let Err(error) = this.trim_user(user_id).await {
                        tracing::warn!(%error, user_id, "retention pass failed; retrying next pass");
                        this.queue.note(user_id);
                    }
                }
            }
        });
    }

    /// Starts the idempotency receipt sweep as a tracked task, whatever the
    /// inbox policy: receipts are kept for `timeline_store::RECEIPT_RETENTION`
    /// on every node. Reads already ignore older receipts; the sweep frees
    /// their space (a no-op on stores that expire rows by TTL).
    pub fn start_receipt_sweep(self: &Arc<Self>, lifecycle: &Lifecycle) {
        let store = Arc::clone(&self.store);
        let mut stopping = lifecycle.stopping();
        lifecycle.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(RECEIPT_SWEEP_INTERVAL) => {}
                    () = stopped(&mut stopping) => return,
                }
                match store.expire_receipts().await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "expired idempotency receipts"),
                    Err(error) => {
                        tracing::warn!(%error, "receipt sweep failed; retrying next interval")
                    }
                }
            }
        });
    }

    /// Trims one inbox to the retention policy. Returns the new floor.
    ///
    /// The policy counts entries, not seqs: seqs are sparse (a restart
    /// moves a whole allocator section to its persisted `max_seq`), so "the
    /// newest N" is found by walking the inbox, never as `top - N`. The new
    /// floor is one above the newest entry trimmed, so a device whose
    /// checkpoint is at or above that entry is not told "expired": nothing
    /// after its checkpoint was trimmed. Only readable entries are walked,
    /// so a trim never cuts above what a reader may already have been shown
    /// as complete.
    pub async fn trim_user(&self, user_id: u64) -> Result<u64> {
        let policy = &self.policy;
        let floor = self.store.inbox_floor(user_id).await?;
        let through = self
            .visibility
            .readable_through(Scope::Inbox, user_id)
            .await?;
        // Folds at least through `through` (readable only grows).
        self.read_state.fold(user_id).await?;
        // (seq, sent_at_ms) of the kept entries, oldest first.
        let mut kept: Vec<(u64, i64)> = Vec::new();
        let mut after = floor.saturating_sub(1);
        let mut walked_all = true;
        loop {
            // Seqs and times only: no payload is read, so a page of heavy
            // copies costs what a page of short ones does.
            let range = InboxRange::new(after, through, RETENTION_SCAN_PAGE);
            let page = self.store.inbox_times(user_id, range).await?;
            kept.extend(page.iter().map(|row| (row.seq, row.sent_at_ms)));
            match page.last() {
                Some(last) if page.len() == RETENTION_SCAN_PAGE => after = last.seq,
                _ => break,
            }
            if kept.len() >= RETENTION_SCAN_MAX {
                walked_all = false;
                break;
            }
        }
        if !walked_all {
            // Newer entries than those walked exist: trimming all but the
            // newest N walked still keeps at least N. The rest next pass.
            self.queue.note(user_id);
        }
        let mut trimmed = 0;
        if policy.max_entries > 0 {
            let max_entries = usize::try_from(policy.max_entries).unwrap_or(usize::MAX);
            trimmed = kept.len().saturating_sub(max_entries);
        }
        if let Some(max_age) = policy.max_age {
            let cutoff = now_ms().saturating_sub(max_age.as_millis() as i64);
            let old = kept.iter().take_while(|(_, sent)| *sent < cutoff).count();
            trimmed = trimmed.max(old);
        }
        let Some(&(newest_trimmed, _)) = trimmed.checked_sub(1).and_then(|i| kept.get(i)) else {
            return Ok(floor);
        };
        let below = newest_trimmed + 1;
        if below > floor {
            loop {
                let removed = self
                    .store
                    .trim_inbox(user_id, below, RETENTION_TRIM_BATCH)
                    .await?;
                metrics::counter!("syncd_retention_trimmed_entries_total")
                    .increment(removed as u64);
                if removed != RETENTION_TRIM_BATCH {
                    break;
                }
            }
        }
        Ok(below.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SyncdError;
    use crate::history::HistoryQuery;
    use crate::testkit::*;
    use timeline_store::InboxReads;

    #[tokio::test]
    async fn retention_trims_inboxes_and_expired_checkpoints_are_told() {
        let fx = fixture().config(keeping(10)).build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let early = engine
            .sync(&device(2, "early"), Some(0), 100)
            .await
            .unwrap()
            .checkpoint;
        send_numbered(&engine, 1, conversation, 30).await;
        let floor = engine.trim_user(2).await.unwrap();
        assert_eq!(floor, 31 - 10 + 1, "31 entries, the newest 10 kept");
        // A device far behind is told, with no entries: never a silent gap.
        let expired = engine
            .sync(&device(2, "early"), Some(early), 100)
            .await
            .unwrap();
        assert_eq!(expired.expired_below, Some(floor));
        assert!(expired.entries.is_empty());
        assert!(matches!(
            engine.subscribe(&device(2, "early"), early, true).await,
            Err(SyncdError::FailedPrecondition(_))
        ));
        // From the floor on, sync works as usual; history keeps everything.
        let resumed = engine
            .sync(&device(2, "early"), Some(floor - 1), 100)
            .await
            .unwrap();
        assert_eq!(resumed.entries.len(), 10);
        assert_eq!(resumed.expired_below, None);
        let query = HistoryQuery {
            conversation_id: conversation,
            before: 0,
            after: Some(0),
            limit: 100,
        };
        assert_eq!(
            engine
                .history(&device(2, "d"), query)
                .await
                .unwrap()
                .entries
                .len(),
            31
        );
    }

    /// Retention counts entries, not seqs: a restart moves the inbox's
    /// seqs up by a whole allocator step, and "keep 1,000" used to trim
    /// every entry below `top - 1000`: all of them. And "expired" means an
    /// entry after the checkpoint really was trimmed.
    #[tokio::test]
    async fn count_retention_keeps_the_newest_entries_across_seq_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), false);
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(seqsvc::MemoryMaxSeqStore::new());
        let engine = engine_on(&store, seq_store.clone(), keeping(1_000)).await;
        let conversation = group(&engine, 1, vec![2]).await;
        send_numbered(&engine, 1, conversation, 10).await;
        let synced = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        assert_eq!(synced.entries.len(), 11);
        drop(engine);

        let engine = engine_on(&store, seq_store.clone(), keeping(1_000)).await;
        engine
            .send(
                device(1, "d"),
                message(conversation, "after the restart", None),
            )
            .await
            .unwrap();
        let newest = engine
            .sync(&device(2, "d"), Some(synced.checkpoint), 100)
            .await
            .unwrap();
        assert!(
            newest.entries[0].seq > synced.checkpoint + 1_000,
            "the restart moved the seqs by a step"
        );
        engine.trim_user(2).await.unwrap();
        let all = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        assert_eq!(
            all.expired_below, None,
            "12 entries, 1,000 kept: none trimmed"
        );
        assert_eq!(all.entries.len(), 12);
        drop(engine);

        // Keeping 5 of 12 trims the 7 oldest, and only devices whose
        // checkpoint is below one of those are told "expired".
        let engine = engine_on(&store, seq_store, keeping(5)).await;
        let floor = engine.trim_user(2).await.unwrap();
        assert_eq!(floor, all.entries[6].seq + 1);
        let fully_synced = engine
            .sync(&device(2, "d"), Some(synced.checkpoint), 100)
            .await
            .unwrap();
        assert_eq!(
            fully_synced.expired_below, None,
            "nothing after it was trimmed"
        );
        assert_eq!(fully_synced.entries.len(), 1);
        let behind = engine
            .sync(&device(2, "d"), Some(all.entries[2].seq), 100)
            .await
            .unwrap();
        assert_eq!(behind.expired_below, Some(floor));
        let kept = engine
            .sync(&device(2, "d"), Some(floor - 1), 100)
            .await
            .unwrap();
        assert_eq!(kept.entries.len(), 5);
    }

    /// An inbox of large messages is walked by seqs and times, in full
    /// pages whatever the messages weigh, so the trim keeps exactly the
    /// newest entries.
    #[tokio::test]
    async fn an_inbox_of_large_messages_is_walked_whole_and_trimmed_to_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), false);
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(seqsvc::MemoryMaxSeqStore::new());
        let engine = engine_on(&store, seq_store, keeping(5)).await;
        let conversation = group(&engine, 1, vec![2]).await;
        let text = "L".repeat(60_000);
        // About 12 MiB of heavy entries, walked without reading them.
        for _ in 0..200 {
            engine
                .send(device(1, "d"), message(conversation, &text, None))
                .await
                .unwrap();
        }
        engine.trim_user(2).await.unwrap();
        let kept = store
            .read_inbox(2, InboxRange::new(0, u64::MAX, 1_000))
            .await
            .unwrap()
            .len();
        assert_eq!(kept, 5);
    }
}
