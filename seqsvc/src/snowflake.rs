//! 64-bit, time-ordered, unique message ids in the snowflake layout:
//! `41 bits ms since EPOCH_MS | 10 bits node id | 12 bits sequence`.
//!
//! Uniqueness holds per node id, which the caller must keep unique among
//! running processes. Within a process the generator never lets the
//! millisecond go backwards: a clock that steps back keeps using the last
//! millisecond (and borrows the next ones when its 4,096 sequence numbers run
//! out). Across restarts it relies on a **clock reservation** persisted in the
//! [`MaxSeqStore`]: an id is only issued for a millisecond at or below the
//! reserved value, and a restarted generator starts above it, so a clock that
//! was set back while the process was down cannot repeat an id either.

use crate::store::MaxSeqStore;
use crate::{Namespace, Result, SeqError};
use std::sync::{Arc, Mutex};

/// 2026-01-01T00:00:00Z; 41 bits of milliseconds last until 2095.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
pub const NODE_BITS: u32 = 10;
pub const SEQUENCE_BITS: u32 = 12;
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
const MAX_SEQUENCE: u16 = (1 << SEQUENCE_BITS) - 1;
/// How far ahead of the clock one persisted reservation reaches: one store
/// write per this many milliseconds at most, and after a restart the id
/// clock may run this far ahead of the wall clock until it catches up.
pub const RESERVE_AHEAD_MS: u64 = 2_000;

/// A decoded id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnowflakeId {
    pub unix_ms: u64,
    pub node_id: u16,
    pub sequence: u16,
}

impl SnowflakeId {
    pub fn encode(self) -> u64 {
        ((self.unix_ms - EPOCH_MS) << (NODE_BITS + SEQUENCE_BITS))
            | (u64::from(self.node_id) << SEQUENCE_BITS)
            | u64::from(self.sequence)
    }

    pub fn decode(id: u64) -> Self {
        Self {
            unix_ms: (id >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS,
            node_id: ((id >> SEQUENCE_BITS) & u64::from(MAX_NODE_ID)) as u16,
            sequence: (id & u64::from(MAX_SEQUENCE)) as u16,
        }
    }
}

/// Reads the wall clock in Unix milliseconds; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// Where a generator gets its node id and durable clock reservations: a
/// fixed node id over a [`MaxSeqStore`] (one process per node id, set by
/// the operator), or a node id leased from a seqsvc cluster
/// ([`crate::client::NodeIdLease`]).
#[async_trait::async_trait]
pub trait IdReservations: Send + Sync + 'static {
    /// The node id to use now. `floor_ms` is what every earlier holder of
    /// this node id may have used: ids start above it. An error (a lapsed
    /// lease) means no id may be issued now.
    fn node(&self) -> Result<NodeReservation>;

    /// Durably reserves milliseconds up to at least `until_ms` for
    /// `node_id`; returns the reserved value.
    async fn reserve(&self, node_id: u16, until_ms: u64) -> Result<u64>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeReservation {
    pub node_id: u16,
    pub floor_ms: u64,
    pub reserved_ms: u64,
}

/// A fixed node id with its reservation in a [`MaxSeqStore`].
pub struct StoreReservations {
    node_id: u16,
    loaded_ms: u64,
    store: Arc<dyn MaxSeqStore>,
}

impl StoreReservations {
    pub async fn open(node_id: u16, store: Arc<dyn MaxSeqStore>) -> Result<Self> {
        if node_id > MAX_NODE_ID {
            return Err(SeqError::InvalidArgument(format!(
                "node id {node_id} out of range 0..={MAX_NODE_ID}"
            )));
        }
        let loaded_ms = store
            .load(Namespace::SnowflakeClock, u64::from(node_id))
            .await?;
        Ok(Self {
            node_id,
            loaded_ms,
            store,
        })
    }
}

#[async_trait::async_trait]
impl IdReservations for StoreReservations {
    fn node(&self) -> Result<NodeReservation> {
        Ok(NodeReservation {
            node_id: self.node_id,
            floor_ms: self.loaded_ms,
            reserved_ms: self.loaded_ms,
        })
    }

    async fn reserve(&self, node_id: u16, until_ms: u64) -> Result<u64> {
        self.store
            .raise(Namespace::SnowflakeClock, u64::from(node_id), until_ms)
            .await
    }
}

pub struct MsgIdGenerator {
    clock: Clock,
    reservations: Arc<dyn IdReservations>,
    state: Mutex<GenState>,
    reserving: tokio::sync::Mutex<()>,
}

struct GenState {
    node_id: u16,
    last_ms: u64,
    sequence: u16,
    /// Ids may use milliseconds up to this value (durably reserved).
    reserved_ms: u64,
}

impl GenState {
    /// Everything up to the floor may have been used by an earlier holder.
    fn starting(node: NodeReservation) -> Self {
        let floor = node.floor_ms.max(EPOCH_MS);
        Self {
            node_id: node.node_id,
            last_ms: floor,
            sequence: MAX_SEQUENCE,
            reserved_ms: node.reserved_ms.max(floor),
        }
    }
}

impl MsgIdGenerator {
    /// A fixed node id; loads its clock reservation, ids start above it.
    pub async fn open(node_id: u16, clock: Clock, store: Arc<dyn MaxSeqStore>) -> Result<Self> {
        let reservations = StoreReservations::open(node_id, store).await?;
        Self::with_reservations(clock, Arc::new(reservations))
    }

    pub fn with_reservations(clock: Clock, reservations: Arc<dyn IdReservations>) -> Result<Self> {
        let node = reservations.node()?;
        Ok(Self {
            clock,
            reservations,
            state: Mutex::new(GenState::starting(node)),
            reserving: tokio::sync::Mutex::new(()),
        })
    }

    pub fn node_id(&self) -> u16 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).node_id
    }

    /// The next id. Waits for a store write about once per
    /// [`RESERVE_AHEAD_MS`]; fails (issuing nothing) if that write fails or
    /// the node id is not held.
    pub async fn next_id(&self) -> Result<u64> {
        loop {
            let node = self.reservations.node()?;
            let (node_id, wanted_ms) = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.node_id != node.node_id {
                    // A new node id (the old lease lapsed and was lost).
                    *state = GenState::starting(node);
                } else {
                    state.reserved_ms = state.reserved_ms.max(node.reserved_ms);
                    if node.floor_ms > state.last_ms {
                        // The node id came back after another holder used
                        // everything up to the floor.
                        state.last_ms = node.floor_ms;
                        state.sequence = MAX_SEQUENCE;
                    }
                }
                let now = (self.clock)().max(EPOCH_MS);
                let (ms, sequence) = if now > state.last_ms {
                    (now, 0)
                } else if state.sequence < MAX_SEQUENCE {
                    (state.last_ms, state.sequence + 1)
                } else {
                    (state.last_ms + 1, 0)
                };
                if ms <= state.reserved_ms {
                    state.last_ms = ms;
                    state.sequence = sequence;
                    return Ok(SnowflakeId {
                        unix_ms: ms,
                        node_id: state.node_id,
                        sequence,
                    }
                    .encode());
                }
                (state.node_id, ms)
            };
            self.reserve(node_id, wanted_ms + RESERVE_AHEAD_MS).await?;
        }
    }

    async fn reserve(&self, node_id: u16, until_ms: u64) -> Result<()> {
        let _one_at_a_time = self.reserving.lock().await;
        {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.node_id != node_id || state.reserved_ms >= until_ms {
                return Ok(());
            }
        }
        let stored = self.reservations.reserve(node_id, until_ms).await?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.node_id == node_id {
            state.reserved_ms = state.reserved_ms.max(stored);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::MemoryMaxSeqStore;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn manual_clock(start: u64) -> (Clock, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(start));
        let reader = Arc::clone(&now);
        (Arc::new(move || reader.load(Ordering::SeqCst)), now)
    }

    #[test]
    fn layout_round_trips() {
        let id = SnowflakeId {
            unix_ms: EPOCH_MS + 123_456,
            node_id: 1023,
            sequence: 4095,
        };
        assert_eq!(SnowflakeId::decode(id.encode()), id);
    }

    #[tokio::test]
    async fn clock_going_back_never_repeats_and_ids_keep_increasing() {
        let store: Arc<dyn MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        let (clock, now) = manual_clock(EPOCH_MS + 1_000_000);
        let generator = MsgIdGenerator::open(5, clock, store).await.unwrap();
        let mut last = 0;
        let mut seen = HashSet::new();
        for i in 0..20_000u64 {
            if i == 5_000 {
                now.fetch_sub(60_000, Ordering::SeqCst); // NTP steps back a minute
            }
            if i % 1_000 == 0 {
                now.fetch_add(1, Ordering::SeqCst);
            }
            let id = generator.next_id().await.unwrap();
            assert!(id > last, "id {id} after {last}");
            assert!(seen.insert(id));
            assert_eq!(SnowflakeId::decode(id).node_id, 5);
            last = id;
        }
    }

    #[tokio::test]
    async fn restart_with_clock_set_back_never_repeats() {
        let store: Arc<dyn MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        let (clock, now) = manual_clock(EPOCH_MS + 5_000_000);
        let mut seen = HashSet::new();
        let mut last = 0;
        {
            let generator = MsgIdGenerator::open(1, clock.clone(), store.clone())
                .await
                .unwrap();
            for _ in 0..10_000 {
                let id = generator.next_id().await.unwrap();
                seen.insert(id);
                last = id;
            }
        }
        now.fetch_sub(3_600_000, Ordering::SeqCst);
        let generator = MsgIdGenerator::open(1, clock, store).await.unwrap();
        for _ in 0..10_000 {
            let id = generator.next_id().await.unwrap();
            assert!(seen.insert(id), "id {id} repeated after restart");
            assert!(id > last);
            last = id;
        }
    }

    #[tokio::test]
    async fn failed_reservation_issues_nothing() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        store.fail_next_raises(1);
        let (clock, _) = manual_clock(EPOCH_MS + 42);
        let generator = MsgIdGenerator::open(0, clock, store.clone()).await.unwrap();
        assert!(generator.next_id().await.is_err());
        assert!(generator.next_id().await.is_ok());
    }

    #[tokio::test]
    async fn node_id_out_of_range_is_rejected() {
        let store: Arc<dyn MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        assert!(
            MsgIdGenerator::open(1024, system_clock(), store)
                .await
                .is_err()
        );
    }

    /// Reservations whose floor an outside event raises, as a node-id lease
    /// does when its lapsed node id is granted back after another holder
    /// used it.
    struct MovableFloor(std::sync::Mutex<NodeReservation>);

    #[async_trait::async_trait]
    impl IdReservations for MovableFloor {
        fn node(&self) -> Result<NodeReservation> {
            Ok(*self.0.lock().unwrap())
        }

        async fn reserve(&self, _: u16, until_ms: u64) -> Result<u64> {
            let mut node = self.0.lock().unwrap();
            node.reserved_ms = node.reserved_ms.max(until_ms);
            Ok(node.reserved_ms)
        }
    }

    #[tokio::test]
    async fn a_raised_floor_on_the_same_node_id_is_honoured() {
        let (clock, _) = manual_clock(EPOCH_MS + 1_000);
        let reservations = Arc::new(MovableFloor(std::sync::Mutex::new(NodeReservation {
            node_id: 3,
            floor_ms: 0,
            reserved_ms: EPOCH_MS + 10_000,
        })));
        let generator = MsgIdGenerator::with_reservations(clock, reservations.clone()).unwrap();
        let before = SnowflakeId::decode(generator.next_id().await.unwrap());
        assert_eq!(before.unix_ms, EPOCH_MS + 1_000);
        // Another holder used node id 3 up to +3,000 meanwhile (its clock
        // ahead of ours); the id came back with that as the floor.
        reservations.0.lock().unwrap().floor_ms = EPOCH_MS + 3_000;
        let after = SnowflakeId::decode(generator.next_id().await.unwrap());
        assert_eq!(after.node_id, 3);
        assert!(
            after.unix_ms > EPOCH_MS + 3_000,
            "issued at {} ms, at or below the other holder's floor",
            after.unix_ms - EPOCH_MS
        );
    }
}
