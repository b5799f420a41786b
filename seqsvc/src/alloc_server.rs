//! An AllocSvr: serves seqs for the slots the routing table gives it, fenced
//! by its lease ([`crate::lease`]). No sockets here; `grpc` wraps it.
//!
//! Every gained slot gets a fresh [`Allocator`], which loads `max_seq` from
//! the shared store on first use, after activation: by then the previous
//! owner has stopped, so everything it handed out is at or below the loaded
//! value. A lapsed lease or a missed table version counts as losing and
//! regaining every slot ([`crate::lease`]), so a slot that came back is
//! never served from what was cached before. A request replies only if the slot's allocator is still the one it
//! started with and the lease is still valid when its seqs are ready.

use crate::allocator::{Allocator, AllocatorConfig, MAX_BATCH_IDS};
use crate::lease::{Fence, NotServing};
use crate::routing::RoutingTable;
use crate::snowflake::MAX_NODE_ID;
use crate::store::SharedStore;
use crate::{Namespace, Result, SeqError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The node-id registry lives with the section of id 0, in this slot (the
/// slot of section 0 under every table).
pub const NODE_ID_SLOT: u32 = 0;

/// How often a store that has no routing table yet is read again.
const NO_TABLE_RETRY: Duration = Duration::from_millis(500);

/// What an AllocSvr answers.
#[derive(Debug)]
pub enum Routed<T> {
    Served(T),
    /// Some id is not served here: nothing was done; route with this table.
    Moved(Arc<RoutingTable>),
}

/// An allocate or current call: ids of one namespace, and the version of
/// the routing table the client routed them by (a newer one than ours makes
/// this AllocSvr read the table first).
#[derive(Clone, Copy, Debug)]
pub struct SeqRequest<'a> {
    pub namespace: Namespace,
    pub ids: &'a [u64],
    pub client_version: u64,
}

/// A granted snowflake node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIdGrant {
    pub node_id: u16,
    /// The holder issues ids strictly above this millisecond: the previous
    /// holder's reservation, the same on every renewal and retry of the
    /// grant (a holder whose first reply was lost learns it from a retry).
    pub floor_ms: u64,
    /// Durably reserved: ids may use milliseconds up to this value.
    pub reserved_ms: u64,
    pub lease: Duration,
}

/// What a routed request may use: the table it was routed by and the
/// served state of every slot it touches.
struct Grant {
    table: Arc<RoutingTable>,
    states: BTreeMap<u32, Arc<SlotState>>,
}

/// Per-slot state of one ownership period.
pub struct SlotState {
    allocator: Allocator,
    node_ids: Mutex<HashMap<u16, NodeIdHolder>>,
}

struct NodeIdHolder {
    holder: String,
    expires: Instant,
    /// The previous holder's reservation, once loaded; `None` while the
    /// first grant's load has not succeeded (nothing was raised yet, so the
    /// stored value is still the previous holder's).
    floor_ms: Option<u64>,
}

#[derive(Clone)]
pub struct AllocServer {
    inner: Arc<Inner>,
}

struct Inner {
    me: String,
    step: u64,
    store: Arc<dyn SharedStore>,
    fence: Mutex<Fence<SlotState>>,
    /// One table read at a time, so replies apply in order.
    reading: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AllocServer {
    /// `me` is the address clients dial, as the arbiter will list it.
    pub fn new(me: impl Into<String>, step: u64, store: Arc<dyn SharedStore>) -> Result<Self> {
        if step == 0 {
            return Err(SeqError::InvalidArgument("step must be at least 1".into()));
        }
        let me = me.into();
        Ok(Self {
            inner: Arc::new(Inner {
                fence: Mutex::new(Fence::new(me.clone())),
                me,
                step,
                store,
                reading: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn addr(&self) -> &str {
        &self.inner.me
    }

    pub fn table(&self) -> Option<Arc<RoutingTable>> {
        lock(&self.inner.fence).table().cloned()
    }

    /// Reads the routing table once and applies it (the lease renewal).
    pub async fn refresh(&self) -> Result<()> {
        let _one = self.inner.reading.lock().await;
        let sent = Instant::now();
        let table = self.inner.store.read_routes().await?;
        let received = Instant::now();
        let Some(table) = table else {
            return Ok(());
        };
        let section_size = table.section_size;
        let step = self.inner.step;
        let store: Arc<dyn crate::MaxSeqStore> = self.inner.store.clone();
        let applied = lock(&self.inner.fence).apply_read(table, sent, received, |_| SlotState {
            allocator: Allocator::new(AllocatorConfig { step, section_size }, Arc::clone(&store))
                .expect("step and section size were validated"),
            node_ids: Mutex::new(HashMap::new()),
        });
        if let Some(reset) = applied.reset {
            tracing::warn!(
                ?reset,
                regained = applied.gained.len(),
                "lease lapsed or table versions missed: every slot starts over"
            );
        } else if !applied.gained.is_empty() || !applied.lost.is_empty() {
            tracing::info!(
                gained = applied.gained.len(),
                lost = applied.lost.len(),
                version = self.table().map_or(0, |t| t.version),
                "routing table changed"
            );
        }
        Ok(())
    }

    /// Reads the table every sync interval until the process ends.
    pub fn spawn_refresher(&self) -> tokio::task::JoinHandle<()> {
        let (this, timing) = (self.clone(), self.clone());
        crate::spawn_rounds(
            "routing table read failed",
            move || {
                let this = this.clone();
                async move { this.refresh().await }
            },
            move || {
                timing
                    .table()
                    .map_or(NO_TABLE_RETRY, |t| t.lease.sync_interval)
            },
        )
    }

    /// A client that has seen a newer table than ours makes us read now.
    async fn catch_up(&self, client_version: u64) {
        let ours = self.table().map_or(0, |t| t.version);
        if client_version > ours
            && let Err(error) = self.refresh().await
        {
            tracing::warn!(%error, "routing table read failed");
        }
    }

    /// Routes a request for `ids`: catches up with a newer client table,
    /// then, under one read of our table, the served state of every slot
    /// the ids touch, or why not. `Moved` when our table gives some id to
    /// another AllocSvr.
    async fn route(&self, ids: &[u64], client_version: u64) -> Result<Routed<Grant>> {
        self.catch_up(client_version).await;
        let fence = lock(&self.inner.fence);
        let Some(table) = fence.table().cloned() else {
            return Err(not_serving(0, NotServing::NoTable));
        };
        let now = Instant::now();
        let mut states = BTreeMap::new();
        for &id in ids {
            let slot = table.slot_of(id);
            if states.contains_key(&slot) {
                continue;
            }
            if table.owner_of_slot(slot) != Some(self.inner.me.as_str()) {
                return Ok(Routed::Moved(table));
            }
            let state = fence
                .serving(slot, now)
                .map_err(|why| not_serving(slot, why))?;
            states.insert(slot, state);
        }
        Ok(Routed::Served(Grant { table, states }))
    }

    fn confirm(&self, states: &BTreeMap<u32, Arc<SlotState>>) -> Result<()> {
        let fence = lock(&self.inner.fence);
        let now = Instant::now();
        for (&slot, state) in states {
            if !fence.still_serving(slot, state, now) {
                return Err(SeqError::NotServing(format!(
                    "slot {slot} was lost while allocating; nothing was handed out"
                )));
            }
        }
        Ok(())
    }

    /// Checks and routes a request for `ids` and runs `work` under the
    /// grant; replies only if every slot it touched is still served by the
    /// same ownership period afterwards (else nothing it did is handed out).
    async fn serve<T>(
        &self,
        ids: &[u64],
        client_version: u64,
        work: impl AsyncFnOnce(&Grant) -> Result<T>,
    ) -> Result<Routed<T>> {
        Self::check_ids(ids)?;
        let grant = match self.route(ids, client_version).await? {
            Routed::Served(grant) => grant,
            Routed::Moved(table) => return Ok(Routed::Moved(table)),
        };
        let value = work(&grant).await?;
        self.confirm(&grant.states)?;
        Ok(Routed::Served(value))
    }

    fn check_ids(ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Err(SeqError::InvalidArgument("no ids given".into()));
        }
        if ids.len() > MAX_BATCH_IDS {
            return Err(SeqError::InvalidArgument(format!(
                "{} ids in one call, at most {MAX_BATCH_IDS}",
                ids.len()
            )));
        }
        Ok(())
    }

    /// Allocates one seq per id; `seqs[i]` belongs to `ids[i]`.
    pub async fn allocate(&self, request: SeqRequest<'_>) -> Result<Routed<Vec<u64>>> {
        let (namespace, ids, version) = (request.namespace, request.ids, request.client_version);
        self.serve(ids, version, async |Grant { table, states }| {
            if let [(_, state)] = Vec::from_iter(states)[..] {
                // The common case: a client groups its batch by owner and slot.
                return state.allocator.next_batch(namespace, ids).await;
            }
            let mut seqs = vec![0u64; ids.len()];
            for (slot, state) in states {
                let positions: Vec<usize> = (0..ids.len())
                    .filter(|&i| table.slot_of(ids[i]) == *slot)
                    .collect();
                let slot_ids: Vec<u64> = positions.iter().map(|&i| ids[i]).collect();
                let slot_seqs = state.allocator.next_batch(namespace, &slot_ids).await?;
                for (&i, seq) in positions.iter().zip(slot_seqs) {
                    seqs[i] = seq;
                }
            }
            Ok(seqs)
        })
        .await
    }

    /// The highest seq handed out per id so far.
    pub async fn current(&self, request: SeqRequest<'_>) -> Result<Routed<Vec<u64>>> {
        let (namespace, ids, version) = (request.namespace, request.ids, request.client_version);
        self.serve(ids, version, async |Grant { table, states }| {
            let mut seqs = Vec::with_capacity(ids.len());
            for &id in ids {
                seqs.push(
                    states[&table.slot_of(id)]
                        .allocator
                        .current(namespace, id)
                        .await?,
                );
            }
            Ok(seqs)
        })
        .await
    }

    /// Grants or renews a snowflake node id to `holder`, and durably
    /// reserves its clock up to `reserve_until_ms`.
    pub async fn lease_node_id(
        &self,
        holder: &str,
        preferred: Option<u16>,
        reserve_until_ms: u64,
        client_version: u64,
    ) -> Result<Routed<NodeIdGrant>> {
        if holder.is_empty() {
            return Err(SeqError::InvalidArgument("holder must not be empty".into()));
        }
        if preferred.is_some_and(|id| id > MAX_NODE_ID) {
            return Err(SeqError::InvalidArgument(format!(
                "node id out of range 0..={MAX_NODE_ID}"
            )));
        }
        // The registry lives with the section of id 0.
        self.serve(&[0], client_version, async |Grant { table, states }| {
            let lease = table.lease;
            let state = &states[&NODE_ID_SLOT];
            let now = Instant::now();
            let (node_id, floor_ms) = {
                let mut holders = lock(&state.node_ids);
                let renewing = holders
                    .iter()
                    .find(|(_, h)| h.holder == holder)
                    .map(|(&id, _)| id);
                let free = |id: &u16, holders: &HashMap<u16, NodeIdHolder>| {
                    holders.get(id).is_none_or(|h| h.expires <= now)
                };
                let chosen = renewing
                    .or_else(|| preferred.filter(|id| free(id, &holders)))
                    .or_else(|| (0..=MAX_NODE_ID).find(|id| free(id, &holders)))
                    .ok_or_else(|| {
                        SeqError::InvalidArgument(format!(
                            "all {} node ids are leased",
                            u32::from(MAX_NODE_ID) + 1
                        ))
                    })?;
                let floor_ms = renewing.and_then(|id| holders[&id].floor_ms);
                // The owner's view outlives the holder's (sent + lease) by a read
                // interval, so a node id is never granted while still in use.
                holders.insert(
                    chosen,
                    NodeIdHolder {
                        holder: holder.to_owned(),
                        expires: now + lease.lease + lease.sync_interval,
                        floor_ms,
                    },
                );
                (chosen, floor_ms)
            };
            let store = &self.inner.store;
            let floor_ms = match floor_ms {
                Some(floor_ms) => floor_ms,
                None => {
                    let loaded = store
                        .load(Namespace::SnowflakeClock, u64::from(node_id))
                        .await?;
                    // Recorded before the raise below moves the stored value
                    // to this holder's own reservation, so a retry of a grant
                    // whose reply was lost still learns the previous floor.
                    if let Some(entry) = lock(&state.node_ids).get_mut(&node_id)
                        && entry.holder == holder
                    {
                        entry.floor_ms.get_or_insert(loaded);
                    }
                    loaded
                }
            };
            let reserved_ms = store
                .raise(
                    Namespace::SnowflakeClock,
                    u64::from(node_id),
                    reserve_until_ms.max(floor_ms),
                )
                .await?;
            Ok(NodeIdGrant {
                node_id,
                floor_ms,
                reserved_ms,
                lease: lease.lease,
            })
        })
        .await
    }
}

fn not_serving(slot: u32, why: NotServing) -> SeqError {
    SeqError::NotServing(format!("slot {slot}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{LeaseConfig, RoutingTable};
    use crate::store::RouteStore;
    use crate::testsuite::MemoryMaxSeqStore;

    fn lease() -> LeaseConfig {
        LeaseConfig::short_for_tests()
    }

    fn inbox(ids: &[u64], client_version: u64) -> SeqRequest<'_> {
        SeqRequest {
            namespace: Namespace::Inbox,
            ids,
            client_version,
        }
    }

    async fn publish(store: &MemoryMaxSeqStore, owners: impl Fn(u32) -> &'static str) -> u64 {
        let current = store.read_routes().await.unwrap();
        let mut table = match &current {
            Some(t) => t.clone(),
            None => RoutingTable::initial(10, lease()).unwrap(),
        };
        table.version = current.as_ref().map_or(1, |t| t.version + 1);
        for slot in 0..table.slot_count() {
            table.owners[slot as usize] = Some(owners(slot).to_string());
        }
        assert!(store.write_routes(&table).await.unwrap().applied);
        table.version
    }

    async fn tick(servers: &[&AllocServer], ms: u64) {
        for _ in 0..ms / 50 {
            tokio::time::advance(Duration::from_millis(50)).await;
            for s in servers {
                let _ = s.refresh().await;
            }
        }
    }

    /// AllocSvr "a:1" serving every slot, activated.
    async fn serving_alone() -> (Arc<MemoryMaxSeqStore>, AllocServer) {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let a = AllocServer::new("a:1", 100, store.clone()).unwrap();
        publish(&store, |_| "a:1").await;
        tick(&[&a], 800).await;
        (store, a)
    }

    /// AllocSvrs "a:1" and "b:1" over one store.
    fn two_servers(step: u64) -> (Arc<MemoryMaxSeqStore>, AllocServer, AllocServer) {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let a = AllocServer::new("a:1", step, store.clone()).unwrap();
        let b = AllocServer::new("b:1", step, store.clone()).unwrap();
        (store, a, b)
    }

    #[tokio::test(start_paused = true)]
    async fn serves_after_activation_and_moves_clients_along() {
        let (store, a, b) = two_servers(100);
        publish(&store, |_| "a:1").await;
        a.refresh().await.unwrap();
        b.refresh().await.unwrap();
        // First assignment waits too.
        assert!(matches!(
            a.allocate(inbox(&[1], 0)).await,
            Err(SeqError::NotServing(_))
        ));
        match b.allocate(inbox(&[1], 0)).await.unwrap() {
            Routed::Moved(table) => assert_eq!(table.owner_of(1), Some("a:1")),
            other => panic!("expected moved, got {other:?}"),
        }
        tick(&[&a, &b], 750).await;
        let Routed::Served(seqs) = a.allocate(inbox(&[1, 1, 25], 0)).await.unwrap() else {
            panic!("not served")
        };
        assert_eq!(seqs, vec![1, 2, 1]);
        // Move everything to b: a stops at once, b after activation, and b
        // continues above everything a handed out.
        let version = publish(&store, |_| "b:1").await;
        a.refresh().await.unwrap();
        assert!(matches!(
            a.allocate(inbox(&[1], version)).await.unwrap(),
            Routed::Moved(_)
        ));
        // A client with the newer table makes b read it before answering.
        assert!(matches!(
            b.allocate(inbox(&[1], version)).await,
            Err(SeqError::NotServing(_))
        ));
        tick(&[&a, &b], 750).await;
        let Routed::Served(seqs) = b.allocate(inbox(&[1], version)).await.unwrap() else {
            panic!("not served")
        };
        assert!(seqs[0] > 2);
        assert!(seqs[0] <= store.stored(Namespace::Inbox, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn unreadable_store_ends_the_lease() {
        let (store, a) = serving_alone().await;
        assert!(a.allocate(inbox(&[1], 0)).await.is_ok());
        store.fail_route_reads(true);
        tick(&[&a], 450).await;
        assert!(a.allocate(inbox(&[1], 0)).await.is_ok());
        tick(&[&a], 100).await;
        let err = a.allocate(inbox(&[1], 0)).await.unwrap_err();
        assert!(err.to_string().contains("lease expired"), "{err}");
        // Reads work again: still the owner, but the lease lapsed, so it
        // serves again only as a new owner would, after a full activation.
        store.fail_route_reads(false);
        tick(&[&a], 50).await;
        let err = a.allocate(inbox(&[1], 0)).await.unwrap_err();
        assert!(err.to_string().contains("newly assigned"), "{err}");
        tick(&[&a], 700).await;
        assert!(a.allocate(inbox(&[1], 0)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn node_ids_are_exclusive_until_the_lease_runs_out() {
        let (_, a) = serving_alone().await;
        let grant = |r: Routed<NodeIdGrant>| match r {
            Routed::Served(g) => g,
            Routed::Moved(_) => panic!("moved"),
        };
        let first = grant(a.lease_node_id("h1", Some(5), 1_000, 0).await.unwrap());
        assert_eq!(first.node_id, 5);
        assert_eq!(first.reserved_ms, 1_000);
        let second = grant(a.lease_node_id("h2", Some(5), 2_000, 0).await.unwrap());
        assert_ne!(second.node_id, 5);
        // Renewal keeps the id and raises the reservation.
        let renewed = grant(a.lease_node_id("h1", None, 3_000, 0).await.unwrap());
        assert_eq!(
            (renewed.node_id, renewed.floor_ms, renewed.reserved_ms),
            (5, 0, 3_000)
        );
        // After h1 stops renewing for lease + sync, h3 may take it, above
        // h1's reservation.
        tick(&[&a], 650).await;
        let taken = grant(a.lease_node_id("h3", Some(5), 100, 0).await.unwrap());
        assert_eq!(taken.node_id, 5);
        assert_eq!(taken.floor_ms, 3_000);
        assert!(taken.reserved_ms >= 3_000);
    }

    fn served<T: std::fmt::Debug>(routed: Routed<T>) -> T {
        match routed {
            Routed::Served(value) => value,
            Routed::Moved(table) => panic!("moved to version {}", table.version),
        }
    }

    /// Item 1 of the adversarial review, at the AllocSvr level: "a" serves,
    /// freezes past its lease, "b" takes the slots and allocates (and
    /// raises `max_seq`), the table gives the slots back to "a", which never
    /// saw the version in which "b" served. "a" must never return a seq at
    /// or below one "b" handed out.
    #[tokio::test(start_paused = true)]
    async fn regained_slots_after_a_missed_version_never_reissue_seqs() {
        let (store, a, b) = two_servers(10);
        publish(&store, |_| "a:1").await;
        tick(&[&a, &b], 800).await;
        for _ in 0..3 {
            served(a.allocate(inbox(&[1], 0)).await.unwrap());
        }
        // "a" freezes: only "b" reads from here on.
        publish(&store, |_| "b:1").await;
        tick(&[&b], 800).await;
        let mut by_b = 0;
        for _ in 0..25 {
            by_b = served(b.allocate(inbox(&[1], 0)).await.unwrap())[0];
        }
        assert!(by_b > 20, "b raised max_seq past a's step: {by_b}");
        publish(&store, |_| "a:1").await;
        tick(&[&b], 50).await;
        // "a" thaws and reads the table that gives it the slots back.
        let mut served_by_a = Vec::new();
        for _ in 0..40 {
            tick(&[&a, &b], 50).await;
            if let Ok(Routed::Served(seqs)) = a.allocate(inbox(&[1], 0)).await {
                served_by_a.push(seqs[0]);
            }
        }
        assert!(!served_by_a.is_empty(), "a never served again");
        assert!(
            served_by_a.iter().all(|&seq| seq > by_b),
            "a handed out {served_by_a:?} after b reached {by_b}"
        );
        assert!(served_by_a.windows(2).all(|w| w[0] < w[1]));
        assert!(*served_by_a.last().unwrap() <= store.stored(Namespace::Inbox, 0));
    }

    /// Item 7 of the adversarial review: the first grant of a node id whose
    /// reply never arrived (here: its reservation failed) is retried by the
    /// holder; the retry must still carry the previous holder's clock
    /// floor, or the new holder may reuse its milliseconds under skew.
    #[tokio::test(start_paused = true)]
    async fn a_retried_first_node_id_grant_keeps_the_previous_holders_floor() {
        let (store, a) = serving_alone().await;
        let first = served(a.lease_node_id("h1", Some(5), 3_000, 0).await.unwrap());
        assert_eq!((first.node_id, first.reserved_ms), (5, 3_000));
        tick(&[&a], 650).await;
        store.fail_next_raises(1);
        assert!(a.lease_node_id("h2", Some(5), 100, 0).await.is_err());
        let retried = served(a.lease_node_id("h2", Some(5), 100, 0).await.unwrap());
        assert_eq!(retried.node_id, 5);
        assert_eq!(retried.floor_ms, 3_000);
        assert!(retried.reserved_ms >= 3_000);
        // A retry after a reply lost on the way back: the same floor again.
        let again = served(a.lease_node_id("h2", Some(5), 200, 0).await.unwrap());
        assert_eq!((again.node_id, again.floor_ms), (5, 3_000));
    }
}
