//! Conversation history and records: paging a conversation timeline by
//! `conv_seq`, backwards (`before`) or forwards (`after`), never past what
//! is safe to read, for members and services.

use crate::access;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::horizon::Scope;
use crate::limits::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, clamp_limit};
use crate::paging;
use crate::read_state::ReadState;
use crate::visibility::Visibility;
use std::sync::Arc;
use timeline_store::{Conversation, Entry, Order, TimelineStore};

pub struct HistoryQuery {
    pub conversation_id: u64,
    /// Page backwards below this `conv_seq` (0: from the newest).
    pub before: u64,
    /// Page forwards above this `conv_seq`.
    pub after: Option<u64>,
    pub limit: usize,
}

#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// Ascending `conv_seq`.
    pub entries: Vec<Entry>,
    pub has_more: bool,
}

pub struct History {
    store: Arc<dyn TimelineStore>,
    directory: Arc<Directory>,
    visibility: Arc<Visibility>,
    /// What a user hid from their own view (delete for me, clear).
    read_state: Arc<ReadState>,
}

/// What one user hid in one conversation.
#[derive(Default)]
struct Hidden {
    cleared_through: u64,
    /// Ascending.
    messages: Vec<u64>,
}

impl Hidden {
    fn hides_position(&self, conv_seq: u64) -> bool {
        conv_seq <= self.cleared_through || self.messages.binary_search(&conv_seq).is_ok()
    }

    /// The entry, or the message an edit, recall or delete of it names.
    fn hides(&self, entry: &Entry) -> bool {
        self.hides_position(entry.conv_seq)
            || (entry.target.conv_seq != 0 && self.hides_position(entry.target.conv_seq))
    }
}

impl History {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        directory: Arc<Directory>,
        visibility: Arc<Visibility>,
        read_state: Arc<ReadState>,
    ) -> Self {
        Self {
            store,
            directory,
            visibility,
            read_state,
        }
    }

    async fn hidden(&self, principal: &Principal, conversation_id: u64) -> Result<Hidden> {
        let Principal::Device { user_id, .. } = principal else {
            return Ok(Hidden::default());
        };
        let snapshot = self.read_state.fold(*user_id).await?;
        Ok(snapshot
            .rows
            .iter()
            .find(|row| row.conversation_id == conversation_id)
            .map_or_else(Hidden::default, |row| Hidden {
                cleared_through: row.cleared_through,
                messages: row.hidden.clone(),
            }))
    }

    /// A page of the conversation for a member or a service; a former
    /// member of a large group reads what was sent while it belonged (in a
    /// small group the same messages sit in its inbox).
    pub async fn history(&self, principal: &Principal, query: HistoryQuery) -> Result<HistoryPage> {
        let id = query.conversation_id;
        let until = match self.get_conversation(principal, id).await {
            Ok(_) => u64::MAX,
            Err(denied @ SyncdError::PermissionDenied(_)) => self
                .former_member_until(principal, id)
                .await?
                .ok_or(denied)?,
            Err(error) => return Err(error),
        };
        let limit = clamp_limit(query.limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT);
        let visible_end = self
            .visibility
            .readable_through(Scope::Conversation, id)
            .await?
            .saturating_add(1)
            .min(until);
        let store = self.store.as_ref();
        let hidden = self.hidden(principal, id).await?;
        if let Some(after) = query.after {
            if query.before != 0 {
                return Err(SyncdError::InvalidArgument(
                    "set before or after, not both".into(),
                ));
            }
            let mut after = after.max(hidden.cleared_through);
            // Pages of entries the user hid are skipped, not answered
            // empty: a client pages on from the entries it is given.
            loop {
                let page = paging::conversation(
                    store,
                    id,
                    (after, visible_end),
                    Order::OldestFirst,
                    limit,
                )
                .await?;
                after = page.entries.last().map_or(after, |e| e.conv_seq);
                let entries: Vec<Entry> = page
                    .entries
                    .into_iter()
                    .filter(|e| !hidden.hides(e))
                    .collect();
                if !entries.is_empty() || !page.has_more {
                    return Ok(HistoryPage {
                        entries,
                        has_more: page.has_more,
                    });
                }
            }
        }
        let mut before = match query.before {
            0 => visible_end,
            before => before.min(visible_end),
        };
        loop {
            let page = paging::conversation(
                store,
                id,
                (hidden.cleared_through, before),
                Order::NewestFirst,
                limit,
            )
            .await?;
            before = page.entries.last().map_or(before, |e| e.conv_seq);
            let mut entries: Vec<Entry> = page
                .entries
                .into_iter()
                .filter(|e| !hidden.hides(e))
                .collect();
            if !entries.is_empty() || !page.has_more {
                entries.reverse();
                return Ok(HistoryPage {
                    entries,
                    has_more: page.has_more,
                });
            }
        }
    }

    /// For a device whose user left this large group: the removal's
    /// `conv_seq` (it reads below it). `None` for anyone else.
    async fn former_member_until(&self, principal: &Principal, id: u64) -> Result<Option<u64>> {
        let Principal::Device { user_id, .. } = principal else {
            return Ok(None);
        };
        let memberships = self.store.large_group_memberships(*user_id).await?;
        Ok(memberships
            .iter()
            .find(|m| m.conversation_id == id)
            .and_then(|m| m.left)
            .map(|removal| removal.conv_seq))
    }

    /// The conversation, if the caller may see it (a member, or a service).
    pub async fn get_conversation(
        &self,
        principal: &Principal,
        conversation_id: u64,
    ) -> Result<Conversation> {
        let conversation = self
            .directory
            .peek(conversation_id)
            .await
            .map_err(|e| access::conceal_missing(principal, conversation_id, e))?;
        access::may_read(&self.directory, principal, &conversation).await?;
        Ok((*conversation).clone())
    }
}
