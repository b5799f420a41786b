//! Read state: read markers, exact unread counts and the conversation list.
//!
//! # Where the numbers come from
//! Everything a count needs is in the user's own inbox, in seq order:
//! messages, the user's joins and leaves, and read markers (inbox events
//! of the user, written through the event writer like any other, so every
//! device learns them on the never-skip sync path). The server folds the
//! inbox ([`fold`]) into one row per conversation and keeps the rows with
//! the seq they cover; a device folding the same entries by the same rules
//! gets the same counts. A crash after an event and before its fold loses
//! nothing: the fold picks up from the saved seq.
//!
//! Large (read-fanout) groups write their messages to the conversation
//! timeline only, so their rows count up to the last marker or join, and
//! the rest is counted at read time from the timeline ([`count`]), up to
//! the newest readable message (or the removal, for a former member). A
//! large group's message is copied into the inbox of its sender and of the
//! members it names: the sender's copy moves their marker past it, in the
//! same commit; a named member's copy is their mention, never missed.
//!
//! # Bounds
//! Folds read the inbox a page at a time. A count reads at most
//! [`count::MAX_COUNTED_ENTRIES`] entries of a timeline per call (and
//! remembers large-group counts, so the next call reads only what is new).
//! A list page has at most [`MAX_LIST_LIMIT`] conversations.
//!
//! # Layout
//! - [`fold`]: the rules, pure.
//! - [`count`]: counting messages from others in a conversation range.
//! - `tail`: what is stored past the readable horizon, for the counts
//!   that bound deletes for me and memberships.
//! - this module: folding a user, the list, marks, the sync summary.

pub mod count;
pub mod fold;
mod list;
mod tail;

use crate::access;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::horizon::Scope;
use crate::keyed::KeyedLocks;
use crate::limits::{DEFAULT_RECEIPTS_LIMIT, MAX_RECEIPTS_LIMIT};
use crate::visibility::Visibility;
use crate::writer::EventWriter;
use count::{Count, messages_from_others};
use std::collections::BTreeMap;
use std::sync::Arc;
use timeline_store::{InboxRange, ReadStateRow, ReadStateSnapshot, TimelineStore};

pub use list::{
    ConversationState, ListPage, ListQuery, MAX_SUMMARY_CONVERSATIONS, ReadStateSummary,
};

/// Inbox entries one fold reads per store call.
const FOLD_PAGE: usize = 128;
/// A long fold saves after this many pages, so a crash repeats little.
const FOLD_PAGES_PER_SAVE: usize = 64;
/// Conversations per list page when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Most conversations per list page.
pub const MAX_LIST_LIMIT: usize = 500;
/// Large-group counts remembered, per (user, conversation).
const CACHED_COUNTS: u64 = 100_000;

/// The result of a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkResult {
    pub conversation_id: u64,
    pub read_through: u64,
    pub unread: u64,
    pub mentions: u64,
    /// The marker's inbox seq (0: the mark was at or below the current
    /// marker and changed nothing).
    pub seq: u64,
}

/// The other member of a direct conversation, who learns the marker as a
/// read receipt.
fn peer_of(conversation: &timeline_store::Conversation, user_id: u64) -> Option<u64> {
    match conversation.kind {
        timeline_store::ConversationKind::Direct => {
            conversation.members.iter().copied().find(|&m| m != user_id)
        }
        timeline_store::ConversationKind::Group => None,
    }
}

/// Which members a receipts call covers: those after `after_member`, at
/// most `limit` of them (0: [`DEFAULT_RECEIPTS_LIMIT`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiptsPage {
    pub after_member: u64,
    pub limit: usize,
}

/// Who of a page of members has read a message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReceipts {
    /// Current members of the page other than the sender who were members
    /// when it was sent.
    pub member_count: u64,
    /// Those of them whose marker is at or past the message, ascending.
    pub read_by: Vec<u64>,
    /// Where the next page starts (0: this page reached the last member).
    pub next_after_member: u64,
}

/// A large-group count already made: messages from others in
/// `(from, count.reached]`.
#[derive(Clone, Debug)]
struct CachedCount {
    /// Where the user's count starts (withdrawn messages above it are
    /// taken back).
    base: u64,
    from: u64,
    count: Count,
}

pub struct ReadState {
    store: Arc<dyn TimelineStore>,
    visibility: Arc<Visibility>,
    directory: Arc<Directory>,
    writer: Arc<EventWriter>,
    /// One fold per user at a time (two would save the same rows twice).
    folds: Arc<KeyedLocks<u64>>,
    counts: moka::sync::Cache<(u64, u64), CachedCount>,
    /// One mark per (user, conversation) at a time.
    marks: Arc<KeyedLocks<(u64, u64)>>,
    /// One delete-for-me per (user, conversation) at a time, from its
    /// count of hidden messages to its commit: concurrent ones would all
    /// pass the bound on the count.
    hides: Arc<KeyedLocks<(u64, u64)>>,
    /// The last marker each (user, conversation) raised here: a floor for
    /// the next mark until the fold has it.
    raised: moka::sync::Cache<(u64, u64), MarkResult>,
    /// Folded snapshots, so a fold reads only the new inbox entries.
    snapshots: moka::sync::Cache<u64, Arc<ReadStateSnapshot>>,
}

/// Bytes of folded snapshots kept in memory.
const CACHED_SNAPSHOT_BYTES: u64 = 64 << 20;

/// About what a snapshot takes in memory.
fn snapshot_bytes(snapshot: &ReadStateSnapshot) -> u32 {
    let bytes: usize = snapshot
        .rows
        .iter()
        .map(|row| {
            std::mem::size_of::<ReadStateRow>()
                + row.last_message.as_ref().map_or(0, |m| m.text.len())
                // Up to `MAX_HIDDEN_PER_CONVERSATION` seqs a row.
                + row.hidden.len() * std::mem::size_of::<u64>()
        })
        .sum();
    u32::try_from(bytes + 64).unwrap_or(u32::MAX)
}

/// Inbox entries past the readable horizon a delete-for-me count reads at
/// most ([`ReadState::hidden_count`]): the tail an event still in flight
/// holds back, usually empty.
pub const MAX_UNFOLDED_SCAN: usize = 1_000;

/// The same tail's bytes at most (entries as stored: a heavy copy without
/// its payload).
pub const MAX_UNFOLDED_SCAN_BYTES: usize = 1024 * 1024;

impl ReadState {
    /// Held by a delete-for-me of `user_id` in `conversation_id` while it
    /// counts what is hidden and commits.
    pub async fn one_hide(
        &self,
        user_id: u64,
        conversation_id: u64,
    ) -> crate::keyed::KeyGuard<(u64, u64)> {
        self.hides.write((user_id, conversation_id)).await
    }

    pub fn new(
        store: Arc<dyn TimelineStore>,
        visibility: Arc<Visibility>,
        directory: Arc<Directory>,
        writer: Arc<EventWriter>,
    ) -> Self {
        Self {
            store,
            visibility,
            directory,
            writer,
            folds: Arc::default(),
            counts: moka::sync::Cache::new(CACHED_COUNTS),
            marks: Arc::default(),
            hides: Arc::default(),
            raised: moka::sync::Cache::new(CACHED_COUNTS),
            snapshots: moka::sync::Cache::builder()
                .weigher(|_, snapshot: &Arc<ReadStateSnapshot>| snapshot_bytes(snapshot))
                .max_capacity(CACHED_SNAPSHOT_BYTES)
                .build(),
        }
    }

    /// The user's read state with every readable inbox entry folded in.
    /// Shared with the cache: a call that finds nothing new to fold copies
    /// no row (a user may have thousands); one that folds new entries
    /// copies the rows once.
    pub async fn fold(&self, user_id: u64) -> Result<Arc<ReadStateSnapshot>> {
        let _one_at_a_time = self.folds.write(user_id).await;
        let cached = self.snapshots.get(&user_id);
        let through = self
            .visibility
            .readable_through(Scope::Inbox, user_id)
            .await?;
        let stored = match cached {
            Some(snapshot) if snapshot.applied_seq >= through => return Ok(snapshot),
            // The cache still holds it: the rows are copied once, and the
            // snapshots callers hold stay as they were.
            Some(snapshot) => Arc::unwrap_or_clone(snapshot),
            None => self.store.read_states(user_id).await?,
        };
        if stored.applied_seq >= through {
            let snapshot = Arc::new(stored);
            self.snapshots.insert(user_id, Arc::clone(&snapshot));
            return Ok(snapshot);
        }
        let mut rows: BTreeMap<u64, ReadStateRow> = stored
            .rows
            .into_iter()
            .map(|row| (row.conversation_id, row))
            .collect();
        let mut changed = std::collections::BTreeSet::new();
        let mut after = stored.applied_seq;
        let floor = self.store.inbox_floor(user_id).await?;
        if after.saturating_add(1) < floor {
            // Retention folds before it trims; only a store trimmed by an
            // older version gets here, and its counts start over from what
            // is left.
            tracing::warn!(user_id, after, floor, "inbox trimmed before it was folded");
            after = floor - 1;
        }
        let mut pages = 0;
        loop {
            let range = InboxRange::new(after, through, FOLD_PAGE);
            let entries = self.store.read_inbox(user_id, range).await?;
            for entry in &entries {
                let row = rows.entry(entry.conversation_id).or_default();
                fold::apply(row, entry, user_id);
                changed.insert(entry.conversation_id);
            }
            match entries.last() {
                Some(last) if entries.len() == FOLD_PAGE => after = last.seq,
                _ => break,
            }
            pages += 1;
            if pages % FOLD_PAGES_PER_SAVE == 0 {
                let batch = changed.iter().map(|id| rows[id].clone()).collect();
                self.store.save_read_states(user_id, after, batch).await?;
                changed.clear();
            }
        }
        let batch = changed.iter().map(|id| rows[id].clone()).collect();
        self.store.save_read_states(user_id, through, batch).await?;
        let snapshot = ReadStateSnapshot {
            applied_seq: through,
            rows: rows.into_values().collect(),
        };
        let snapshot = Arc::new(snapshot);
        self.snapshots.insert(user_id, Arc::clone(&snapshot));
        Ok(snapshot)
    }

    /// How many messages of the conversation the user has deleted for
    /// themselves one by one, counting the deletes stored past what a
    /// fold reads: while an earlier inbox event of the user is in flight
    /// (a write being finished in the background), the readable horizon
    /// stays below it, and every delete made meanwhile would count as none.
    /// Past [`MAX_UNFOLDED_SCAN`] entries (or bytes) of such a tail, the
    /// count is refused as UNAVAILABLE until the horizon moves on.
    pub async fn hidden_count(&self, user_id: u64, conversation_id: u64) -> Result<usize> {
        let snapshot = self.fold(user_id).await?;
        let mut row = snapshot
            .rows
            .iter()
            .find(|row| row.conversation_id == conversation_id)
            .cloned()
            .unwrap_or_else(|| ReadStateRow {
                conversation_id,
                ..ReadStateRow::default()
            });
        for entry in self
            .unfolded_tail(user_id, snapshot.applied_seq, "delete for me")
            .await?
            .iter()
            .filter(|e| e.conversation_id == conversation_id)
        {
            fold::apply(&mut row, entry, user_id);
        }
        Ok(row.hidden.len())
    }

    /// Raises the caller's read marker in a conversation to `through`
    /// (`None`: the newest readable entry).
    pub async fn mark(
        &self,
        principal: &Principal,
        conversation_id: u64,
        through: Option<u64>,
    ) -> Result<MarkResult> {
        self.mark_or_clear(principal, conversation_id, through, false)
            .await
    }

    /// Clears the user's history through `through` (unset: the newest
    /// entry) and reads it, in one event: their devices and History show
    /// nothing up to there. Repeating it changes nothing more.
    pub async fn clear(
        &self,
        principal: &Principal,
        conversation_id: u64,
        through: Option<u64>,
    ) -> Result<MarkResult> {
        self.mark_or_clear(principal, conversation_id, through, true)
            .await
    }

    async fn mark_or_clear(
        &self,
        principal: &Principal,
        conversation_id: u64,
        through: Option<u64>,
        clear: bool,
    ) -> Result<MarkResult> {
        let (user_id, _) = access::device_user(principal)?;
        let conversation = self
            .directory
            .peek(conversation_id)
            .await
            .map_err(|e| access::conceal_missing(principal, conversation_id, e))?;
        access::may_read(&self.directory, principal, &conversation).await?;
        let top = self
            .visibility
            .readable_through(Scope::Conversation, conversation_id)
            .await?;
        // The newest entry, not the readable limit: after a restart the
        // limit is the allocator's reserved step, past any entry.
        let newest = self.newest_entry(conversation_id, top).await?;
        let through = match through {
            Some(0) => {
                return Err(SyncdError::InvalidArgument(
                    "through must be a conv_seq (1 or more); leave it unset for the newest".into(),
                ));
            }
            Some(seq) if seq > newest => {
                return Err(SyncdError::InvalidArgument(format!(
                    "through {seq} is past the newest entry of conversation {conversation_id} ({newest})"
                )));
            }
            Some(seq) => seq,
            None => newest,
        };
        // One mark of a user's conversation at a time, so that a second
        // one sees the first (its marker may not be readable yet) and
        // neither answers a marker below the other's.
        let _one_mark = self.marks.write((user_id, conversation_id)).await;
        let (folded, unread, mentions) = self.state_of(user_id, conversation_id).await?;
        let current = match self.raised.get(&(user_id, conversation_id)) {
            Some(raised) if raised.read_through > folded => raised,
            _ => MarkResult {
                conversation_id,
                read_through: folded,
                unread,
                mentions,
                seq: 0,
            },
        };
        if through <= current.read_through && !clear {
            return Ok(MarkResult { seq: 0, ..current });
        }
        let outcome = self
            .writer
            .commit_marker(
                user_id,
                conversation_id,
                through.max(current.read_through),
                // A clear is the user's own business: the peer's receipt
                // follows their next mark.
                if clear {
                    None
                } else {
                    peer_of(&conversation, user_id)
                },
                clear.then_some(through),
            )
            .await?;
        let (mut unread, mut mentions) = (outcome.unread, outcome.unread_mentions);
        if conversation.read_fanout {
            // What arrived after the marker's position, counted as a list
            // would count it.
            let later = messages_from_others(
                self.store.as_ref(),
                conversation_id,
                user_id,
                outcome.read_through,
                outcome.conv_seq,
                top,
            )
            .await?;
            unread = (unread + later.count).saturating_sub(later.removed);
            mentions = (mentions + later.mentions).saturating_sub(later.removed_mentions);
        }
        let marked = MarkResult {
            conversation_id,
            read_through: outcome.read_through,
            unread,
            mentions,
            seq: outcome.seq,
        };
        self.raised.insert((user_id, conversation_id), marked);
        Ok(marked)
    }

    /// How many and which of a page of members have read the message at
    /// `conv_seq`: one member page and one point lookup per member, so
    /// the cost is the page's, never the conversation's.
    pub async fn receipts(
        &self,
        principal: &Principal,
        conversation_id: u64,
        conv_seq: u64,
        page: ReceiptsPage,
    ) -> Result<ReadReceipts> {
        let conversation = self
            .directory
            .peek(conversation_id)
            .await
            .map_err(|e| access::conceal_missing(principal, conversation_id, e))?;
        access::may_read(&self.directory, principal, &conversation).await?;
        let range = timeline_store::ConversationRange::oldest_first(
            conv_seq.saturating_sub(1),
            conv_seq.saturating_add(1),
            1,
        );
        let entries = self.store.read_conversation(conversation_id, range).await?;
        let message = entries
            .first()
            .filter(|e| e.conv_seq == conv_seq && e.kind == timeline_store::EntryKind::Message)
            .ok_or_else(|| {
                SyncdError::NotFound(format!(
                    "conversation {conversation_id} has no message at conv_seq {conv_seq}"
                ))
            })?;
        let limit =
            crate::limits::clamp_limit(page.limit, DEFAULT_RECEIPTS_LIMIT, MAX_RECEIPTS_LIMIT);
        // One more than the page says whether another follows.
        let mut members = self
            .directory
            .member_page(&conversation, page.after_member, limit + 1)
            .await?;
        let next_after_member = if members.len() > limit {
            members.truncate(limit);
            members.last().copied().unwrap_or(0)
        } else {
            0
        };
        let marks: std::collections::HashMap<u64, timeline_store::ReaderMark> = self
            .store
            .reader_marks(conversation_id, &members)
            .await?
            .into_iter()
            .map(|r| (r.user_id, r))
            .collect();
        // Members who joined after the message never had it to read.
        let counted = members
            .iter()
            .copied()
            .filter(|&m| m != message.sender_id)
            .filter(|m| marks.get(m).is_none_or(|r| r.joined < conv_seq));
        let (mut member_count, mut read_by) = (0, Vec::new());
        for member in counted {
            member_count += 1;
            if marks
                .get(&member)
                .is_some_and(|r| r.read_through >= conv_seq)
            {
                read_by.push(member);
            }
        }
        Ok(ReadReceipts {
            member_count,
            read_by,
            next_after_member,
        })
    }

    /// The `conv_seq` of the newest entry at or below `top` (0: none).
    async fn newest_entry(&self, conversation_id: u64, top: u64) -> Result<u64> {
        let range = timeline_store::ConversationRange::newest_first(0, top.saturating_add(1), 1);
        let entries = self.store.read_conversation(conversation_id, range).await?;
        Ok(entries.first().map_or(0, |e| e.conv_seq))
    }
}

#[cfg(test)]
mod list_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod model_tests;
