//! Per-key shares of a bounded resource: one key (a user) holds at most
//! `per_key` at once, so it cannot take everything a node-wide bound
//! leaves for everyone. A share is given back when dropped.
//!
//! Callers take a share only while holding one of the node-wide permits
//! (or, for bytes, only keys with bytes held stay in the map), so the map
//! holds at most as many keys as there are grants outstanding.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct Shares<K: Hash + Eq + Clone> {
    per_key: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One share of a key, given back on drop.
pub struct Share<K: Hash + Eq + Clone> {
    shares: Arc<Shares<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Shares<K> {
    pub fn new(per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            per_key,
            held: Mutex::default(),
        })
    }

    /// A share of `key`, or none when it holds all of its own.
    pub fn take(self: &Arc<Self>, key: K) -> Option<Share<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(key.clone()).or_default();
        if *count >= self.per_key {
            return None;
        }
        *count += 1;
        Some(Share {
            shares: Arc::clone(self),
            key,
        })
    }
}

impl<K: Hash + Eq + Clone + std::fmt::Debug> std::fmt::Debug for Share<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Share").field(&self.key).finish()
    }
}

impl<K: Hash + Eq + Clone> Drop for Share<K> {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Per-key shares of a budget counted in bytes: a key may hold at most
/// `per_key` bytes at once, but always one grant when it holds nothing
/// (a single large event of a user is bounded elsewhere).
pub struct ByteShares<K: Hash + Eq + Clone> {
    per_key: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// Bytes granted to one key, given back on drop.
pub struct ByteShare<K: Hash + Eq + Clone> {
    shares: Arc<ByteShares<K>>,
    key: K,
    bytes: usize,
}

impl<K: Hash + Eq + Clone> ByteShares<K> {
    pub fn new(per_key: usize) -> Arc<Self> {
        Arc::new(Self {
            per_key,
            held: Mutex::default(),
        })
    }

    /// `bytes` for `key`, or, when that would take it past its share, the
    /// bytes it holds now.
    pub fn take(self: &Arc<Self>, key: K, bytes: usize) -> Result<ByteShare<K>, usize> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.entry(key.clone()).or_default();
        if *now > 0 && now.saturating_add(bytes) > self.per_key {
            return Err(*now);
        }
        *now += bytes;
        Ok(ByteShare {
            shares: Arc::clone(self),
            key,
            bytes,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for ByteShare<K> {
    fn drop(&mut self) {
        let mut held = self.shares.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = held.get_mut(&self.key) {
            *now = now.saturating_sub(self.bytes);
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
        let a = [shares.take(1).unwrap(), shares.take(1).unwrap()];
        assert!(shares.take(1).is_none());
        let b = shares.take(2).unwrap();
        drop(a);
        assert!(
            shares.held.lock().unwrap().get(&1).is_none(),
            "forgotten at zero"
        );
        let _again = shares.take(1).unwrap();
        drop(b);
        assert_eq!(shares.held.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_key_holds_at_most_its_bytes_but_always_one_grant() {
        let shares = ByteShares::new(100);
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
