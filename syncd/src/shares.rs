//! Per-key shares of a bounded resource: one key (a user) holds at most
//! `per_key` at once, so it cannot take everything a node-wide bound
//! leaves for everyone. A share is given back when dropped.
//!
//! Callers take a share only while holding one of the node-wide permits,
//! so the map holds at most as many keys as there are permits.

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
}
