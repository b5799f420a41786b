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
        let behind = top - self.last_sent;
        let held = (self.include_entries && behind <= MAX_PUSH_ENTRIES as u64)
            .then(|| {
                self.subscription
                    .recent((self.last_sent, top), MAX_PUSH_ENTRIES, MAX_PUSH_BYTES)
            })
            .flatten();
        let entries = if let Some(entries) = held {
            // Every entry of the range, as committed (or rewritten) and
            // stored: nothing between the checkpoint and the top was
            // missed, so even a range trimmed since needs no pull.
            entries
        } else if self.include_entries && behind <= MAX_PUSH_ENTRIES as u64 {
            let page = paging::inbox(
                self.store.as_ref(),
                self.user_id,
                (self.last_sent, top),
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
        } else {
            // Far behind: a bare notice; the device pulls with Sync.
            Vec::new()
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
mod tests {
    use super::*;
    use crate::testkit::*;

    #[tokio::test]
    async fn push_feed_delivers_entries_and_coalesces_when_far_behind() {
        let fx = fixture().small_sections().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine
            .subscribe(&device(2, "watch"), 0, true)
            .await
            .unwrap();
        let first = feed.next().await.unwrap().unwrap();
        assert_eq!(
            first.entries.len(),
            1,
            "the creation event is pushed at once"
        );
        engine
            .send(device(1, "d"), message(conversation, "pushed", None))
            .await
            .unwrap();
        let notice = feed.next().await.unwrap().unwrap();
        assert_eq!(texts(&notice.entries), ["pushed"]);
        assert_eq!(notice.up_to_seq, notice.entries[0].seq);
        send_numbered(&engine, 1, conversation, MAX_PUSH_ENTRIES + 10).await;
        let behind = feed.next().await.unwrap().unwrap();
        assert!(
            behind.entries.is_empty(),
            "far behind: a bare notice, the device pulls"
        );
        assert!(behind.up_to_seq >= notice.up_to_seq + MAX_PUSH_ENTRIES as u64);
        engine.begin_shutdown();
        assert!(
            feed.next().await.unwrap().is_none(),
            "feeds end on shutdown"
        );
    }

    /// A feed that keeps up is served from memory: with every store read
    /// failing, its notices still carry their entries, equal to what the
    /// store holds.
    #[tokio::test]
    async fn a_feed_that_keeps_up_reads_no_store() {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine.subscribe(&device(2, "w"), 0, true).await.unwrap();
        feed.next().await.unwrap().unwrap();
        fx.store.fail_next(
            timeline_store::testsuite::Op::Read,
            1_000,
            Default::default(),
        );
        for text in ["one", "two"] {
            engine
                .send(device(1, "d"), message(conversation, text, None))
                .await
                .unwrap();
        }
        let mut pushed = Vec::new();
        while pushed.len() < 2 {
            pushed.extend(feed.next().await.unwrap().unwrap().entries);
        }
        fx.store
            .fail_next(timeline_store::testsuite::Op::Read, 0, Default::default());
        assert_eq!(texts(&pushed), ["one", "two"]);
        let stored = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        let tail = &stored.entries[stored.entries.len() - 2..];
        assert_eq!(pushed, tail, "the entries as stored, seqs and all");
    }

    /// A fenced commit is not a gap: its intent may have landed before the
    /// seal, and the newer writer would write it at its seqs. So nothing
    /// after it is announced by this node (it used to be released, and the
    /// next message pushed past the seq the newer writer then fills).
    #[tokio::test]
    async fn a_fenced_event_holds_back_what_follows_it() {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine.subscribe(&device(2, "w"), 0, true).await.unwrap();
        let first = feed.next().await.unwrap().unwrap();
        fx.store.fail_commits_where(
            |commit| commit.entry.text == "fenced",
            || timeline_store::StoreError::Fenced("a newer writer sealed the store".into()),
        );
        let fenced = engine
            .send(device(1, "d"), message(conversation, "fenced", None))
            .await;
        assert!(fenced.is_err());
        fx.store.clear_aimed_fault();
        engine
            .send(device(1, "d"), message(conversation, "after", None))
            .await
            .unwrap();
        let page = engine
            .sync(&device(2, "d"), Some(first.up_to_seq), 100)
            .await
            .unwrap();
        assert!(
            page.entries.is_empty(),
            "held back: {:?}",
            texts(&page.entries)
        );
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), feed.next()).await;
        assert!(waited.is_err(), "nothing announced past the fenced seq");
    }

    /// A heavy message's inbox copies refer to its conversation entry,
    /// which an edit rewrites alone: such an entry is pushed from the
    /// store, which has the edit, never from a copy kept before it.
    #[tokio::test]
    async fn a_heavy_message_edited_before_its_push_is_pushed_as_edited() {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine.subscribe(&device(2, "w"), 0, true).await.unwrap();
        feed.next().await.unwrap().unwrap();
        let heavy = "h".repeat(timeline_store::INBOX_INLINE_PAYLOAD_BYTES + 1);
        let sent = engine
            .send(device(1, "d"), message(conversation, &heavy, None))
            .await
            .unwrap();
        engine
            .amend(
                device(1, "d"),
                crate::amend::Operation::Edit,
                crate::amend::AmendCommand {
                    conversation_id: conversation,
                    conv_seq: sent.receipt.conv_seq,
                    msg_id: sent.receipt.msg_id,
                    text: "edited".into(),
                    client_op_id: None,
                },
            )
            .await
            .unwrap();
        let mut pushed = Vec::new();
        while pushed.len() < 2 {
            pushed.extend(feed.next().await.unwrap().unwrap().entries);
        }
        assert_eq!(pushed[0].text, "edited", "the message as stored now");
    }

    /// A recall whose commit failed after it landed is finished in the
    /// background and announced only then; meanwhile a lagging feed must
    /// not push the recalled text from memory (the store has the recall).
    #[tokio::test]
    async fn a_recall_finishing_in_the_background_already_hides_the_text() {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine.subscribe(&device(2, "w"), 0, true).await.unwrap();
        feed.next().await.unwrap().unwrap();
        let sent = engine
            .send(
                device(1, "d"),
                message(conversation, "the code is 1234", None),
            )
            .await
            .unwrap();
        fx.store.fail_next(
            timeline_store::testsuite::Op::Commit,
            3,
            timeline_store::testsuite::Failure::Applied,
        );
        let recall = engine
            .amend(
                device(1, "d"),
                crate::amend::Operation::Recall,
                crate::amend::AmendCommand {
                    conversation_id: conversation,
                    conv_seq: sent.receipt.conv_seq,
                    msg_id: sent.receipt.msg_id,
                    text: String::new(),
                    client_op_id: None,
                },
            )
            .await;
        assert!(
            recall.is_err(),
            "stored, then the call failed: finished in the background"
        );
        let notice = feed.next().await.unwrap().unwrap();
        assert!(
            notice.entries.iter().all(|e| !e.text.contains("1234")),
            "{:?}",
            notice.entries
        );
    }

    /// A recall that lands before a lagging feed pushes its message
    /// leaves the feed the recalled state, never the text: the memory is
    /// rewritten with the store.
    #[tokio::test]
    async fn a_recalled_message_is_pushed_without_its_text() {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine.subscribe(&device(2, "w"), 0, true).await.unwrap();
        feed.next().await.unwrap().unwrap();
        let sent = engine
            .send(
                device(1, "d"),
                message(conversation, "the code is 1234", None),
            )
            .await
            .unwrap();
        engine
            .amend(
                device(1, "d"),
                crate::amend::Operation::Recall,
                crate::amend::AmendCommand {
                    conversation_id: conversation,
                    conv_seq: sent.receipt.conv_seq,
                    msg_id: sent.receipt.msg_id,
                    text: String::new(),
                    client_op_id: None,
                },
            )
            .await
            .unwrap();
        let mut pushed = Vec::new();
        while pushed.len() < 2 {
            pushed.extend(feed.next().await.unwrap().unwrap().entries);
        }
        assert!(
            pushed.iter().all(|e| !e.text.contains("1234")),
            "{pushed:?}"
        );
        assert!(
            pushed[0].state.removed.is_some(),
            "the message as the recall left it"
        );
    }
}
