//! Bucket markers this process knows exist, so an event's rows skip the
//! marker write for buckets already marked (a bucket takes 65,536 seqs,
//! so nearly every row's bucket is known).
//!
//! Asked once per row of every event, so the lookup must be cheap: a set
//! per shard behind its own mutex (held for one probe), hashed with
//! foldhash. Bounded by [`KNOWN_BUCKETS_CACHE`](super::KNOWN_BUCKETS_CACHE): a
//! shard that fills up forgets everything it knew, and the buckets it
//! held are marked again the next time a row lands in them (an idempotent
//! write each). A general-purpose cache (moka) spent a third of the rows'
//! write path in this lookup.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

use super::Timeline;

/// Shards of the set (lock contention is per shard).
const SHARDS: usize = 64;

type Key = (Timeline, u64, u64);
type State = foldhash::fast::FixedState;

pub(super) struct KnownBuckets {
    shards: Box<[Mutex<HashSet<Key, State>>]>,
    per_shard: usize,
    state: State,
}

impl KnownBuckets {
    /// A set of at most about `capacity` buckets.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashSet::with_hasher(State::default())))
                .collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            state: State::default(),
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, HashSet<Key, State>> {
        let mut hasher = self.state.build_hasher();
        key.1.hash(&mut hasher);
        let index = (std::hash::Hasher::finish(&hasher) as usize) % SHARDS;
        // A set left mid-insert by a panic is still a set of marked
        // buckets: nothing in it can be wrong.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn contains(&self, key: &Key) -> bool {
        self.shard(key).contains(key)
    }

    /// Records a bucket whose marker is stored.
    pub(super) fn insert(&self, key: Key) {
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard {
            shard.clear();
        }
        shard.insert(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_what_was_inserted() {
        let known = KnownBuckets::new(1_000);
        let key = (Timeline::Inbox, 7, 0);
        assert!(!known.contains(&key));
        known.insert(key);
        assert!(known.contains(&key));
        assert!(!known.contains(&(Timeline::Conversation, 7, 0)));
        assert!(!known.contains(&(Timeline::Inbox, 7, 1)));
    }

    #[test]
    fn stays_within_its_bound() {
        let known = KnownBuckets::new(SHARDS * 4);
        for owner in 0..10_000 {
            known.insert((Timeline::Inbox, owner, 0));
        }
        let held: usize = known.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * 4, "{held} held");
        // The last one inserted is always known.
        assert!(known.contains(&(Timeline::Inbox, 9_999, 0)));
    }
}
