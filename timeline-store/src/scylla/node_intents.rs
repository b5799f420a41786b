//! The intent log of a store with one writer and no lease (a single
//! node): intents numbered within a *run* (one per opening of the store)
//! and removed by range, as a cluster's writer removes its own
//! (`fencing`, `open_intents`), only without the fence.
//!
//! Deleting each finished intent on its own left a tombstone per event in
//! one of 16 partitions; the next start's recovery read through all of
//! them, and Cassandra refuses a read past 100,000 tombstones: a node that
//! had sent about 1.6 million messages within the grace period
//! (`gc_grace_seconds`, 10 days by default) could not start again.
//! Numbered intents are removed together: one range deletion per partition
//! at most every `open_intents::CLEAR_INTERVAL`, each covering every
//! earlier one, so a partition holds a few range markers and the intents
//! still open.
//!
//! A run's number comes from `node_runs`, raised by one at every opening
//! (one writer: no condition needed), so a later run's intents never fall
//! under an earlier run's range deletions, whatever the clocks say. The
//! recovery finishes every intent of earlier runs, then removes them all.

use super::open_intents::OpenIntents;
use super::{Result, big, cql};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// Tables of the single-node intent log.
pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.node_intents (shard int, run bigint, intent bigint, event blob, PRIMARY KEY (shard, run, intent))",
    "CREATE TABLE IF NOT EXISTS {ks}.node_runs (name text PRIMARY KEY, run bigint)",
];

/// The one row of `node_runs`.
const RUNS_ROW: &str = "intents";

/// This opening's run and its open intents.
pub(super) struct NodeIntents {
    pub(super) run: u64,
    pub(super) open: OpenIntents,
    insert: PreparedStatement,
    clear_finished: PreparedStatement,
    clear_older: PreparedStatement,
    select: PreparedStatement,
}

async fn prepare(session: &Session, keyspace: &str, text: &str) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(text.replace("{ks}", keyspace))
        .await
        .map_err(cql)?;
    statement.set_is_idempotent(true);
    Ok(statement)
}

impl NodeIntents {
    /// Takes the next run (the tables exist: `SCHEMA` ran).
    pub(super) async fn open(session: &Session, keyspace: &str) -> Result<Self> {
        let read_run = prepare(
            session,
            keyspace,
            "SELECT run FROM {ks}.node_runs WHERE name = ?",
        )
        .await?;
        let rows = session
            .execute_unpaged(&read_run, (RUNS_ROW,))
            .await
            .map_err(cql)?
            .into_rows_result()
            .map_err(cql)?;
        let last = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(cql)?
            .and_then(|(run,)| run)
            .unwrap_or(0);
        let run = last as u64 + 1;
        let write_run = prepare(
            session,
            keyspace,
            "INSERT INTO {ks}.node_runs (name, run) VALUES (?, ?)",
        )
        .await?;
        session
            .execute_unpaged(&write_run, (RUNS_ROW, big(run)))
            .await
            .map_err(cql)?;
        Ok(Self {
            run,
            open: OpenIntents::new(),
            insert: prepare(
                session,
                keyspace,
                "INSERT INTO {ks}.node_intents (shard, run, intent, event) VALUES (?, ?, ?, ?)",
            )
            .await?,
            clear_finished: prepare(
                session,
                keyspace,
                "DELETE FROM {ks}.node_intents WHERE shard = ? AND run = ? AND intent < ?",
            )
            .await?,
            clear_older: prepare(
                session,
                keyspace,
                "DELETE FROM {ks}.node_intents WHERE shard = ? AND run < ?",
            )
            .await?,
            select: prepare(
                session,
                keyspace,
                "SELECT run, event FROM {ks}.node_intents WHERE shard = ?",
            )
            .await?,
        })
    }

    /// Stores intent number `intent` of this run.
    pub(super) async fn write(
        &self,
        session: &Session,
        shard: i32,
        intent: u64,
        event: Vec<u8>,
    ) -> Result<()> {
        let values = (shard, big(self.run), big(intent), event);
        session
            .execute_unpaged(&self.insert, values)
            .await
            .map_err(cql)?;
        Ok(())
    }

    /// Removes this run's intents of `shard` numbered below `below` (every
    /// one of them finished).
    pub(super) async fn clear_finished(
        &self,
        session: &Session,
        shard: i32,
        below: u64,
    ) -> Result<()> {
        let values = (shard, big(self.run), big(below));
        session
            .execute_unpaged(&self.clear_finished, values)
            .await
            .map_err(cql)?;
        Ok(())
    }

    /// The intents of `shard` that earlier runs left (finished or not).
    pub(super) async fn leftovers(&self, session: &Session, shard: i32) -> Result<Vec<Vec<u8>>> {
        let rows = session
            .execute_unpaged(&self.select, (shard,))
            .await
            .map_err(cql)?
            .into_rows_result()
            .map_err(cql)?;
        let mut leftovers = Vec::new();
        for row in rows.rows::<(i64, Vec<u8>)>().map_err(cql)? {
            let (run, event) = row.map_err(super::corrupt)?;
            if (run as u64) < self.run {
                leftovers.push(event);
            }
        }
        Ok(leftovers)
    }

    /// Every leftover of `shard` is finished: removes them.
    pub(super) async fn clear_older(&self, session: &Session, shard: i32) -> Result<()> {
        session
            .execute_unpaged(&self.clear_older, (shard, big(self.run)))
            .await
            .map_err(cql)?;
        Ok(())
    }
}
