//! timeline-store: where Timeline keeps conversations, inboxes, idempotency
//! receipts and device checkpoints.
//!
//! The store is a set of capability traits, each with its own documented
//! contract; [`TimelineStore`] is every one of them at once, the type a node
//! holds (`Arc<dyn TimelineStore>`). Every backend implements all of them
//! and must pass the conformance suite. The trait module knows nothing
//! about a particular database: [`embedded`] (fjall, the default) and
//! [`scylla`] (ScyllaDB or any CQL server) live behind it.
//!
//! # Capabilities
//! | trait | methods | contract in one line |
//! |---|---|---|
//! | [`EventLog`] | `commit_event`, `recover` | an event is stored whole and durably, or finished by `recover` |
//! | [`InboxReads`] | `read_inbox`, `last_inbox_seq` | ascending seq ranges, complete up to `limit` |
//! | [`InboxRetention`] | `trim_inbox`, `inbox_floor` | deletes below a floor that never goes back |
//! | [`ConversationReads`] | `conversation`, `read_conversation`, `large_groups` | records, timelines both ways, the large-group index |
//! | [`ConversationMembers`] | `members_among`, `list_members` | a large group's member table: point lookups and pages after a cursor |
//! | [`ConversationScan`] | `conversation_ids` | every conversation once, a page at a time (for projections such as the search index) |
//! | [`Checkpoints`] | `save_checkpoint`, `checkpoint` | per device, never lowered |
//! | [`Receipts`] | `receipt` | the first send's result, per principal and client id |
//! | [`Revocations`] | `revoke`, `revoked_before`, `revocations_since` | token cutoffs per device and per user that only rise, and a feed of recent ones for other nodes |
//! | [`ReadStates`] | `read_states`, `save_read_states` | a user's folded read state, saved atomically, never behind |
//!
//! A new capability is a new trait with its own conformance checks, added
//! to [`TimelineStore`]'s bounds.
//!
//! # Data model
//! - **Conversation record**: id, kind, title, member count, and the
//!   members when it lists them (not a large group's).
//! - **Member table**: `(conversation_id, user_id)` for every member of a
//!   large group, written by its membership events a call at a time.
//! - **Conversation timeline**: entries keyed by `(conversation_id, conv_seq)`.
//! - **Inbox**: entries keyed by `(user_id, seq)`, a full copy of the
//!   conversation entry per member (write fanout: one range read per sync).
//! - **Receipts**: `(principal, client_msg_id) -> result of the first send`.
//! - **Checkpoints**: `(user_id, device_id) -> seq`, never lowered.
//! - **Inbox floors**: `user_id -> seq` below which entries were trimmed
//!   (retention), never lowered.
//! - **Revocations**: `(user_id, device_id or every device) -> unix
//!   seconds` before which tokens are refused, never lowered, plus a feed of
//!   the recent ones (kept [`REVOCATION_FEED_RETENTION`]) that other nodes
//!   poll.
//! - **Read states**: `(user_id, conversation_id) -> ReadStateRow`, plus
//!   the inbox seq they were folded through (per user, never lowered).
//!   A read marker is an inbox-only entry: it never enters the
//!   conversation timeline.
//! - **Large-group index**: `(user_id, conversation_id)` for every large
//!   (read-fanout) group a user belongs to; such groups get no inbox copies.
//!
//! The domain types ([`Entry`], [`EntryKind`], [`Conversation`], ...) are
//! plain Rust; `codec` alone maps them to the stored records (prost, with
//! fixed tags and codes), so both backends store the same bytes and an
//! unknown stored code is [`StoreError::Corrupt`], not a guess.
//!
//! # Invariants
//! - [`EventLog::commit_event`] is atomic and durable when it returns `Ok`:
//!   the conversation entry, every inbox copy, the receipt and the
//!   conversation record change are all stored, or (on `Err`) possibly
//!   none. Callers treat an `Err` as "not acknowledged"; backends that
//!   cannot be atomic document how a retry converges.
//! - Reads return entries in key order. Visibility of entries that are
//!   still being written is the caller's concern (syncd's sync horizon);
//!   the store itself may expose a committed-but-not-yet-durable entry.
//! - Checkpoints and inbox floors only rise.
//!
//! # Layout
//! - `traits`: the capability traits and [`TimelineStore`].
//! - `model`: the domain values and the read ranges ([`InboxRange`],
//!   [`ConversationRange`]) that name what a positional call would hide.
//! - `revocation`: the token revocation values.
//! - `codec`: domain values <-> stored records.
//! - `error`: [`StoreError`], by kind, and whether a retry can help.
//! - [`embedded`]: fjall, one writer thread, group commit.
//! - [`scylla`]: CQL, bucketed partitions, intents for multi-row events.
//! - `testsuite` (feature `testsuite`, off by default): the conformance
//!   suite, an in-memory store and a fault-injecting wrapper for tests of
//!   code built on the store. Nothing in it ships in a release build.

mod codec;

/// How long an idempotency receipt is kept after it is written: far longer
/// than any client retries a send (a device that was offline for a week
/// retries with a new id or shows the failure), short enough that receipts
/// do not grow with every message ever sent. A retry after the window may
/// create a duplicate message.
pub const RECEIPT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
pub mod embedded;
mod error;
mod model;
mod read_state;
mod revocation;
pub mod scylla;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;
mod traits;

pub use codec::{INBOX_INLINE_PAYLOAD_BYTES, inbox_copy_payload_bytes, payload_bytes};
pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
pub use error::{Result, StoreError};
pub use model::*;
pub use read_state::*;
pub use revocation::*;
pub use scylla::{ScyllaConfig, ScyllaTimelineStore};
pub use traits::*;

/// The `# HELP` lines of this crate's metrics; a binary that installs a
/// recorder calls it once.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_histogram!(
        "timeline_store_group_commit_batches",
        "Events applied per group commit of the embedded store (one fsync each)."
    );
    describe_histogram!(
        "timeline_store_fsync_duration_seconds",
        Unit::Seconds,
        "Fsync latency of the embedded store's group commit."
    );
    describe_histogram!(
        "timeline_store_group_apply_duration_seconds",
        Unit::Seconds,
        "Journal append and memtable inserts of the embedded store's group commit, including write halts while memtables wait to be flushed."
    );
    describe_histogram!(
        "timeline_store_memtable_free_duration_seconds",
        Unit::Seconds,
        "Time the embedded store's reaper thread took to free one flushed memtable (off the storage engine's insert lock)."
    );
    describe_histogram!(
        "timeline_store_scylla_commit_duration_seconds",
        Unit::Seconds,
        "Time to commit one event on ScyllaDB."
    );
    describe_histogram!(
        "timeline_store_scylla_intent_batch_size",
        "Intents stored by one conditional batch (one Paxos round) of a cluster writer's intent partition."
    );
    describe_counter!(
        "timeline_store_errors_total",
        "Store failures, by backend and kind."
    );
}
