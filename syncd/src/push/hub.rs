//! Push: which inbox seq each subscribed user has reached.
//!
//! One `watch` channel per subscribed user holds the highest inbox seq that
//! is safe to announce. Publishing overwrites it, so a subscriber that is
//! slow to read sees one coalesced "up to N" instead of a queue of notices:
//! memory per subscriber is constant and a stuck subscriber never slows the
//! send path (publishing never waits).
//!
//! Beside it, the user's newest entries ([`Recent`]), so feeds that keep
//! up push them without a store read; bounded per user and across the
//! hub ([`RECENT_PUSH_BYTES`]). Past the hub's budget the entries held
//! longest go first, whoever's they are: the newest entries are the ones
//! feeds are about to push. (Dropping the new entry instead, as before,
//! sent a growing share of feeds to the store once the budget had filled:
//! with 100,000 subscriptions at 1,000 sends/s, after 40 s and before 90 s.)

use crate::error::{Result, SyncdError};
use crate::limits::{
    MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS_PER_USER, RECENT_PUSH_BYTES, RECENT_PUSH_BYTES_PER_USER,
    RECENT_PUSH_ENTRIES_PER_USER,
};
use crate::push::recent::Recent;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use timeline_store::Entry;
use tokio::sync::watch;

const SHARDS: usize = 64;

/// What one entry of [`Hub::order`] costs, counted in the hub's budget
/// (the record outlives its entry when the user's own bounds drop it).
const ORDER_RECORD_BYTES: usize = std::mem::size_of::<(u64, u64)>();

/// One subscribed user: the announced top, and the newest entries.
struct Channel {
    top: watch::Sender<u64>,
    recent: Recent,
}

pub struct Hub {
    shards: [Mutex<HashMap<u64, Channel>>; SHARDS],
    subscriptions: AtomicUsize,
    /// Bytes held in every user's [`Recent`] together.
    recent_bytes: AtomicUsize,
    /// `(user_id, seq)` of each entry remembered, oldest first: what goes
    /// when the budget is spent. Never taken while a shard is held.
    order: Mutex<VecDeque<(u64, u64)>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            subscriptions: AtomicUsize::new(0),
            recent_bytes: AtomicUsize::new(0),
            order: Mutex::default(),
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn shard(&self, user_id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Channel>> {
        self.shards[(user_id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Announces that the user's inbox is complete up to `seq`. Never lowers
    /// the announced value; a no-op when nobody is subscribed.
    pub fn publish(&self, user_id: u64, seq: u64) {
        if let Some(channel) = self.shard(user_id).get(&user_id) {
            channel.top.send_if_modified(|current| {
                let newer = seq > *current;
                if newer {
                    *current = seq;
                }
                newer
            });
        }
    }

    /// Registers a subscriber. Publishing starts reaching it at once, so the
    /// caller reads the current inbox top *after* this returns and raises the
    /// value with [`Subscription::raise`].
    pub fn subscribe(self: &Arc<Self>, user_id: u64) -> Result<Subscription> {
        let mut shard = self.shard(user_id);
        // Both caps are checked before the user's channel is created: a
        // refused subscriber must leave no entry behind (only a dropped
        // Subscription removes one).
        let open = shard.get(&user_id).map_or(0, |c| c.top.receiver_count());
        if open >= MAX_SUBSCRIPTIONS_PER_USER {
            return Err(SyncdError::ResourceExhausted(format!(
                "user {user_id} already has {MAX_SUBSCRIPTIONS_PER_USER} open subscriptions"
            )));
        }
        let claimed = self
            .subscriptions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SUBSCRIPTIONS).then_some(n + 1)
            });
        if claimed.is_err() {
            return Err(SyncdError::ResourceExhausted(format!(
                "server has {MAX_SUBSCRIPTIONS} open subscriptions"
            )));
        }
        metrics::gauge!("syncd_push_subscribers").increment(1.0);
        let channel = shard.entry(user_id).or_insert_with(|| Channel {
            top: watch::channel(0).0,
            recent: Recent::default(),
        });
        let receiver = channel.top.subscribe();
        Ok(Subscription {
            hub: Arc::clone(self),
            user_id,
            receiver: Some(receiver),
        })
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Acquire)
    }

    /// Keeps a new inbox entry of `user_id` (its `seq` set) for the
    /// user's feeds, when the user is subscribed; past the hub's budget the
    /// entries held longest are dropped (their feeds read the store).
    pub fn remember(&self, user_id: u64, seq: u64, entry: &Entry) {
        self.remember_copies([(user_id, seq)], entry);
    }

    /// [`Self::remember`] for every inbox copy `(user_id, seq)` of one
    /// entry, taking the hub-wide order's lock once for all of them.
    pub fn remember_copies(&self, copies: impl IntoIterator<Item = (u64, u64)>, entry: &Entry) {
        let mut held = Vec::new();
        for (user_id, seq) in copies {
            let mut shard = self.shard(user_id);
            let Some(channel) = shard.get_mut(&user_id) else {
                continue;
            };
            // The copy is made only for a subscribed user: the observer
            // calls this for every inbox write of the event.
            let delta = channel.recent.remember(
                Entry {
                    seq,
                    ..entry.clone()
                },
                RECENT_PUSH_ENTRIES_PER_USER,
                RECENT_PUSH_BYTES_PER_USER,
            );
            self.account(delta);
            held.push((user_id, seq));
        }
        if held.is_empty() {
            return;
        }
        self.order_lock().extend(held);
        self.evict_oldest();
    }

    fn order_lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, u64)>> {
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the entries remembered longest ago until what is held, with
    /// the records of the order, fits the budget. One lock at a time: the
    /// order's to take the oldest record, then its user's shard.
    fn evict_oldest(&self) {
        loop {
            let (user_id, seq) = {
                let mut order = self.order_lock();
                let held = self.recent_bytes() + order.len() * ORDER_RECORD_BYTES;
                if held <= RECENT_PUSH_BYTES {
                    return;
                }
                let oldest = order.pop_front();
                // A queue that once held many tiny entries' records would
                // keep that capacity, uncounted, after larger entries came.
                if order.capacity() > 4 * order.len().max(1024) {
                    let keep = 2 * order.len();
                    order.shrink_to(keep);
                }
                match oldest {
                    Some(oldest) => oldest,
                    None => return,
                }
            };
            // Already gone (dropped by the user's own bounds, or with the
            // user's last subscription): only the record was left.
            self.forget(user_id, seq);
        }
    }

    /// Drops the held entry at `seq` of `user_id` (feeds of a range with
    /// it read the store).
    pub fn forget(&self, user_id: u64, seq: u64) {
        if let Some(channel) = self.shard(user_id).get_mut(&user_id) {
            let released = channel.recent.forget(seq);
            self.recent_bytes.fetch_sub(released, Ordering::AcqRel);
        }
    }

    /// The new state of a stored entry of `user_id`, rewritten in place.
    pub fn rewrite(&self, user_id: u64, seq: u64, entry: &Entry) {
        if let Some(channel) = self.shard(user_id).get_mut(&user_id) {
            let delta = channel.recent.rewrite(Entry {
                seq,
                ..entry.clone()
            });
            self.account(delta);
        }
    }

    /// The user's entries in `(after, through]` from memory, when all of
    /// them are held (see [`Recent::range`]).
    pub fn recent(
        &self,
        user_id: u64,
        range: (u64, u64),
        limit: usize,
        max_bytes: usize,
    ) -> Option<Vec<Entry>> {
        self.shard(user_id)
            .get(&user_id)
            .and_then(|c| c.recent.range(range, limit, max_bytes))
    }

    fn account(&self, delta: isize) {
        if delta >= 0 {
            self.recent_bytes
                .fetch_add(delta as usize, Ordering::AcqRel);
        } else {
            self.recent_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
        }
    }

    /// Bytes of entries held for feeds across all users.
    pub fn recent_bytes(&self) -> usize {
        self.recent_bytes.load(Ordering::Acquire)
    }

    /// Those bytes, with the eviction order's records: what the budget
    /// bounds.
    pub fn held_bytes(&self) -> usize {
        self.recent_bytes() + self.order_lock().len() * ORDER_RECORD_BYTES
    }
}

pub struct Subscription {
    hub: Arc<Hub>,
    user_id: u64,
    receiver: Option<watch::Receiver<u64>>,
}

impl Subscription {
    pub fn raise(&self, seq: u64) {
        self.hub.publish(self.user_id, seq);
    }

    /// The user's entries in `(after, through]` from the hub's memory, when
    /// it holds all of them.
    pub fn recent(&self, range: (u64, u64), limit: usize, max_bytes: usize) -> Option<Vec<Entry>> {
        self.hub.recent(self.user_id, range, limit, max_bytes)
    }

    /// The announced seq now, without waiting.
    pub fn current(&self) -> u64 {
        *self
            .receiver
            .as_ref()
            .expect("receiver lives until drop")
            .borrow()
    }

    /// Waits until the announced seq is above `seen` and returns it. Returns
    /// immediately when it already is.
    pub async fn wait_above(&mut self, seen: u64) -> u64 {
        let receiver = self.receiver.as_mut().expect("receiver lives until drop");
        match receiver.wait_for(|&top| top > seen).await {
            Ok(top) => *top,
            // The sender lives in the hub as long as any receiver does.
            Err(_) => seen,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut shard = self.hub.shard(self.user_id);
        if shard
            .get(&self.user_id)
            .is_some_and(|c| c.top.receiver_count() == 0)
            && let Some(mut channel) = shard.remove(&self.user_id)
        {
            let released = channel.recent.clear();
            self.hub.recent_bytes.fetch_sub(released, Ordering::AcqRel);
        }
        self.hub.subscriptions.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("syncd_push_subscribers").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slow_subscribers_get_coalesced_values_and_state_is_freed() {
        let hub = Hub::new();
        let mut sub = hub.subscribe(7).unwrap();
        for seq in 1..=1000 {
            hub.publish(7, seq);
        }
        hub.publish(7, 3); // never goes back
        assert_eq!(sub.wait_above(0).await, 1000);
        let waiting = tokio::time::timeout(Duration::from_millis(20), sub.wait_above(1000)).await;
        assert!(waiting.is_err(), "nothing newer was published");
        assert_eq!(hub.subscription_count(), 1);
        drop(sub);
        assert_eq!(hub.subscription_count(), 0);
        assert!(hub.shard(7).is_empty());
        hub.publish(7, 2000); // nobody listening: no state created
        assert!(hub.shard(7).is_empty());
    }

    /// What the hub keeps for feeds is counted across users, freed with
    /// the last subscription, and never past the budget: past it the
    /// entries held longest go, so the newest of every user stay (a feed
    /// keeping up needs those).
    #[tokio::test]
    async fn past_the_budget_the_oldest_entries_go_and_the_newest_stay() {
        let hub = Hub::new();
        let big = |seq| Entry {
            seq,
            text: "x".repeat(60 * 1024),
            ..Entry::new(timeline_store::EntryKind::Message, 1)
        };
        hub.remember(1, 1, &big(1));
        assert_eq!(hub.recent_bytes(), 0, "nobody subscribed: nothing kept");
        let users = RECENT_PUSH_BYTES / (60 * 1024) + 10;
        let subs: Vec<_> = (0..users as u64)
            .map(|u| hub.subscribe(u).unwrap())
            .collect();
        for user in 0..users as u64 {
            hub.remember(user, 1, &big(1));
            assert!(hub.held_bytes() <= RECENT_PUSH_BYTES);
            assert!(
                hub.recent(user, (0, 1), 10, 1 << 20).is_some(),
                "user {user}'s new entry is held"
            );
        }
        let held: Vec<bool> = (0..users as u64)
            .map(|user| hub.recent(user, (0, 1), 10, 1 << 20).is_some())
            .collect();
        let first_held = held.iter().position(|&h| h).unwrap();
        assert!(first_held >= 10, "the oldest entries were evicted");
        assert!(held[first_held..].iter().all(|&h| h), "and only those");
        let held = hub.recent_bytes();
        drop(subs);
        assert!(held > 0);
        assert_eq!(hub.recent_bytes(), 0, "freed with the subscriptions");
    }

    /// Records of entries the users' own bounds dropped are counted too,
    /// so a stream of small entries cannot grow the order without bound.
    #[tokio::test]
    async fn the_eviction_order_is_bounded_with_the_entries() {
        let hub = Hub::new();
        let _sub = hub.subscribe(1).unwrap();
        let small = Entry::new(timeline_store::EntryKind::Message, 1);
        let records = RECENT_PUSH_BYTES / ORDER_RECORD_BYTES;
        for seq in 1..=records as u64 + 1_000 {
            hub.remember(1, seq, &small);
        }
        assert!(hub.held_bytes() <= RECENT_PUSH_BYTES);
        assert!(hub.order_lock().len() < records);
        let top = records as u64 + 1_000;
        let newest = (top - RECENT_PUSH_ENTRIES_PER_USER as u64, top);
        assert!(hub.recent(1, newest, 100, 1 << 20).is_some());
    }

    /// One event's copies go in together: each subscribed recipient keeps
    /// its copy at its own seq, and the order records only those.
    #[tokio::test]
    async fn an_events_copies_are_remembered_together_for_subscribed_users_only() {
        let hub = Hub::new();
        let _subs: Vec<_> = [1u64, 3]
            .iter()
            .map(|&u| hub.subscribe(u).unwrap())
            .collect();
        let entry = Entry::new(timeline_store::EntryKind::Message, 9);
        hub.remember_copies([(1, 5), (2, 7), (3, 2)], &entry);
        assert!(hub.recent(1, (4, 5), 10, 1 << 20).is_some());
        assert!(hub.recent(3, (1, 2), 10, 1 << 20).is_some());
        assert!(
            hub.recent(2, (6, 7), 10, 1 << 20).is_none(),
            "not subscribed"
        );
        assert_eq!(
            hub.order_lock().iter().copied().collect::<Vec<_>>(),
            [(1, 5), (3, 2)]
        );
        assert_eq!(hub.recent_bytes(), 2 * entry.wire_bytes());
    }

    #[tokio::test]
    async fn per_user_subscription_limit() {
        let hub = Hub::new();
        let subs: Vec<_> = (0..MAX_SUBSCRIPTIONS_PER_USER)
            .map(|_| hub.subscribe(1).unwrap())
            .collect();
        assert!(matches!(
            hub.subscribe(1),
            Err(SyncdError::ResourceExhausted(_))
        ));
        assert!(hub.subscribe(2).is_ok());
        drop(subs);
        assert!(hub.subscribe(1).is_ok());
    }

    /// A refused subscription leaves nothing behind: a user turned away at
    /// the server-wide cap used to keep an empty channel in the hub for good.
    #[tokio::test]
    async fn refused_subscriptions_leave_no_state() {
        let hub = Hub::new();
        let subs: Vec<_> = (0..MAX_SUBSCRIPTIONS as u64)
            .map(|i| {
                hub.subscribe(1_000_000 + i / MAX_SUBSCRIPTIONS_PER_USER as u64)
                    .unwrap()
            })
            .collect();
        for user in [7u64, 8, 9] {
            assert!(matches!(
                hub.subscribe(user),
                Err(SyncdError::ResourceExhausted(_))
            ));
            assert!(
                !hub.shard(user).contains_key(&user),
                "user {user} left an entry"
            );
        }
        assert_eq!(hub.subscription_count(), MAX_SUBSCRIPTIONS);
        drop(subs);
        assert_eq!(hub.subscription_count(), 0);
        assert!(hub.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
