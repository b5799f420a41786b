//! The routing table: which AllocSvr serves which sections, plus the lease
//! timings every AllocSvr fences itself with.
//!
//! Section `s` belongs to slot `s % slot_count`; the arbiter assigns slots.
//! The table is pure data: [`rebalance`] computes the next assignment from
//! the current one and the set of live AllocSvrs, deterministically, so two
//! arbiters that see the same inputs propose the same table.

use crate::{Result, SeqError};
use proto::seqsvc::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Slots per table. Fixed: it decides which AllocSvr serves a section, and
/// the table never changes it once written.
pub const SLOT_COUNT: u32 = 256;

/// Lease timings. Safety rests on one relation, checked by [`validate`]:
/// a newly assigned slot waits `activation` before serving, which must be
/// longer than any old owner can keep serving (`lease` after its last
/// successful read was sent) plus one read interval of margin for clock
/// rate differences and table propagation.
///
/// [`validate`]: LeaseConfig::validate
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub lease: Duration,
    pub sync_interval: Duration,
    pub activation: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_millis(5_000),
            sync_interval: Duration::from_millis(1_000),
            activation: Duration::from_millis(7_000),
        }
    }
}

impl LeaseConfig {
    /// Timings short enough for tests under a paused clock, valid like the
    /// default (activation > lease + sync interval).
    #[cfg(test)]
    pub(crate) fn short_for_tests() -> Self {
        Self {
            lease: Duration::from_millis(500),
            sync_interval: Duration::from_millis(100),
            activation: Duration::from_millis(700),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.sync_interval.is_zero() || self.lease.is_zero() {
            return Err(SeqError::InvalidArgument(
                "lease and sync interval must be positive".into(),
            ));
        }
        if self.sync_interval >= self.lease {
            return Err(SeqError::InvalidArgument(format!(
                "sync interval {:?} must be shorter than the lease {:?}, or every lease lapses between reads",
                self.sync_interval, self.lease
            )));
        }
        if self.activation <= self.lease + self.sync_interval {
            return Err(SeqError::InvalidArgument(format!(
                "activation {:?} must exceed lease {:?} + sync interval {:?}: a new owner could serve while the old one still does",
                self.activation, self.lease, self.sync_interval
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    pub version: u64,
    pub section_size: u64,
    /// Owner address per slot; `None`: unassigned.
    pub owners: Vec<Option<String>>,
    pub lease: LeaseConfig,
}

impl RoutingTable {
    /// An empty table (no owners), version 1: the first one ever written.
    pub fn initial(section_size: u64, lease: LeaseConfig) -> Result<Self> {
        if section_size == 0 {
            return Err(SeqError::InvalidArgument(
                "section size must be at least 1".into(),
            ));
        }
        lease.validate()?;
        Ok(Self {
            version: 1,
            section_size,
            owners: vec![None; SLOT_COUNT as usize],
            lease,
        })
    }

    pub fn slot_count(&self) -> u32 {
        self.owners.len() as u32
    }

    pub fn section_of(&self, id: u64) -> u64 {
        id / self.section_size
    }

    pub fn slot_of_section(&self, section: u64) -> u32 {
        (section % u64::from(self.slot_count())) as u32
    }

    pub fn slot_of(&self, id: u64) -> u32 {
        self.slot_of_section(self.section_of(id))
    }

    pub fn owner_of_slot(&self, slot: u32) -> Option<&str> {
        self.owners.get(slot as usize)?.as_deref()
    }

    pub fn owner_of(&self, id: u64) -> Option<&str> {
        self.owner_of_slot(self.slot_of(id))
    }

    /// Slots per owner, owners in address order.
    pub fn load(&self) -> BTreeMap<&str, usize> {
        let mut load = BTreeMap::new();
        for owner in self.owners.iter().flatten() {
            *load.entry(owner.as_str()).or_default() += 1;
        }
        load
    }

    /// Same assignment and settings, ignoring the version.
    pub fn same_content(&self, other: &Self) -> bool {
        self.section_size == other.section_size
            && self.owners == other.owners
            && self.lease == other.lease
    }

    pub fn to_proto(&self) -> pb::RoutingTable {
        let nodes: Vec<&str> = self.load().into_keys().collect();
        let slots = self
            .owners
            .iter()
            .map(|owner| match owner {
                Some(addr) => nodes
                    .binary_search(&addr.as_str())
                    .map_or(0, |i| i as u32 + 1),
                None => 0,
            })
            .collect();
        pb::RoutingTable {
            version: self.version,
            section_size: self.section_size,
            slot_count: self.slot_count(),
            nodes: nodes
                .into_iter()
                .map(|addr| pb::AllocNode {
                    addr: addr.to_owned(),
                })
                .collect(),
            slots,
            lease_ms: self.lease.lease.as_millis() as u64,
            sync_interval_ms: self.lease.sync_interval.as_millis() as u64,
            activation_ms: self.lease.activation.as_millis() as u64,
        }
    }

    pub fn from_proto(table: &pb::RoutingTable) -> Result<Self> {
        let bad = |why: String| SeqError::InvalidArgument(format!("routing table: {why}"));
        if table.version == 0 {
            return Err(bad("version 0".into()));
        }
        if table.section_size == 0 {
            return Err(bad("section size 0".into()));
        }
        if table.slot_count == 0 || table.slots.len() != table.slot_count as usize {
            return Err(bad(format!(
                "{} slots listed for a slot count of {}",
                table.slots.len(),
                table.slot_count
            )));
        }
        let owners = table
            .slots
            .iter()
            .map(|&slot| match slot {
                0 => Ok(None),
                n => table
                    .nodes
                    .get(n as usize - 1)
                    .map(|node| Some(node.addr.clone()))
                    .ok_or_else(|| bad(format!("slot names node {n} of {}", table.nodes.len()))),
            })
            .collect::<Result<Vec<_>>>()?;
        let lease = LeaseConfig {
            lease: Duration::from_millis(table.lease_ms),
            sync_interval: Duration::from_millis(table.sync_interval_ms),
            activation: Duration::from_millis(table.activation_ms),
        };
        lease.validate()?;
        Ok(Self {
            version: table.version,
            section_size: table.section_size,
            owners,
            lease,
        })
    }
}

/// The assignment the arbiter wants given the live AllocSvrs, or `None` when
/// the current one is already right. Slots of dead owners go to the least
/// loaded live ones; then slots move from the most to the least loaded until
/// loads differ by at most one. Moves are minimal, because every moved slot
/// is unavailable for an activation period. With no live AllocSvr nothing
/// changes: owners keep serving on their leases while the arbiter cannot see
/// anyone (it may be the one cut off).
pub fn rebalance(table: &RoutingTable, live: &BTreeSet<String>) -> Option<Vec<Option<String>>> {
    if live.is_empty() {
        return None;
    }
    let mut owners: Vec<Option<String>> = table
        .owners
        .iter()
        .map(|owner| owner.clone().filter(|addr| live.contains(addr)))
        .collect();
    let slot_count = owners.len();
    let base = slot_count / live.len();
    let extra = slot_count % live.len();
    // Quotas: the `extra` nodes already holding the most slots (address
    // order breaks ties) may keep base + 1, so nothing moves needlessly.
    let mut load: BTreeMap<&String, usize> = live.iter().map(|addr| (addr, 0)).collect();
    for addr in owners.iter().flatten() {
        if let Some(n) = load.get_mut(addr) {
            *n += 1;
        }
    }
    let mut by_load: Vec<(&String, usize)> = load.iter().map(|(a, n)| (*a, *n)).collect();
    by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let quota: BTreeMap<String, usize> = by_load
        .iter()
        .enumerate()
        .map(|(rank, (addr, _))| ((*addr).clone(), base + usize::from(rank < extra)))
        .collect();
    // Shed slots above quota, highest slots first.
    let mut held: BTreeMap<String, usize> = quota.keys().map(|a| (a.clone(), 0)).collect();
    for owner in owners.iter_mut() {
        if let Some(addr) = owner {
            let n = held.get_mut(addr.as_str()).expect("owner is live");
            if *n < quota[addr.as_str()] {
                *n += 1;
            } else {
                *owner = None;
            }
        }
    }
    // Fill free slots, lowest first, to the first node (in address order)
    // below its quota: an empty table becomes contiguous ranges.
    for owner in owners.iter_mut().filter(|o| o.is_none()) {
        let (addr, n) = held
            .iter_mut()
            .find(|(addr, n)| **n < quota[addr.as_str()])
            .expect("quotas add up to the slot count");
        *n += 1;
        *owner = Some(addr.clone());
    }
    (owners != table.owners).then_some(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(addrs: &[&str]) -> BTreeSet<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    fn table() -> RoutingTable {
        RoutingTable::initial(100_000, LeaseConfig::default()).unwrap()
    }

    #[test]
    fn activation_must_exceed_lease_plus_sync() {
        LeaseConfig::default().validate().unwrap();
        let d = LeaseConfig::default();
        assert!(d.activation > d.lease + d.sync_interval);
        let unsafe_config = LeaseConfig {
            lease: Duration::from_secs(15),
            sync_interval: Duration::from_secs(4),
            activation: Duration::from_secs(8),
        };
        assert!(unsafe_config.validate().is_err());
        let borderline = LeaseConfig {
            activation: d.lease + d.sync_interval,
            ..d
        };
        assert!(borderline.validate().is_err());
    }

    #[test]
    fn spreads_evenly_and_moves_little() {
        let mut t = table();
        t.owners = rebalance(&t, &live(&["a:1", "b:1"])).unwrap();
        assert_eq!(
            t.load().values().copied().collect::<Vec<_>>(),
            vec![128, 128]
        );
        assert!(rebalance(&t, &live(&["a:1", "b:1"])).is_none());
        // A third node takes about a third; nothing else moves.
        let before = t.owners.clone();
        t.owners = rebalance(&t, &live(&["a:1", "b:1", "c:1"])).unwrap();
        let moved = before.iter().zip(&t.owners).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 85);
        let loads: Vec<usize> = t.load().values().copied().collect();
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1);
        // A dead node's slots spread over the rest; live owners keep theirs.
        let before = t.owners.clone();
        t.owners = rebalance(&t, &live(&["a:1", "c:1"])).unwrap();
        for (old, new) in before.iter().zip(&t.owners) {
            if old.as_deref() != Some("b:1") {
                assert_eq!(old, new);
            }
        }
        assert_eq!(
            t.load().values().copied().collect::<Vec<_>>(),
            vec![128, 128]
        );
        // Nobody live: keep the table.
        assert!(rebalance(&t, &BTreeSet::new()).is_none());
    }

    #[test]
    fn deterministic_for_equal_inputs() {
        let t = table();
        let nodes = live(&["x:1", "y:2", "z:3"]);
        assert_eq!(rebalance(&t, &nodes), rebalance(&t, &nodes));
    }

    #[test]
    fn proto_round_trip_and_validation() {
        let mut t = table();
        t.owners = rebalance(&t, &live(&["a:1", "b:1", "c:1"])).unwrap();
        t.version = 7;
        let back = RoutingTable::from_proto(&t.to_proto()).unwrap();
        assert_eq!(back, t);
        let mut broken = t.to_proto();
        broken.slots[3] = 9;
        assert!(RoutingTable::from_proto(&broken).is_err());
        let mut unsafe_lease = t.to_proto();
        unsafe_lease.activation_ms = unsafe_lease.lease_ms;
        assert!(RoutingTable::from_proto(&unsafe_lease).is_err());
    }

    #[test]
    fn ids_route_by_section_slot() {
        let mut t = table();
        t.owners = rebalance(&t, &live(&["a:1", "b:1"])).unwrap();
        assert_eq!(t.slot_of(99_999), 0);
        assert_eq!(t.slot_of(100_000), 1);
        assert_eq!(t.slot_of(256 * 100_000), 0);
        assert_eq!(t.owner_of(5), t.owner_of_slot(0));
    }
}
