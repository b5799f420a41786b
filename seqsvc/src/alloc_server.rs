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
            refused("no_table");
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
                refused("moved");
                return Ok(Routed::Moved(table));
            }
            let state = fence.serving(slot, now).map_err(|why| {
                refused(match why {
                    NotServing::NoTable => "no_table",
                    NotServing::NotOwner => "not_owner",
                    NotServing::Activating { .. } => "activating",
                    NotServing::LeaseExpired => "lease_expired",
                });
                not_serving(slot, why)
            })?;
            states.insert(slot, state);
        }
        Ok(Routed::Served(Grant { table, states }))
    }

    fn confirm(&self, states: &BTreeMap<u32, Arc<SlotState>>) -> Result<()> {
        let fence = lock(&self.inner.fence);
        let now = Instant::now();
        for (&slot, state) in states {
            if !fence.still_serving(slot, state, now) {
                refused("lost_while_allocating");
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

/// Counts a request this AllocSvr did not serve, by why (a closed set).
fn refused(reason: &'static str) {
    metrics::counter!("seqsvc_alloc_refusals_total", "reason" => reason).increment(1);
}

fn not_serving(slot: u32, why: NotServing) -> SeqError {
    SeqError::NotServing(format!("slot {slot}: {why}"))
}

#[cfg(test)]
mod tests;
