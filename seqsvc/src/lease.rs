//! Lease fencing of one AllocSvr: which slots it may serve right now.
//!
//! The AllocSvr reads the routing table from the shared store every sync
//! interval. A read whose table lists a slot for this AllocSvr extends its
//! lease to `sent + lease`, measured from when the read was **sent** (a
//! reply that sat in a socket buffer while the process was frozen must not
//! count as fresh). A slot newly listed for it starts serving only
//! `activation` after the read was **received** (the table was written
//! before that), and `activation > lease + sync interval`, so the previous
//! owner's lease has run out by then. A slot no longer listed stops at once.
//!
//! Each time a slot is gained it gets a fresh payload (the AllocSvr keeps a
//! new allocator there), so nothing cached under an earlier ownership, not
//! even a load still in flight, is ever used again: a request checks the
//! payload it started with is still the slot's payload when it finishes.

use crate::routing::RoutingTable;
use std::sync::Arc;
use tokio::time::Instant;

/// Why a slot is not served here now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotServing {
    /// No routing table read yet.
    NoTable,
    /// The table gives the slot to another AllocSvr (or nobody).
    NotOwner,
    /// Newly assigned; serves after this much longer.
    Activating { remaining_ms: u64 },
    /// No successful table read for a whole lease.
    LeaseExpired,
}

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotServing::NoTable => write!(f, "no routing table read yet"),
            NotServing::NotOwner => write!(f, "not the owner"),
            NotServing::Activating { remaining_ms } => {
                write!(f, "newly assigned, serving in {remaining_ms} ms")
            }
            NotServing::LeaseExpired => write!(f, "lease expired (routing table unreadable)"),
        }
    }
}

struct Slot<T> {
    active_at: Instant,
    payload: Arc<T>,
}

/// What one table read changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub gained: Vec<u32>,
    pub lost: Vec<u32>,
    /// The read carried an older version than already applied: ignored.
    pub stale: bool,
}

pub struct Fence<T> {
    me: String,
    table: Option<Arc<RoutingTable>>,
    lease_until: Option<Instant>,
    slots: Vec<Option<Slot<T>>>,
}

impl<T> Fence<T> {
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            table: None,
            lease_until: None,
            slots: Vec::new(),
        }
    }

    pub fn table(&self) -> Option<&Arc<RoutingTable>> {
        self.table.as_ref()
    }

    pub fn lease_until(&self) -> Option<Instant> {
        self.lease_until
    }

    /// Applies a successful read. `make` builds the payload of a gained slot.
    pub fn apply_read(
        &mut self,
        table: RoutingTable,
        sent: Instant,
        received: Instant,
        mut make: impl FnMut(u32) -> T,
    ) -> Applied {
        let mut applied = Applied::default();
        if let Some(current) = &self.table
            && table.version < current.version
        {
            applied.stale = true;
            return applied;
        }
        let lease_until = sent + table.lease.lease;
        self.lease_until = Some(self.lease_until.map_or(lease_until, |t| t.max(lease_until)));
        if self.slots.len() != table.owners.len() {
            self.slots = (0..table.owners.len()).map(|_| None).collect();
        }
        for (slot, owner) in table.owners.iter().enumerate() {
            let mine = owner.as_deref() == Some(self.me.as_str());
            match (&self.slots[slot], mine) {
                (None, true) => {
                    self.slots[slot] = Some(Slot {
                        active_at: received + table.lease.activation,
                        payload: Arc::new(make(slot as u32)),
                    });
                    applied.gained.push(slot as u32);
                }
                (Some(_), false) => {
                    self.slots[slot] = None;
                    applied.lost.push(slot as u32);
                }
                _ => {}
            }
        }
        self.table = Some(Arc::new(table));
        applied
    }

    /// The payload of a slot this AllocSvr may serve at `now`.
    pub fn serving(&self, slot: u32, now: Instant) -> Result<Arc<T>, NotServing> {
        if self.table.is_none() {
            return Err(NotServing::NoTable);
        }
        let Some(Some(state)) = self.slots.get(slot as usize) else {
            return Err(NotServing::NotOwner);
        };
        if self.lease_until.is_none_or(|until| now >= until) {
            return Err(NotServing::LeaseExpired);
        }
        if now < state.active_at {
            return Err(NotServing::Activating {
                remaining_ms: (state.active_at - now).as_millis() as u64 + 1,
            });
        }
        Ok(Arc::clone(&state.payload))
    }

    /// Whether `payload` is still the served payload of `slot` at `now`: the
    /// check a request makes before it replies.
    pub fn still_serving(&self, slot: u32, payload: &Arc<T>, now: Instant) -> bool {
        self.serving(slot, now)
            .is_ok_and(|current| Arc::ptr_eq(&current, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{LeaseConfig, RoutingTable};
    use std::time::Duration;

    fn lease() -> LeaseConfig {
        LeaseConfig::short_for_tests()
    }

    fn table(version: u64, owner_of_slot0: &str) -> RoutingTable {
        let mut t = RoutingTable::initial(10, lease()).unwrap();
        t.version = version;
        t.owners[0] = Some(owner_of_slot0.to_string());
        t
    }

    #[tokio::test(start_paused = true)]
    async fn new_slot_waits_for_activation() {
        let mut fence = Fence::<u32>::new("a");
        assert_eq!(
            fence.serving(0, Instant::now()).unwrap_err(),
            NotServing::NoTable
        );
        let t0 = Instant::now();
        let applied = fence.apply_read(table(1, "a"), t0, t0, |_| 1);
        assert_eq!(applied.gained, vec![0]);
        assert!(matches!(
            fence.serving(0, Instant::now()),
            Err(NotServing::Activating { .. })
        ));
        assert_eq!(
            fence.serving(1, Instant::now()).unwrap_err(),
            NotServing::NotOwner
        );
        // Keep the lease alive by reading; serving starts at activation.
        for _ in 0..6 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let now = Instant::now();
            fence.apply_read(table(1, "a"), now, now, |_| 2);
        }
        assert!(fence.serving(0, Instant::now()).is_err());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(*fence.serving(0, Instant::now()).unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_is_measured_from_the_send_of_the_read() {
        let mut fence = Fence::<u32>::new("a");
        let start = Instant::now();
        fence.apply_read(table(1, "a"), start, start, |_| 1);
        tokio::time::advance(Duration::from_millis(450)).await;
        // A read sent at the start but answered only now (the process was
        // frozen) extends nothing past start + lease.
        fence.apply_read(table(1, "a"), start, Instant::now(), |_| 2);
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(
            fence.serving(0, Instant::now()).unwrap_err(),
            NotServing::LeaseExpired
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_owner_stops_before_new_owner_starts() {
        // The worst case: the old owner's last read is sent just before the
        // table moves the slot; the new owner reads it at once.
        let config = lease();
        let mut old = Fence::<u32>::new("a");
        let mut new = Fence::<u32>::new("b");
        let t = Instant::now();
        old.apply_read(table(1, "a"), t, t, |_| 1);
        tokio::time::advance(config.activation).await;
        let last_read = Instant::now();
        old.apply_read(table(1, "a"), last_read, last_read, |_| 1);
        assert!(old.serving(0, last_read).is_ok());
        new.apply_read(table(2, "b"), last_read, last_read, |_| 2);
        // From here on the old owner cannot read (partitioned).
        let mut overlap = false;
        for step in 1..=200 {
            tokio::time::advance(Duration::from_millis(10)).await;
            let now = Instant::now();
            if step % 10 == 0 {
                new.apply_read(table(2, "b"), now, now, |_| 2);
            }
            overlap |= old.serving(0, now).is_ok() && new.serving(0, now).is_ok();
        }
        assert!(!overlap);
        assert!(new.serving(0, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn lost_slot_stops_at_once_and_regain_is_a_fresh_payload() {
        let mut fence = Fence::<u32>::new("a");
        let t = Instant::now();
        fence.apply_read(table(1, "a"), t, t, |_| 1);
        tokio::time::advance(lease().activation).await;
        let now = Instant::now();
        fence.apply_read(table(1, "a"), now, now, |_| 9);
        let first = fence.serving(0, now).unwrap();
        let applied = fence.apply_read(table(2, "b"), now, now, |_| 9);
        assert_eq!(applied.lost, vec![0]);
        assert!(!fence.still_serving(0, &first, now));
        // An older table arriving late changes nothing.
        assert!(fence.apply_read(table(1, "a"), now, now, |_| 9).stale);
        fence.apply_read(table(3, "a"), now, now, |_| 3);
        tokio::time::advance(lease().activation).await;
        let now = Instant::now();
        fence.apply_read(table(3, "a"), now, now, |_| 9);
        let regained = fence.serving(0, now).unwrap();
        assert_eq!(*regained, 3);
        assert!(!fence.still_serving(0, &first, now));
    }
}
