//! Revocations on ScyllaDB.
//!
//! A cutoff is written with the cutoff itself as the write timestamp
//! (`USING TIMESTAMP`, in microseconds): CQL keeps the write with the
//! highest timestamp, so a lower cutoff written later, or a retry, can never
//! lower a higher one, without the round trips of a lightweight
//! transaction. Only these statements write the table. An empty device id
//! (never a valid one) stands for every device of the user.
//!
//! The feed is partitioned by hour of `recorded_at_ms`, each row living for
//! [`REVOCATION_FEED_RETENTION`]; a poller reads the hours from its position
//! to the current one (and the next, for writers whose clock is ahead).

use super::{ScyllaTimelineStore, big, corrupt, cql};
use crate::{
    REVOCATION_FEED_RETENTION, RecordedRevocation, Result, Revocation, Revocations, RevokedBefore,
    StoreError,
};
use async_trait::async_trait;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

const HOUR_MS: u64 = 3_600_000;

pub(super) struct Statements {
    raise_cutoff: PreparedStatement,
    select_cutoffs: PreparedStatement,
    insert_feed: PreparedStatement,
    select_feed: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(session: &Session, keyspace: &str) -> Result<Self> {
        let prepare = |text: String| async move {
            let mut statement = session
                .prepare(text.replace("{ks}", keyspace))
                .await
                .map_err(cql)?;
            // Upserts of fixed values (and reads): retrying is harmless.
            statement.set_is_idempotent(true);
            Ok::<_, StoreError>(statement)
        };
        Ok(Self {
            raise_cutoff: prepare(
                "INSERT INTO {ks}.revocations (user_id, device_id, before) VALUES (?, ?, ?) USING TIMESTAMP ?"
                    .into(),
            )
            .await?,
            select_cutoffs: prepare(
                "SELECT device_id, before FROM {ks}.revocations WHERE user_id = ? AND device_id IN (?, ?)"
                    .into(),
            )
            .await?,
            insert_feed: prepare(format!(
                "INSERT INTO {{ks}}.revocation_feed (hour, recorded_at_ms, user_id, device_id, before) VALUES (?, ?, ?, ?, ?) USING TTL {}",
                REVOCATION_FEED_RETENTION.as_secs()
            ))
            .await?,
            select_feed: prepare(
                "SELECT recorded_at_ms, user_id, device_id, before FROM {ks}.revocation_feed WHERE hour = ? AND recorded_at_ms >= ? LIMIT ?"
                    .into(),
            )
            .await?,
        })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl Revocations for ScyllaTimelineStore {
    async fn revoke(&self, revocation: &Revocation, recorded_at_ms: u64) -> Result<u64> {
        let device = revocation.device_id.as_deref().unwrap_or("");
        let before = big(revocation.before_s);
        let write_time = big(revocation.before_s.saturating_mul(1_000_000));
        let values = (big(revocation.user_id), device, before, write_time);
        self.execute(&self.revocations.raise_cutoff, values).await?;
        // After the cutoff: a node that reads the feed, then the table,
        // finds the cutoff there.
        let values = (
            big(recorded_at_ms / HOUR_MS),
            big(recorded_at_ms),
            big(revocation.user_id),
            device,
            before,
        );
        self.execute(&self.revocations.insert_feed, values).await?;
        let stored = self.revoked_before(revocation.user_id, device).await?;
        Ok(match revocation.device_id {
            Some(_) => stored.device,
            None => stored.user,
        })
    }

    async fn revoked_before(&self, user_id: u64, device_id: &str) -> Result<RevokedBefore> {
        let result = self
            .execute(
                &self.revocations.select_cutoffs,
                (big(user_id), "", device_id),
            )
            .await?;
        let rows = result.into_rows_result().map_err(cql)?;
        let mut cutoffs = RevokedBefore::default();
        for row in rows.rows::<(String, i64)>().map_err(cql)? {
            let (device, before) = row.map_err(corrupt)?;
            let before = before.max(0) as u64;
            if device.is_empty() {
                cutoffs.user = before;
            } else {
                cutoffs.device = before;
            }
        }
        Ok(cutoffs)
    }

    async fn revocations_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<RecordedRevocation>> {
        let retention_hours = REVOCATION_FEED_RETENTION.as_millis() as u64 / HOUR_MS;
        let last_hour = now_ms().max(since_ms) / HOUR_MS + 1;
        let first_hour = (since_ms / HOUR_MS).max(last_hour.saturating_sub(retention_hours + 1));
        let mut found = Vec::new();
        for hour in first_hour..=last_hour {
            if found.len() >= limit {
                break;
            }
            let left = i32::try_from(limit - found.len()).unwrap_or(i32::MAX);
            let result = self
                .execute(
                    &self.revocations.select_feed,
                    (big(hour), big(since_ms), left),
                )
                .await?;
            let rows = result.into_rows_result().map_err(cql)?;
            for row in rows.rows::<(i64, i64, String, i64)>().map_err(cql)? {
                let (at, user, device, before) = row.map_err(corrupt)?;
                found.push(RecordedRevocation {
                    revocation: Revocation {
                        user_id: user.max(0) as u64,
                        device_id: (!device.is_empty()).then_some(device),
                        before_s: before.max(0) as u64,
                    },
                    recorded_at_ms: at.max(0) as u64,
                });
            }
        }
        Ok(found)
    }
}
