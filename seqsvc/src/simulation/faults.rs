//! The faults the simulation injects into a process: its path to the store
//! (cut or slow) and freezing.

use crate::routing::RoutingTable;
use crate::store::{MaxSeqStore, RouteStore, RouteWrite};
use crate::testsuite::MemoryMaxSeqStore;
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One AllocSvr's path to the shared store: it can be cut (reads, loads
/// and raises fail) or slow (the reply arrives `delay` after the store
/// answered, with what it answered then).
pub(super) struct Link {
    pub(super) store: Arc<MemoryMaxSeqStore>,
    pub(super) cut: AtomicBool,
    pub(super) delay_ms: AtomicU64,
}

impl Link {
    pub(super) fn check(&self) -> Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(SeqError::Store("partitioned from the store".into()));
        }
        Ok(())
    }

    pub(super) async fn reply<T>(&self, value: T) -> T {
        let delay = self.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        value
    }
}

#[async_trait]
impl RouteStore for Link {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        self.check()?;
        let table = self.store.read_routes().await?;
        Ok(self.reply(table).await)
    }

    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite> {
        self.check()?;
        self.store.write_routes(table).await
    }
}

#[async_trait]
impl MaxSeqStore for Link {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        self.check()?;
        let value = self.store.load(namespace, section).await?;
        Ok(self.reply(value).await)
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        self.check()?;
        let value = self.store.raise(namespace, section, at_least).await?;
        Ok(self.reply(value).await)
    }
}

/// Whether a process is frozen. Not a `watch` channel: its receivers wait
/// on one of several notifiers picked at random, so the order in which
/// thawed requests run would differ between runs of one seed.
#[derive(Default)]
pub(super) struct Freeze {
    frozen: AtomicBool,
    thawed: tokio::sync::Notify,
}

impl Freeze {
    pub(super) fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }

    pub(super) fn set(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
        if !frozen {
            self.thawed.notify_waiters();
        }
    }

    pub(super) async fn thawed(&self) {
        loop {
            let notified = self.thawed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if !self.is_frozen() {
                return;
            }
            notified.await;
        }
    }
}
