//! `max_seq` on a CQL store (ScyllaDB, or Cassandra in tests).
//!
//! Values are raised only by lightweight transactions, so two allocators
//! (or an allocator and a stale one) can never lower or overwrite each other:
//! a lost compare-and-set re-reads and tries again from the newer value.
//! Reads use SERIAL consistency so they see every committed LWT. Only the
//! `[applied]` column of an LWT result is read: Cassandra returns it alone on
//! success, ScyllaDB adds the old row.

use crate::routing::RoutingTable;
use crate::store::{
    MaxSeqStore, RouteStore, RouteWrite, decode_table, encode_table, replaced_version,
};
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use std::sync::Arc;

/// Compare-and-set attempts per raise before reporting contention.
pub const MAX_RAISE_ATTEMPTS: usize = 32;

pub struct CqlMaxSeqStore {
    session: Arc<Session>,
    select: PreparedStatement,
    insert_if_absent: PreparedStatement,
    update_if: PreparedStatement,
    select_routes: PreparedStatement,
    insert_routes_if_absent: PreparedStatement,
    update_routes_if: PreparedStatement,
}

/// The routing table is one row; its key.
const ROUTES_ROW: i32 = 0;

fn store_error(error: impl std::fmt::Display) -> SeqError {
    SeqError::Store(format!("cql: {error}"))
}

impl From<cql_kit::CqlError> for SeqError {
    fn from(error: cql_kit::CqlError) -> Self {
        match error {
            cql_kit::CqlError::InvalidUrl { .. } => SeqError::InvalidArgument(error.to_string()),
            other => SeqError::Store(other.to_string()),
        }
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.max_seq \
     (namespace int, section bigint, value bigint, PRIMARY KEY ((namespace, section)))",
    "CREATE TABLE IF NOT EXISTS {ks}.seq_routes (id int PRIMARY KEY, version bigint, data blob)",
];

async fn prepare(session: &Session, keyspace: &str, text: &str) -> Result<PreparedStatement> {
    session
        .prepare(text.replace("{ks}", keyspace))
        .await
        .map_err(store_error)
}

/// A read linearizable with the LWTs that write its rows.
async fn prepare_serial_read(
    session: &Session,
    keyspace: &str,
    text: &str,
) -> Result<PreparedStatement> {
    let mut statement = prepare(session, keyspace, text).await?;
    statement.set_consistency(Consistency::LocalSerial);
    statement.set_is_idempotent(true);
    Ok(statement)
}

impl CqlMaxSeqStore {
    /// Creates the `max_seq` table in `keyspace` if needed (the keyspace
    /// must exist) and prepares the statements.
    pub async fn open(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        for ddl in SCHEMA {
            session
                .query_unpaged(ddl.replace("{ks}", keyspace), ())
                .await
                .map_err(store_error)?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(store_error)?;
        let select_routes = prepare_serial_read(
            &session,
            keyspace,
            "SELECT version, data FROM {ks}.seq_routes WHERE id = ?",
        )
        .await?;
        let insert_routes_if_absent = prepare(
            &session,
            keyspace,
            "INSERT INTO {ks}.seq_routes (id, version, data) VALUES (?, ?, ?) IF NOT EXISTS",
        )
        .await?;
        let update_routes_if = prepare(
            &session,
            keyspace,
            "UPDATE {ks}.seq_routes SET version = ?, data = ? WHERE id = ? IF version = ?",
        )
        .await?;
        let select = prepare_serial_read(
            &session,
            keyspace,
            "SELECT value FROM {ks}.max_seq WHERE namespace = ? AND section = ?",
        )
        .await?;
        let insert_if_absent = prepare(
            &session,
            keyspace,
            "INSERT INTO {ks}.max_seq (namespace, section, value) VALUES (?, ?, ?) IF NOT EXISTS",
        )
        .await?;
        let update_if = prepare(
            &session,
            keyspace,
            "UPDATE {ks}.max_seq SET value = ? WHERE namespace = ? AND section = ? IF value = ?",
        )
        .await?;
        Ok(Self {
            session,
            select,
            insert_if_absent,
            update_if,
            select_routes,
            insert_routes_if_absent,
            update_routes_if,
        })
    }

    async fn read(&self, namespace: Namespace, section: u64) -> Result<Option<u64>> {
        let result = self
            .session
            .execute_unpaged(&self.select, (i32::from(namespace.code()), section as i64))
            .await
            .map_err(store_error)?;
        let rows = result.into_rows_result().map_err(store_error)?;
        let value: Option<(i64,)> = rows.maybe_first_row().map_err(store_error)?;
        Ok(value.map(|(v,)| v as u64))
    }
}

#[async_trait]
impl MaxSeqStore for CqlMaxSeqStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        Ok(self.read(namespace, section).await?.unwrap_or(0))
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let code = i32::from(namespace.code());
        for _ in 0..MAX_RAISE_ATTEMPTS {
            let result = match self.read(namespace, section).await? {
                Some(stored) if stored >= at_least => return Ok(stored),
                Some(stored) => self
                    .session
                    .execute_unpaged(
                        &self.update_if,
                        (at_least as i64, code, section as i64, stored as i64),
                    )
                    .await
                    .map_err(store_error)?,
                None => self
                    .session
                    .execute_unpaged(
                        &self.insert_if_absent,
                        (code, section as i64, at_least as i64),
                    )
                    .await
                    .map_err(store_error)?,
            };
            if cql_kit::applied(result)? {
                return Ok(at_least);
            }
        }
        Err(SeqError::Store(format!(
            "max_seq of {namespace:?} section {section} still contended after {MAX_RAISE_ATTEMPTS} attempts"
        )))
    }
}

#[async_trait]
impl RouteStore for CqlMaxSeqStore {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        let result = self
            .session
            .execute_unpaged(&self.select_routes, (ROUTES_ROW,))
            .await
            .map_err(store_error)?;
        let rows = result.into_rows_result().map_err(store_error)?;
        let row: Option<(i64, Vec<u8>)> = rows.maybe_first_row().map_err(store_error)?;
        row.map(|(version, data)| {
            let table = decode_table(&data)?;
            if table.version != version as u64 {
                return Err(SeqError::Store(format!(
                    "routing table row says version {version}, its data {}",
                    table.version
                )));
            }
            Ok(table)
        })
        .transpose()
    }

    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite> {
        let expected_version = replaced_version(table)?;
        let data = encode_table(table);
        let result = if expected_version == 0 {
            self.session
                .execute_unpaged(
                    &self.insert_routes_if_absent,
                    (ROUTES_ROW, table.version as i64, data),
                )
                .await
        } else {
            self.session
                .execute_unpaged(
                    &self.update_routes_if,
                    (
                        table.version as i64,
                        data,
                        ROUTES_ROW,
                        expected_version as i64,
                    ),
                )
                .await
        }
        .map_err(store_error)?;
        let applied = cql_kit::applied(result)?;
        // A lost race or an uncertain outcome: report what is stored now.
        Ok(RouteWrite {
            applied,
            current: self.read_routes().await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Allocator, AllocatorConfig};

    fn cql_nodes() -> String {
        std::env::var("TIMELINE_CQL_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cql_store_only_raises_and_allocators_never_repeat() {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(cql_nodes().split(','))
            .build()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no CQL server at {}: {e}. Start one with `scripts/cql-server start`",
                    cql_nodes()
                )
            });
        let session = Arc::new(session);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let keyspace = format!("tl_maxseq_{}_{}", std::process::id(), nanos % 1_000_000_000);
        session
            .query_unpaged(
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}}"),
                (),
            )
            .await
            .unwrap();
        let store = Arc::new(
            CqlMaxSeqStore::open(Arc::clone(&session), &keyspace)
                .await
                .unwrap(),
        );
        assert_eq!(store.load(Namespace::Inbox, 1).await.unwrap(), 0);
        assert_eq!(store.raise(Namespace::Inbox, 1, 100).await.unwrap(), 100);
        assert_eq!(
            store.raise(Namespace::Inbox, 1, 40).await.unwrap(),
            100,
            "never lowered"
        );
        assert_eq!(store.raise(Namespace::Inbox, 1, 250).await.unwrap(), 250);

        // Racing raisers: every raise returns at least what it asked, and
        // the stored value ends at the maximum.
        let raises = (1..=8u64).map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                (
                    i * 1000,
                    store
                        .raise(Namespace::Conversation, 7, i * 1000)
                        .await
                        .unwrap(),
                )
            })
        });
        for raise in raises {
            let (asked, got) = raise.await.unwrap();
            assert!(got >= asked);
        }
        assert_eq!(store.load(Namespace::Conversation, 7).await.unwrap(), 8000);

        // Two allocator "runs" on the same store never hand out a seq twice.
        let config = AllocatorConfig {
            step: 10,
            section_size: 4,
        };
        let first = Allocator::new(config.clone(), store.clone()).unwrap();
        let mut seen = Vec::new();
        for _ in 0..25 {
            seen.push(first.next(Namespace::Inbox, 42).await.unwrap());
        }
        drop(first);
        let second = Allocator::new(config, store.clone()).unwrap();
        let resumed = second.next(Namespace::Inbox, 42).await.unwrap();
        assert!(resumed > *seen.last().unwrap());
        assert!(
            resumed - seen.last().unwrap() <= 11,
            "restart jumps at most one step"
        );
        // The routing table: compare-and-set on the version.
        use crate::routing::{LeaseConfig, RoutingTable};
        let first = RoutingTable::initial(10, LeaseConfig::default()).unwrap();
        crate::testsuite::route_writes_are_compare_and_set(store.as_ref(), first).await;

        session
            .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
            .await
            .unwrap();
    }

    /// The layout marker sits at the top of the id range, which CQL's
    /// signed bigint stores as a negative number: it must round-trip.
    #[tokio::test]
    async fn cql_store_keeps_the_seq_layout() {
        use crate::store::{SeqLayout, claim_layout};
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(cql_nodes().split(','))
            .build()
            .await
            .expect("a CQL server for the ScyllaDB tests");
        let session = Arc::new(session);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let keyspace = format!("tl_layout_{}_{}", std::process::id(), nanos % 1_000_000_000);
        session
            .query_unpaged(
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}}"),
                (),
            )
            .await
            .unwrap();
        let store = CqlMaxSeqStore::open(Arc::clone(&session), &keyspace)
            .await
            .unwrap();
        claim_layout(&store, SeqLayout::Cluster).await.unwrap();
        claim_layout(&store, SeqLayout::Cluster).await.unwrap();
        let refused = claim_layout(&store, SeqLayout::InProcess { section_size: 4 }).await;
        assert!(
            matches!(&refused, Err(SeqError::InvalidArgument(why)) if why.contains("seqsvc cluster")),
            "{refused:?}"
        );
        session
            .query_unpaged(format!("DROP KEYSPACE {keyspace}"), ())
            .await
            .unwrap();
    }
}
