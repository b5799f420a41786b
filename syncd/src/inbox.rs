//! Inbox sync and ack: "everything after seq N", never past the safe
//! horizon, and the device's stored checkpoint.
//!
//! A page never shows a seq while a lower one may still appear
//! ([`crate::visibility`]), so a device that advances its checkpoint to the
//! page's last seq never skips one. When retention trimmed entries after the
//! checkpoint, the page says so (`expired_below`) instead of showing a gap.
//! The reply also lists the newest readable `conv_seq` of every large group
//! the user belongs to: their messages live in the conversation timeline.

use crate::access;
use crate::auth::Principal;
use crate::error::{Result, SyncdError};
use crate::horizon::Scope;
use crate::limits::{DEFAULT_SYNC_LIMIT, LARGE_GROUP_READS_IN_FLIGHT, MAX_SYNC_LIMIT, clamp_limit};
use crate::paging::{self, MAX_PAGE_BYTES};
use crate::visibility::Visibility;
use std::sync::Arc;
use timeline_store::{ConversationRange, Entry, TimelineStore};

#[derive(Clone, Debug)]
pub struct SyncPage {
    /// The checkpoint the page starts after.
    pub after: u64,
    pub entries: Vec<Entry>,
    pub has_more: bool,
    pub checkpoint: u64,
    /// Every large group the user belongs to, once the event that made
    /// them a member is readable in this inbox.
    pub large_groups: Vec<GroupTop>,
    /// Large groups the user left (once the removal is readable), up to the
    /// last message sent while a member.
    pub left_large_groups: Vec<GroupTop>,
    /// `Some(floor)` when entries after the checkpoint were trimmed by
    /// retention: no entries are returned, the device must resync.
    pub expired_below: Option<u64>,
}

/// How far a user may read one large group's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupTop {
    pub conversation_id: u64,
    /// The newest readable `conv_seq` for this user (0: none yet).
    pub conv_seq: u64,
    /// Where the user's devices start reading: the event that made them a
    /// member (0 for memberships indexed before this was kept).
    pub joined_conv_seq: u64,
}

pub struct Inbox {
    store: Arc<dyn TimelineStore>,
    visibility: Arc<Visibility>,
}

impl Inbox {
    pub fn new(store: Arc<dyn TimelineStore>, visibility: Arc<Visibility>) -> Self {
        Self { store, visibility }
    }

    /// Inbox entries after the checkpoint (the given one, or the device's
    /// stored one), never past the sync horizon.
    pub async fn sync(
        &self,
        principal: &Principal,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<SyncPage> {
        let (user_id, device_id) = access::device_user(principal)?;
        let after = match after_seq {
            Some(seq) => seq,
            None => self.store.checkpoint(user_id, device_id).await?,
        };
        let limit = clamp_limit(limit, DEFAULT_SYNC_LIMIT, MAX_SYNC_LIMIT);
        let through = self
            .visibility
            .readable_through(Scope::Inbox, user_id)
            .await?;
        let page = paging::inbox(
            self.store.as_ref(),
            user_id,
            (after, through),
            limit,
            MAX_PAGE_BYTES,
        )
        .await?;
        // Read the floor after the entries, whatever they are: retention
        // raises it before it deletes, so any entry this read missed (a
        // read is not a snapshot of concurrent deletes) is below the floor
        // seen here. A first entry at `after + 1` proves nothing: it may
        // have been written again below the floor after the trim (a late
        // retry, a recovered intent), with the trimmed range behind it.
        let floor = self.store.inbox_floor(user_id).await?;
        if after.saturating_add(1) < floor {
            return Ok(SyncPage {
                after,
                entries: Vec::new(),
                has_more: false,
                checkpoint: after,
                large_groups: Vec::new(),
                left_large_groups: Vec::new(),
                expired_below: Some(floor),
            });
        }
        let checkpoint = page.entries.last().map_or(after, |e| e.seq);
        let (large_groups, left_large_groups) = self.large_group_tops(user_id, through).await?;
        Ok(SyncPage {
            after,
            entries: page.entries,
            has_more: page.has_more,
            checkpoint,
            large_groups,
            left_large_groups,
            expired_below: None,
        })
    }

    /// The newest readable `conv_seq` of each large group of the user, and
    /// of each it left. A membership counts from the moment its event is
    /// readable in the inbox (at or below `inbox_through`), never earlier:
    /// the index is stored with the event, before the event's seqs are
    /// safe to show, and a device that found the group before its join
    /// would read it from the start (the whole pre-join history, and across
    /// a switch to read fanout, messages it already has in its inbox).
    async fn large_group_tops(
        &self,
        user_id: u64,
        inbox_through: u64,
    ) -> Result<(Vec<GroupTop>, Vec<GroupTop>)> {
        use futures_util::{StreamExt, TryStreamExt};
        let memberships = self.store.large_group_memberships(user_id).await?;
        let visible = memberships
            .into_iter()
            .filter(|m| m.joined.inbox_seq <= inbox_through);
        // Two store calls per group: in parallel, boundedly, in order.
        let tops: Vec<(GroupTop, bool)> =
            futures_util::stream::iter(visible.map(|membership| async move {
                let id = membership.conversation_id;
                let mut end = self
                    .visibility
                    .readable_through(Scope::Conversation, id)
                    .await?
                    .saturating_add(1);
                // Nothing from the removal on is the user's.
                if let Some(removal) = membership.left {
                    end = end.min(removal.conv_seq);
                }
                let newest = self
                    .store
                    .read_conversation(id, ConversationRange::newest_first(0, end, 1))
                    .await?;
                let top = GroupTop {
                    conversation_id: id,
                    conv_seq: newest.first().map_or(0, |e| e.conv_seq),
                    joined_conv_seq: membership.joined.conv_seq,
                };
                let left = membership
                    .left
                    .is_some_and(|removal| removal.inbox_seq <= inbox_through);
                Ok::<_, SyncdError>((top, left))
            }))
            .buffered(LARGE_GROUP_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        let (left, current): (Vec<_>, Vec<_>) = tops.into_iter().partition(|(_, left)| *left);
        Ok((
            current.into_iter().map(|(top, _)| top).collect(),
            left.into_iter().map(|(top, _)| top).collect(),
        ))
    }

    /// Stores the device's checkpoint (never lowered; never past its inbox).
    pub async fn ack(&self, principal: &Principal, seq: u64) -> Result<u64> {
        let (user_id, device_id) = access::device_user(principal)?;
        let top = self.visibility.inbox_top(user_id).await?;
        if seq > top {
            return Err(SyncdError::InvalidArgument(format!(
                "cannot acknowledge seq {seq}: the inbox only reaches {top}"
            )));
        }
        Ok(self.store.save_checkpoint(user_id, device_id, seq).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;
    use timeline_store::{InboxRange, InboxReads};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tight_loop_sync_never_skips_when_commits_land_out_of_order() {
        let fx = fixture().small_sections().jitter().build().await;
        let engine = Arc::clone(&fx.engine);
        let mut conversations = Vec::new();
        for members in [vec![1, 2, 3], vec![1, 4], vec![1, 2, 4, 5], vec![1, 5]] {
            conversations.push(group(&engine, 1, members).await);
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (engine, done) = (Arc::clone(&engine), Arc::clone(&done));
            tokio::spawn(async move {
                let me = device(1, "tight");
                let (mut checkpoint, mut seen) = (0, Vec::new());
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    let page = engine.sync(&me, Some(checkpoint), 3).await.unwrap();
                    checkpoint = page.checkpoint;
                    seen.extend(page.entries.iter().map(|e| e.seq));
                    if finished && !page.has_more {
                        return seen;
                    }
                    // An empty read completes without awaiting anything; yield
                    // so this loop cannot starve the senders' tasks.
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut senders = tokio::task::JoinSet::new();
        for task in 0..24u64 {
            let engine = Arc::clone(&engine);
            let conversation = conversations[task as usize % conversations.len()];
            senders.spawn(async move {
                for i in 0..25 {
                    engine
                        .send(
                            device(1, "s"),
                            message(conversation, &format!("{task}/{i}"), None),
                        )
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(result) = senders.join_next().await {
            result.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let seen = reader.await.unwrap();
        let entries = fx
            .store
            .read_inbox(1, InboxRange::new(0, u64::MAX, 10_000))
            .await
            .unwrap();
        let all: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(all.len(), 4 + 24 * 25);
        let mut last_conv_seq = std::collections::HashMap::new();
        for entry in &entries {
            let last = last_conv_seq.entry(entry.conversation_id).or_insert(0);
            assert!(
                entry.conv_seq > *last,
                "inbox order differs from conv_seq order"
            );
            *last = entry.conv_seq;
        }
        let missing: Vec<_> = all.iter().filter(|s| !seen.contains(s)).collect();
        let extra: Vec<_> = seen.iter().filter(|s| !all.contains(s)).collect();
        assert_eq!(
            seen, all,
            "the tight-loop reader skipped an entry: missing {missing:?} extra {extra:?}"
        );
    }
}

#[cfg(test)]
mod trim_tests {
    use crate::testkit::*;
    use std::sync::Arc;
    use timeline_store::{EventCommit, EventLog, InboxWrite};

    /// An entry written again below the floor after a trim (a background
    /// retry landing late, a recovered intent) must not make a page that
    /// starts at `checkpoint + 1` look complete over the trimmed range.
    #[tokio::test]
    async fn a_rewrite_below_the_floor_does_not_hide_a_trimmed_range() {
        let fx = fixture().config(keeping(10)).build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2]).await;
        send_numbered(&engine, 1, conversation, 30).await;
        let before = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        let floor = engine.trim_user(2).await.unwrap();
        let late = before.entries[4].clone();
        fx.store
            .commit_event(EventCommit {
                keep_copies: false,
                rewrites: Vec::new(),
                entry: late.clone(),
                inbox: vec![InboxWrite {
                    user_id: 2,
                    seq: late.seq,
                }],
                receipt: None,
                conversation: None,
                large_group_index: Vec::new(),
                members: Vec::new(),
                readers: Vec::new(),
            })
            .await
            .unwrap();
        let page = engine
            .sync(&device(2, "d"), Some(late.seq - 1), 100)
            .await
            .unwrap();
        assert_eq!(
            page.expired_below,
            Some(floor),
            "{:?}",
            page.entries.iter().map(|e| e.seq).collect::<Vec<_>>()
        );
        assert!(page.entries.is_empty());
    }

    /// Age retention can trim every entry; a device that had them all still
    /// acks its checkpoint (the inbox reached it; nothing after is gone).
    #[tokio::test]
    async fn a_fully_trimmed_inbox_still_takes_the_ack_of_what_it_held() {
        let fx = fixture().build().await;
        let conversation = group(&fx.engine, 1, vec![2]).await;
        send_numbered(&fx.engine, 1, conversation, 3).await;
        let synced = fx.engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        let top = synced.checkpoint;
        use timeline_store::InboxRetention;
        fx.store.trim_inbox(2, top + 1, 100).await.unwrap();
        assert_eq!(fx.engine.ack(&device(2, "d"), top).await.unwrap(), top);
        let after = fx
            .engine
            .sync(&device(2, "d"), Some(top), 100)
            .await
            .unwrap();
        assert_eq!(after.expired_below, None);
        assert!(after.entries.is_empty());
    }

    #[tokio::test]
    async fn the_largest_checkpoint_does_not_overflow() {
        let fx = fixture().build().await;
        group(&fx.engine, 1, vec![2]).await;
        let page = fx
            .engine
            .sync(&device(2, "d"), Some(u64::MAX), 10)
            .await
            .unwrap();
        assert!(page.entries.is_empty() && !page.has_more);
        assert!(
            fx.engine
                .subscribe(&device(2, "d"), u64::MAX, true)
                .await
                .is_ok()
        );
    }
}

#[cfg(test)]
mod restart_tests {
    use crate::engine::EngineConfig;
    use crate::testkit::*;
    use seqsvc::{MaxSeqStore, MemoryMaxSeqStore};
    use seqsvc::{Namespace, Result};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic::async_trait;

    /// A `max_seq` store whose raises wait while `held` (a slow disk, or an
    /// allocator that is slow to answer after a restart).
    #[derive(Default)]
    struct SlowRaises {
        inner: MemoryMaxSeqStore,
        held: AtomicBool,
        released: tokio::sync::Notify,
    }

    #[async_trait]
    impl MaxSeqStore for SlowRaises {
        async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
            self.inner.load(namespace, section).await
        }
        async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
            loop {
                let released = self.released.notified();
                if !self.held.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            self.inner.raise(namespace, section, at_least).await
        }
    }

    /// A restarted engine serves the whole inbox from its first request,
    /// also while the first send after the restart is still allocating
    /// (its reservation used to hold the horizon at 0 for every key it
    /// touched: Sync answered an empty page, Ack refused a seq the device
    /// had).
    #[tokio::test]
    async fn sync_and_ack_work_from_the_first_request_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), false);
        let seq_store = Arc::new(SlowRaises::default());
        let start = || engine_on(&store, seq_store.clone(), EngineConfig::default());
        let engine = start().await;
        let conversation = group(&engine, 1, vec![2]).await;
        send_numbered(&engine, 1, conversation, 5).await;
        let before = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        assert_eq!(before.entries.len(), 6);
        drop(engine);

        let engine = start().await;
        seq_store.held.store(true, Ordering::SeqCst);
        let slow_send = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                engine
                    .send(device(1, "d"), message(conversation, "slow", None))
                    .await
            })
        };
        // Let the send reserve and block in its first allocation.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let after = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        assert_eq!(
            after.entries.len(),
            6,
            "a restarted engine shows the whole inbox at once"
        );
        assert_eq!(
            engine
                .ack(&device(2, "d"), before.checkpoint)
                .await
                .unwrap(),
            before.checkpoint
        );
        seq_store.held.store(false, Ordering::SeqCst);
        seq_store.released.notify_waiters();
        slow_send.await.unwrap().unwrap();
        let last = engine.sync(&device(2, "d"), None, 100).await.unwrap();
        assert_eq!(last.entries.len(), 1, "then the slow send arrives");
    }
}
