//! Per-key shares of a bounded resource: one key (a user) holds at most
//! `per_key` at once (streams, searches, bytes), so it cannot take
//! everything a node-wide bound leaves for everyone. A key holding nothing
//! may always take one grant (a single large event of a user is bounded
//! elsewhere). A share is given back when dropped.
//!
//! Only keys with something held stay in the map, and callers take shares
//! alongside a node-wide permit, so the map holds at most as many keys as
//! there are grants outstanding.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct Shares<K: Hash + Eq + Clone> {
    per_key: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// What one grant holds of a key's share, given back on drop.
pub struct Share<K: Hash + Eq + Clone> {
    shares: Arc<Shares<K>>,
    key: K,
    amount: usize,
}

impl<K: Hash + Eq + Clone> Shares<K> {
    pub fn new(per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            per_key,
            held: Mutex::default(),
        })
    }

    /// `amount` for `key`, or, when that would take it past its share
    /// (and it holds something already), the amount it holds now.
    pub fn take(self: &Arc<Self>, key: K, amount: usize) -> Result<Share<K>, usize> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.entry(key.clone()).or_default();
        if *now > 0 && now.saturating_add(amount) > self.per_key {
            return Err(*now);
        }
        *now += amount;
        Ok(Share {
            shares: Arc::clone(self),
            key,
            amount,
        })
    }
}

impl<K: Hash + Eq + Clone + std::fmt::Debug> std::fmt::Debug for Share<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Share")
            .field(&self.key)
            .field(&self.amount)
            .finish()
    }
}

impl<K: Hash + Eq + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = held.get_mut(&self.key) {
            *now = now.saturating_sub(self.amount);
            if *now == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_its_share_and_gets_it_back() {
        let shares = Shares::new(2);
        let a = [shares.take(1, 1).unwrap(), shares.take(1, 1).unwrap()];
        assert!(shares.take(1, 1).is_err());
        let b = shares.take(2, 1).unwrap();
        drop(a);
        assert!(
            shares.held.lock().unwrap().get(&1).is_none(),
            "forgotten at zero"
        );
        let _again = shares.take(1, 1).unwrap();
        drop(b);
        assert_eq!(shares.held.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_key_holds_at_most_its_bytes_but_always_one_grant() {
        let shares = Shares::new(100);
        // Alone, even a grant above the share is taken.
        let large = shares.take(1, 150).unwrap();
        assert_eq!(shares.take(1, 1).err(), Some(150));
        drop(large);
        let a = shares.take(1, 60).unwrap();
        let _b = shares.take(1, 40).unwrap();
        assert_eq!(shares.take(1, 1).err(), Some(100));
        let _other = shares.take(2, 100).unwrap();
        drop(a);
        shares.take(1, 60).unwrap();
    }
}
