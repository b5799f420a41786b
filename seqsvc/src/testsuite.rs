//! Test-only stores, compiled for this crate's tests and behind the
//! `testsuite` feature, never into a release build of a binary alone: an
//! in-memory store with fault injection, and [`FaultyStore`], the wrapper the
//! `seqsvc store` process puts around its real store when the multi-process
//! tests ask it to fail raises.

use crate::routing::RoutingTable;
use crate::store::{MaxSeqStore, RouteStore, RouteWrite, SharedStore, replaced_version};
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// An in-memory store with fault injection: it "persists" instantly and
/// forgets everything when dropped.
#[derive(Default)]
pub struct MemoryMaxSeqStore {
    values: Mutex<HashMap<(Namespace, u64), u64>>,
    failing_raises: AtomicU32,
    raises: AtomicU32,
    routes: Mutex<Option<RoutingTable>>,
    failing_route_reads: AtomicBool,
}

impl MemoryMaxSeqStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next `n` raises fail with a store error and change nothing.
    pub fn fail_next_raises(&self, n: u32) {
        self.failing_raises.store(n, Ordering::SeqCst);
    }

    /// How many raises succeeded so far (persistence I/O count).
    pub fn raise_count(&self) -> u32 {
        self.raises.load(Ordering::SeqCst)
    }

    /// The stored value, as a test checker reads it.
    pub fn stored(&self, namespace: Namespace, section: u64) -> u64 {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        values.get(&(namespace, section)).copied().unwrap_or(0)
    }

    /// While set, routing-table reads fail (a partition from the store).
    pub fn fail_route_reads(&self, failing: bool) {
        self.failing_route_reads.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl RouteStore for MemoryMaxSeqStore {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        if self.failing_route_reads.load(Ordering::SeqCst) {
            return Err(SeqError::Store("injected read failure".into()));
        }
        Ok(self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite> {
        let expected_version = replaced_version(table)?;
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let applied = routes.as_ref().map_or(0, |t| t.version) == expected_version;
        if applied {
            *routes = Some(table.clone());
        }
        Ok(RouteWrite {
            applied,
            current: routes.clone(),
        })
    }
}

#[async_trait]
impl MaxSeqStore for MemoryMaxSeqStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        Ok(self.stored(namespace, section))
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let fail = self
            .failing_raises
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(SeqError::Store("injected failure".into()));
        }
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let slot = values.entry((namespace, section)).or_insert(0);
        *slot = (*slot).max(at_least);
        self.raises.fetch_add(1, Ordering::SeqCst);
        Ok(*slot)
    }
}

/// Any shared store whose raises fail while a file exists at a path, so a
/// test in another process can switch the fault on and off (tests of the
/// "store error is an error reply" rule). Everything else passes through.
pub struct FaultyStore {
    inner: Arc<dyn SharedStore>,
    fail_raises_while: PathBuf,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn SharedStore>, fail_raises_while: PathBuf) -> Self {
        Self {
            inner,
            fail_raises_while,
        }
    }
}

#[async_trait]
impl MaxSeqStore for FaultyStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        self.inner.load(namespace, section).await
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        if self.fail_raises_while.exists() {
            return Err(SeqError::Store("injected raise failure".into()));
        }
        self.inner.raise(namespace, section, at_least).await
    }
}

#[async_trait]
impl RouteStore for FaultyStore {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        self.inner.read_routes().await
    }

    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite> {
        self.inner.write_routes(table).await
    }
}

/// The compare-and-set contract of every [`RouteStore`], run on an empty
/// store with `first` (version 1). Leaves version 2 stored, `first` with
/// slots 0 and 1 owned by `x:1` and `r:1`.
pub async fn route_writes_are_compare_and_set(store: &dyn RouteStore, first: RoutingTable) {
    assert!(store.read_routes().await.unwrap().is_none());
    assert!(store.write_routes(&first).await.unwrap().applied);
    // A racer that also read "nothing stored" loses, even with other content.
    let mut racer = first.clone();
    racer.owners[0] = Some("x:1".into());
    racer.owners[1] = Some("r:1".into());
    let lost = store.write_routes(&racer).await.unwrap();
    assert!(!lost.applied);
    assert_eq!(lost.current.unwrap(), first);
    // Version 0 is never stored (a version that does not follow its
    // expected one is refused on the wire: `store_service`).
    racer.version = 0;
    assert!(store.write_routes(&racer).await.is_err());
    racer.version = 2;
    assert!(store.write_routes(&racer).await.unwrap().applied);
    assert!(!store.write_routes(&racer).await.unwrap().applied);
    assert_eq!(store.read_routes().await.unwrap().unwrap(), racer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_injected_failure_changes_nothing() {
        let store = MemoryMaxSeqStore::new();
        store.fail_next_raises(1);
        assert!(store.raise(Namespace::Inbox, 0, 10).await.is_err());
        assert_eq!(store.stored(Namespace::Inbox, 0), 0);
        assert_eq!(store.raise(Namespace::Inbox, 0, 10).await.unwrap(), 10);
    }

    #[tokio::test]
    async fn memory_store_route_writes_are_compare_and_set() {
        let first = RoutingTable::initial(10, crate::routing::LeaseConfig::default()).unwrap();
        route_writes_are_compare_and_set(&MemoryMaxSeqStore::new(), first).await;
    }

    #[tokio::test]
    async fn faulty_store_fails_raises_only_while_the_file_exists() {
        let dir = tempfile::tempdir().unwrap();
        let switch = dir.path().join("fail");
        let store = FaultyStore::new(Arc::new(MemoryMaxSeqStore::new()), switch.clone());
        assert_eq!(store.raise(Namespace::Inbox, 0, 10).await.unwrap(), 10);
        std::fs::write(&switch, b"").unwrap();
        assert!(store.raise(Namespace::Inbox, 0, 20).await.is_err());
        assert_eq!(store.load(Namespace::Inbox, 0).await.unwrap(), 10);
        std::fs::remove_file(&switch).unwrap();
        assert_eq!(store.raise(Namespace::Inbox, 0, 20).await.unwrap(), 20);
    }
}
