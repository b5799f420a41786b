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
use crate::limits::{
    COMMIT_BUDGET_SHARES_PER_USER, COMMIT_BYTES_PER_COPY, MAX_BACKGROUND_FINISHERS,
    MAX_EVENT_COMMIT_BYTES,
};
use crate::observer::Observers;
use crate::shares::{Share, Shares};
use seqsvc::client::SeqSource;
use seqsvc::{MsgIdGenerator, Namespace};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timeline_store::{EntryKind, EventCommit, InboxWrite, Receipt, StoreError, TimelineStore};
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
    _bytes: CommitBytes,
}

/// An event's bytes in the node's commit budget and in its user's share.
struct CommitBytes {
    _node: OwnedSemaphorePermit,
    _user: Option<Share<u64>>,
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
    /// Each user's share of it (the sender's, or the reader's for marks).
    user_bytes: Arc<Shares<u64>>,
    /// One permit per event finished in the background.
    finishers: Arc<Semaphore>,
    /// Unfinished events of a failed node, kept until it exits.
    parked: Arc<Mutex<Vec<Unfinished>>>,
    /// The last allocator error of a call that has not been followed by a
    /// successful one, and when it came (health reports it).
    allocator_error: Mutex<Option<(String, tokio::time::Instant)>>,
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
            user_bytes: Shares::new(budget_bytes / COMMIT_BUDGET_SHARES_PER_USER),
            finishers: Arc::new(Semaphore::new(MAX_BACKGROUND_FINISHERS)),
            parked: Arc::default(),
            allocator_error: Mutex::default(),
        }
    }

    /// Events the store failed that are still being retried: while there
    /// are any, the store is failing writes.
    pub fn unfinished_events(&self) -> usize {
        MAX_BACKGROUND_FINISHERS - self.finishers.available_permits()
    }

    /// The allocator's last failure and when it came, if no call has
    /// succeeded since.
    pub fn allocator_error(&self) -> Option<(String, tokio::time::Instant)> {
        lock(&self.allocator_error).clone()
    }

    /// Records how an allocator call went, for health: a retryable error
    /// means the allocator cannot serve now; a success that it can again.
    /// Refusals of the request itself (bad ids) say nothing about it.
    pub fn note_allocation<T>(
        &self,
        result: std::result::Result<T, seqsvc::SeqError>,
    ) -> std::result::Result<T, seqsvc::SeqError> {
        match &result {
            Ok(_) => {
                let mut error = lock(&self.allocator_error);
                if error.is_some() {
                    *error = None;
                }
            }
            Err(e) if e.is_retryable() => {
                *lock(&self.allocator_error) = Some((e.to_string(), tokio::time::Instant::now()));
            }
            Err(_) => {}
        }
        result
    }

    /// Allocates and durably writes one event, then announces it. `held`
    /// are the caller's locks (idempotency key, membership).
    pub async fn commit(&self, event: Event, held: Held) -> Result<Receipt> {
        self.admit()?;
        let sender = Some(event.entry.sender_id).filter(|&id| id != 0);
        let bytes = self.take_budget(sender, cost_of(&event)).await?;
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
            member_rows,
            amendment,
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
            let conv_seq = self.note_allocation(
                self.seqs
                    .next(Namespace::Conversation, conversation_id)
                    .await,
            )?;
            let inbox_seqs =
                self.note_allocation(self.seqs.next_batch(Namespace::Inbox, &recipients).await)?;
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
        let readers = Event::reader_marks(&entry);
        let rewrites = amendment.map_or_else(Vec::new, |amendment| {
            amendment.rewrites(conv_seq, entry.sent_at_ms, &entry.text)
        });
        // A later recall rewrites every copy of a message and of its edits.
        let keep_copies =
            matches!(entry.kind, EntryKind::Message | EntryKind::Edit) && !recipients.is_empty();
        let commit = EventCommit {
            keep_copies,
            rewrites,
            entry,
            inbox,
            receipt: receipt_key.map(|key| (key, receipt.clone())),
            conversation: record,
            large_group_index: fanout.index,
            members: member_rows,
            readers,
        };
        self.land(commit, assignment, until_complete, bytes).await?;
        Ok(receipt)
    }

    /// One cheap read of the store (an inbox floor), at most `timeout`:
    /// whether the store answers reads at all (health).
    pub async fn probe_store(&self, timeout: Duration) -> std::result::Result<(), String> {
        match tokio::time::timeout(timeout, self.store.inbox_floor(0)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Refuses a new event while the node is failing or every background
    /// finisher is busy: one more failure could then not be finished.
    fn admit(&self) -> Result<()> {
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
        Ok(())
    }

    /// Commits an allocated event and announces it; on a store failure
    /// keeps what protects its promises (see the module doc).
    async fn land(
        &self,
        commit: EventCommit,
        assignment: Assignment,
        until_complete: Vec<Guard>,
        bytes: CommitBytes,
    ) -> Result<()> {
        let msg_id = commit.entry.msg_id;
        let conversation_id = commit.entry.conversation_id;
        let unfinished = |assignment| Unfinished {
            assignment,
            held: until_complete,
            _bytes: bytes,
        };
        self.observers.before_commit(&commit);
        match self.store.commit_event(commit.clone()).await {
            Ok(()) => {
                self.observers.announce(&commit, assignment);
                Ok(())
            }
            Err(error) if error.is_fatal() => {
                commit_failed("fatal");
                self.fail(&error, msg_id, unfinished(assignment));
                Err(error.into())
            }
            Err(error) if error.is_retryable() => {
                commit_failed("retryable");
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
                let kind = commit.entry.kind;
                self.finish_in_background(commit, unfinished(assignment), finisher);
                let retry = match kind {
                    EntryKind::ReadMarker => "the mark will be stored; marking again is harmless",
                    _ => "the event will be stored; retry with the same client id",
                };
                Err(SyncdError::Unavailable(format!("{error}; {retry}")))
            }
            // Fenced: a newer writer took over and finishes whatever intent
            // of this event was stored (a retry finds its receipt). A fenced
            // answer does not prove the intent absent (a timed-out attempt
            // may have landed before the seal), so its seqs are not gaps
            // this node may announce past: parked, they stay held back for
            // the rest of this engine, as in the background finisher.
            Err(error) if error.is_fenced() => {
                commit_failed("fenced");
                park(&self.parked, unfinished(assignment));
                Err(error.into())
            }
            // Refused before anything was written: the seqs become gaps.
            Err(error) => {
                commit_failed("refused");
                Err(error.into())
            }
        }
    }

    /// Takes the event's cost from `user`'s share of the commit budget
    /// (refused at once past it, UNAVAILABLE: one user's flood must not
    /// take every other user's room) and from the budget, waiting at most
    /// [`crate::limits::MAX_ADMISSION_WAIT`]; refuses an event whose cost
    /// exceeds [`MAX_EVENT_COMMIT_BYTES`].
    async fn take_budget(
        &self,
        user: Option<u64>,
        (copies, cost): (usize, usize),
    ) -> Result<CommitBytes> {
        if cost > MAX_EVENT_COMMIT_BYTES {
            return Err(SyncdError::InvalidArgument(format!(
                "an event with {copies} inbox copies is {cost} bytes to commit, at most \
                 {MAX_EVENT_COMMIT_BYTES}"
            )));
        }
        let user_share = match user {
            // UNAVAILABLE: it clears as soon as they are stored, and
            // clients retry it (with the same id) after a backoff.
            Some(user) => Some(self.user_bytes.take(user, cost).map_err(|held| {
                SyncdError::Unavailable(format!(
                    "user {user}'s events not yet stored hold {held} bytes, at most {} \
                     (a share of the node's commit budget); retry when they are stored",
                    self.budget_bytes / COMMIT_BUDGET_SHARES_PER_USER
                ))
            })?),
            None => None,
        };
        // An event larger than the whole budget waits for all of it.
        let permits = cost.clamp(1, self.budget_bytes) as u32;
        let acquire = Arc::clone(&self.budget).acquire_many_owned(permits);
        let node = within_admission_wait(acquire, || {
            "the commit memory budget is taken by other events; retry later".into()
        })
        .await?
        .map_err(|_| SyncdError::Internal("the commit budget was closed".into()))?;
        Ok(CommitBytes {
            _node: node,
            _user: user_share,
        })
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
            let current = self.note_allocation(self.seqs.current_batch(namespace, &ids).await)?;
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
        // Weak: a finisher must not keep the engine's lifecycle (and so its
        // `stopping` signal) alive. When the engine goes away without a
        // shutdown, its finishers stop too, instead of landing a write
        // after a new engine on the same store has answered a retry.
        let lifecycle = Arc::downgrade(&self.lifecycle);
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
                        if let Some(lifecycle) = lifecycle.upgrade() {
                            lifecycle.fail(error.to_string());
                        }
                        return;
                    }
                    Err(error) if error.is_fenced() => {
                        // A newer writer sealed the store: it finishes this
                        // event from its intent if the intent was stored.
                        tracing::warn!(%error, msg_id, "superseded; the new writer finishes the event");
                        park(&parked, unfinished);
                        return;
                    }
                    Err(error) => {
                        metrics::counter!("syncd_background_finish_retries_total").increment(1);
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

/// How many inbox copies an event writes and the bytes it takes from the
/// commit budget.
fn cost_of(event: &Event) -> (usize, usize) {
    let copies = event.fanout.recipients.len();
    // The conversation entry holds the payload once; an inbox copy holds it
    // too only when it is light (heavy ones refer to it).
    let payload = timeline_store::payload_bytes(&event.entry);
    let per_copy = COMMIT_BYTES_PER_COPY + timeline_store::inbox_copy_payload_bytes(&event.entry);
    let members = event.record.as_ref().map_or(0, |r| r.members.len()) + event.member_rows.len();
    let (rewritten_copies, rewritten_bytes) = event
        .amendment
        .as_ref()
        .map_or((0, 0), |amendment| amendment.cost());
    let cost = per_copy
        .saturating_mul(copies)
        .saturating_add(payload)
        .saturating_add(members * 8)
        .saturating_add(rewritten_bytes);
    (copies + rewritten_copies, cost)
}

/// Counts a failed commit by what follows: the node stops (`fatal`), the
/// event is finished in the background (`retryable`), or nothing was
/// written (`refused`).
fn commit_failed(kind: &'static str) {
    metrics::counter!("syncd_commit_failures_total", "kind" => kind).increment(1);
}

fn park(parked: &Mutex<Vec<Unfinished>>, unfinished: Unfinished) {
    // A std mutex: pushed to, never held across an await.
    lock(parked).push(unfinished);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

mod marker;
pub use marker::MarkOutcome;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bounds;
