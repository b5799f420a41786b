//! What a new writer reads of earlier epochs' intents in a partition, a
//! page at a time (a partition an open intent held back for long may hold
//! many, and a takeover must not need them all in one reply), and their
//! removal once finished.

use super::super::node_intents::{LEFTOVER_PAGE, LeftoverCursor, leftover_page};
use super::super::{big, cql};
use super::Fence;
use crate::Result;
use scylla::client::session::Session;

impl Fence {
    /// A page of the intents of `shard` that earlier epochs left (finished
    /// or not), after `cursor`, with the cursor of the next page (`None`
    /// once there is none). A page at a time: a partition an open intent
    /// held back for long may hold many, and a takeover must not need
    /// them all in one reply.
    pub(in crate::scylla) async fn leftovers(
        &self,
        session: &Session,
        shard: i32,
        cursor: Option<LeftoverCursor>,
    ) -> Result<(Vec<Vec<u8>>, Option<LeftoverCursor>)> {
        let statements = (&self.select_first, &self.select_after);
        leftover_page(session, statements, shard, self.epoch, cursor).await
    }

    /// Every leftover of `shard` from earlier epochs is finished: removes
    /// them with one range deletion.
    pub(in crate::scylla) async fn clear_older(&self, session: &Session, shard: i32) -> Result<()> {
        session
            .execute_unpaged(&self.clear_older, (shard, big(self.epoch)))
            .await
            .map_err(cql)?;
        Ok(())
    }

    /// A page of what an earlier version left in the table of unnumbered
    /// intents, after `after` (an event id), with the next page's start.
    pub(in crate::scylla) async fn unnumbered_leftovers(
        &self,
        session: &Session,
        shard: i32,
        after: Option<i64>,
    ) -> Result<(Vec<(i64, Vec<u8>)>, Option<i64>)> {
        let values = (shard, after.unwrap_or(i64::MIN), LEFTOVER_PAGE);
        let result = session
            .execute_unpaged(&self.select_legacy, values)
            .await
            .map_err(cql)?;
        let rows = result.into_rows_result().map_err(cql)?;
        let mut leftovers = Vec::new();
        let mut read = 0;
        for row in rows.rows::<(Option<i64>, Option<Vec<u8>>)>().map_err(cql)? {
            read += 1;
            if let (Some(event_id), Some(event)) = row.map_err(super::super::corrupt)? {
                leftovers.push((event_id, event));
            }
        }
        let next = match leftovers.last() {
            Some(&(event_id, _)) if read >= LEFTOVER_PAGE => Some(event_id),
            _ => None,
        };
        Ok((leftovers, next))
    }

    /// One unnumbered leftover is finished: removes it.
    pub(in crate::scylla) async fn clear_unnumbered(
        &self,
        session: &Session,
        shard: i32,
        event_id: i64,
    ) -> Result<()> {
        session
            .execute_unpaged(&self.delete_legacy, (shard, event_id))
            .await
            .map_err(cql)?;
        Ok(())
    }
}
