//! Push for large (read-fanout) groups: who is subscribed to each group
//! now, and per Subscribe stream a mailbox of the groups that moved.
//!
//! A large group's message is written once, to the conversation timeline,
//! with nothing per member; push keeps that shape. On the writer's task a
//! committed event costs one hash lookup (is anyone subscribed to the
//! group?) and, if so, one merge into the outbox. A pusher task then visits
//! the group's *online* subscribers only: offline members cost nothing, and
//! the send path never waits for the visit.
//!
//! # The registry
//! `users` holds each subscribed user's mailboxes (one per stream);
//! `conversations` holds, per large group, the mailboxes of its online
//! members. A stream registers its user first, then reads the user's large
//! groups from the index and joins them; from the registration on, the
//! membership events' index changes (seen by [`CommitObserver::committed`])
//! add and remove the user's mailboxes, so a join in between is not missed.
//! A leave racing the index read can leave a stream registered in a group it
//! just left: it then hears of messages it cannot read (History refuses
//! them), which costs a pull and reveals nothing.
//!
//! # Lanes
//! Each mailbox has two lanes:
//! - **priority**: messages a service marked high priority, then messages
//!   that mention the user by name. One notice per message, ahead of
//!   everything else the stream has pending, never merged.
//! - **ordinary**: per group the newest readable conv_seq, merged, so a
//!   lagging stream holds one value per group however busy the group is.
//!
//! Who may use the priority lane decides who can delay everyone else's
//! notices, so only services can reach every member's lane. A mention of
//! everyone is any member's to send: in a large group it is an ordinary
//! notice (read state still counts it as a mention). A named mention
//! reaches the lanes of the members it names only, and mentions have a
//! share of the lane of their own ([`MAX_PENDING_MENTIONS`]): past it the
//! oldest becomes an ordinary notice, so a flood of them never pushes a
//! service's notice out.
//!
//! Under overload the ordinary lane degrades first: it is always merged,
//! and past [`MAX_PENDING_GROUP_TOPS`] groups it is dropped for one
//! `groups_resync` (pull only). Services' notices degrade last: only past
//! [`MAX_PENDING_PRIORITY`] queued notices. A stream that stops reading is
//! disconnected by the stall limit like any other.
//!
//! A priority message is announced once the group is readable through it:
//! while an earlier event of the group is still in flight it waits in the
//! pusher ([`MAX_HELD_PRIORITY`] per group). The pusher takes at most
//! [`MAX_QUEUED_PRIORITY`] priority messages per group per pass; a group
//! with more tells its online subscribers to resync.

use crate::horizon::Scope;
use crate::lifecycle::{Lifecycle, stopped};
use crate::limits::{
    GROUP_PUSH_YIELD_EVERY, MAX_GROUP_NOTICES, MAX_HELD_PRIORITY, MAX_PENDING_GROUP_TOPS,
    MAX_PENDING_MENTIONS, MAX_PENDING_PRIORITY, MAX_PUSHED_GROUPS_PER_STREAM, MAX_QUEUED_PRIORITY,
};
use crate::observer::{CommitObserver, Committed};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use timeline_store::{Entry, EntryKind, LargeGroupIndexChange};
use tokio::sync::Notify;

const SHARDS: usize = 64;

/// "Large group `conversation_id` is readable through `conv_seq`".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNotice {
    pub conversation_id: u64,
    pub conv_seq: u64,
    /// A service's priority message or a mention of the user by name:
    /// `conv_seq` is its.
    pub priority: bool,
}

/// What a stream's mailbox hands its feed, lane by lane.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupBatch {
    pub notices: Vec<GroupNotice>,
    /// Notices were dropped: the device must Sync for the groups' tops.
    pub resync: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One Subscribe stream's pending large-group notices.
pub struct Mailbox {
    id: u64,
    user_id: u64,
    pending: Mutex<Pending>,
    wake: Notify,
    /// The groups this mailbox is registered in (to leave them on drop).
    groups: Mutex<HashSet<u64>>,
}

#[derive(Default)]
struct Pending {
    /// Services' priority messages.
    priority: VecDeque<GroupNotice>,
    /// Mentions of the user by name, sent after `priority`.
    mentions: VecDeque<GroupNotice>,
    /// Group -> newest readable conv_seq.
    ordinary: BTreeMap<u64, u64>,
    resync: bool,
}

impl Pending {
    /// Merges `conv_seq` into the group's ordinary notice; `true` when that
    /// overflowed the lane (dropped for a resync).
    fn merge_ordinary(&mut self, conversation_id: u64, conv_seq: u64) -> bool {
        // A resync pending covers every group.
        if self.resync {
            return false;
        }
        let slot = self.ordinary.entry(conversation_id).or_insert(0);
        *slot = (*slot).max(conv_seq);
        if self.ordinary.len() > MAX_PENDING_GROUP_TOPS {
            self.ordinary.clear();
            self.resync = true;
            return true;
        }
        false
    }
}

impl Mailbox {
    /// Group `conversation_id` is readable through `top`; `priority` are
    /// the conv_seqs (ascending, at most `top`) of services' priority
    /// messages and `mentions` those of messages naming this user.
    fn deliver(&self, conversation_id: u64, top: u64, priority: &[u64], mentions: &[u64]) {
        let notice = |conv_seq| GroupNotice {
            conversation_id,
            conv_seq,
            priority: true,
        };
        let mut pending = lock(&self.pending);
        let mut degraded = None;
        for &conv_seq in priority {
            if pending.priority.len() >= MAX_PENDING_PRIORITY {
                pending.priority.clear();
                pending.resync = true;
                degraded = Some("priority");
            }
            pending.priority.push_back(notice(conv_seq));
        }
        for &conv_seq in mentions {
            if pending.mentions.len() >= MAX_PENDING_MENTIONS
                && let Some(oldest) = pending.mentions.pop_front()
            {
                // Demoted, not lost: the group's ordinary notice names it.
                if pending.merge_ordinary(oldest.conversation_id, oldest.conv_seq) {
                    degraded = degraded.or(Some("ordinary"));
                }
                degraded = degraded.or(Some("mention"));
            }
            pending.mentions.push_back(notice(conv_seq));
        }
        // A priority notice at the top already says all an ordinary one
        // would.
        let newest_priority = priority
            .last()
            .copied()
            .max(mentions.last().copied())
            .unwrap_or(0);
        if top > newest_priority && pending.merge_ordinary(conversation_id, top) {
            degraded = degraded.or(Some("ordinary"));
        }
        drop(pending);
        if let Some(lane) = degraded {
            metrics::counter!("syncd_group_push_degraded_total", "lane" => lane).increment(1);
        }
        self.wake.notify_one();
    }

    /// Drops the ordinary lane for one `groups_resync`: the device pulls
    /// every group's top with Sync.
    fn resync(&self) {
        let mut pending = lock(&self.pending);
        pending.ordinary.clear();
        pending.resync = true;
        drop(pending);
        self.wake.notify_one();
    }

    /// The priority lane's next notices, oldest first.
    pub fn take_priority(&self) -> Option<GroupBatch> {
        let mut pending = lock(&self.pending);
        if pending.priority.is_empty() && pending.mentions.is_empty() {
            return None;
        }
        let n = pending.priority.len().min(MAX_GROUP_NOTICES);
        let mut notices: Vec<GroupNotice> = pending.priority.drain(..n).collect();
        let m = pending.mentions.len().min(MAX_GROUP_NOTICES - n);
        notices.extend(pending.mentions.drain(..m));
        Some(GroupBatch {
            notices,
            resync: false,
        })
    }

    /// The ordinary lane: a resync if notices were dropped, else the next
    /// merged group tops.
    pub fn take_ordinary(&self) -> Option<GroupBatch> {
        let mut pending = lock(&self.pending);
        if pending.resync {
            pending.resync = false;
            pending.ordinary.clear();
            return Some(GroupBatch {
                notices: Vec::new(),
                resync: true,
            });
        }
        let mut notices = Vec::new();
        while notices.len() < MAX_GROUP_NOTICES {
            let Some((conversation_id, conv_seq)) = pending.ordinary.pop_first() else {
                break;
            };
            notices.push(GroupNotice {
                conversation_id,
                conv_seq,
                priority: false,
            });
        }
        (!notices.is_empty()).then_some(GroupBatch {
            notices,
            resync: false,
        })
    }

    /// Resolves once something was delivered since the last call (maybe
    /// already taken: callers check the lanes again).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    #[cfg(test)]
    fn pending_len(&self) -> (usize, usize) {
        let pending = lock(&self.pending);
        (
            pending.priority.len() + pending.mentions.len(),
            pending.ordinary.len(),
        )
    }
}

/// A message for the priority lane of some members.
#[derive(Clone, Debug)]
struct PriorityMessage {
    conv_seq: u64,
    /// Every member: a service's priority message (only services may mark
    /// one). A mention of everyone is not: any member may send it.
    everyone: bool,
    /// Members mentioned by name.
    users: Vec<u64>,
}

impl PriorityMessage {
    fn of(entry: &Entry) -> Option<Self> {
        let everyone = entry.priority;
        (entry.kind == EntryKind::Message && (everyone || !entry.mentions.is_empty())).then(|| {
            Self {
                conv_seq: entry.conv_seq,
                everyone,
                users: if everyone {
                    Vec::new()
                } else {
                    entry.mentions.clone()
                },
            }
        })
    }
}

/// A pass's readable priority messages of one group, indexed so that a
/// named mention costs its mentioned users, not every online subscriber.
#[derive(Default)]
struct Lanes {
    /// conv_seqs of services' priority messages, ascending.
    everyone: Vec<u64>,
    /// User -> conv_seqs of messages naming them, ascending.
    named: HashMap<u64, Vec<u64>>,
}

impl Lanes {
    /// `messages` sorted by conv_seq.
    fn of(messages: &[PriorityMessage]) -> Self {
        let mut lanes = Self::default();
        for message in messages {
            if message.everyone {
                lanes.everyone.push(message.conv_seq);
            }
            for &user in &message.users {
                let seqs = lanes.named.entry(user).or_default();
                // A name given twice is one mention.
                if seqs.last() != Some(&message.conv_seq) {
                    seqs.push(message.conv_seq);
                }
            }
        }
        lanes
    }

    fn named(&self, user_id: u64) -> &[u64] {
        self.named.get(&user_id).map_or(&[], Vec::as_slice)
    }
}

/// What moved in one group since the pusher last ran.
#[derive(Default)]
struct Moved {
    top: u64,
    /// At most [`MAX_QUEUED_PRIORITY`].
    priority: Vec<PriorityMessage>,
    /// Priority messages were not queued: the subscribers resync.
    overflow: bool,
}

type Mailboxes = HashMap<u64, Arc<Mailbox>>;

pub struct GroupHub {
    /// User -> that user's open mailboxes, by id.
    users: [Mutex<HashMap<u64, Mailboxes>>; SHARDS],
    /// Large group -> the mailboxes of its online members, by id.
    conversations: [Mutex<HashMap<u64, Mailboxes>>; SHARDS],
    /// Groups that moved, for the pusher (at most one entry per group with
    /// subscribers).
    outbox: Mutex<HashMap<u64, Moved>>,
    pusher_wake: Notify,
    pusher_started: AtomicBool,
    next_id: AtomicU64,
}

impl Default for GroupHub {
    fn default() -> Self {
        Self {
            users: std::array::from_fn(|_| Mutex::default()),
            conversations: std::array::from_fn(|_| Mutex::default()),
            outbox: Mutex::default(),
            pusher_wake: Notify::new(),
            pusher_started: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
        }
    }
}

fn shard<T>(shards: &[Mutex<T>; SHARDS], id: u64) -> MutexGuard<'_, T> {
    lock(&shards[(id as usize) % SHARDS])
}

impl GroupHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a stream of `user_id`. The caller then joins the user's
    /// current large groups ([`GroupSubscription::join`]). Starts the
    /// pusher on first use.
    pub fn subscribe(self: &Arc<Self>, user_id: u64, lifecycle: &Lifecycle) -> GroupSubscription {
        if !self.pusher_started.swap(true, Ordering::AcqRel) {
            let hub = Arc::clone(self);
            let stopping = lifecycle.stopping();
            lifecycle.spawn(async move { hub.run_pusher(stopping).await });
        }
        let mailbox = Arc::new(Mailbox {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user_id,
            pending: Mutex::default(),
            wake: Notify::new(),
            groups: Mutex::default(),
        });
        shard(&self.users, user_id)
            .entry(user_id)
            .or_default()
            .insert(mailbox.id, Arc::clone(&mailbox));
        GroupSubscription {
            hub: Arc::clone(self),
            mailbox,
        }
    }

    fn join(&self, mailbox: &Arc<Mailbox>, conversation_id: u64) {
        let mut groups = lock(&mailbox.groups);
        if groups.contains(&conversation_id) {
            return;
        }
        if groups.len() >= MAX_PUSHED_GROUPS_PER_STREAM {
            drop(groups);
            metrics::counter!("syncd_group_push_unregistered_total").increment(1);
            // Not silently: the device learns from Sync that it is in more
            // large groups than a stream is pushed for, and polls.
            mailbox.resync();
            return;
        }
        groups.insert(conversation_id);
        shard(&self.conversations, conversation_id)
            .entry(conversation_id)
            .or_default()
            .insert(mailbox.id, Arc::clone(mailbox));
    }

    fn leave(&self, mailbox: &Mailbox, conversation_id: u64) {
        let mut groups = lock(&mailbox.groups);
        if groups.remove(&conversation_id) {
            let mut conversations = shard(&self.conversations, conversation_id);
            if let Some(members) = conversations.get_mut(&conversation_id) {
                members.remove(&mailbox.id);
                if members.is_empty() {
                    conversations.remove(&conversation_id);
                }
            }
        }
    }

    /// A membership event's index change, applied to the user's open
    /// streams. Holds the user's shard so a stream closing meanwhile either
    /// sees the join (and leaves) or is gone before it.
    fn apply(&self, change: &LargeGroupIndexChange) {
        let users = shard(&self.users, change.user_id);
        let Some(mailboxes) = users.get(&change.user_id) else {
            return;
        };
        for mailbox in mailboxes.values() {
            if change.member {
                self.join(mailbox, change.conversation_id);
            } else {
                self.leave(mailbox, change.conversation_id);
            }
        }
    }

    /// Online subscribers of the group.
    pub fn subscribers(&self, conversation_id: u64) -> usize {
        shard(&self.conversations, conversation_id)
            .get(&conversation_id)
            .map_or(0, HashMap::len)
    }

    async fn run_pusher(&self, mut stopping: tokio::sync::watch::Receiver<bool>) {
        // Priority messages not yet readable, per group, in conv_seq order.
        let mut held: HashMap<u64, Vec<PriorityMessage>> = HashMap::new();
        loop {
            tokio::select! {
                () = self.pusher_wake.notified() => {}
                () = stopped(&mut stopping) => return,
            }
            let moved = std::mem::take(&mut *lock(&self.outbox));
            let mut visited = 0usize;
            for (conversation_id, moved) in moved {
                let mut messages = held.remove(&conversation_id).unwrap_or_default();
                messages.extend(moved.priority);
                messages.sort_by_key(|m| m.conv_seq);
                let later = messages.partition_point(|m| m.conv_seq <= moved.top);
                let mut waiting = messages.split_off(later);
                if waiting.len() > MAX_HELD_PRIORITY {
                    let dropped = waiting.len() - MAX_HELD_PRIORITY;
                    waiting.drain(..dropped);
                    metrics::counter!("syncd_group_push_degraded_total", "lane" => "held")
                        .increment(dropped as u64);
                }
                let mailboxes: Vec<Arc<Mailbox>> = shard(&self.conversations, conversation_id)
                    .get(&conversation_id)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                if !waiting.is_empty() && !mailboxes.is_empty() {
                    held.insert(conversation_id, waiting);
                }
                if moved.overflow {
                    metrics::counter!("syncd_group_push_degraded_total", "lane" => "queued")
                        .increment(1);
                }
                let lanes = Lanes::of(&messages);
                for mailbox in &mailboxes {
                    if moved.overflow {
                        mailbox.resync();
                    }
                    let named = lanes.named(mailbox.user_id);
                    mailbox.deliver(conversation_id, moved.top, &lanes.everyone, named);
                    visited += 1;
                    if visited.is_multiple_of(GROUP_PUSH_YIELD_EVERY) {
                        tokio::task::yield_now().await;
                    }
                }
                metrics::counter!("syncd_group_push_deliveries_total")
                    .increment(mailboxes.len() as u64);
            }
        }
    }
}

impl CommitObserver for GroupHub {
    fn committed(&self, event: &Committed<'_>) {
        // Membership first: a member who joins with this event hears of it.
        for change in &event.commit.large_group_index {
            self.apply(change);
        }
        let entry = &event.commit.entry;
        let conversation_id = entry.conversation_id;
        // Small groups and large groups nobody watches: one lookup.
        if self.subscribers(conversation_id) == 0 {
            return;
        }
        let Some(&(_, top)) = event
            .visible
            .iter()
            .find(|((scope, id), _)| *scope == Scope::Conversation && *id == conversation_id)
        else {
            return;
        };
        let mut outbox = lock(&self.outbox);
        let moved = outbox.entry(conversation_id).or_default();
        moved.top = moved.top.max(top);
        if let Some(message) = PriorityMessage::of(entry) {
            if moved.priority.len() < MAX_QUEUED_PRIORITY {
                moved.priority.push(message);
            } else {
                moved.overflow = true;
            }
        }
        drop(outbox);
        self.pusher_wake.notify_one();
    }

    /// A failed write's gap no longer holds a group back: what completed
    /// behind it (a held priority message among it) is pushed now, not at
    /// the group's next message.
    fn released(&self, visible: &[(crate::horizon::Key, u64)]) {
        let mut moved_any = false;
        for &((scope, conversation_id), top) in visible {
            if scope != Scope::Conversation || self.subscribers(conversation_id) == 0 {
                continue;
            }
            let mut outbox = lock(&self.outbox);
            let moved = outbox.entry(conversation_id).or_default();
            moved.top = moved.top.max(top);
            moved_any = true;
        }
        if moved_any {
            self.pusher_wake.notify_one();
        }
    }
}

/// One stream's registration; dropping it unregisters everywhere.
pub struct GroupSubscription {
    hub: Arc<GroupHub>,
    mailbox: Arc<Mailbox>,
}

impl GroupSubscription {
    /// Joins the stream to the user's large groups as the index lists
    /// them (read after [`GroupHub::subscribe`]).
    pub fn join(&self, conversation_ids: impl IntoIterator<Item = u64>) {
        for conversation_id in conversation_ids {
            self.hub.join(&self.mailbox, conversation_id);
        }
    }

    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
}

impl Drop for GroupSubscription {
    fn drop(&mut self) {
        let user_id = self.mailbox.user_id;
        {
            let mut users = shard(&self.hub.users, user_id);
            if let Some(mailboxes) = users.get_mut(&user_id) {
                mailboxes.remove(&self.mailbox.id);
                if mailboxes.is_empty() {
                    users.remove(&user_id);
                }
            }
        }
        // No index change reaches this mailbox any more: leave what it
        // joined.
        let groups: Vec<u64> = lock(&self.mailbox.groups).iter().copied().collect();
        for conversation_id in groups {
            self.hub.leave(&self.mailbox, conversation_id);
        }
    }
}

#[cfg(test)]
#[path = "groups_tests.rs"]
mod tests;
