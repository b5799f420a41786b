//! The model every step is checked against.

use super::SECTION_SIZE;
use crate::Namespace;
use crate::snowflake::NodeReservation;
use crate::testsuite::MemoryMaxSeqStore;
use std::collections::{HashMap, HashSet};

/// Which holder used which milliseconds of a node id: `(floor, reserved]`.
pub(super) struct Period {
    pub(super) holder: usize,
    pub(super) floor: u64,
    pub(super) reserved: u64,
}

#[derive(Default)]
pub(super) struct Model {
    /// Per id: every seq handed out.
    pub(super) seen: HashMap<u64, HashSet<u64>>,
    /// Per id: the highest seq or `current` value returned so far.
    pub(super) known: HashMap<u64, u64>,
    /// Per node id: holding periods, in the order they began.
    pub(super) periods: HashMap<u16, Vec<Period>>,
    pub(super) violations: Vec<String>,
    pub(super) allocated: u64,
    pub(super) currents: u64,
    pub(super) grants: u64,
}

impl Model {
    pub(super) fn allocated(
        &mut self,
        store: &MemoryMaxSeqStore,
        ids: &[u64],
        seqs: &[u64],
        floors: &[u64],
    ) {
        for ((&id, &seq), &floor) in ids.iter().zip(seqs).zip(floors) {
            self.allocated += 1;
            if !self.seen.entry(id).or_default().insert(seq) {
                self.violations
                    .push(format!("id {id}: seq {seq} handed out twice"));
            }
            if seq <= floor {
                self.violations.push(format!(
                    "id {id}: seq {seq} after {floor} had been returned (went backwards)"
                ));
            }
            let stored = store.stored(Namespace::Inbox, id / SECTION_SIZE);
            if seq > stored {
                self.violations.push(format!(
                    "id {id}: seq {seq} above the stored max_seq {stored}"
                ));
            }
            let known = self.known.entry(id).or_default();
            *known = (*known).max(seq);
        }
    }

    pub(super) fn current(&mut self, id: u64, value: u64, floor: u64) {
        self.currents += 1;
        if value < floor {
            self.violations.push(format!(
                "id {id}: current {value} below {floor}, returned before the call"
            ));
        }
        let known = self.known.entry(id).or_default();
        *known = (*known).max(value);
    }

    /// A holder may now use `node`; `fresh`: from a new floor on.
    pub(super) fn granted(&mut self, holder: usize, node: NodeReservation, fresh: bool) {
        self.grants += 1;
        let periods = self.periods.entry(node.node_id).or_default();
        match periods.iter_mut().rev().find(|p| p.holder == holder) {
            Some(period) if !fresh => period.reserved = period.reserved.max(node.reserved_ms),
            _ => periods.push(Period {
                holder,
                floor: node.floor_ms,
                reserved: node.reserved_ms.max(node.floor_ms),
            }),
        }
        for (i, a) in periods.iter().enumerate() {
            for b in &periods[i + 1..] {
                if a.holder != b.holder && a.floor < b.reserved && b.floor < a.reserved {
                    self.violations.push(format!(
                        "node id {}: holder {} used ({}, {}] and holder {} ({}, {}]",
                        node.node_id, a.holder, a.floor, a.reserved, b.holder, b.floor, b.reserved
                    ));
                }
            }
        }
    }
}
