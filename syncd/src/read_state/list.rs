//! The conversation list (most recent activity first, paged by a stable
//! cursor, with a version for "not modified") and the per-conversation
//! state it and the sync summary show.

use super::count::{self, Count, messages_from_others};
use super::{CachedCount, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, ReadState};
use crate::access;
use crate::auth::Principal;
use crate::error::{Result, SyncdError, quoted};
use crate::horizon::Scope;
use crate::limits::clamp_limit;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use timeline_store::{ConversationKind, LargeGroupMembership, MessagePreview, ReadStateRow};

/// One conversation of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationState {
    pub conversation_id: u64,
    pub kind: ConversationKind,
    pub title: String,
    pub read_fanout: bool,
    pub member: bool,
    pub read_through: u64,
    pub unread: u64,
    /// Of `unread`, the messages that mention the user.
    pub mentions: u64,
    /// Direct conversations: how far the other member has read.
    pub peer_read_through: u64,
    /// A large group more than [`count::MAX_COUNTED_ENTRIES`] entries
    /// behind: `unread` is what is counted so far, and each call counts on.
    pub counting: bool,
    /// The newest `conv_seq` the user may read.
    pub last_conv_seq: u64,
    pub last_message: Option<MessagePreview>,
    pub last_activity_ms: i64,
    /// What the user hid (clear history through, delete for me): the
    /// preview skips it.
    pub cleared_through: u64,
    pub hidden: Vec<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub limit: usize,
    pub cursor: String,
    pub known_version: String,
}

#[derive(Clone, Debug, Default)]
pub struct ListPage {
    pub conversations: Vec<ConversationState>,
    pub total_unread: u64,
    pub total_mentions: u64,
    /// Empty on the last page.
    pub cursor: String,
    pub version: String,
    pub not_modified: bool,
    pub as_of_seq: u64,
}

/// Entries a preview looks back past hidden ones and events that are not
/// messages (edits, recalls, membership changes) before showing none.
const PREVIEW_LOOKBACK: usize = 64;
/// Entries the first read of a preview takes (then 4 times as many each
/// time, up to `PREVIEW_LOOKBACK` in all).
const PREVIEW_FIRST_READ: usize = 4;

/// Where a list page starts: after this (activity, conversation) pair.
fn parse_cursor(cursor: &str) -> Result<Option<(i64, u64)>> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let bad = || {
        SyncdError::InvalidArgument(format!(
            "cursor {} is not one this server gave",
            quoted(cursor)
        ))
    };
    let (ms, id) = cursor.split_once(':').ok_or_else(bad)?;
    Ok(Some((
        ms.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    )))
}

impl ReadState {
    /// The user's conversations: folded rows, large groups completed from
    /// their timelines, records from the directory.
    async fn states(&self, user_id: u64) -> Result<(u64, Vec<ConversationState>)> {
        let (as_of_seq, states, _) = self.states_with_changes(user_id, u64::MAX).await?;
        Ok((as_of_seq, states))
    }

    /// [`states`](Self::states), and the conversations whose rows folded
    /// an inbox entry after `after`.
    async fn states_with_changes(
        &self,
        user_id: u64,
        after: u64,
    ) -> Result<(u64, Vec<ConversationState>, HashSet<u64>)> {
        let snapshot = self.fold(user_id).await?;
        let changed: HashSet<u64> = snapshot
            .rows
            .iter()
            .filter(|row| row.last_seq > after)
            .map(|row| row.conversation_id)
            .collect();
        let mut rows: BTreeMap<u64, ReadStateRow> = snapshot
            .rows
            .iter()
            .map(|row| (row.conversation_id, row.clone()))
            .collect();
        let memberships = self.store.large_group_memberships(user_id).await?;
        let mut large: HashSet<u64> = HashSet::new();
        let mut counting: HashSet<u64> = HashSet::new();
        for membership in as_folded(&memberships, snapshot.applied_seq).iter() {
            large.insert(membership.conversation_id);
            let row = rows
                .entry(membership.conversation_id)
                .or_insert_with(|| ReadStateRow {
                    conversation_id: membership.conversation_id,
                    member: membership.left.is_none(),
                    joined_conv_seq: membership.joined.conv_seq,
                    read_through: membership.joined.conv_seq,
                    counted_through: membership.joined.conv_seq,
                    ..ReadStateRow::default()
                });
            if self.complete_large_group(user_id, membership, row).await? {
                counting.insert(membership.conversation_id);
            }
        }
        let mut states = Vec::with_capacity(rows.len());
        for row in rows.into_values() {
            let last_conv_seq = row.counted_through;
            states.push(ConversationState {
                conversation_id: row.conversation_id,
                // Filled in for the conversations a reply shows (`describe`).
                kind: ConversationKind::Group,
                title: String::new(),
                read_fanout: large.contains(&row.conversation_id),
                counting: counting.contains(&row.conversation_id),
                member: row.member,
                read_through: row.read_through,
                unread: if row.member { row.unread } else { 0 },
                mentions: if row.member { row.mentions } else { 0 },
                peer_read_through: row.peer_read_through,
                last_conv_seq,
                last_message: row.last_message,
                last_activity_ms: row.last_activity_ms,
                cleared_through: row.cleared_through,
                hidden: row.hidden,
            });
        }
        Ok((snapshot.applied_seq, states, changed))
    }

    /// Fills in kind and title from the conversation records: only for the
    /// conversations a reply shows, so a list page reads its page's
    /// records, not every record of a user in 10,000 conversations.
    async fn describe(&self, states: &mut [ConversationState]) -> Result<()> {
        for state in states.iter_mut() {
            if let Some(newest) = state.last_message.as_ref().map(|m| m.conv_seq) {
                state.last_message = self.preview(state, newest).await?;
            }
        }
        for state in states {
            match self.directory.peek(state.conversation_id).await {
                Ok(conversation) => {
                    state.kind = conversation.kind;
                    state.title = conversation.title.clone();
                    state.read_fanout |= conversation.read_fanout;
                }
                // A row is written only for a conversation that exists.
                Err(SyncdError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// The preview of the newest message at or below `newest` the user has
    /// not hidden, as it is stored now (edited text, or none once
    /// withdrawn): rows keep which message, never its text.
    async fn preview(
        &self,
        state: &ConversationState,
        newest: u64,
    ) -> Result<Option<MessagePreview>> {
        // Usually the newest entry is the message: read a few first, more
        // only past events that are not messages (or hidden ones), so a
        // list page does not read and decode 64 whole entries a row.
        let mut before = newest.saturating_add(1);
        let mut looked = 0;
        let mut chunk = PREVIEW_FIRST_READ;
        while looked < PREVIEW_LOOKBACK {
            let want = chunk.min(PREVIEW_LOOKBACK - looked);
            let range = timeline_store::ConversationRange::newest_first(
                state.cleared_through,
                before,
                want,
            );
            let entries = self
                .store
                .read_conversation(state.conversation_id, range)
                .await?;
            if let Some(found) = entries.iter().find(|e| {
                e.kind == timeline_store::EntryKind::Message
                    && state.hidden.binary_search(&e.conv_seq).is_err()
            }) {
                return Ok(Some(count::preview(found)));
            }
            match entries.last() {
                Some(oldest) if entries.len() == want => before = oldest.conv_seq,
                // The timeline (after the clear) holds no more.
                _ => return Ok(None),
            }
            looked += want;
            chunk *= 4;
        }
        Ok(None)
    }

    /// Adds to a large group's row what its timeline holds past the row:
    /// messages from others up to the newest readable one (or the removal).
    /// True when the count stopped short (see [`count::MAX_COUNTED_ENTRIES`]).
    async fn complete_large_group(
        &self,
        user_id: u64,
        membership: &LargeGroupMembership,
        row: &mut ReadStateRow,
    ) -> Result<bool> {
        let id = membership.conversation_id;
        let mut to = self
            .visibility
            .readable_through(Scope::Conversation, id)
            .await?;
        if let Some(left) = membership.left {
            to = to.min(left.conv_seq.saturating_sub(1));
        }
        let base = row.read_through.max(membership.joined.conv_seq);
        let from = base.max(row.counted_through);
        let count = self.count_cached(user_id, id, base, from, to).await?;
        if row.member && membership.left.is_none() {
            row.unread = (row.unread + count.count).saturating_sub(count.removed);
            // Named mentions reached the inbox and are in the row already
            // (and so did the recalls of them).
            row.mentions = (row.mentions + count.mentions_of_everyone_only)
                .saturating_sub(count.removed_everyone_only);
        }
        let last = match count.last_message {
            Some(last) => Some(last),
            None => count::last_message(self.store.as_ref(), id, to).await?,
        };
        // Shown as the newest message, not the count's end (after a restart
        // the readable limit is the allocator's reserved step).
        if let Some(last) = last {
            row.last_activity_ms = row.last_activity_ms.max(last.sent_at_ms);
            row.counted_through = row.counted_through.max(last.conv_seq);
            row.last_message = Some(last);
        }
        Ok(count.saturated)
    }

    /// Messages from others in `(from, to]`, extending the last count of
    /// the same start instead of reading it all again (also a count that
    /// stopped at [`count::MAX_COUNTED_ENTRIES`]: each call goes on from
    /// where the last one stopped).
    async fn count_cached(
        &self,
        user_id: u64,
        id: u64,
        base: u64,
        from: u64,
        to: u64,
    ) -> Result<Count> {
        if from >= to {
            return Ok(Count::default());
        }
        let key = (user_id, id);
        let (start, mut total) = match self.counts.get(&key) {
            Some(cached)
                if cached.from == from && cached.base == base && cached.count.reached <= to =>
            {
                (cached.count.reached, cached.count)
            }
            _ => (from, Count::default()),
        };
        let more = messages_from_others(self.store.as_ref(), id, user_id, base, start, to).await?;
        total.extend(more);
        self.counts.insert(
            key,
            CachedCount {
                base,
                from,
                count: total.clone(),
            },
        );
        Ok(total)
    }

    /// (read through, unread, mentions).
    pub(super) async fn state_of(
        &self,
        user_id: u64,
        conversation_id: u64,
    ) -> Result<(u64, u64, u64)> {
        let snapshot = self.fold(user_id).await?;
        let mut row = snapshot
            .rows
            .iter()
            .find(|r| r.conversation_id == conversation_id)
            .cloned();
        let memberships = self.store.large_group_memberships(user_id).await?;
        if let Some(membership) = as_folded(&memberships, snapshot.applied_seq)
            .iter()
            .find(|m| m.conversation_id == conversation_id)
        {
            let row = row.get_or_insert_with(|| ReadStateRow {
                conversation_id,
                member: membership.left.is_none(),
                joined_conv_seq: membership.joined.conv_seq,
                read_through: membership.joined.conv_seq,
                counted_through: membership.joined.conv_seq,
                ..ReadStateRow::default()
            });
            self.complete_large_group(user_id, membership, row).await?;
        }
        Ok(row.map_or((0, 0, 0), |row| match row.member {
            true => (row.read_through, row.unread, row.mentions),
            false => (row.read_through, 0, 0),
        }))
    }

    /// A page of the caller's conversation list.
    pub async fn list(&self, principal: &Principal, query: ListQuery) -> Result<ListPage> {
        let (user_id, _) = access::device_user(principal)?;
        let limit = clamp_limit(query.limit, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT);
        let after = parse_cursor(&query.cursor)?;
        let (as_of_seq, mut states) = self.states(user_id).await?;
        let (total_unread, total_mentions) = totals(&states);
        let version = version_of(as_of_seq, &states);
        if !query.known_version.is_empty() && query.known_version == version {
            return Ok(ListPage {
                version,
                not_modified: true,
                as_of_seq,
                total_unread,
                total_mentions,
                ..ListPage::default()
            });
        }
        // Newest first; the id breaks ties, so two conversations active in
        // the same millisecond both have a place.
        states.sort_by(|a, b| {
            (b.last_activity_ms, b.conversation_id).cmp(&(a.last_activity_ms, a.conversation_id))
        });
        let start = match after {
            None => 0,
            Some(position) => {
                states.partition_point(|s| (s.last_activity_ms, s.conversation_id) >= position)
            }
        };
        let mut page: Vec<ConversationState> =
            states.iter().skip(start).take(limit).cloned().collect();
        self.describe(&mut page).await?;
        let more = start + page.len() < states.len();
        let cursor = match page.last() {
            Some(last) if more => format!("{}:{}", last.last_activity_ms, last.conversation_id),
            _ => String::new(),
        };
        Ok(ListPage {
            conversations: page,
            total_unread,
            total_mentions,
            cursor,
            version,
            not_modified: false,
            as_of_seq,
        })
    }

    /// The counts a sync reply carries: the totals, and the conversations
    /// that changed after the inbox seq `after` (their rows folded an entry
    /// past it) or are large groups with anything unread; newest activity
    /// first, at most [`MAX_SUMMARY_CONVERSATIONS`].
    pub async fn summary(&self, user_id: u64, after: u64) -> Result<ReadStateSummary> {
        let (as_of_seq, states, changed) = self.states_with_changes(user_id, after).await?;
        let (total_unread, total_mentions) = totals(&states);
        let mut shown: Vec<ConversationState> = states
            .into_iter()
            .filter(|s| changed.contains(&s.conversation_id) || (s.read_fanout && s.unread > 0))
            .collect();
        shown.sort_by(|a, b| {
            (b.last_activity_ms, b.conversation_id).cmp(&(a.last_activity_ms, a.conversation_id))
        });
        let truncated = shown.len() > MAX_SUMMARY_CONVERSATIONS;
        shown.truncate(MAX_SUMMARY_CONVERSATIONS);
        self.describe(&mut shown).await?;
        Ok(ReadStateSummary {
            total_unread,
            total_mentions,
            as_of_seq,
            conversations: shown,
            truncated,
        })
    }
}

/// The read state a sync reply carries.
#[derive(Clone, Debug, Default)]
pub struct ReadStateSummary {
    pub total_unread: u64,
    pub total_mentions: u64,
    /// The counts are those after every inbox entry up to this seq.
    pub as_of_seq: u64,
    pub conversations: Vec<ConversationState>,
    /// More conversations changed than a reply lists: ask for the list.
    pub truncated: bool,
}

/// Most conversations a sync reply's read state lists.
pub const MAX_SUMMARY_CONVERSATIONS: usize = 200;

/// The large-group memberships as of the folded inbox: a join not folded
/// yet is left out, a removal not folded yet is not applied (the index is
/// written with the event, before the fold sees it), so the rows and the
/// memberships they are completed with describe one moment.
fn as_folded(memberships: &[LargeGroupMembership], applied_seq: u64) -> Vec<LargeGroupMembership> {
    memberships
        .iter()
        .filter(|m| m.joined.inbox_seq <= applied_seq)
        .map(|m| LargeGroupMembership {
            left: m.left.filter(|left| left.inbox_seq <= applied_seq),
            ..*m
        })
        .collect()
}

/// Unread messages and mentions over the conversations the user is in.
fn totals(states: &[ConversationState]) -> (u64, u64) {
    states
        .iter()
        .filter(|s| s.member)
        .fold((0, 0), |(unread, mentions), s| {
            (unread + s.unread, mentions + s.mentions)
        })
}

/// Changes whenever anything a list shows changes.
fn version_of(as_of_seq: u64, states: &[ConversationState]) -> String {
    // SipHash with fixed keys: the same list gives the same version in any
    // process of this build.
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new();
    for state in states {
        (
            state.conversation_id,
            state.member,
            state.read_through,
            state.unread,
            state.mentions,
            state.peer_read_through,
            state.last_conv_seq,
            state.last_activity_ms,
        )
            .hash(&mut hasher);
    }
    format!("{as_of_seq}.{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_not_given_here_is_refused_without_echoing_it_whole() {
        assert_eq!(parse_cursor("").unwrap(), None);
        assert_eq!(parse_cursor("17:4").unwrap(), Some((17, 4)));
        let junk = "x".repeat(1 << 20);
        let SyncdError::InvalidArgument(message) = parse_cursor(&junk).unwrap_err() else {
            panic!("not an invalid argument");
        };
        // A grpc-message header of a megabyte would not reach the client.
        assert!(message.len() < 200, "{} bytes", message.len());
        assert!(message.contains("(1048576 bytes)"), "{message}");
    }
}
