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
//! by compare-and-set, so no two openings share a run and a later run's
//! intents never fall under an earlier run's range deletions, whatever the
//! clocks say. The recovery finishes every intent of earlier runs, page by
//! page, then removes them all.

use super::fencing::prepare;
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
    select_first: PreparedStatement,
    select_after: PreparedStatement,
}

/// Intents read per page by the recovery (each page is finished before
/// the next is read, so a partition whose removals were held back for a
/// long run is read in bounded pieces).
pub(super) const LEFTOVER_PAGE: i32 = 256;

/// Where a page of leftovers ends: the last (run, intent) read.
pub(super) type LeftoverCursor = (i64, i64);

impl NodeIntents {
    /// Takes the next run (the tables exist: `SCHEMA` ran). The counter is
    /// raised by compare-and-set, so two openings never take the same run
    /// and a run never goes back, whatever the hosts' clocks say (a plain
    /// write could be hidden by an earlier one carrying a later timestamp,
    /// and the next opening would take the same run again, numbering its
    /// intents over another run's).
    pub(super) async fn open(session: &Session, keyspace: &str) -> Result<Self> {
        let mut read_run = prepare(
            session,
            keyspace,
            "SELECT run FROM {ks}.node_runs WHERE name = ?",
        )
        .await?;
        read_run.set_consistency(scylla::statement::Consistency::LocalSerial);
        let mut first_run = prepare(
            session,
            keyspace,
            "INSERT INTO {ks}.node_runs (name, run) VALUES (?, ?) IF NOT EXISTS",
        )
        .await?;
        let mut next_run = prepare(
            session,
            keyspace,
            "UPDATE {ks}.node_runs SET run = ? WHERE name = ? IF run = ?",
        )
        .await?;
        // A retry after a lost answer would see its own write and report
        // "not applied": read again and take the next one then.
        first_run.set_is_idempotent(false);
        next_run.set_is_idempotent(false);
        let run = loop {
            let rows = session
                .execute_unpaged(&read_run, (RUNS_ROW,))
                .await
                .map_err(cql)?
                .into_rows_result()
                .map_err(cql)?;
            let last = rows
                .maybe_first_row::<(Option<i64>,)>()
                .map_err(cql)?
                .map(|(run,)| run.unwrap_or(0));
            let attempt = match last {
                None => session.execute_unpaged(&first_run, (RUNS_ROW, 1i64)).await,
                Some(last) => {
                    session
                        .execute_unpaged(&next_run, (last + 1, RUNS_ROW, last))
                        .await
                }
            };
            if cql_kit::lwt::applied(attempt.map_err(cql)?)? {
                break last.unwrap_or(0) as u64 + 1;
            }
        };
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
            select_first: prepare(
                session,
                keyspace,
                "SELECT run, intent, event FROM {ks}.node_intents WHERE shard = ? LIMIT ?",
            )
            .await?,
            select_after: prepare(
                session,
                keyspace,
                "SELECT run, intent, event FROM {ks}.node_intents WHERE shard = ? AND (run, intent) > (?, ?) LIMIT ?",
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

    /// A page of the intents of `shard` that earlier runs left (finished
    /// or not), after `cursor`, with the cursor of the next page (`None`
    /// once there is none).
    pub(super) async fn leftovers(
        &self,
        session: &Session,
        shard: i32,
        cursor: Option<LeftoverCursor>,
    ) -> Result<(Vec<Vec<u8>>, Option<LeftoverCursor>)> {
        let statements = (&self.select_first, &self.select_after);
        leftover_page(session, statements, shard, self.run, cursor).await
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

/// One page of a partition's numbered intents (`select_first` and
/// `select_after` read `(generation, intent, event)` in that order, the
/// second after a cursor): those of generations below `own` (a run, or a
/// writer's epoch), and the cursor of the next page, `None` once there is
/// none. A row without an intent (a fenced partition's static row alone)
/// is skipped; this generation's own rows come last and end the read.
pub(super) async fn leftover_page(
    session: &Session,
    (select_first, select_after): (&PreparedStatement, &PreparedStatement),
    shard: i32,
    own: u64,
    cursor: Option<LeftoverCursor>,
) -> Result<(Vec<Vec<u8>>, Option<LeftoverCursor>)> {
    let result = match cursor {
        None => {
            session
                .execute_unpaged(select_first, (shard, LEFTOVER_PAGE))
                .await
        }
        Some((generation, intent)) => {
            session
                .execute_unpaged(select_after, (shard, generation, intent, LEFTOVER_PAGE))
                .await
        }
    };
    let rows = result.map_err(cql)?.into_rows_result().map_err(cql)?;
    let mut leftovers = Vec::new();
    let mut last = None;
    let mut read = 0;
    for row in rows
        .rows::<(Option<i64>, Option<i64>, Option<Vec<u8>>)>()
        .map_err(cql)?
    {
        read += 1;
        let (Some(generation), Some(intent), Some(event)) = row.map_err(super::corrupt)? else {
            continue;
        };
        if generation as u64 >= own {
            return Ok((leftovers, None));
        }
        leftovers.push(event);
        last = Some((generation, intent));
    }
    let next = if read < LEFTOVER_PAGE { None } else { last };
    Ok((leftovers, next))
}
