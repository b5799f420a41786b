//! Async read/write locks per key, created on demand and freed when unused,
//! so memory is bounded by the keys in use rather than all keys ever seen.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

pub struct KeyedLocks<K> {
    map: Mutex<HashMap<K, Arc<RwLock<()>>>>,
}

impl<K: Hash + Eq + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

enum Held {
    Read(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

/// Holds one key's lock; releases it (and the key's entry when nobody else
/// uses it) on drop.
pub struct KeyGuard<K: Hash + Eq + Clone> {
    locks: Arc<KeyedLocks<K>>,
    key: K,
    lock: Arc<RwLock<()>>,
    held: Option<Held>,
}

impl<K: Hash + Eq + Clone> KeyedLocks<K> {
    fn entry(&self, key: &K) -> Arc<RwLock<()>> {
        // Clones are only made under this mutex, which is what makes the
        // reference count in `drop` a reliable "nobody else" test.
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(key.clone()).or_default())
    }

    pub async fn read(self: &Arc<Self>, key: K) -> KeyGuard<K> {
        let lock = self.entry(&key);
        let held = Held::Read(Arc::clone(&lock).read_owned().await);
        KeyGuard {
            locks: Arc::clone(self),
            key,
            lock,
            held: Some(held),
        }
    }

    pub async fn write(self: &Arc<Self>, key: K) -> KeyGuard<K> {
        let lock = self.entry(&key);
        let held = Held::Write(Arc::clone(&lock).write_owned().await);
        KeyGuard {
            locks: Arc::clone(self),
            key,
            lock,
            held: Some(held),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl<K: Hash + Eq + Clone> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Ours plus the map's: nobody else holds or waits for this key.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writers_exclude_each_other_and_entries_are_freed() {
        let locks: Arc<KeyedLocks<u64>> = Arc::default();
        let first = locks.write(1).await;
        let blocked = tokio::time::timeout(Duration::from_millis(20), locks.write(1)).await;
        assert!(blocked.is_err(), "second writer must wait");
        let other = locks.write(2).await; // other keys are independent
        drop(first);
        let second = tokio::time::timeout(Duration::from_millis(200), locks.write(1)).await;
        assert!(second.is_ok());
        drop(second);
        drop(other);
        assert_eq!(locks.len(), 0);
        let r1 = locks.read(3).await;
        let r2 = locks.read(3).await; // readers share
        drop((r1, r2));
        assert_eq!(locks.len(), 0);
    }
}
