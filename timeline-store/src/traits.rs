//! The storage capabilities, one trait each, with the semantics every
//! backend must provide; the conformance suite checks them.
//!
//! This module must not depend on a particular database (no `scylla`, no
//! `fjall`): it names only the domain model and [`StoreError`].
//!
//! A new capability (read markers, dialogs, a search feed) is a new trait
//! here with its own contract and conformance checks, added to the bounds
//! of [`TimelineStore`], not a wider existing trait.

use crate::{
    Conversation, ConversationRange, Entry, EventCommit, IdempotencyKey, InboxRange, InboxTime,
    InboxWrite, LargeGroupMembership, ReadStateRow, ReadStateSnapshot, ReaderMark, Receipt,
    RecordedRevocation, Result, Revocation, RevokedBefore,
};
use async_trait::async_trait;

/// Every capability a Timeline node needs, for `Arc<dyn TimelineStore>`.
/// Implemented for any type that has them all; never implement it by hand.
pub trait TimelineStore:
    EventLog
    + InboxReads
    + InboxRetention
    + ConversationReads
    + ConversationScan
    + ConversationMembers
    + Checkpoints
    + Receipts
    + Revocations
    + ReadStates
    + ReadReceipts
    + 'static
{
}

impl<T> TimelineStore for T where
    T: EventLog
        + InboxReads
        + InboxRetention
        + ConversationReads
        + ConversationScan
        + ConversationMembers
        + Checkpoints
        + Receipts
        + Revocations
        + ReadStates
        + ReadReceipts
        + 'static
        + ?Sized
{
}

/// The write path: events, committed whole.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Stores one event atomically and durably: the conversation entry, the
    /// inbox copies (each `InboxWrite` becomes `entry` with `seq` set), the
    /// optional receipt, the optional conversation record and the
    /// large-group index changes. An existing key is overwritten with the
    /// same content (retries are idempotent). Every event has its own
    /// non-zero `entry.msg_id` (a backend may key its own record of an
    /// unfinished event by it).
    ///
    /// `Ok` means all of it is durable. `Err` means "not acknowledged": none
    /// of it, or (on a backend that cannot be atomic, or an I/O error after
    /// the write reached the disk) part or all of it, may be stored; the
    /// caller retries the same commit or relies on [`recover`](Self::recover).
    async fn commit_event(&self, commit: EventCommit) -> Result<()>;

    /// Finishes every event whose [`commit_event`](Self::commit_event) was
    /// interrupted (a crash, or an error after part of it was written), so
    /// that each event is either complete or absent. Call before serving.
    /// Returns how many events it finished; a backend may also count events
    /// that were complete but whose record was not removed yet (the
    /// ScyllaDB backend removes them in batches), applied again, which
    /// changes nothing.
    async fn recover(&self) -> Result<usize>;
}

/// A user's inbox: one copy per event the user receives, keyed by seq.
#[async_trait]
pub trait InboxReads: Send + Sync {
    /// The user's inbox entries in `range` (see [`InboxRange`]), ascending
    /// seq. Empty for an empty range. A read larger than a backend's
    /// internal page still returns everything asked for.
    async fn read_inbox(&self, user_id: u64, range: InboxRange) -> Result<Vec<Entry>>;

    /// The highest seq stored in the user's inbox, 0 when empty (trimmed
    /// entries no longer count).
    async fn last_inbox_seq(&self, user_id: u64) -> Result<u64>;
}

/// Retention: dropping old inbox entries behind a floor that only rises.
#[async_trait]
pub trait InboxRetention: Send + Sync {
    /// Deletes the user's inbox entries with `seq < below_seq` and durably
    /// raises the inbox floor to `below_seq` (never lowers it). Deletes at
    /// most `max_entries` per call; returns how many it deleted (call again
    /// while it returns `max_entries`). Conversation timelines are kept.
    async fn trim_inbox(&self, user_id: u64, below_seq: u64, max_entries: usize) -> Result<usize>;

    /// The inbox floor: entries below it may have been trimmed (0: none).
    async fn inbox_floor(&self, user_id: u64) -> Result<u64>;

    /// The seq and sending time of each inbox row in `range`, ascending,
    /// at most `range.limit`: what a retention policy needs, read without
    /// completing heavy copies from their conversation entries, so a page
    /// holds rows as stored (at most the inline payload and an edit
    /// history each) and `range.max_bytes` does not apply.
    async fn inbox_times(&self, user_id: u64, range: InboxRange) -> Result<Vec<InboxTime>>;
}

/// Conversation records, timelines and the large-group index.
#[async_trait]
pub trait ConversationReads: Send + Sync {
    /// The conversation record, or `None` if it does not exist.
    async fn conversation(&self, conversation_id: u64) -> Result<Option<Conversation>>;

    /// The conversation's entries in `range` (see [`ConversationRange`]),
    /// each with `seq == 0`. Empty for an unknown conversation or an empty
    /// range. Complete however large `range.limit` is.
    async fn read_conversation(
        &self,
        conversation_id: u64,
        range: ConversationRange,
    ) -> Result<Vec<Entry>>;

    /// Large (read-fanout) groups the user belongs to, ascending ids, as
    /// changed by the committed events' large-group index changes.
    async fn large_groups(&self, user_id: u64) -> Result<Vec<u64>> {
        Ok(self
            .large_group_memberships(user_id)
            .await?
            .into_iter()
            .filter(|m| m.left.is_none())
            .map(|m| m.conversation_id)
            .collect())
    }

    /// Every large group the user belongs or belonged to, ascending ids:
    /// an index change with `member` records the event's position for the
    /// user ([`EventCommit::position_of`]) as `joined` (and clears `left`);
    /// one without records it as `left` and keeps `joined`.
    async fn large_group_memberships(&self, user_id: u64) -> Result<Vec<LargeGroupMembership>>;

    /// Where the event at `conv_seq` was copied to, as its commit kept
    /// them ([`EventCommit::keep_copies`]): every inbox write, in commit
    /// order. Empty when the commit kept none (or there is no such event).
    async fn inbox_copies(&self, conversation_id: u64, conv_seq: u64) -> Result<Vec<InboxWrite>>;
}

/// Every conversation, a page at a time: for projections of the
/// timelines (the search index) that must find conversations they never
/// heard of (after a crash, or a dropped notice).
#[async_trait]
pub trait ConversationScan: Send + Sync {
    /// Up to `limit` ids of conversations that have a record, after `after`
    /// (`None`: from the start), in an order of the backend's choosing that
    /// is stable while paging: continue from the last id returned; a page
    /// shorter than `limit` ends the scan. A complete scan lists every
    /// conversation that existed when it began, once.
    async fn conversation_ids(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>>;
}

/// The member table of conversations whose records do not list their
/// members (large groups; see [`Conversation::lists_members`]): one row
/// per (conversation, user), written by the events that carry
/// [`EventCommit::members`] (a row with `member: false` ends a
/// membership), so a group of any size is changed a call's worth at a
/// time and read a page at a time.
#[async_trait]
pub trait ConversationMembers: Send + Sync {
    /// Those of `users` (ascending, no duplicates, at most a call's worth)
    /// who are members by the member table, ascending: point lookups.
    async fn members_among(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<u64>>;

    /// Members with ids above `after` (0: from the start), ascending, at
    /// most `limit`; a reply shorter than `limit` is the end. A member
    /// present from the first call to the last is listed exactly once by
    /// a walk that continues from the last id returned, however members
    /// join and leave meanwhile.
    async fn list_members(
        &self,
        conversation_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>>;
}

/// Per-device sync positions.
#[async_trait]
pub trait Checkpoints: Send + Sync {
    /// Raises the device's checkpoint to `seq` (never lowers it) durably and
    /// returns the stored value (the higher of the two). Concurrent calls
    /// for one device leave the highest value stored.
    async fn save_checkpoint(&self, user_id: u64, device_id: &str, seq: u64) -> Result<u64>;

    /// The device's checkpoint, 0 when never saved.
    async fn checkpoint(&self, user_id: u64, device_id: &str) -> Result<u64>;
}

/// Idempotency receipts, written by [`EventLog::commit_event`].
///
/// A receipt is kept for [`crate::RECEIPT_RETENTION`] after it is written,
/// then forgotten: a retry later than that is a new send, and may store the
/// message a second time.
#[async_trait]
pub trait Receipts: Send + Sync {
    /// The receipt stored with an earlier send under exactly this key
    /// (principal and client id), or `None`. A receipt exists only once the
    /// event it answers for is complete; `None` once it is older than the
    /// retention window, whether or not it was deleted yet.
    async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>>;

    /// Deletes receipts older than the retention window; returns how many.
    /// Call it periodically. Stores whose rows expire by themselves (a CQL
    /// TTL) keep this default, which does nothing.
    async fn expire_receipts(&self) -> Result<usize> {
        Ok(0)
    }
}

/// Token revocations: cutoffs that only rise, and a feed of recent ones so
/// that every node sharing the store learns them.
#[async_trait]
pub trait Revocations: Send + Sync {
    /// Raises the cutoff of the revocation's device (of the whole user when
    /// `device_id` is `None`) to `before_s`, durably, never lowering it, and
    /// lists it in the feed at `recorded_at_ms`. Returns the stored cutoff
    /// (the higher of the two). Retrying is harmless.
    async fn revoke(&self, revocation: &Revocation, recorded_at_ms: u64) -> Result<u64>;

    /// The cutoffs that apply to `device_id`'s tokens: the user's and the
    /// device's own (0 for none). A `revoke` that returned `Ok` is seen.
    async fn revoked_before(&self, user_id: u64, device_id: &str) -> Result<RevokedBefore>;

    /// The feed: revocations recorded at `since_ms` or later, by ascending
    /// `recorded_at_ms`, at most `limit` (continue from the last one's
    /// time). Entries older than [`crate::REVOCATION_FEED_RETENTION`] may be
    /// gone; a revocation recorded again appears again.
    async fn revocations_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<RecordedRevocation>>;
}

/// Each user's read state, folded from their inbox by the caller (see
/// [`crate::ReadStateSnapshot`]). One writer per user at a time (the node
/// that folds it); a save is atomic for the user.
#[async_trait]
pub trait ReadStates: Send + Sync {
    /// Every row of the user and the seq they were folded through (an
    /// empty snapshot at seq 0 for a user never saved).
    async fn read_states(&self, user_id: u64) -> Result<ReadStateSnapshot>;

    /// Stores `rows` (replacing the rows of the same conversations; others
    /// stay) and `applied_seq`, atomically. A save whose `applied_seq` is
    /// below the stored one changes nothing (a late save of an older fold).
    async fn save_read_states(
        &self,
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    ) -> Result<()>;
}

/// Per conversation, how far each member has read (raised by the events
/// that carry [`EventCommit::readers`], never lowered): read receipts
/// answered by one read of the conversation, no fanout per read.
#[async_trait]
pub trait ReadReceipts: Send + Sync {
    /// The marks of those of `users` who have one in the conversation, by
    /// user id ascending: point lookups, so a caller asking about a page
    /// of members never reads the rows of everyone else (a huge group has
    /// 100,000 of them, and former members keep theirs).
    async fn reader_marks(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<ReaderMark>>;
}
