//! What a reader may see now: the safe limit of a timeline (see
//! [`crate::horizon`] for why the allocator is asked before the horizon).

use crate::error::Result;
use crate::horizon::{Horizon, Scope, safe_limit};
use seqsvc::Namespace;
use seqsvc::client::SeqSource;
use std::sync::Arc;
use timeline_store::TimelineStore;

pub struct Visibility {
    store: Arc<dyn TimelineStore>,
    seqs: SeqSource,
    horizon: Arc<Horizon>,
}

impl Visibility {
    pub fn new(store: Arc<dyn TimelineStore>, seqs: SeqSource, horizon: Arc<Horizon>) -> Self {
        Self {
            store,
            seqs,
            horizon,
        }
    }

    /// The highest seq of a timeline that is safe to read now.
    pub async fn readable_through(&self, scope: Scope, id: u64) -> Result<u64> {
        let namespace = match scope {
            Scope::Inbox => Namespace::Inbox,
            Scope::Conversation => Namespace::Conversation,
        };
        let allocated = self.seqs.current(namespace, id).await?;
        Ok(safe_limit(&self.horizon, (scope, id), allocated))
    }

    /// The highest inbox seq a device may be told about right now.
    /// Retention may have trimmed every entry: the floor then still says
    /// how far the inbox reached, so a device that had it all can ack it.
    pub async fn inbox_top(&self, user_id: u64) -> Result<u64> {
        let limit = self.readable_through(Scope::Inbox, user_id).await?;
        let last = self.store.last_inbox_seq(user_id).await?;
        let trimmed_through = self.store.inbox_floor(user_id).await?.saturating_sub(1);
        Ok(last.max(trimmed_through).min(limit))
    }
}
