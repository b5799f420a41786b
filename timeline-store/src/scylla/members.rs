//! The member table (who is in a conversation, read a point or a page at a
//! time) and the reader marks behind read receipts.

use super::*;

impl ScyllaTimelineStore {
    /// The reader rows of one `IN` list of users.
    async fn reader_rows(
        &self,
        conversation_id: u64,
        users: Vec<i64>,
    ) -> Result<Vec<(i64, Option<i64>, Option<i64>)>> {
        let values = (big(conversation_id), users);
        let result = self
            .execute(&self.statements.select_readers, values)
            .await?;
        let rows = result.into_rows_result().map_err(cql)?;
        let rows: std::result::Result<Vec<_>, _> = rows
            .rows::<(i64, Option<i64>, Option<i64>)>()
            .map_err(cql)?
            .collect();
        rows.map_err(corrupt)
    }

    /// Whether the member table says `user_id` is a member.
    async fn member_row(&self, conversation_id: u64, user_id: u64) -> Result<(u64, bool)> {
        let values = (big(conversation_id), big(user_id));
        let rows: Vec<Option<bool>> = self.column(&self.statements.select_member, values).await?;
        Ok((user_id, rows.first().copied().flatten().unwrap_or(false)))
    }
}

#[async_trait]
impl crate::ConversationMembers for ScyllaTimelineStore {
    async fn members_among(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<u64>> {
        let mut found: Vec<u64> = stream::iter(
            users
                .iter()
                .copied()
                .map(|user_id| self.member_row(conversation_id, user_id)),
        )
        .buffer_unordered(MAX_CONCURRENT_WRITES)
        .try_filter_map(|(user_id, member)| async move { Ok(member.then_some(user_id)) })
        .try_collect()
        .await?;
        found.sort_unstable();
        Ok(found)
    }

    async fn list_members(
        &self,
        conversation_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let mut members = Vec::new();
        let mut cursor = after;
        // Rows of former members are skipped, so a page may take several
        // reads; each asks for what is still missing (at most a page).
        while members.len() < limit {
            let wanted = (limit - members.len()).min(PAGE_ROWS as usize);
            let values = (big(conversation_id), big(cursor), wanted as i32);
            let result = self
                .execute(&self.statements.select_members_page, values)
                .await?;
            let rows = result.into_rows_result().map_err(cql)?;
            let rows: std::result::Result<Vec<(i64, Option<bool>)>, _> =
                rows.rows::<(i64, Option<bool>)>().map_err(cql)?.collect();
            let rows = rows.map_err(corrupt)?;
            let read = rows.len();
            for (user_id, member) in rows {
                cursor = user_id as u64;
                if member.unwrap_or(false) {
                    members.push(cursor);
                }
            }
            if read < wanted {
                break;
            }
        }
        Ok(members)
    }
}

#[async_trait]
impl ReadReceipts for ScyllaTimelineStore {
    async fn reader_marks(
        &self,
        conversation_id: u64,
        users: &[u64],
    ) -> Result<Vec<crate::ReaderMark>> {
        type Row = (i64, Option<i64>, Option<i64>);
        let mut users: Vec<i64> = users.iter().map(|&u| big(u)).collect();
        users.sort_unstable();
        users.dedup();
        // One single-partition read per chunk: the IN list stays small
        // enough for the coordinator, and the chunks run side by side.
        let lists: Vec<Vec<i64>> = users
            .chunks(READER_LOOKUP_CHUNK)
            .map(<[i64]>::to_vec)
            .collect();
        let chunks: Vec<Vec<Row>> = stream::iter(lists)
            .map(|list| self.reader_rows(conversation_id, list))
            .buffer_unordered(MAX_CONCURRENT_WRITES)
            .try_collect()
            .await?;
        let mut marks: Vec<crate::ReaderMark> = chunks
            .into_iter()
            .flatten()
            .map(|(user_id, read_through, joined)| crate::ReaderMark {
                user_id: user_id as u64,
                read_through: read_through.unwrap_or(0) as u64,
                joined: joined.unwrap_or(0) as u64,
            })
            .collect();
        marks.sort_unstable_by_key(|m| m.user_id);
        Ok(marks)
    }
}
