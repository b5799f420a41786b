//! timeline-store: where Timeline keeps conversations, inboxes, idempotency
//! receipts and device checkpoints.
//!
//! [`TimelineStore`] is the one storage trait; every backend implements it and
//! must pass [`conformance::run_all`]. The trait module knows nothing about a
//! particular database: [`embedded`] (fjall, the default) and [`scylla`]
//! (ScyllaDB or any CQL server) live behind it.
//!
//! # Data model
//! - **Conversation record**: id, kind, title, members (the current set).
//! - **Conversation timeline**: entries keyed by `(conversation_id, conv_seq)`.
//! - **Inbox**: entries keyed by `(user_id, seq)`, a full copy of the
//!   conversation entry per member (write fanout: one range read per sync).
//! - **Receipts**: `(principal, client_msg_id) -> result of the first send`.
//! - **Checkpoints**: `(user_id, device_id) -> seq`, never lowered.
//! - **Inbox floors**: `user_id -> seq` below which entries were trimmed
//!   (retention), never lowered.
//! - **Large-group index**: `(user_id, conversation_id)` for every large
//!   (read-fanout) group a user belongs to; such groups get no inbox copies.
//!
//! # Invariants
//! - [`TimelineStore::commit_event`] is atomic and durable when it returns
//!   `Ok`: the conversation entry, every inbox copy, the receipt and the
//!   conversation record change are all stored, or (on `Err`) possibly none.
//!   Callers treat an `Err` as "not acknowledged"; backends that cannot be
//!   atomic document how a retry converges.
//! - Reads return entries in increasing key order. Visibility of entries that
//!   are still being written is the caller's concern (syncd's sync horizon);
//!   the store itself may expose a committed-but-not-yet-durable entry.

pub mod conformance;
pub mod embedded;
mod model;
pub mod scylla;

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
pub use model::*;
pub use scylla::{ScyllaConfig, ScyllaTimelineStore};

use async_trait::async_trait;

/// Errors by kind, so callers can choose between retrying and giving up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Disk or network I/O failed; the operation may or may not have applied.
    #[error("storage i/o failed: {0}")]
    Io(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The backend is overloaded, shutting down or poisoned by an earlier
    /// durability failure.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request exceeds a named limit of the store.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage contract. Methods are documented with the semantics every
/// backend must provide; the conformance suite checks them.
#[async_trait]
pub trait TimelineStore: Send + Sync + 'static {
    /// Stores one event atomically and durably: the conversation entry, the
    /// inbox copies (each `InboxWrite` becomes `entry` with `seq` set), the
    /// optional receipt and the optional conversation record. An existing
    /// key is overwritten with the same content (retries are idempotent).
    async fn commit_event(&self, commit: EventCommit) -> Result<()>;

    /// The conversation record, or `None` if it does not exist.
    async fn conversation(&self, conversation_id: u64) -> Result<Option<Conversation>>;

    /// The receipt stored with an earlier send under this key.
    async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>>;

    /// Inbox entries with `after_seq < seq <= through_seq`, ascending, at
    /// most `limit`.
    async fn read_inbox(
        &self,
        user_id: u64,
        after_seq: u64,
        through_seq: u64,
        limit: usize,
    ) -> Result<Vec<Entry>>;

    /// Deletes the user's inbox entries with `seq < below_seq` and durably
    /// raises the inbox floor to `below_seq` (never lowers it). Deletes at
    /// most `max_entries` per call; returns how many it deleted (call again
    /// while it returns `max_entries`).
    async fn trim_inbox(&self, user_id: u64, below_seq: u64, max_entries: usize) -> Result<usize>;

    /// The inbox floor: entries below it may have been trimmed (0: none).
    async fn inbox_floor(&self, user_id: u64) -> Result<u64>;

    /// Large (read-fanout) groups the user belongs to, ascending ids.
    async fn large_groups(&self, user_id: u64) -> Result<Vec<u64>>;

    /// The highest seq in the user's inbox, 0 when empty.
    async fn last_inbox_seq(&self, user_id: u64) -> Result<u64>;

    /// Conversation entries with `after < conv_seq < before`, at most
    /// `limit`, newest first when `newest_first` (for paging backwards),
    /// oldest first otherwise.
    async fn read_conversation(
        &self,
        conversation_id: u64,
        after: u64,
        before: u64,
        newest_first: bool,
        limit: usize,
    ) -> Result<Vec<Entry>>;

    /// Raises the device's checkpoint to `seq` (never lowers it) durably and
    /// returns the stored value.
    async fn save_checkpoint(&self, user_id: u64, device_id: &str, seq: u64) -> Result<u64>;

    /// The device's checkpoint, 0 when never saved.
    async fn checkpoint(&self, user_id: u64, device_id: &str) -> Result<u64>;

    /// Finishes every event whose [`commit_event`](Self::commit_event) was
    /// interrupted (a crash, or an error after part of it was written), so
    /// that each event is either complete or absent. Call before serving.
    /// Returns how many events it finished.
    async fn recover(&self) -> Result<usize>;
}

impl StoreError {
    /// Whether retrying the same operation can succeed (I/O trouble, an
    /// overloaded or unreachable backend), as opposed to a request that will
    /// fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Unavailable(_))
    }
}
