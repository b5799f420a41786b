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
}

impl History {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        directory: Arc<Directory>,
        visibility: Arc<Visibility>,
    ) -> Self {
        Self {
            store,
            directory,
            visibility,
        }
    }

    pub async fn history(&self, principal: &Principal, query: HistoryQuery) -> Result<HistoryPage> {
        let conversation = self
            .get_conversation(principal, query.conversation_id)
            .await?;
        let limit = clamp_limit(query.limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT);
        let id = conversation.conversation_id;
        let visible_end = self
            .visibility
            .readable_through(Scope::Conversation, id)
            .await?
            .saturating_add(1);
        let store = self.store.as_ref();
        if let Some(after) = query.after {
            if query.before != 0 {
                return Err(SyncdError::InvalidArgument(
                    "set before or after, not both".into(),
                ));
            }
            let page =
                paging::conversation(store, id, (after, visible_end), Order::OldestFirst, limit)
                    .await?;
            return Ok(HistoryPage {
                entries: page.entries,
                has_more: page.has_more,
            });
        }
        let before = match query.before {
            0 => visible_end,
            before => before.min(visible_end),
        };
        let page = paging::conversation(store, id, (0, before), Order::NewestFirst, limit).await?;
        let mut entries = page.entries;
        entries.reverse();
        Ok(HistoryPage {
            entries,
            has_more: page.has_more,
        })
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
        access::may_read(principal, &conversation)?;
        Ok((*conversation).clone())
    }
}
