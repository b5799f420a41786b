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

    /// [`MaxSeqStore::raise`] for several `(section, at_least)` pairs of one
    /// namespace; returns the stored value of each, all durable. A store
    /// that can make several values durable with one sync overrides it, so
    /// a batch of ids spread over many sections costs one sync, not one per
    /// section.
    async fn raise_many(&self, namespace: Namespace, raises: &[(u64, u64)]) -> Result<Vec<u64>> {
        let mut stored = Vec::with_capacity(raises.len());
        for &(section, at_least) in raises {
            stored.push(self.raise(namespace, section, at_least).await?);
        }
        Ok(stored)
    }

    /// Why the store can take no raise for the rest of the process (an
    /// fsync failed), if so: health reports it instead of waiting for the
    /// next step to run out.
    fn poisoned(&self) -> Option<String> {
        None
    }
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

/// Which allocator hands out the seqs a store's `max_seq` values bound, and
/// how it maps ids to sections. A `max_seq` is only meaningful under the
/// layout that raised it: with another section size an id reads a
/// neighbour's value, and a cluster has its own store, so either change
/// would reissue seqs. The arbiter refuses a section size other than its
/// table's; [`claim_layout`] does the same for a process's own store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqLayout {
    /// The in-process allocator with this section size.
    InProcess { section_size: u64 },
    /// A seqsvc cluster, which keeps `max_seq` in its own store.
    Cluster,
}

/// The layout is kept as a `max_seq` value under a key no id reaches:
/// snowflake clock sections are node ids, which are 16 bits.
const LAYOUT_KEY: (Namespace, u64) = (Namespace::SnowflakeClock, u64::MAX);

/// The stored value meaning [`SeqLayout::Cluster`]; section sizes are at
/// most [`crate::allocator::MAX_SECTION_SIZE`], so it cannot be one.
const CLUSTER_LAYOUT: u64 = u64::MAX;

impl SeqLayout {
    fn encode(self) -> u64 {
        match self {
            SeqLayout::InProcess { section_size } => section_size,
            SeqLayout::Cluster => CLUSTER_LAYOUT,
        }
    }

    fn decode(value: u64) -> Self {
        match value {
            CLUSTER_LAYOUT => SeqLayout::Cluster,
            section_size => SeqLayout::InProcess { section_size },
        }
    }
}

impl std::fmt::Display for SeqLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeqLayout::InProcess { section_size } => {
                write!(
                    f,
                    "the in-process allocator with section size {section_size}"
                )
            }
            SeqLayout::Cluster => f.write_str("a seqsvc cluster"),
        }
    }
}

/// Records `layout` in a store that has none, or checks it against the one
/// recorded; a mismatch is an error that names both. Two processes claiming
/// different layouts at once cannot both win: a raise reports the higher
/// value, which differs from at least one of them.
pub async fn claim_layout(store: &dyn MaxSeqStore, layout: SeqLayout) -> Result<()> {
    let (namespace, key) = LAYOUT_KEY;
    let mut stored = store.load(namespace, key).await?;
    if stored == 0 {
        stored = store.raise(namespace, key, layout.encode()).await?;
    }
    if stored != layout.encode() {
        return Err(SeqError::InvalidArgument(format!(
            "the sequence store was written by {}, not {layout}: its max_seq values \
             would map ids to other sections and reissue seqs; start with the \
             original setting or a new store",
            SeqLayout::decode(stored)
        )));
    }
    Ok(())
}

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
///
/// A failed persist poisons the store: the written value sits in memory and
/// a later read would report it as durable, and after an fsync error the
/// kernel may have dropped any dirty page, so a retried sync proves nothing.
/// Every later call fails until a restart replays the journal. Loads take
/// the write lock so they never see a value whose sync is still running.
#[derive(Clone)]
pub struct FjallMaxSeqStore {
    inner: std::sync::Arc<FjallInner>,
}

struct FjallInner {
    db: fjall::Database,
    max_seq: fjall::Keyspace,
    routes: fjall::Keyspace,
    write_lock: Mutex<()>,
    /// Set when a persist failed; checked under `write_lock`.
    poisoned: std::sync::atomic::AtomicBool,
    /// Tests make the next persist fail as an fsync error would.
    #[cfg(test)]
    fail_next_persist: std::sync::atomic::AtomicBool,
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
                poisoned: Default::default(),
                #[cfg(test)]
                fail_next_persist: Default::default(),
            }),
        })
    }

    /// Makes the next persist fail (an injected fsync error).
    #[cfg(test)]
    fn fail_next_persist(&self) {
        self.inner
            .fail_next_persist
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes the write lock and refuses to go on after a failed persist.
    fn guard(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        let guard = self
            .inner
            .write_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self
            .inner
            .poisoned
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(SeqError::Store(
                "an earlier fsync failed; restart to recover from the journal".into(),
            ));
        }
        Ok(guard)
    }

    /// Syncs everything written so far; call with the write lock held.
    fn persist(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.sync_all();
        metrics::histogram!("seqsvc_store_fsync_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("seqsvc_store_fsync_errors_total").increment(1);
            self.inner
                .poisoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        result
    }

    fn sync_all(&self) -> Result<()> {
        #[cfg(test)]
        if self
            .inner
            .fail_next_persist
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(SeqError::Store("fsync: injected failure".into()));
        }
        self.inner
            .db
            .persist(fjall::PersistMode::SyncAll)
            .map_err(|e| SeqError::Store(format!("fsync: {e}")))
    }

    fn load_blocking(&self, namespace: Namespace, section: u64) -> Result<u64> {
        let _guard = self.guard()?;
        self.read_blocking(namespace, section)
    }

    fn read_blocking(&self, namespace: Namespace, section: u64) -> Result<u64> {
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
        Ok(self.raise_many_blocking(namespace, &[(section, at_least)])?[0])
    }

    /// Writes every raise, then syncs once.
    fn raise_many_blocking(&self, namespace: Namespace, raises: &[(u64, u64)]) -> Result<Vec<u64>> {
        let _guard = self.guard()?;
        let mut written = false;
        let mut values = Vec::with_capacity(raises.len());
        for &(section, at_least) in raises {
            let stored = self.read_blocking(namespace, section)?;
            if stored >= at_least {
                values.push(stored);
                continue;
            }
            self.inner
                .max_seq
                .insert(section_key(namespace, section), at_least.to_be_bytes())
                .map_err(|e| SeqError::Store(e.to_string()))?;
            written = true;
            values.push(at_least);
        }
        if written {
            self.persist()?;
        }
        Ok(values)
    }
}

const ROUTES_KEY: &[u8] = b"table";

impl FjallMaxSeqStore {
    fn read_routes_blocking(&self) -> Result<Option<RoutingTable>> {
        let _guard = self.guard()?;
        self.read_stored_routes()
    }

    fn read_stored_routes(&self) -> Result<Option<RoutingTable>> {
        self.inner
            .routes
            .get(ROUTES_KEY)
            .map_err(|e| SeqError::Store(e.to_string()))?
            .map(|bytes| decode_table(&bytes))
            .transpose()
    }

    fn write_routes_blocking(&self, table: &RoutingTable) -> Result<RouteWrite> {
        let expected_version = replaced_version(table)?;
        let _guard = self.guard()?;
        let stored = self.read_stored_routes()?;
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
        self.persist()?;
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
    fn poisoned(&self) -> Option<String> {
        self.inner
            .poisoned
            .load(std::sync::atomic::Ordering::SeqCst)
            .then(|| "an fsync of the sequence store failed; restart to recover".to_owned())
    }

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

    async fn raise_many(&self, namespace: Namespace, raises: &[(u64, u64)]) -> Result<Vec<u64>> {
        let this = self.clone();
        let raises = raises.to_vec();
        tokio::task::spawn_blocking(move || this.raise_many_blocking(namespace, &raises))
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

    /// A raise whose fsync failed left its value in memory only: a later
    /// raise or load must not report it, or the allocator hands out seqs a
    /// crash would reissue.
    #[tokio::test]
    async fn a_max_seq_whose_fsync_failed_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallMaxSeqStore::open(dir.path()).unwrap();
        assert_eq!(store.raise(Namespace::Inbox, 7, 100).await.unwrap(), 100);
        store.fail_next_persist();
        assert!(store.raise(Namespace::Inbox, 7, 200).await.is_err());
        match store.raise(Namespace::Inbox, 7, 150).await {
            Ok(value) => assert!(value < 150, "served the unpersisted max_seq {value}"),
            Err(SeqError::Store(_)) => {}
            Err(other) => panic!("unexpected error kind: {other}"),
        }
        match store.load(Namespace::Inbox, 7).await {
            Ok(value) => assert!(value <= 100, "loaded the unpersisted max_seq {value}"),
            Err(SeqError::Store(_)) => {}
            Err(other) => panic!("unexpected error kind: {other}"),
        }
        // Other sections' values are no safer: the journal may have lost
        // any write since the last good sync.
        match store.raise(Namespace::Conversation, 1, 10).await {
            Ok(_) => panic!("a raise after a failed fsync claimed durability"),
            Err(SeqError::Store(_)) => {}
            Err(other) => panic!("unexpected error kind: {other}"),
        }
    }

    #[tokio::test]
    async fn a_store_keeps_the_layout_that_first_claimed_it() {
        let dir = tempfile::tempdir().unwrap();
        let four = SeqLayout::InProcess { section_size: 4 };
        {
            let store = FjallMaxSeqStore::open(dir.path()).unwrap();
            claim_layout(&store, four).await.unwrap();
            claim_layout(&store, four).await.unwrap();
        }
        let store = FjallMaxSeqStore::open(dir.path()).unwrap();
        claim_layout(&store, four).await.unwrap();
        for other in [
            SeqLayout::InProcess { section_size: 8 },
            SeqLayout::InProcess { section_size: 2 },
            SeqLayout::Cluster,
        ] {
            let error = claim_layout(&store, other).await.unwrap_err();
            assert!(
                matches!(error, SeqError::InvalidArgument(_)),
                "{other}: {error}"
            );
            let text = error.to_string();
            assert!(text.contains("section size 4"), "{text}");
        }
        let cluster = tempfile::tempdir().unwrap();
        let store = FjallMaxSeqStore::open(cluster.path()).unwrap();
        claim_layout(&store, SeqLayout::Cluster).await.unwrap();
        assert!(claim_layout(&store, four).await.is_err());
        claim_layout(&store, SeqLayout::Cluster).await.unwrap();
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
