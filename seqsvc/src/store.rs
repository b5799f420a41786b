//! Durable storage of `max_seq` per (namespace, section).
//!
//! A [`MaxSeqStore`] only raises values: `raise` to a lower value than the
//! stored one leaves it unchanged and returns the stored value. `raise`
//! returns only after the new value is durable (fsync for the embedded store),
//! because the allocator hands out seqs up to the returned value.

use crate::routing::RoutingTable;
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Mutex;

#[async_trait]
pub trait MaxSeqStore: Send + Sync + 'static {
    /// The stored `max_seq` of a section; 0 when never raised.
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64>;

    /// Raises the section's `max_seq` to at least `at_least` and returns the
    /// stored value once it is durable. Never lowers it.
    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64>;
}

/// Durable storage of the routing table, written only by compare-and-set so
/// that a version is never reused for different content, also when two
/// arbiters race or one restarts.
#[async_trait]
pub trait RouteStore: Send + Sync + 'static {
    /// The stored table; `None` until the first one is written.
    async fn read_routes(&self) -> Result<Option<RoutingTable>>;

    /// Stores `table` if and only if the stored version is the one before
    /// `table.version` (version 1: nothing stored yet), so two writers of
    /// one version never both succeed.
    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite>;
}

/// What one [`RouteStore::write_routes`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteWrite {
    /// Whether the table given was stored.
    pub applied: bool,
    /// The table stored afterwards: the one given if applied, else the one
    /// that won (or `None` if nothing is stored).
    pub current: Option<RoutingTable>,
}

/// Everything an AllocSvr and an arbiter need from the shared store.
pub trait SharedStore: MaxSeqStore + RouteStore {}
impl<T: MaxSeqStore + RouteStore> SharedStore for T {}

/// The stored version a write of `table` replaces (0: none stored).
pub(crate) fn replaced_version(table: &RoutingTable) -> Result<u64> {
    table
        .version
        .checked_sub(1)
        .ok_or_else(|| SeqError::InvalidArgument("routing table version 0 is never stored".into()))
}

pub(crate) fn encode_table(table: &RoutingTable) -> Vec<u8> {
    prost::Message::encode_to_vec(&table.to_proto())
}

pub(crate) fn decode_table(bytes: &[u8]) -> Result<RoutingTable> {
    let proto: proto::seqsvc::v1::RoutingTable = prost::Message::decode(bytes)
        .map_err(|e| SeqError::Store(format!("corrupt routing table: {e}")))?;
    RoutingTable::from_proto(&proto).map_err(|e| SeqError::Store(format!("stored {e}")))
}

fn section_key(namespace: Namespace, section: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = namespace.code();
    key[1..].copy_from_slice(&section.to_be_bytes());
    key
}

fn decode_u64(bytes: &[u8]) -> Result<u64> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| SeqError::Store(format!("corrupt max_seq value of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(raw))
}

/// The embedded store: one fjall database in its own directory.
///
/// Raises are serialised by a mutex: they happen once per step per section, so
/// contention is negligible, and read-compare-write needs no transaction.
#[derive(Clone)]
pub struct FjallMaxSeqStore {
    inner: std::sync::Arc<FjallInner>,
}

struct FjallInner {
    db: fjall::Database,
    max_seq: fjall::Keyspace,
    routes: fjall::Keyspace,
    write_lock: Mutex<()>,
}

impl FjallMaxSeqStore {
    /// Opens (or creates) the store in `dir`. Blocking: call before serving or
    /// from a blocking context.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| SeqError::Store(format!("open {}: {e}", dir.display())))?;
        let max_seq = db
            .keyspace("max_seq", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| SeqError::Store(e.to_string()))?;
        let routes = db
            .keyspace("routes", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| SeqError::Store(e.to_string()))?;
        Ok(Self {
            inner: std::sync::Arc::new(FjallInner {
                db,
                max_seq,
                routes,
                write_lock: Mutex::new(()),
            }),
        })
    }

    fn load_blocking(&self, namespace: Namespace, section: u64) -> Result<u64> {
        match self
            .inner
            .max_seq
            .get(section_key(namespace, section))
            .map_err(|e| SeqError::Store(e.to_string()))?
        {
            Some(v) => decode_u64(&v),
            None => Ok(0),
        }
    }

    fn raise_blocking(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let _guard = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stored = self.load_blocking(namespace, section)?;
        if stored >= at_least {
            return Ok(stored);
        }
        self.inner
            .max_seq
            .insert(section_key(namespace, section), at_least.to_be_bytes())
            .map_err(|e| SeqError::Store(e.to_string()))?;
        self.inner
            .db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| SeqError::Store(format!("fsync: {e}")))?;
        Ok(at_least)
    }
}

const ROUTES_KEY: &[u8] = b"table";

impl FjallMaxSeqStore {
    fn read_routes_blocking(&self) -> Result<Option<RoutingTable>> {
        self.inner
            .routes
            .get(ROUTES_KEY)
            .map_err(|e| SeqError::Store(e.to_string()))?
            .map(|bytes| decode_table(&bytes))
            .transpose()
    }

    fn write_routes_blocking(&self, table: &RoutingTable) -> Result<RouteWrite> {
        let expected_version = replaced_version(table)?;
        let _guard = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stored = self.read_routes_blocking()?;
        if stored.as_ref().map_or(0, |t| t.version) != expected_version {
            return Ok(RouteWrite {
                applied: false,
                current: stored,
            });
        }
        self.inner
            .routes
            .insert(ROUTES_KEY, encode_table(table))
            .map_err(|e| SeqError::Store(e.to_string()))?;
        self.inner
            .db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| SeqError::Store(format!("fsync: {e}")))?;
        Ok(RouteWrite {
            applied: true,
            current: Some(table.clone()),
        })
    }
}

#[async_trait]
impl RouteStore for FjallMaxSeqStore {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_routes_blocking())
            .await
            .map_err(|e| SeqError::Store(format!("read task failed: {e}")))?
    }

    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite> {
        let this = self.clone();
        let table = table.clone();
        tokio::task::spawn_blocking(move || this.write_routes_blocking(&table))
            .await
            .map_err(|e| SeqError::Store(format!("write task failed: {e}")))?
    }
}

#[async_trait]
impl MaxSeqStore for FjallMaxSeqStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.load_blocking(namespace, section))
            .await
            .map_err(|e| SeqError::Store(format!("load task failed: {e}")))?
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.raise_blocking(namespace, section, at_least))
            .await
            .map_err(|e| SeqError::Store(format!("raise task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fjall_store_only_raises_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = FjallMaxSeqStore::open(dir.path()).unwrap();
            assert_eq!(store.load(Namespace::Inbox, 7).await.unwrap(), 0);
            assert_eq!(store.raise(Namespace::Inbox, 7, 100).await.unwrap(), 100);
            assert_eq!(store.raise(Namespace::Inbox, 7, 50).await.unwrap(), 100);
            assert_eq!(
                store.raise(Namespace::Conversation, 7, 10).await.unwrap(),
                10
            );
        }
        let store = FjallMaxSeqStore::open(dir.path()).unwrap();
        assert_eq!(store.load(Namespace::Inbox, 7).await.unwrap(), 100);
        assert_eq!(store.load(Namespace::Conversation, 7).await.unwrap(), 10);
        assert_eq!(store.load(Namespace::Inbox, 8).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn route_writes_are_compare_and_set_and_durable() {
        use crate::routing::{LeaseConfig, RoutingTable};
        let dir = tempfile::tempdir().unwrap();
        let first = RoutingTable::initial(10, LeaseConfig::default()).unwrap();
        {
            let store = FjallMaxSeqStore::open(dir.path()).unwrap();
            crate::testsuite::route_writes_are_compare_and_set(&store, first).await;
        }
        let store = FjallMaxSeqStore::open(dir.path()).unwrap();
        let stored = store.read_routes().await.unwrap().unwrap();
        assert_eq!(stored.version, 2);
        assert_eq!(stored.owners[0].as_deref(), Some("x:1"));
    }
}
