//! One subscriber's view of its inbox's progress.
//!
//! A feed waits until the user's inbox moves past what it has announced,
//! then yields one notice "entries exist up to N", with the entries when
//! the subscriber asked for them and is at most [`MAX_PUSH_ENTRIES`] behind.
//! Further behind, the notice is bare and the device pulls with Sync. Feeds
//! end when shutdown begins (a stream never ends by itself).
//!
//! A feed also drains its stream's large-group mailbox ([`crate::push::groups`])
//! in this order: the priority lane, then the inbox, then the ordinary lane,
//! so what a lagging device is told first is what matters most.
//!
//! A feed that keeps up takes its entries from the hub's memory
//! ([`crate::push::recent`]) and reads the store only when some entry of
//! its range is not held there.

use crate::access;
use crate::auth::Principal;
use crate::error::{Result, SyncdError};
use crate::lifecycle::{Lifecycle, stopped};
use crate::limits::MAX_PUSH_ENTRIES;
use crate::paging::{self, MAX_PUSH_BYTES};
use crate::push::groups::{GroupBatch, GroupHub, GroupNotice, GroupSubscription};
use crate::push::hub::{Hub, Subscription};
use crate::visibility::Visibility;
use std::sync::Arc;
use timeline_store::{Entry, TimelineStore};

/// "Entries exist up to `up_to_seq`", with the entries when the subscriber
/// asked for them and is close enough behind.
#[derive(Clone, Debug)]
pub struct PushNotice {
    pub up_to_seq: u64,
    pub entries: Vec<Entry>,
    /// Large groups that moved (a notice with groups repeats the last
    /// `up_to_seq` and has no entries).
    pub groups: Vec<GroupNotice>,
    /// Large-group notices were dropped: the device syncs for the tops.
    pub groups_resync: bool,
}

/// Starts feeds.
pub struct Push {
    store: Arc<dyn TimelineStore>,
    hub: Arc<Hub>,
    groups: Arc<GroupHub>,
    visibility: Arc<Visibility>,
    lifecycle: Arc<Lifecycle>,
}

impl Push {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        (hub, groups): (Arc<Hub>, Arc<GroupHub>),
        visibility: Arc<Visibility>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Self {
            store,
            hub,
            groups,
            visibility,
            lifecycle,
        }
    }

    /// A feed for a device whose checkpoint is `after_seq`.
    pub async fn subscribe(
        &self,
        principal: &Principal,
        after_seq: u64,
        include_entries: bool,
    ) -> Result<Feed> {
        let (user_id, _) = access::device_user(principal)?;
        let floor = self.store.inbox_floor(user_id).await?;
        if after_seq.saturating_add(1) < floor {
            return Err(SyncdError::FailedPrecondition(format!(
                "checkpoint {after_seq} expired: entries below {floor} were trimmed; sync to resync"
            )));
        }
        let subscription = self.hub.subscribe(user_id)?;
        // Read the top only after subscribing, so nothing published in
        // between is missed.
        subscription.raise(self.visibility.inbox_top(user_id).await?);
        // Likewise the large groups: registered first, then the index read,
        // so a join committed in between reaches the stream either way.
        let groups = self.groups.subscribe(user_id, &self.lifecycle);
        groups.join(self.store.large_groups(user_id).await?);
        Ok(Feed {
            store: Arc::clone(&self.store),
            subscription,
            groups,
            user_id,
            last_sent: after_seq,
            include_entries,
            stopping: self.lifecycle.stopping(),
        })
    }
}

pub struct Feed {
    store: Arc<dyn TimelineStore>,
    subscription: Subscription,
    groups: GroupSubscription,
    user_id: u64,
    last_sent: u64,
    include_entries: bool,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Feed {
    /// Waits for the inbox to move past what this feed has announced;
    /// `None` once the server is shutting down.
    pub async fn next(&mut self) -> Result<Option<PushNotice>> {
        loop {
            if let Some(batch) = self.groups.mailbox().take_priority() {
                return Ok(Some(self.group_notice(batch)));
            }
            let top = self.subscription.current();
            if top > self.last_sent {
                return self.inbox_notice(top).await.map(Some);
            }
            if let Some(batch) = self.groups.mailbox().take_ordinary() {
                return Ok(Some(self.group_notice(batch)));
            }
            tokio::select! {
                _ = self.subscription.wait_above(self.last_sent) => {}
                () = self.groups.mailbox().changed() => {}
                () = stopped(&mut self.stopping) => return Ok(None),
            }
        }
    }

    fn group_notice(&self, batch: GroupBatch) -> PushNotice {
        PushNotice {
            up_to_seq: self.last_sent,
            entries: Vec::new(),
            groups: batch.notices,
            groups_resync: batch.resync,
        }
    }

    async fn inbox_notice(&mut self, top: u64) -> Result<PushNotice> {
        let range = (self.last_sent, top);
        let inline = self.include_entries && top - self.last_sent <= MAX_PUSH_ENTRIES as u64;
        let entries = if !inline {
            // Far behind: a bare notice; the device pulls with Sync.
            Vec::new()
        } else if let Some(held) = self
            .subscription
            .recent(range, MAX_PUSH_ENTRIES, MAX_PUSH_BYTES)
        {
            // Every entry of the range, as committed (or rewritten) and
            // stored: nothing between the checkpoint and the top was
            // missed, so even a range trimmed since needs no pull.
            metrics::counter!("syncd_push_entry_reads_total", "from" => "memory").increment(1);
            held
        } else {
            metrics::counter!("syncd_push_entry_reads_total", "from" => "store").increment(1);
            let page = paging::inbox(
                self.store.as_ref(),
                self.user_id,
                range,
                MAX_PUSH_ENTRIES,
                MAX_PUSH_BYTES,
            )
            .await?;
            // As in sync: the floor, read after the entries, tells whether
            // the range was trimmed; then the device must pull (and learn
            // that its checkpoint expired) instead.
            if self.last_sent.saturating_add(1) < self.store.inbox_floor(self.user_id).await? {
                Vec::new()
            } else {
                // Past the byte budget a notice carries what fits; the
                // device sees it end below `up_to_seq` and pulls the rest.
                page.entries
            }
        };
        self.last_sent = top;
        Ok(PushNotice {
            up_to_seq: top,
            entries,
            groups: Vec::new(),
            groups_resync: false,
        })
    }
}

#[cfg(test)]
#[path = "feed_tests.rs"]
mod tests;
