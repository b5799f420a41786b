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
    MAX_TRIM_CANDIDATES, RETENTION_AGE_SCAN, RETENTION_INTERVAL, RETENTION_TRIM_BATCH,
};
use crate::observer::{CommitObserver, Committed};
use crate::visibility::Visibility;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timeline_store::TimelineStore;

/// How long inbox entries are kept.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Keep only seqs within this distance of the newest (0: no limit). With
    /// seq gaps that is at most this many entries.
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
}

impl Retainer {
    pub fn new(
        policy: Retention,
        store: Arc<dyn TimelineStore>,
        visibility: Arc<Visibility>,
        queue: Arc<RetentionQueue>,
    ) -> Self {
        Self {
            policy,
            store,
            visibility,
            queue,
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

    /// Trims one inbox to the retention policy. Returns the new floor.
    pub async fn trim_user(&self, user_id: u64) -> Result<u64> {
        let policy = &self.policy;
        let mut below = 0;
        if policy.max_entries > 0 {
            let top = self.store.last_inbox_seq(user_id).await?;
            below = (top + 1).saturating_sub(policy.max_entries);
        }
        if let Some(max_age) = policy.max_age {
            let cutoff = now_ms().saturating_sub(max_age.as_millis() as i64);
            let floor = self.store.inbox_floor(user_id).await?;
            let through = self
                .visibility
                .readable_through(Scope::Inbox, user_id)
                .await?;
            let oldest = self
                .store
                .read_inbox(
                    user_id,
                    floor.saturating_sub(1),
                    through,
                    RETENTION_AGE_SCAN,
                )
                .await?;
            match oldest.iter().find(|e| e.sent_at_ms >= cutoff) {
                Some(young) => below = below.max(young.seq),
                None => {
                    if let Some(last) = oldest.last() {
                        below = below.max(last.seq + 1);
                        // Possibly more old entries past this page.
                        self.queue.note(user_id);
                    }
                }
            }
        }
        if below > self.store.inbox_floor(user_id).await? {
            while self
                .store
                .trim_inbox(user_id, below, RETENTION_TRIM_BATCH)
                .await?
                == RETENTION_TRIM_BATCH
            {}
        }
        Ok(below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::error::SyncdError;
    use crate::history::HistoryQuery;
    use crate::testkit::*;

    #[tokio::test]
    async fn retention_trims_inboxes_and_expired_checkpoints_are_told() {
        let config = EngineConfig {
            retention: Retention {
                max_entries: 10,
                ..Retention::default()
            },
            ..EngineConfig::default()
        };
        let fx = fixture().config(config).build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let early = engine
            .sync(&device(2, "early"), Some(0), 100)
            .await
            .unwrap()
            .checkpoint;
        for i in 0..30 {
            engine
                .send(device(1, "d"), message(conversation, &i.to_string(), None))
                .await
                .unwrap();
        }
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
}
