//! The event writer: every event (message, creation, membership change)
//! goes through [`EventWriter::commit`], which
//! 1. reserves the horizon for the conversation and every recipient's inbox
//!    (before allocating: see [`crate::horizon`] for why the order matters),
//! 2. allocates `conv_seq` and one inbox seq per recipient under the
//!    conversation's allocation lock, so a lower `conv_seq` gets the lower
//!    inbox seq in every inbox,
//! 3. commits the event durably (one atomic store call),
//! 4. announces it through the one observer path ([`crate::observer`]).
//!
//! If the store fails in a way that may have written part of the event, the
//! event is finished in the background with the same seqs, holding the
//! caller's locks and the horizon reservation until it lands: a retry of the
//! same send then finds the receipt instead of writing the message again,
//! and no device can sync past the unfinished seqs. A crash meanwhile leaves
//! the store's own record of the event, which `recover` finishes at start.

use crate::error::{Result, SyncdError};
use crate::event::{Event, now_ms};
use crate::horizon::{Assignment, Horizon, Key, Scope};
use crate::keyed::KeyedLocks;
use crate::lifecycle::{Lifecycle, stopped};
use crate::observer::Observers;
use seqsvc::client::SeqSource;
use seqsvc::{MsgIdGenerator, Namespace};
use std::sync::Arc;
use std::time::Duration;
use timeline_store::{EventCommit, InboxWrite, Receipt, TimelineStore};

/// Locks a caller holds for an event, kept until the event is complete.
pub type Held = Vec<Box<dyn Send + Sync>>;

/// Longest wait between attempts to finish a failed event.
const MAX_FINISH_RETRY_DELAY: Duration = Duration::from_secs(5);

pub struct EventWriter {
    store: Arc<dyn TimelineStore>,
    seqs: SeqSource,
    ids: MsgIdGenerator,
    horizon: Arc<Horizon>,
    /// Held while one event of a conversation allocates its seqs.
    allocation_locks: Arc<KeyedLocks<u64>>,
    observers: Observers,
    lifecycle: Arc<Lifecycle>,
}

impl EventWriter {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        seqs: SeqSource,
        ids: MsgIdGenerator,
        horizon: Arc<Horizon>,
        observers: Observers,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            store,
            seqs,
            ids,
            horizon,
            allocation_locks: Arc::default(),
            observers,
            lifecycle,
        }
    }

    /// Allocates and durably writes one event, then announces it. `held`
    /// are the caller's locks (idempotency key, membership).
    pub async fn commit(&self, event: Event, held: Held) -> Result<Receipt> {
        let Event {
            mut entry,
            fanout,
            receipt_key,
            fingerprint,
            record,
        } = event;
        let conversation_id = entry.conversation_id;
        let recipients = fanout.recipients;
        let mut keys = Vec::with_capacity(recipients.len() + 1);
        keys.push((Scope::Conversation, conversation_id));
        keys.extend(recipients.iter().map(|&user| (Scope::Inbox, user)));
        self.prime(&keys).await?;
        let reservation = self.horizon.reserve(keys);
        let (conv_seq, inbox_seqs) = {
            // Allocation is short; writes run outside this lock.
            let _in_order = self.allocation_locks.write(conversation_id).await;
            let conv_seq = self
                .seqs
                .next(Namespace::Conversation, conversation_id)
                .await?;
            let inbox_seqs = self.seqs.next_batch(Namespace::Inbox, &recipients).await?;
            (conv_seq, inbox_seqs)
        };
        let msg_id = self.ids.next_id().await?;
        let mut seqs = Vec::with_capacity(inbox_seqs.len() + 1);
        seqs.push(conv_seq);
        seqs.extend_from_slice(&inbox_seqs);
        let assignment = reservation.assign(seqs);

        entry.conv_seq = conv_seq;
        entry.msg_id = msg_id;
        // The wall clock, not the id's timestamp: after a restart the id
        // clock can run ahead of real time for up to RESERVE_AHEAD_MS.
        entry.sent_at_ms = now_ms();
        let receipt = Receipt {
            conversation_id,
            conv_seq,
            msg_id,
            sent_at_ms: entry.sent_at_ms,
            fingerprint,
        };
        let inbox = recipients
            .iter()
            .zip(inbox_seqs)
            .map(|(&user_id, seq)| InboxWrite { user_id, seq })
            .collect();
        let commit = EventCommit {
            entry,
            inbox,
            receipt: receipt_key.map(|key| (key, receipt.clone())),
            conversation: record,
            large_group_index: fanout.index,
        };
        match self.store.commit_event(commit.clone()).await {
            Ok(()) => {
                self.observers.announce(&commit, assignment);
                Ok(receipt)
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, conversation_id, msg_id, "event failed; finishing it in the background");
                self.finish_in_background(commit, assignment, held);
                Err(SyncdError::Unavailable(format!(
                    "{error}; the message will be stored, retry with the same client_msg_id"
                )))
            }
            // Refused before anything was written: the seqs become gaps.
            Err(error) => Err(error.into()),
        }
    }

    /// Tells the horizon the allocator's current seq of every key it has
    /// not seen in this run (after a restart, every key), so that the
    /// reservation's floor is that seq rather than 0: a floor of 0 would
    /// make the whole timeline unreadable (Sync empty, Ack refused) while
    /// the allocation is slow, as the first one after a restart is.
    async fn prime(&self, keys: &[Key]) -> Result<()> {
        let unprimed = self.horizon.unprimed(keys);
        for scope in [Scope::Conversation, Scope::Inbox] {
            let ids: Vec<u64> = unprimed
                .iter()
                .filter(|(s, _)| *s == scope)
                .map(|&(_, id)| id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let namespace = match scope {
                Scope::Inbox => Namespace::Inbox,
                Scope::Conversation => Namespace::Conversation,
            };
            let current = self.seqs.current_batch(namespace, &ids).await?;
            for (id, seq) in ids.into_iter().zip(current) {
                self.horizon.prime((scope, id), seq);
            }
        }
        Ok(())
    }

    /// Retries an event until the store takes it (writes are idempotent
    /// upserts with the same seqs), then announces it like any other. On
    /// shutdown it stops retrying: the store's own record of the event is
    /// finished by `recover` at the next start, and the client, told
    /// UNAVAILABLE, retries with its client message id.
    fn finish_in_background(&self, commit: EventCommit, assignment: Assignment, held: Held) {
        let store = Arc::clone(&self.store);
        let observers = self.observers.clone();
        let mut stopping = self.lifecycle.stopping();
        self.lifecycle.spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stopping) => {
                        tracing::warn!(msg_id = commit.entry.msg_id, "shutting down with an unfinished event; recovery finishes it at the next start");
                        return;
                    }
                }
                match store.commit_event(commit.clone()).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, msg_id = commit.entry.msg_id, "still cannot finish event");
                        delay = (delay * 2).min(MAX_FINISH_RETRY_DELAY);
                    }
                }
            }
            observers.announce(&commit, assignment);
            tracing::info!(
                msg_id = commit.entry.msg_id,
                "event finished in the background"
            );
            drop(held);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SyncdError;
    use crate::horizon::Key;
    use crate::observer::{CommitObserver, Committed};
    use crate::testkit::*;
    use seqsvc::AllocatorConfig;
    use std::sync::Mutex;
    use uuid::Uuid;

    /// Records what every announcement carried.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, Vec<Key>)>>);

    impl CommitObserver for Recorder {
        fn committed(&self, event: &Committed<'_>) {
            let keys = event.visible.iter().map(|(key, _)| *key).collect();
            self.0
                .lock()
                .unwrap()
                .push((event.commit.entry.msg_id, keys));
        }
    }

    #[tokio::test]
    async fn events_finished_in_the_background_take_the_same_announce_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), false);
        let (seqs, ids) = allocator(AllocatorConfig::default()).await;
        let recorder = Arc::new(Recorder::default());
        let lifecycle = Arc::new(Lifecycle::default());
        let writer = EventWriter::new(
            store.clone(),
            seqs.into(),
            ids,
            Horizon::new(),
            Observers::new(vec![recorder.clone()]),
            Arc::clone(&lifecycle),
        );
        let conversation = record(5, &[1, 2], false);
        let message =
            |text: &str| Event::message(&conversation, 1, Uuid::new_v4(), text.into(), None);
        let expected = vec![
            (Scope::Conversation, 5),
            (Scope::Inbox, 1),
            (Scope::Inbox, 2),
        ];

        let at_once = writer.commit(message("at once"), Vec::new()).await.unwrap();
        store.fail_next_commits(2);
        let failed = writer.commit(message("late"), Vec::new()).await;
        assert!(
            matches!(failed, Err(SyncdError::Unavailable(_))),
            "{failed:?}"
        );
        // The finisher is a tracked task: shutdown waits for it, and it
        // finishes before the store has refused twice more... or stops.
        for _ in 0..200 {
            if recorder.0.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = recorder.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "both events announced: {seen:?}");
        assert_eq!(seen[0], (at_once.msg_id, expected.clone()));
        assert_eq!(
            seen[1].1, expected,
            "the background path announces the same keys"
        );
        lifecycle.wait_for_tasks().await;
    }

    #[tokio::test]
    async fn a_failed_event_is_finished_in_the_background_and_a_retry_sees_it_once() {
        let fx = fixture().build().await;
        let (engine, flaky) = (Arc::clone(&fx.engine), Arc::clone(&fx.store));
        let conversation = group(&engine, 1, vec![2]).await;
        flaky.fail_next_commits(3);
        let id = Uuid::new_v4();
        let first = engine
            .send(device(1, "phone"), message(conversation, "late", Some(id)))
            .await;
        assert!(
            matches!(first, Err(SyncdError::Unavailable(_))),
            "{first:?}"
        );
        // The retry waits for the background attempt, then gets its receipt.
        let retry = engine
            .send(device(1, "phone"), message(conversation, "late", Some(id)))
            .await
            .unwrap();
        assert!(
            retry.duplicate,
            "the retry must not write the message again"
        );
        let inbox = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        let copies: Vec<_> = inbox.entries.iter().filter(|e| e.text == "late").collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].msg_id, retry.receipt.msg_id);
    }
}
