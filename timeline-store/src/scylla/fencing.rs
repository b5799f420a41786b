//! One writer at a time over a keyspace: the writer lease and the fence.
//!
//! Several syncd nodes may share a keyspace; one of them at a time is its
//! *writer*, the holder of the lease row in `writer_lease`. The row is
//! changed only by lightweight transactions: a claim names the
//! `(epoch, renewals)` it saw, so two challengers cannot both win, and each
//! win raises the epoch. The timing rules (when a holder must stop, when a
//! challenger may claim) live in syncd; this module only stores.
//!
//! A lease alone does not stop a writer that was frozen past it: a write
//! already handed to the driver can land long after (a SIGSTOP, a slow
//! socket, a hint replayed later). So a writer's intents go to
//! `fenced_intents`, whose partitions carry the writer's epoch as a static
//! column, and each intent is written *conditionally on that epoch*. A new
//! writer **seals** every partition with its own epoch before it recovers
//! and serves: from then on an intent of the old writer cannot be stored,
//! and any intent it stored before is read by the new writer's recovery and
//! finished there. The old writer's entry rows are written only after its
//! intent was stored, with the intent's fixed values and timestamp, so a
//! late one is a duplicate of a row the new writer also wrote, or older
//! than a rewrite since (see `writes`).
//!
//! Finished intents are not deleted one by one (a tombstone each, which
//! every conditional write's read of the partition walks through): a
//! writer numbers its intents within its epoch and removes, with one range
//! deletion, every intent below the lowest one still open
//! (`open_intents`). The deletion needs no condition: it only ever covers
//! this writer's own finished intents, and a late one is harmless. A new
//! writer, once it has finished what it found in a partition, removes every
//! older epoch's intents there the same way.
//!
//! ```text
//! writer_lease   (name)                      holder text, epoch bigint, renewals bigint, ceiling bigint   LWT only
//! fenced_intents ((shard), epoch, intent)    event blob; fence bigint static              stored by LWT, removed by range
//! fenced_events  ((shard), event_id)         the same, one deletion per intent: read and emptied by recovery only
//! ```
//!
//! Each claim and renewal also records a timestamp ceiling: the highest
//! write timestamp the holder may use until its next renewal, and the
//! floor of the next holder's (see `timestamps`).

use super::intent_batches::IntentBatches;
use super::open_intents::OpenIntents;
use super::timestamps::WriterClock;
use super::{PENDING_SHARDS, big, cql};
use crate::{Result, StoreError};
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use std::sync::Arc;
use std::time::Duration;

mod leftovers;

/// The lease row's key: one writer lease per keyspace.
const LEASE_NAME: &str = "writer";

/// What this version's writers do with the keyspace (the fence, the
/// intent tables, the timestamp ceiling). Every claim records it with its
/// epoch; a node finding a writer of another protocol at work refuses to
/// join it (versions must not be mixed). Raise it with any change that a
/// writer and a node taking over from it must agree on.
pub const CLUSTER_PROTOCOL: u32 = 1;

pub(super) const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS {ks}.writer_lease (name text PRIMARY KEY, holder text, epoch bigint, renewals bigint, ceiling bigint, protocol int, protocol_epoch bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.fenced_intents (shard int, epoch bigint, intent bigint, event blob, fence bigint static, PRIMARY KEY (shard, epoch, intent))",
    // Where writers before numbered intents kept them: recovery still
    // finishes what one left there.
    "CREATE TABLE IF NOT EXISTS {ks}.fenced_events (shard int, event_id bigint, event blob, fence bigint static, PRIMARY KEY (shard, event_id))",
];

/// Columns `writer_lease` tables made by earlier versions lack;
/// `CREATE TABLE IF NOT EXISTS` leaves such tables as they are.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("ceiling", "bigint"),
    ("protocol", "int"),
    ("protocol_epoch", "bigint"),
];
const LEASE_COLUMN: &str = "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'writer_lease' AND column_name = ?";

/// The lease row as last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder's advertised address.
    pub holder: String,
    /// Raised by every claim; the fence of the holder's writes.
    pub epoch: u64,
    /// Raised by every renewal within an epoch: a challenger that sees it
    /// unchanged for a whole lease knows the holder stopped renewing.
    pub renewals: u64,
    /// The highest write timestamp (microseconds) the holder may use until
    /// its next renewal; `None` in a row only earlier versions wrote.
    pub ceiling: Option<i64>,
    /// The [`CLUSTER_PROTOCOL`] of the node that claimed this epoch; `None`
    /// when it did not record one (a version before the protocol was
    /// recorded, even if a later one claimed an earlier epoch).
    pub protocol: Option<u32>,
}

/// The `writer_lease` table.
#[derive(Clone)]
pub struct WriterLeaseTable {
    session: Arc<Session>,
    read: PreparedStatement,
    insert_first: PreparedStatement,
    take_over: PreparedStatement,
    renew: PreparedStatement,
}

pub(super) async fn prepare(
    session: &Session,
    keyspace: &str,
    text: &str,
) -> Result<PreparedStatement> {
    let mut statement = session
        .prepare(text.replace("{ks}", keyspace))
        .await
        .map_err(cql)?;
    // Statements with fixed values: an upsert or a range deletion applies
    // the same cells again; a conditional one either finds its own write
    // (and answers not applied, read as "someone else") or applies once.
    statement.set_is_idempotent(true);
    Ok(statement)
}

async fn create_tables(session: &Session, keyspace: &str) -> Result<()> {
    for ddl in SCHEMA {
        session
            .query_unpaged(ddl.replace("{ks}", keyspace), ())
            .await
            .map_err(cql)?;
    }
    session.await_schema_agreement().await.map_err(cql)?;
    for (column, kind) in ADDED_COLUMNS {
        add_column(session, keyspace, column, kind).await?;
    }
    Ok(())
}

async fn has_column(session: &Session, keyspace: &str, column: &str) -> Result<bool> {
    let result = session
        .query_unpaged(LEASE_COLUMN, (keyspace, column))
        .await
        .map_err(cql)?;
    let rows = result.into_rows_result().map_err(cql)?;
    Ok(rows.rows::<(String,)>().map_err(cql)?.next().is_some())
}

/// Adds a column to a lease table an earlier version made. Two nodes may
/// race to add it: the loser's error is fine once the column is there.
async fn add_column(session: &Session, keyspace: &str, column: &str, kind: &str) -> Result<()> {
    if has_column(session, keyspace, column).await? {
        // Another node may have just added it: every node must know it
        // before statements naming it are prepared.
        session.await_schema_agreement().await.map_err(cql)?;
        return Ok(());
    }
    let added = session
        .query_unpaged(
            format!("ALTER TABLE {keyspace}.writer_lease ADD {column} {kind}"),
            (),
        )
        .await;
    session.await_schema_agreement().await.map_err(cql)?;
    match added {
        Ok(_) => Ok(()),
        Err(_) if has_column(session, keyspace, column).await? => Ok(()),
        Err(error) => Err(cql(error)),
    }
}

fn applied(result: scylla::response::query_result::QueryResult) -> Result<bool> {
    cql_kit::lwt::applied(result).map_err(StoreError::from)
}

impl WriterLeaseTable {
    /// Creates the tables if needed and prepares the statements.
    pub async fn open(session: Arc<Session>, keyspace: &str) -> Result<Self> {
        create_tables(&session, keyspace).await?;
        let mut read = prepare(
            &session,
            keyspace,
            "SELECT holder, epoch, renewals, ceiling, protocol, protocol_epoch FROM {ks}.writer_lease WHERE name = ?",
        )
        .await?;
        // A serial read also completes a claim still in flight, so what it
        // answers is what the next conditional write will compare against.
        read.set_consistency(Consistency::LocalSerial);
        Ok(Self {
            read,
            insert_first: prepare(
                &session,
                keyspace,
                "INSERT INTO {ks}.writer_lease (name, holder, epoch, renewals, ceiling, protocol, protocol_epoch) VALUES (?, ?, 1, 0, ?, ?, 1) IF NOT EXISTS",
            )
            .await?,
            take_over: prepare(
                &session,
                keyspace,
                "UPDATE {ks}.writer_lease SET holder = ?, epoch = ?, renewals = 0, ceiling = ?, protocol = ?, protocol_epoch = ? WHERE name = ? IF epoch = ? AND renewals = ?",
            )
            .await?,
            renew: prepare(
                &session,
                keyspace,
                "UPDATE {ks}.writer_lease SET renewals = ?, ceiling = ? WHERE name = ? IF epoch = ? AND holder = ? AND renewals = ?",
            )
            .await?,
            session,
        })
    }

    /// The lease row, if any node ever claimed it.
    pub async fn read(&self) -> Result<Option<LeaseRecord>> {
        let result = self
            .session
            .execute_unpaged(&self.read, (LEASE_NAME,))
            .await
            .map_err(cql)?;
        let rows = result.into_rows_result().map_err(cql)?;
        let mut rows = rows
            .rows::<(String, i64, i64, Option<i64>, Option<i32>, Option<i64>)>()
            .map_err(cql)?;
        match rows.next() {
            None => Ok(None),
            Some(row) => {
                let (holder, epoch, renewals, ceiling, protocol, protocol_epoch) =
                    row.map_err(super::corrupt)?;
                Ok(Some(LeaseRecord {
                    holder,
                    epoch: epoch as u64,
                    renewals: renewals as u64,
                    ceiling,
                    // A claim by a version that does not record its
                    // protocol leaves an earlier claim's in the row.
                    protocol: protocol
                        .filter(|_| protocol_epoch == Some(epoch))
                        .map(|p| p as u32),
                }))
            }
        }
    }

    /// Claims the lease for `holder`: the first claim ever when `seen` is
    /// `None`, else a takeover of the row exactly as seen. Answers the new
    /// epoch, or `None` when the row had changed (someone else won). The
    /// claim records a ceiling `span` past `clock`'s time (or the floor);
    /// once it applied, `clock` issues timestamps of the new epoch above
    /// the seen row's ceiling and up to the new one.
    pub async fn claim(
        &self,
        holder: &str,
        seen: Option<&LeaseRecord>,
        clock: &WriterClock,
        span: Duration,
    ) -> Result<Option<u64>> {
        let (floor, ceiling) = clock.claim_grant(seen.and_then(|seen| seen.ceiling), span);
        let result = match seen {
            None => self
                .session
                .execute_unpaged(
                    &self.insert_first,
                    (LEASE_NAME, holder, ceiling, CLUSTER_PROTOCOL as i32),
                )
                .await
                .map_err(cql)?,
            Some(seen) => self
                .session
                .execute_unpaged(
                    &self.take_over,
                    (
                        holder,
                        big(seen.epoch + 1),
                        ceiling,
                        CLUSTER_PROTOCOL as i32,
                        big(seen.epoch + 1),
                        LEASE_NAME,
                        big(seen.epoch),
                        big(seen.renewals),
                    ),
                )
                .await
                .map_err(cql)?,
        };
        if !applied(result)? {
            return Ok(None);
        }
        let epoch = seen.map_or(1, |seen| seen.epoch + 1);
        clock.begin(epoch, floor, ceiling);
        Ok(Some(epoch))
    }

    /// Renews `holder`'s lease of `epoch` by raising the counter from
    /// `seen` to `seen + 1`; false when the row is not as seen (taken over,
    /// or an earlier renewal that timed out applied after all). A renewal
    /// always changes the row, so a challenger watching it never mistakes a
    /// live holder for a silent one. It records a new ceiling (`span`
    /// past `clock`'s time, never lower than before), which `clock` uses
    /// once the renewal applied: one whose answer was lost may have applied,
    /// but it only raised the row above what `clock` issues under.
    pub async fn renew(
        &self,
        holder: &str,
        epoch: u64,
        seen: u64,
        clock: &WriterClock,
        span: Duration,
    ) -> Result<bool> {
        let ceiling = clock.renewal_ceiling(span);
        let values = (
            big(seen + 1),
            ceiling,
            LEASE_NAME,
            big(epoch),
            holder,
            big(seen),
        );
        let result = self
            .session
            .execute_unpaged(&self.renew, values)
            .await
            .map_err(cql)?;
        let renewed = applied(result)?;
        if renewed {
            clock.renewed(epoch, ceiling);
        }
        Ok(renewed)
    }
}

/// The intents of a writer holding `epoch`, written conditionally on it.
pub(super) struct Fence {
    pub(super) epoch: u64,
    pub(super) open: OpenIntents,
    /// Stores intents conditionally on the fence, a partition's waiting
    /// ones in one batch.
    intents: IntentBatches,
    clear_finished: PreparedStatement,
    clear_older: PreparedStatement,
    read_fence: PreparedStatement,
    seal_empty: PreparedStatement,
    seal: PreparedStatement,
    select_first: PreparedStatement,
    select_after: PreparedStatement,
    select_legacy: PreparedStatement,
    delete_legacy: PreparedStatement,
}

fn fenced(epoch: u64) -> StoreError {
    StoreError::Fenced(format!(
        "this node's writer epoch {epoch} was superseded by a newer writer"
    ))
}

impl Fence {
    pub(super) async fn prepare(
        session: &Arc<Session>,
        keyspace: &str,
        epoch: u64,
    ) -> Result<Self> {
        create_tables(session, keyspace).await?;
        let mut read_fence = prepare(
            session,
            keyspace,
            // DISTINCT reads the static row only, not the intents (nor
            // what is left of removed ones).
            "SELECT DISTINCT shard, fence FROM {ks}.fenced_intents WHERE shard = ?",
        )
        .await?;
        read_fence.set_consistency(Consistency::LocalSerial);
        let write_intent = prepare(
            session,
            keyspace,
            "UPDATE {ks}.fenced_intents SET event = ? WHERE shard = ? AND epoch = ? AND intent = ? IF fence = ?",
        )
        .await?;
        Ok(Self {
            epoch,
            open: OpenIntents::new(),
            intents: IntentBatches::start(session.clone(), write_intent, PENDING_SHARDS),
            clear_finished: prepare(
                session,
                keyspace,
                "DELETE FROM {ks}.fenced_intents WHERE shard = ? AND epoch = ? AND intent < ?",
            )
            .await?,
            clear_older: prepare(
                session,
                keyspace,
                "DELETE FROM {ks}.fenced_intents WHERE shard = ? AND epoch < ?",
            )
            .await?,
            read_fence,
            seal_empty: prepare(
                session,
                keyspace,
                "UPDATE {ks}.fenced_intents SET fence = ? WHERE shard = ? IF fence = null",
            )
            .await?,
            seal: prepare(
                session,
                keyspace,
                "UPDATE {ks}.fenced_intents SET fence = ? WHERE shard = ? IF fence = ?",
            )
            .await?,
            select_first: prepare(
                session,
                keyspace,
                "SELECT epoch, intent, event FROM {ks}.fenced_intents WHERE shard = ? LIMIT ?",
            )
            .await?,
            select_after: prepare(
                session,
                keyspace,
                "SELECT epoch, intent, event FROM {ks}.fenced_intents WHERE shard = ? AND (epoch, intent) > (?, ?) LIMIT ?",
            )
            .await?,
            select_legacy: prepare(
                session,
                keyspace,
                "SELECT event_id, event FROM {ks}.fenced_events WHERE shard = ? AND event_id > ? LIMIT ?",
            )
            .await?,
            delete_legacy: prepare(
                session,
                keyspace,
                "DELETE FROM {ks}.fenced_events WHERE shard = ? AND event_id = ?",
            )
            .await?,
        })
    }

    /// The fence of `shard` as a serial read sees it (an LWT in flight
    /// completed first).
    async fn current(&self, session: &Session, shard: i32) -> Result<Option<u64>> {
        let result = session
            .execute_unpaged(&self.read_fence, (shard,))
            .await
            .map_err(cql)?;
        let rows = result.into_rows_result().map_err(cql)?;
        Ok(rows
            .maybe_first_row::<(i32, Option<i64>)>()
            .map_err(cql)?
            .and_then(|(_, fence)| fence)
            .map(|fence| fence as u64))
    }

    /// Refuses once a newer writer has begun to seal: it seals partition 0
    /// first, so a newer writer's every write comes after a seal this read
    /// would have seen.
    pub(super) async fn check(&self, session: &Session) -> Result<()> {
        match self.current(session, 0).await? {
            Some(current) if current > self.epoch => Err(fenced(self.epoch)),
            _ => Ok(()),
        }
    }

    /// Raises every partition's fence to this epoch. Refuses if any
    /// partition already carries a newer one (this node was superseded).
    pub(super) async fn seal(&self, session: &Session) -> Result<()> {
        for shard in 0..PENDING_SHARDS {
            loop {
                let attempt = match self.current(session, shard).await? {
                    Some(current) if current == self.epoch => break,
                    Some(current) if current > self.epoch => {
                        return Err(fenced(self.epoch));
                    }
                    Some(current) => {
                        session
                            .execute_unpaged(&self.seal, (big(self.epoch), shard, big(current)))
                            .await
                    }
                    None => {
                        session
                            .execute_unpaged(&self.seal_empty, (big(self.epoch), shard))
                            .await
                    }
                };
                // Not applied: another writer moved the fence in between;
                // read again and decide again.
                if applied(attempt.map_err(cql)?)? {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Stores intent number `intent` of this epoch (with whatever else of
    /// its partition is waiting); refused once a newer writer sealed the
    /// partition.
    pub(super) async fn write_intent(&self, shard: i32, intent: u64, event: Vec<u8>) -> Result<()> {
        let values = (event, shard, big(self.epoch), big(intent), big(self.epoch));
        if self.intents.store(values).await? {
            Ok(())
        } else {
            Err(fenced(self.epoch))
        }
    }

    /// Intent transactions issued so far (a batch is one).
    #[cfg(test)]
    pub(super) fn intent_transactions(&self) -> u64 {
        self.intents.transactions()
    }

    /// Removes this epoch's intents of `shard` numbered below `below`
    /// (every one of them finished).
    pub(super) async fn clear_finished(
        &self,
        session: &Session,
        shard: i32,
        below: u64,
    ) -> Result<()> {
        let values = (shard, big(self.epoch), big(below));
        session
            .execute_unpaged(&self.clear_finished, values)
            .await
            .map_err(cql)?;
        Ok(())
    }
}
