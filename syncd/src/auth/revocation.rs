//! Revoked device tokens: a cutoff per device and per user, refused on
//! every call and on open push streams.
//!
//! A revocation refuses the tokens of a device (or of all a user's
//! devices) issued *before the second after* it was made: a stolen token
//! stops working, including one minted in the same second, and the next
//! login gets a fresh token that works. A token that does not say when it
//! was issued (a JWT without `iat`, a `tl1` token minted before issue
//! times were kept) counts as issued at time 0, so any revocation covers
//! it. Service tokens are not revocable.
//!
//! The cutoffs live in the store ([`timeline_store::Revocations`]); this
//! node caches them and polls the store's feed every
//! [`REVOCATION_POLL_INTERVAL`], so a revocation made on any node sharing
//! the store is seen here within about that long. Cache and feed merge by
//! taking the higher cutoff, so a read racing a poll can never put an older
//! cutoff back. Each poll re-reads [`FEED_OVERLAP`] of the feed, which
//! covers writers whose clock is that much behind ours, and cached
//! cutoffs are read again after [`CUTOFF_CACHE_TTL`] in case one was
//! missed anyway.

use super::{Principal, Verified, now_unix_s};
use crate::error::{Result, SyncdError};
use std::sync::Arc;
use std::time::Duration;
use timeline_store::{Revocation, TimelineStore};
use tokio::sync::watch;

/// How often the feed is read: a revocation made on another node is seen
/// here within about this long (the contract is a second).
pub const REVOCATION_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How much of the feed each poll reads again (clock differences between
/// nodes, writes still landing when the previous poll read).
pub const FEED_OVERLAP: Duration = Duration::from_secs(5);
/// Feed entries one read returns at most (the poll continues from the
/// last one's time).
pub const FEED_PAGE: usize = 10_000;
/// Devices and users whose cutoffs are cached.
pub const CUTOFF_CACHE_ENTRIES: u64 = 200_000;
/// A cached cutoff is read from the store again after this long.
pub const CUTOFF_CACHE_TTL: Duration = Duration::from_secs(600);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn cutoff_cache<K>() -> moka::sync::Cache<K, u64>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(CUTOFF_CACHE_ENTRIES)
        .time_to_live(CUTOFF_CACHE_TTL)
        .build()
}

pub struct RevocationGuard {
    store: Arc<dyn TimelineStore>,
    /// Every device of the user.
    users: moka::sync::Cache<u64, u64>,
    devices: moka::sync::Cache<(u64, String), u64>,
    /// Bumped whenever a cutoff rose: open streams check their token again.
    raised: watch::Sender<u64>,
}

impl RevocationGuard {
    pub fn new(store: Arc<dyn TimelineStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            users: cutoff_cache(),
            devices: cutoff_cache(),
            raised: watch::Sender::new(0),
        })
    }

    /// Merges a cutoff (the higher one stays); true if it rose.
    fn merge_user(&self, user_id: u64, before_s: u64) -> bool {
        let mut rose = false;
        self.users.entry(user_id).and_upsert_with(|old| {
            let old = old.map_or(0, |e| e.into_value());
            rose = before_s > old;
            old.max(before_s)
        });
        rose
    }

    fn merge_device(&self, user_id: u64, device_id: &str, before_s: u64) -> bool {
        let mut rose = false;
        self.devices
            .entry((user_id, device_id.to_owned()))
            .and_upsert_with(|old| {
                let old = old.map_or(0, |e| e.into_value());
                rose = before_s > old;
                old.max(before_s)
            });
        rose
    }

    fn merge(&self, revocation: &Revocation) -> bool {
        match &revocation.device_id {
            Some(device) => self.merge_device(revocation.user_id, device, revocation.before_s),
            None => self.merge_user(revocation.user_id, revocation.before_s),
        }
    }

    /// The cutoff for a device's tokens, from the cache or the store.
    async fn cutoff(&self, user_id: u64, device_id: &str) -> Result<u64> {
        let key = (user_id, device_id.to_owned());
        if let (Some(user), Some(device)) = (self.users.get(&user_id), self.devices.get(&key)) {
            return Ok(user.max(device));
        }
        let stored = self.store.revoked_before(user_id, device_id).await?;
        self.merge_user(user_id, stored.user);
        self.merge_device(user_id, device_id, stored.device);
        let user = self.users.get(&user_id).unwrap_or(stored.user);
        let device = self.devices.get(&key).unwrap_or(stored.device);
        Ok(user.max(device))
    }

    /// Refuses a device token issued before its device's or user's cutoff.
    pub async fn check(&self, verified: &Verified) -> Result<()> {
        let Principal::Device { user_id, device_id } = &verified.principal else {
            return Ok(());
        };
        let cutoff = self.cutoff(*user_id, device_id).await?;
        let issued = verified.issued_at_s.unwrap_or(0);
        if issued < cutoff {
            return Err(SyncdError::Unauthenticated(format!(
                "token revoked: tokens of user {user_id}'s device {device_id:?} issued before {cutoff} (unix seconds) are refused; log in again"
            )));
        }
        Ok(())
    }

    /// Revokes the tokens of `user_id`'s device (every device when `None`)
    /// issued up to now; effective here at once. Returns the cutoff.
    pub async fn revoke(&self, user_id: u64, device_id: Option<String>) -> Result<u64> {
        let revocation = Revocation {
            user_id,
            device_id,
            // The second after now: a token minted in this same second,
            // before the call, is refused too.
            before_s: now_unix_s() + 1,
        };
        let stored = self.store.revoke(&revocation, now_ms()).await?;
        let revocation = Revocation {
            before_s: stored,
            ..revocation
        };
        if self.merge(&revocation) {
            self.raised.send_modify(|n| *n += 1);
        }
        Ok(stored)
    }

    /// Resolves with the refusal once `verified` is revoked (never for a
    /// service): an open push stream ends with it.
    pub async fn until_revoked(&self, verified: &Verified) -> SyncdError {
        let mut raised = self.raised.subscribe();
        // Check once at once: a revocation between the call's own check and
        // this subscription raised the counter before it could be seen.
        raised.mark_changed();
        loop {
            if raised.changed().await.is_err() {
                return std::future::pending().await;
            }
            if let Err(error) = self.check(verified).await
                && matches!(error, SyncdError::Unauthenticated(_))
            {
                return error;
            }
        }
    }

    /// Reads the feed every [`REVOCATION_POLL_INTERVAL`] until `stopping`.
    pub async fn poll_feed(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut since = now_ms().saturating_sub(FEED_OVERLAP.as_millis() as u64);
        let mut ticks = tokio::time::interval(REVOCATION_POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = crate::lifecycle::stopped(&mut stopping) => return,
            }
            let started = now_ms();
            match self.read_feed(since).await {
                Ok(()) => since = started.saturating_sub(FEED_OVERLAP.as_millis() as u64),
                Err(error) => tracing::warn!(%error, "cannot read the revocation feed; retrying"),
            }
        }
    }

    async fn read_feed(&self, since_ms: u64) -> Result<()> {
        let mut since = since_ms;
        let mut rose = false;
        loop {
            let page = self.store.revocations_since(since, FEED_PAGE).await?;
            for recorded in &page {
                rose |= self.merge(&recorded.revocation);
            }
            match page.last() {
                Some(last) if page.len() == FEED_PAGE && last.recorded_at_ms > since => {
                    since = last.recorded_at_ms;
                }
                _ => break,
            }
        }
        if rose {
            self.raised.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline_store::Revocations as _;
    use timeline_store::testsuite::MemoryStore;

    fn device_token(user_id: u64, device: &str, issued_at_s: Option<u64>) -> Verified {
        Verified {
            principal: Principal::Device {
                user_id,
                device_id: device.into(),
            },
            issued_at_s,
        }
    }

    #[tokio::test]
    async fn revoked_tokens_are_refused_and_later_ones_work() {
        let store = Arc::new(MemoryStore::new());
        let guard = RevocationGuard::new(store.clone());
        let now = now_unix_s();
        let old = device_token(7, "phone", Some(now));
        let laptop = device_token(7, "laptop", Some(now));
        let other_user = device_token(8, "phone", Some(now));
        guard.check(&old).await.unwrap();
        let cutoff = guard.revoke(7, Some("phone".into())).await.unwrap();
        assert!(cutoff > now, "{cutoff} {now}");
        let refused = guard.check(&old).await.unwrap_err();
        assert!(refused.to_string().contains("revoked"), "{refused}");
        guard.check(&laptop).await.unwrap();
        guard.check(&other_user).await.unwrap();
        guard
            .check(&device_token(7, "phone", Some(cutoff)))
            .await
            .unwrap();
        // Without an issue time a token predates every revocation.
        assert!(guard.check(&device_token(7, "phone", None)).await.is_err());
        guard.revoke(7, None).await.unwrap();
        assert!(guard.check(&laptop).await.is_err());
        let service = Verified {
            principal: Principal::Service { name: "ops".into() },
            issued_at_s: None,
        };
        guard.check(&service).await.unwrap();
        // A fresh guard (a restart) reads the cutoffs from the store.
        let restarted = RevocationGuard::new(store);
        assert!(restarted.check(&old).await.is_err());
        assert!(restarted.check(&laptop).await.is_err());
    }

    /// Another node's revocation reaches this one through the feed, and an
    /// open stream's wait ends with it.
    /// A revocation between a stream's token check and the start of its
    /// wait raised the counter before the wait subscribed to it: the wait
    /// must still end.
    #[tokio::test]
    async fn a_revocation_just_before_the_wait_still_ends_it() {
        let store = Arc::new(MemoryStore::new());
        let guard = RevocationGuard::new(store);
        let token = device_token(7, "phone", Some(now_unix_s()));
        guard.check(&token).await.unwrap();
        guard.revoke(7, None).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(1), guard.until_revoked(&token))
            .await
            .expect("the wait ends at once");
        assert!(matches!(ended, SyncdError::Unauthenticated(_)), "{ended}");
    }

    #[tokio::test]
    async fn revocations_by_another_node_arrive_through_the_feed() {
        let store = Arc::new(MemoryStore::new());
        let here = RevocationGuard::new(store.clone());
        let (_stop, stopping) = watch::channel(false);
        tokio::spawn(Arc::clone(&here).poll_feed(stopping));
        let token = device_token(9, "phone", Some(now_unix_s()));
        here.check(&token).await.unwrap(); // now cached as not revoked
        let waiting = {
            let here = Arc::clone(&here);
            let token = token.clone();
            tokio::spawn(async move { here.until_revoked(&token).await })
        };
        let revocation = Revocation {
            user_id: 9,
            device_id: None,
            before_s: now_unix_s() + 1,
        };
        store.revoke(&revocation, now_ms()).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the stream's wait ends within a second or so")
            .unwrap();
        assert!(matches!(ended, SyncdError::Unauthenticated(_)), "{ended}");
        assert!(here.check(&token).await.is_err());
    }
}
