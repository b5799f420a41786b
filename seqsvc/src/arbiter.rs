//! The arbiter: learns which AllocSvrs are alive from their heartbeats and
//! writes the routing table (by compare-and-set, version + 1) when the
//! assignment should change. It never commands an AllocSvr; they read the
//! table from the store. While the arbiter is down nothing moves and
//! AllocSvrs keep serving on their leases.
//!
//! After a start it waits `dead_after` before changing anything, so it has
//! heard every live AllocSvr and does not take slots from owners it simply
//! has not heard from yet. Two arbiters that hear the same AllocSvrs compute
//! the same table ([`rebalance`] is deterministic); the compare-and-set makes
//! one of them win each version and the other then sees nothing to change.

use crate::routing::{LeaseConfig, RoutingTable, rebalance};
use crate::store::{RouteStore, RouteWrite};
use crate::{Result, SeqError};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Longest AllocSvr address accepted in a heartbeat.
pub const MAX_ADDR_LEN: usize = 256;
/// Most AllocSvrs one arbiter tracks.
pub const MAX_ALLOC_SERVERS: usize = 1_024;

#[derive(Clone, Debug)]
pub struct ArbiterConfig {
    pub section_size: u64,
    pub lease: LeaseConfig,
    /// An AllocSvr not heard from for this long loses its slots.
    pub dead_after: Duration,
    /// How often the arbiter re-reads the table and rebalances.
    pub check_interval: Duration,
}

impl Default for ArbiterConfig {
    fn default() -> Self {
        Self {
            section_size: 100_000,
            lease: LeaseConfig::default(),
            dead_after: Duration::from_millis(3_000),
            check_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Clone)]
pub struct Arbiter {
    inner: Arc<Inner>,
}

struct Inner {
    config: ArbiterConfig,
    store: Arc<dyn RouteStore>,
    started: Instant,
    heard: Mutex<HashMap<String, Instant>>,
    table: Mutex<Arc<RoutingTable>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Arbiter {
    /// Reads the stored table (writing the first one if there is none) and
    /// refuses settings that differ from it: changing the section size or
    /// the lease timings under running AllocSvrs is unsafe.
    pub async fn open(config: ArbiterConfig, store: Arc<dyn RouteStore>) -> Result<Self> {
        let initial = RoutingTable::initial(config.section_size, config.lease)?;
        let table = match store.read_routes().await? {
            Some(table) => table,
            None => match store.write_routes(&initial).await?.current {
                Some(table) => table,
                None => return Err(SeqError::Store("routing table vanished".into())),
            },
        };
        if table.section_size != config.section_size {
            return Err(SeqError::InvalidArgument(format!(
                "the stored routing table has section size {}, not {}; it cannot change once written",
                table.section_size, config.section_size
            )));
        }
        if table.lease != config.lease {
            return Err(SeqError::InvalidArgument(format!(
                "the stored routing table has lease timings {:?}, not {:?}; changing them under running AllocSvrs is unsafe",
                table.lease, config.lease
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                started: Instant::now(),
                heard: Mutex::new(HashMap::new()),
                table: Mutex::new(Arc::new(table)),
            }),
        })
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        Arc::clone(&lock(&self.inner.table))
    }

    /// Records that an AllocSvr is alive; returns the table version known.
    pub fn heartbeat(&self, addr: &str) -> Result<u64> {
        if addr.is_empty() || addr.len() > MAX_ADDR_LEN || !addr.contains(':') {
            return Err(SeqError::InvalidArgument(format!(
                "AllocSvr address {addr:?} is not host:port"
            )));
        }
        let mut heard = lock(&self.inner.heard);
        if !heard.contains_key(addr) && heard.len() >= MAX_ALLOC_SERVERS {
            return Err(SeqError::InvalidArgument(format!(
                "more than {MAX_ALLOC_SERVERS} AllocSvrs"
            )));
        }
        heard.insert(addr.to_owned(), Instant::now());
        Ok(self.table().version)
    }

    fn live(&self, now: Instant) -> BTreeSet<String> {
        let mut heard = lock(&self.inner.heard);
        heard.retain(|_, at| now.duration_since(*at) < self.inner.config.dead_after);
        heard.keys().cloned().collect()
    }

    /// One round: re-read the table, write a rebalanced one if needed.
    /// Returns the version written, if any.
    pub async fn check(&self) -> Result<Option<u64>> {
        let stored = self
            .inner
            .store
            .read_routes()
            .await?
            .ok_or_else(|| SeqError::Store("routing table missing from the store".into()))?;
        *lock(&self.inner.table) = Arc::new(stored.clone());
        let now = Instant::now();
        let live = self.live(now);
        metrics::gauge!("seqsvc_arbiter_live_alloc_servers").set(live.len() as f64);
        metrics::gauge!("seqsvc_routing_table_version").set(stored.version as f64);
        if now.duration_since(self.inner.started) < self.inner.config.dead_after {
            return Ok(None);
        }
        let Some(owners) = rebalance(&stored, &live) else {
            return Ok(None);
        };
        let next = RoutingTable {
            version: stored.version + 1,
            owners,
            ..stored.clone()
        };
        let RouteWrite { applied, current } = self.inner.store.write_routes(&next).await?;
        if let Some(current) = current {
            *lock(&self.inner.table) = Arc::new(current);
        }
        if applied {
            metrics::counter!("seqsvc_arbiter_table_writes_total").increment(1);
            metrics::gauge!("seqsvc_routing_table_version").set(next.version as f64);
            tracing::info!(version = next.version, load = ?next.load(), "routing table written");
            Ok(Some(next.version))
        } else {
            Ok(None)
        }
    }

    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let interval = self.inner.config.check_interval;
        crate::spawn_rounds(
            "arbiter round failed",
            move || {
                let this = this.clone();
                async move { this.check().await.map(drop) }
            },
            move || interval,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::MemoryMaxSeqStore;

    fn config() -> ArbiterConfig {
        ArbiterConfig {
            section_size: 10,
            lease: LeaseConfig::default(),
            dead_after: Duration::from_millis(300),
            check_interval: Duration::from_millis(50),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_out_startup_then_assigns_and_reassigns() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let arbiter = Arbiter::open(config(), store.clone()).await.unwrap();
        assert_eq!(arbiter.table().version, 1);
        arbiter.heartbeat("a:1").unwrap();
        assert_eq!(
            arbiter.check().await.unwrap(),
            None,
            "still in its start grace"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        arbiter.heartbeat("a:1").unwrap();
        arbiter.heartbeat("b:1").unwrap();
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(arbiter.check().await.unwrap(), Some(2));
        assert_eq!(arbiter.table().load().len(), 2);
        // b goes quiet: its slots move to a.
        for _ in 0..4 {
            tokio::time::advance(Duration::from_millis(100)).await;
            arbiter.heartbeat("a:1").unwrap();
        }
        assert_eq!(arbiter.check().await.unwrap(), Some(3));
        assert_eq!(arbiter.table().load().get("a:1"), Some(&256));
        assert_eq!(arbiter.check().await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn two_arbiters_never_reuse_a_version() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let (one, two) = tokio::join!(
            Arbiter::open(config(), store.clone()),
            Arbiter::open(config(), store.clone())
        );
        let (one, two) = (one.unwrap(), two.unwrap());
        tokio::time::advance(Duration::from_millis(350)).await;
        for arbiter in [&one, &two] {
            arbiter.heartbeat("a:1").unwrap();
            arbiter.heartbeat("b:1").unwrap();
        }
        let (x, y) = tokio::join!(one.check(), two.check());
        let written: Vec<u64> = [x.unwrap(), y.unwrap()].into_iter().flatten().collect();
        assert_eq!(written, vec![2], "exactly one arbiter writes version 2");
        assert_eq!(one.check().await.unwrap(), None);
        assert_eq!(two.check().await.unwrap(), None);
        assert_eq!(one.table(), two.table());
    }

    #[tokio::test]
    async fn refuses_to_change_settings_of_a_stored_table() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        Arbiter::open(config(), store.clone()).await.unwrap();
        let mut other = config();
        other.section_size = 20;
        assert!(Arbiter::open(other, store.clone()).await.is_err());
        let mut other = config();
        other.lease.lease = Duration::from_secs(15);
        other.lease.activation = Duration::from_secs(17);
        let err = Arbiter::open(other, store.clone()).await.err().unwrap();
        assert!(err.to_string().contains("unsafe"), "{err}");
    }

    #[tokio::test]
    async fn bad_heartbeat_is_refused() {
        let arbiter = Arbiter::open(config(), Arc::new(MemoryMaxSeqStore::new()))
            .await
            .unwrap();
        assert!(arbiter.heartbeat("").is_err());
        assert!(arbiter.heartbeat("nohost").is_err());
    }
}
