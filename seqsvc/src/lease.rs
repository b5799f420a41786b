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
//!
//! An ownership period lasts only while this AllocSvr sees every table
//! version and never lets its lease lapse. A read that arrives after the
//! lease ran out, or that skips a version, starts **every** slot over: all
//! payloads are dropped, and the slots the read lists are gained afresh
//! (new allocator, `max_seq` reloaded, a full activation delay). The skipped
//! versions may have given a slot to another AllocSvr that served and raised
//! it before the slot came back; a lapsed AllocSvr has promised to have
//! stopped, and so comes back as a new owner would. Keeping a payload across
//! either once let a regained slot hand out seqs another owner had already
//! handed out.

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
    /// Slots with a fresh payload (after a reset, also those held before).
    pub gained: Vec<u32>,
    /// Slots whose payload was dropped.
    pub lost: Vec<u32>,
    /// The read carried an older version than already applied: ignored.
    pub stale: bool,
    /// Why every payload was discarded before applying this read, if it was.
    pub reset: Option<Reset>,
}

/// Why a read starts every slot over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// The lease had run out before this read arrived.
    LeaseLapsed,
    /// Versions between the applied one and this one were never seen.
    VersionGap { from: u64, to: u64 },
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
        applied.reset = self.reset_for(&table, received);
        if applied.reset.is_some() {
            // Whatever the unseen versions did, another AllocSvr may have
            // served (and raised) these slots: no cached cur_seq, max_seq
            // or node-id holder of ours is trusted again. Slots listed now
            // come back below as gained, with a fresh payload that reloads
            // max_seq, after a full activation delay.
            for (slot, state) in self.slots.iter_mut().enumerate() {
                if state.take().is_some() {
                    applied.lost.push(slot as u32);
                }
            }
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

    /// Whether a read of `table`, received at `received`, must start every
    /// slot over: the lease ran out before it arrived, or it skips versions.
    fn reset_for(&self, table: &RoutingTable, received: Instant) -> Option<Reset> {
        let current = self.table.as_ref()?;
        if self.lease_until.is_some_and(|until| until <= received) {
            return Some(Reset::LeaseLapsed);
        }
        (table.version > current.version.saturating_add(1)).then_some(Reset::VersionGap {
            from: current.version,
            to: table.version,
        })
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

    /// Advances the clock by `d`, reading the fence's current table again
    /// every sync interval as a live AllocSvr does, so its lease holds.
    async fn keep_reading(fence: &mut Fence<u32>, d: Duration) {
        let table = RoutingTable::clone(fence.table().expect("a table was read"));
        let mut left = d;
        while !left.is_zero() {
            let step = left.min(lease().sync_interval);
            tokio::time::advance(step).await;
            left -= step;
            let now = Instant::now();
            fence.apply_read(table.clone(), now, now, |_| 9);
        }
    }

    /// A fence of "a" serving slot 0 (version 1) with payload 1.
    async fn serving_slot_0() -> (Fence<u32>, Arc<u32>) {
        let mut fence = Fence::<u32>::new("a");
        let t = Instant::now();
        fence.apply_read(table(1, "a"), t, t, |_| 1);
        keep_reading(&mut fence, lease().activation).await;
        let first = fence.serving(0, Instant::now()).unwrap();
        (fence, first)
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
        keep_reading(&mut old, config.activation).await;
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
        let (mut fence, first) = serving_slot_0().await;
        let now = Instant::now();
        let applied = fence.apply_read(table(2, "b"), now, now, |_| 9);
        assert_eq!(applied.lost, vec![0]);
        assert!(!fence.still_serving(0, &first, now));
        // An older table arriving late changes nothing.
        assert!(fence.apply_read(table(1, "a"), now, now, |_| 9).stale);
        fence.apply_read(table(3, "a"), now, now, |_| 3);
        keep_reading(&mut fence, lease().activation).await;
        let now = Instant::now();
        fence.apply_read(table(3, "a"), now, now, |_| 9);
        let regained = fence.serving(0, now).unwrap();
        assert_eq!(*regained, 3);
        assert!(!fence.still_serving(0, &first, now));
    }

    /// Item 1 of the adversarial review: "a" served slot 0, froze past its
    /// lease, "b" took the slot in a version "a" never saw, and the first
    /// table "a" reads again gives the slot back. Everything "a" cached is
    /// from before "b" served: it must start over like a new owner.
    #[tokio::test(start_paused = true)]
    async fn a_lapse_with_a_missed_version_starts_over() {
        let (mut fence, first) = serving_slot_0().await;
        // Frozen: no read for longer than dead-after + activation, while
        // version 2 gives the slot to "b" and version 3 gives it back.
        tokio::time::advance(lease().lease + lease().activation * 2).await;
        let now = Instant::now();
        let applied = fence.apply_read(table(3, "a"), now, now, |_| 3);
        assert_eq!(applied.gained, vec![0]);
        assert!(applied.reset.is_some());
        assert!(!fence.still_serving(0, &first, now));
        assert!(matches!(
            fence.serving(0, now),
            Err(NotServing::Activating { .. })
        ));
        for _ in 0..7 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let now = Instant::now();
            fence.apply_read(table(3, "a"), now, now, |_| 9);
        }
        let now = Instant::now();
        assert_eq!(*fence.serving(0, now).unwrap(), 3);
        assert!(!fence.still_serving(0, &first, now));
    }

    /// A version gap alone, with every read in time: the missed version may
    /// have moved the slot and back, so nothing cached is trusted.
    #[tokio::test(start_paused = true)]
    async fn a_missed_version_starts_over_even_within_the_lease() {
        let (mut fence, first) = serving_slot_0().await;
        let now = Instant::now();
        // The next version in order keeps the payload.
        fence.apply_read(table(2, "a"), now, now, |_| 9);
        assert!(fence.still_serving(0, &first, now));
        tokio::time::advance(lease().sync_interval).await;
        let now = Instant::now();
        let applied = fence.apply_read(table(4, "a"), now, now, |_| 4);
        assert_eq!(applied.reset, Some(Reset::VersionGap { from: 2, to: 4 }));
        assert_eq!(applied.gained, vec![0]);
        assert!(!fence.still_serving(0, &first, now));
        assert!(matches!(
            fence.serving(0, now),
            Err(NotServing::Activating { .. })
        ));
    }

    /// A lapse alone (the same version read again after the lease ran
    /// out): the AllocSvr promised to have stopped, so it comes back as a
    /// new owner would.
    #[tokio::test(start_paused = true)]
    async fn a_lapsed_lease_starts_over() {
        let (mut fence, first) = serving_slot_0().await;
        tokio::time::advance(lease().lease).await;
        let now = Instant::now();
        let applied = fence.apply_read(table(1, "a"), now, now, |_| 2);
        assert_eq!(applied.reset, Some(Reset::LeaseLapsed));
        assert!(!fence.still_serving(0, &first, now));
        assert!(fence.serving(0, now).is_err());
    }
}
