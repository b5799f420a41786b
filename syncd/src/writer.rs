//! The event writer: every event (message, creation, membership change)
//! goes through [`EventWriter::commit`], which
//! 1. takes the event's bytes from the commit budget (before anything is
//!    allocated: see [`crate::limits::MAX_INFLIGHT_COMMIT_BYTES`]),
//! 2. reserves the horizon for the conversation and every recipient's inbox
//!    (before allocating: see [`crate::horizon`] for why the order matters),
//! 3. allocates `conv_seq` and one inbox seq per recipient under the
//!    conversation's allocation lock, so a lower `conv_seq` gets the lower
//!    inbox seq in every inbox,
//! 4. commits the event durably (one atomic store call),
//! 5. announces it through the one observer path ([`crate::observer`]).
//!
//! # An event the store failed
//! If the store fails in a way that may have written part of the event, the
//! event is finished in the background with the same seqs. What it keeps
//! until it lands is exactly what protects a promise:
//! - the idempotency key lock (exactly once: a retry of the same send then
//!   finds the receipt instead of writing the message again; a retry that
//!   comes meanwhile answers UNAVAILABLE after a bounded wait),
//! - the horizon assignment (never skip: no device syncs past the
//!   unfinished seqs),
//! - its commit bytes (they are still in memory),
//! - for a membership change, the exclusive membership lock: until the new
//!   record is announced, a send would still read the old members.
//!
//! A send's shared membership lock is released once its seqs are allocated
//! ([`Held::until_allocated`]), also on this path: its recipients are
//! decided and its `conv_seq` is taken, so a membership change after it gets
//! a later `conv_seq`, and a member removed by that change was a member when
//! the message was sent. Holding it would let one stuck send block the
//! membership change waiting behind it, and with it every later send of
//! the conversation. The caller's send slot is released when it is answered.
//!
//! Finishers are bounded ([`MAX_BACKGROUND_FINISHERS`]); while all are busy
//! new events are refused before they allocate. A crash meanwhile leaves the
//! store's own record of the event, which `recover` finishes at start.
//!
//! # A fatal store error
//! A poisoned store ([`StoreError::is_fatal`]) can take no write for the
//! rest of the process, so no finisher is spawned for it: the node fails
//! ([`Lifecycle::fail`]: refuses work, reports NOT_SERVING and exits) and a
//! restart recovers from the journal. The unfinished event's assignment and
//! locks are parked until then, because whether it is durable is unknown:
//! no device may read past it, and no retry may write it again.

use crate::error::{Result, SyncdError};
use crate::event::{Event, now_ms};
use crate::horizon::{Assignment, Horizon, Key, Scope};
use crate::keyed::KeyedLocks;
use crate::lifecycle::{Lifecycle, stopped, within_admission_wait};
use crate::limits::{COMMIT_BYTES_PER_COPY, MAX_BACKGROUND_FINISHERS, MAX_EVENT_COMMIT_BYTES};
use crate::observer::Observers;
use seqsvc::client::SeqSource;
use seqsvc::{MsgIdGenerator, Namespace};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timeline_store::{EventCommit, InboxWrite, Receipt, StoreError, TimelineStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A lock or guard a caller hands to the writer.
pub type Guard = Box<dyn Send + Sync>;

/// The caller's locks for an event, by how long the event needs them.
#[derive(Default)]
pub struct Held {
    /// Released once the event's seqs are allocated (a send's shared
    /// membership lock: see the module doc).
    pub until_allocated: Vec<Guard>,
    /// Kept until the event is complete, in the background too (the
    /// idempotency key lock; a membership change's exclusive lock).
    pub until_complete: Vec<Guard>,
}

impl Held {
    pub fn until_complete(guards: Vec<Guard>) -> Self {
        Self {
            until_allocated: Vec::new(),
            until_complete: guards,
        }
    }
}

/// What an event that is not yet durable keeps until it is.
struct Unfinished {
    assignment: Assignment,
    held: Vec<Guard>,
    _bytes: OwnedSemaphorePermit,
}

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
    /// Bytes of events between admission and completion.
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    /// One permit per event finished in the background.
    finishers: Arc<Semaphore>,
    /// Unfinished events of a failed node, kept until it exits.
    parked: Arc<Mutex<Vec<Unfinished>>>,
}

impl EventWriter {
    /// `budget_bytes`: see [`crate::limits::MAX_INFLIGHT_COMMIT_BYTES`].
    pub fn new(
        store: Arc<dyn TimelineStore>,
        seqs: SeqSource,
        ids: MsgIdGenerator,
        horizon: Arc<Horizon>,
        observers: Observers,
        lifecycle: Arc<Lifecycle>,
        budget_bytes: usize,
    ) -> Self {
        // The semaphore counts in u32 permits.
        let budget_bytes = budget_bytes.clamp(1, u32::MAX as usize);
        Self {
            store,
            seqs,
            ids,
            horizon,
            allocation_locks: Arc::default(),
            observers,
            lifecycle,
            budget: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            finishers: Arc::new(Semaphore::new(MAX_BACKGROUND_FINISHERS)),
            parked: Arc::default(),
        }
    }

    /// Allocates and durably writes one event, then announces it. `held`
    /// are the caller's locks (idempotency key, membership).
    pub async fn commit(&self, event: Event, held: Held) -> Result<Receipt> {
        if let Some(reason) = self.lifecycle.failure() {
            return Err(SyncdError::Unavailable(format!(
                "the node is stopping: {reason}"
            )));
        }
        if self.finishers.available_permits() == 0 {
            return Err(SyncdError::Unavailable(format!(
                "{MAX_BACKGROUND_FINISHERS} events are still being finished in the background \
                 while the store fails; retry later"
            )));
        }
        let bytes = self.take_budget(&event).await?;
        let Held {
            until_allocated,
            until_complete,
        } = held;
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
        // The event's place among the conversation's events is fixed.
        drop(until_allocated);
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
        let unfinished = |assignment| Unfinished {
            assignment,
            held: until_complete,
            _bytes: bytes,
        };
        match self.store.commit_event(commit.clone()).await {
            Ok(()) => {
                self.observers.announce(&commit, assignment);
                Ok(receipt)
            }
            Err(error) if error.is_fatal() => {
                self.fail(&error, msg_id, unfinished(assignment));
                Err(error.into())
            }
            Err(error) if error.is_retryable() => {
                let Ok(finisher) = Arc::clone(&self.finishers).try_acquire_owned() else {
                    // Admitted while a slot was free, failed after the last
                    // one was taken: neither finishing it here nor giving it
                    // up keeps exactly-once and never-skip, so the node
                    // stops and recovery finishes it from the store's record.
                    let full = StoreError::Poisoned(format!(
                        "{error}; more events failed than {MAX_BACKGROUND_FINISHERS} background finishers take"
                    ));
                    self.fail(&full, msg_id, unfinished(assignment));
                    return Err(full.into());
                };
                tracing::warn!(%error, conversation_id, msg_id, "event failed; finishing it in the background");
                self.finish_in_background(commit, unfinished(assignment), finisher);
                Err(SyncdError::Unavailable(format!(
                    "{error}; the message will be stored, retry with the same client_msg_id"
                )))
            }
            // Refused before anything was written: the seqs become gaps.
            Err(error) => Err(error.into()),
        }
    }

    /// Takes the event's cost from the commit budget, waiting at most
    /// [`crate::limits::MAX_ADMISSION_WAIT`]; refuses an event whose cost
    /// exceeds [`MAX_EVENT_COMMIT_BYTES`].
    async fn take_budget(&self, event: &Event) -> Result<OwnedSemaphorePermit> {
        let copies = event.fanout.recipients.len() + 1;
        let text = event.entry.text.len();
        let members = event.record.as_ref().map_or(0, |r| r.members.len());
        let cost = (text + COMMIT_BYTES_PER_COPY)
            .saturating_mul(copies)
            .saturating_add(members * 8);
        if cost > MAX_EVENT_COMMIT_BYTES {
            let largest = (MAX_EVENT_COMMIT_BYTES / copies).saturating_sub(COMMIT_BYTES_PER_COPY);
            return Err(SyncdError::InvalidArgument(format!(
                "a {text} byte text to {} inbox copies is {cost} bytes of copies, at most \
                 {MAX_EVENT_COMMIT_BYTES}: this conversation takes texts of at most {largest} bytes",
                copies - 1
            )));
        }
        // An event larger than the whole budget waits for all of it.
        let permits = cost.clamp(1, self.budget_bytes) as u32;
        let acquire = Arc::clone(&self.budget).acquire_many_owned(permits);
        within_admission_wait(acquire, || {
            "the commit memory budget is taken by other events; retry later".into()
        })
        .await?
        .map_err(|_| SyncdError::Internal("the commit budget was closed".into()))
    }

    /// Stops the node for good on a fatal store error, keeping the event's
    /// assignment and locks until the process exits (see the module doc).
    fn fail(&self, error: &StoreError, msg_id: u64, unfinished: Unfinished) {
        tracing::error!(%error, msg_id, "the store cannot take writes any more");
        park(&self.parked, unfinished);
        self.lifecycle.fail(error.to_string());
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
    /// UNAVAILABLE, retries with its client message id. On a fatal error it
    /// stops too, and the node with it.
    fn finish_in_background(
        &self,
        commit: EventCommit,
        unfinished: Unfinished,
        finisher: OwnedSemaphorePermit,
    ) {
        let store = Arc::clone(&self.store);
        let observers = self.observers.clone();
        let lifecycle = Arc::clone(&self.lifecycle);
        let parked = Arc::clone(&self.parked);
        let mut stopping = self.lifecycle.stopping();
        self.lifecycle.spawn(async move {
            let _finisher = finisher;
            let msg_id = commit.entry.msg_id;
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stopped(&mut stopping) => {
                        tracing::warn!(msg_id, "shutting down with an unfinished event; recovery finishes it at the next start");
                        park(&parked, unfinished);
                        return;
                    }
                }
                match store.commit_event(commit.clone()).await {
                    Ok(()) => break,
                    Err(error) if error.is_fatal() => {
                        tracing::error!(%error, msg_id, "the store cannot take writes any more");
                        park(&parked, unfinished);
                        lifecycle.fail(error.to_string());
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, msg_id, "still cannot finish event");
                        delay = (delay * 2).min(MAX_FINISH_RETRY_DELAY);
                    }
                }
            }
            let Unfinished {
                assignment, held, ..
            } = unfinished;
            observers.announce(&commit, assignment);
            tracing::info!(msg_id, "event finished in the background");
            drop(held);
        });
    }
}

fn park(parked: &Mutex<Vec<Unfinished>>, unfinished: Unfinished) {
    // A std mutex: pushed to, never held across an await.
    parked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(unfinished);
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
            crate::limits::MAX_INFLIGHT_COMMIT_BYTES,
        );
        let conversation = record(5, &[1, 2], false);
        let message =
            |text: &str| Event::message(&conversation, 1, Uuid::new_v4(), text.into(), None);
        let expected = vec![
            (Scope::Conversation, 5),
            (Scope::Inbox, 1),
            (Scope::Inbox, 2),
        ];

        let at_once = writer
            .commit(message("at once"), Held::default())
            .await
            .unwrap();
        store.fail_next_commits(2);
        let failed = writer.commit(message("late"), Held::default()).await;
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

/// Nothing freezes or piles up while the store fails: events stuck in the
/// background hold only what they must (see the module doc), fatal store
/// errors stop the node, and commits in flight stay within a byte budget.
/// Every test runs on the in-memory store with a paused clock, so retries
/// and timeouts pass in virtual time.
#[cfg(test)]
mod bounds {
    use crate::auth::Principal;
    use crate::engine::{EngineConfig, MembershipChange};
    use crate::error::SyncdError;
    use crate::limits::MAX_BACKGROUND_FINISHERS;
    use crate::testkit::*;
    use std::sync::Arc;
    use std::time::Duration;
    use timeline_store::StoreError;
    use timeline_store::testsuite::Faults;
    use tokio::time::timeout;
    use uuid::Uuid;

    /// Far longer than any bounded wait: reaching it means a call hung.
    const HUNG: Duration = Duration::from_secs(300);

    fn service() -> Principal {
        Principal::Service {
            name: "backend".into(),
        }
    }

    /// Commits of messages with this text fail until the fault is cleared.
    fn stick(store: &MemoryTestStore, text: &'static str) {
        store.fail_commits_where(
            move |commit| commit.entry.text == text,
            || StoreError::Io("injected: the store times out".into()),
        );
    }

    fn poisoned() -> StoreError {
        StoreError::Poisoned("injected: an earlier fsync failed".into())
    }

    async fn texts_of(engine: &Arc<crate::engine::Engine>, user: u64) -> Vec<String> {
        let page = engine.sync(&device(user, "d"), Some(0), 100).await.unwrap();
        page.entries.iter().map(|e| e.text.clone()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_send_holds_up_neither_membership_changes_nor_later_sends() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        let conversation = group(&engine, 1, vec![2]).await;
        stick(&store, "stuck");
        let stuck = engine
            .send(
                device(1, "d"),
                message(conversation, "stuck", Some(Uuid::new_v4())),
            )
            .await;
        assert!(
            matches!(stuck, Err(SyncdError::Unavailable(_))),
            "{stuck:?}"
        );

        let change = engine.change_members(service(), conversation, vec![3], MembershipChange::Add);
        timeout(HUNG, change)
            .await
            .expect("the membership change waited for the stuck send")
            .unwrap();
        let later = engine.send(device(1, "d"), message(conversation, "later", None));
        timeout(HUNG, later)
            .await
            .expect("a later send waited for the membership change")
            .unwrap();

        store.clear_aimed_fault();
        let mut landed = false;
        for _ in 0..60 {
            if texts_of(&engine, 2).await.iter().any(|t| t == "stuck") {
                landed = true;
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(landed, "the stuck send lands once the store takes it");
        // Its recipients were fixed before the change: the new member gets
        // only what was sent after it joined.
        assert_eq!(
            texts_of(&engine, 2)
                .await
                .iter()
                .filter(|t| *t == "stuck")
                .count(),
            1
        );
        assert!(!texts_of(&engine, 3).await.iter().any(|t| t == "stuck"));
        assert!(texts_of(&engine, 3).await.iter().any(|t| t == "later"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_of_a_stuck_send_answers_unavailable_instead_of_waiting() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        let conversation = group(&engine, 1, vec![2]).await;
        stick(&store, "stuck");
        let id = Uuid::new_v4();
        let first = engine
            .send(device(1, "d"), message(conversation, "stuck", Some(id)))
            .await;
        assert!(
            matches!(first, Err(SyncdError::Unavailable(_))),
            "{first:?}"
        );
        let retry = engine.send(device(1, "d"), message(conversation, "stuck", Some(id)));
        let retry = timeout(HUNG, retry)
            .await
            .expect("the retry waited for the stuck send (holding a send slot)");
        assert!(
            matches!(retry, Err(SyncdError::Unavailable(_))),
            "{retry:?}"
        );

        store.clear_aimed_fault();
        let retry = engine.send(device(1, "d"), message(conversation, "stuck", Some(id)));
        let retry = timeout(HUNG, retry).await.unwrap().unwrap();
        assert!(retry.duplicate, "the background attempt stored it once");
        assert_eq!(
            texts_of(&engine, 2)
                .await
                .iter()
                .filter(|t| *t == "stuck")
                .count(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_poisoned_store_stops_the_node_and_spawns_nothing() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        let conversation = group(&engine, 1, vec![2]).await;
        store.fail_commits_where(|_| true, poisoned);
        for text in ["a", "b", "c"] {
            let sent = engine
                .send(device(1, "d"), message(conversation, text, None))
                .await;
            assert!(matches!(sent, Err(SyncdError::Unavailable(_))), "{sent:?}");
        }
        assert!(
            engine
                .failure()
                .is_some_and(|reason| reason.contains("poisoned")),
            "{:?}",
            engine.failure()
        );
        assert_eq!(
            store.counters().injected_failures,
            1,
            "after the first, no send reaches the store"
        );
        let refused = engine
            .change_members(service(), conversation, vec![3], MembershipChange::Add)
            .await;
        assert!(
            matches!(refused, Err(SyncdError::Unavailable(_))),
            "{refused:?}"
        );
        tokio::task::yield_now().await;
        assert_eq!(
            engine.running_tasks(),
            0,
            "no background retry of a write that cannot succeed in this process"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn background_finishers_are_bounded() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        let conversation = group(&engine, 1, vec![2]).await;
        store.fail_commits_where(
            |_| true,
            || StoreError::Io("injected: the store times out".into()),
        );
        let extra = 3;
        for i in 0..MAX_BACKGROUND_FINISHERS + extra {
            let sent = engine
                .send(device(1, "d"), message(conversation, &i.to_string(), None))
                .await;
            assert!(matches!(sent, Err(SyncdError::Unavailable(_))), "{sent:?}");
        }
        assert!(
            engine.running_tasks() <= MAX_BACKGROUND_FINISHERS,
            "{} tasks running",
            engine.running_tasks()
        );
        assert_eq!(
            store.counters().injected_failures as usize,
            MAX_BACKGROUND_FINISHERS,
            "once the finishers are full, new events do not reach the store"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inbox_copies_in_flight_stay_within_the_byte_budget() {
        let budget = 1024 * 1024;
        let config = EngineConfig {
            commit_budget_bytes: budget,
            ..EngineConfig::default()
        };
        let (engine, store) = memory_engine(config).await;
        let members: Vec<u64> = (2..=50).collect();
        let conversation = group(&engine, 1, members).await;
        store.set_faults(Faults {
            commit_delay: Duration::from_millis(50),
            ..Faults::default()
        });
        let text = "x".repeat(8 * 1024);
        let mut sends = tokio::task::JoinSet::new();
        for sender in 1..=32 {
            let (engine, text) = (Arc::clone(&engine), text.clone());
            sends.spawn(async move {
                engine
                    .send(device(sender, "d"), message(conversation, &text, None))
                    .await
            });
        }
        while let Some(sent) = sends.join_next().await {
            sent.unwrap().unwrap();
        }
        let peak = store.peak_inflight_copy_bytes();
        assert!(peak > 0);
        assert!(
            peak <= budget as u64,
            "{peak} bytes of inbox copies were in flight at once, budget {budget}"
        );
        assert_eq!(texts_of(&engine, 50).await.len(), 33, "every send landed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_text_to_a_large_write_fanout_group_is_refused() {
        let config = EngineConfig {
            large_group_threshold: 5_000,
            ..EngineConfig::default()
        };
        let (engine, _store) = memory_engine(config).await;
        let conversation = group(&engine, 1, (2..=1_000).collect()).await;
        let more = (1_001..=1_600).collect();
        engine
            .change_members(service(), conversation, more, MembershipChange::Add)
            .await
            .unwrap();
        let large = "x".repeat(64 * 1024);
        let refused = engine
            .send(device(1, "d"), message(conversation, &large, None))
            .await;
        assert!(
            matches!(&refused, Err(SyncdError::InvalidArgument(m)) if m.contains("at most")),
            "{:?}",
            refused.map(|_| ())
        );
        engine
            .send(device(1, "d"), message(conversation, "small", None))
            .await
            .unwrap();
    }
}
