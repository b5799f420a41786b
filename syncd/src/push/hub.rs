//! Push: which inbox seq each subscribed user has reached.
//!
//! One `watch` channel per subscribed user holds the highest inbox seq that
//! is safe to announce. Publishing overwrites it, so a subscriber that is
//! slow to read sees one coalesced "up to N" instead of a queue of notices:
//! memory per subscriber is constant and a stuck subscriber never slows the
//! send path (publishing never waits).

use crate::error::{Result, SyncdError};
use crate::limits::{MAX_SUBSCRIPTIONS, MAX_SUBSCRIPTIONS_PER_USER};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

const SHARDS: usize = 64;

pub struct Hub {
    shards: [Mutex<HashMap<u64, watch::Sender<u64>>>; SHARDS],
    subscriptions: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            subscriptions: AtomicUsize::new(0),
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn shard(&self, user_id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Sender<u64>>> {
        self.shards[(user_id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Announces that the user's inbox is complete up to `seq`. Never lowers
    /// the announced value; a no-op when nobody is subscribed.
    pub fn publish(&self, user_id: u64, seq: u64) {
        if let Some(sender) = self.shard(user_id).get(&user_id) {
            sender.send_if_modified(|current| {
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
        let open = shard.get(&user_id).map_or(0, |s| s.receiver_count());
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
        let sender = shard.entry(user_id).or_insert_with(|| watch::channel(0).0);
        let receiver = sender.subscribe();
        Ok(Subscription {
            hub: Arc::clone(self),
            user_id,
            receiver: Some(receiver),
        })
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.load(Ordering::Acquire)
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
            .is_some_and(|s| s.receiver_count() == 0)
        {
            shard.remove(&self.user_id);
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
