//! What is stored past the readable horizon, where no fold reads: the
//! deletes for me and the joins a bound must count before the horizon
//! reaches them (an earlier event of the user still in flight holds it
//! back).

use super::{MAX_UNFOLDED_SCAN, MAX_UNFOLDED_SCAN_BYTES, ReadState, fold};
use crate::error::{Result, SyncdError};
use std::collections::BTreeMap;
use timeline_store::{InboxRange, ReadStateRow};

impl ReadState {
    /// The user's inbox entries stored past `applied_seq` (the readable
    /// horizon a fold stopped at): while an earlier inbox event of the user
    /// is in flight (a write being finished in the background), the horizon
    /// stays below it, and what was stored meanwhile would count as nothing.
    /// Past [`MAX_UNFOLDED_SCAN`] entries (or bytes) of such a tail, `what`
    /// is refused as UNAVAILABLE until the horizon moves on.
    pub(super) async fn unfolded_tail(
        &self,
        user_id: u64,
        applied_seq: u64,
        what: &str,
    ) -> Result<Vec<timeline_store::Entry>> {
        let stored_top = self.store.last_inbox_seq(user_id).await?;
        if stored_top <= applied_seq {
            return Ok(Vec::new());
        }
        // Past the readable horizon an event's conversation entry may not
        // be written yet, so heavy copies are read as stored: without their
        // text and members. Deletes and clears are never heavy; a heavy
        // membership event is (see `memberships`).
        let range = InboxRange::new(applied_seq, stored_top, MAX_UNFOLDED_SCAN + 1)
            .with_max_bytes(MAX_UNFOLDED_SCAN_BYTES)
            .without_payloads();
        let tail = self.store.read_inbox(user_id, range).await?;
        let bytes: usize = tail.iter().map(timeline_store::Entry::wire_bytes).sum();
        if tail.len() > MAX_UNFOLDED_SCAN || bytes > MAX_UNFOLDED_SCAN_BYTES {
            return Err(SyncdError::Unavailable(format!(
                "earlier events of user {user_id} are still being stored: \
                 {what} again once they are"
            )));
        }
        Ok(tail)
    }

    /// How many conversations the user is a member of now, counting the
    /// joins and removals stored past the readable horizon (see
    /// [`Self::unfolded_tail`]).
    pub async fn memberships(&self, user_id: u64) -> Result<usize> {
        let snapshot = self.fold(user_id).await?;
        let mut members = snapshot.rows.iter().filter(|row| row.member).count();
        let tail = self
            .unfolded_tail(user_id, snapshot.applied_seq, "join")
            .await?;
        // Past the horizon a heavy copy (a membership event naming about
        // 500 members or more) comes back without its members: it cannot
        // be counted, so the join waits until it is readable.
        if tail
            .iter()
            .any(|entry| is_membership(entry.kind) && entry.members.is_empty())
        {
            return Err(SyncdError::Unavailable(format!(
                "an earlier membership change of user {user_id} is still being stored: \
                 join again once it is"
            )));
        }
        // Each conversation the tail touches: whether the user was a member
        // as folded, and its row with the tail applied.
        let mut touched: BTreeMap<u64, (bool, ReadStateRow)> = tail
            .iter()
            .map(|entry| {
                let row = ReadStateRow {
                    conversation_id: entry.conversation_id,
                    ..ReadStateRow::default()
                };
                (entry.conversation_id, (false, row))
            })
            .collect();
        for row in &snapshot.rows {
            if let Some(slot) = touched.get_mut(&row.conversation_id) {
                *slot = (row.member, row.clone());
            }
        }
        for entry in &tail {
            if let Some((_, row)) = touched.get_mut(&entry.conversation_id) {
                fold::apply(row, entry, user_id);
            }
        }
        for (was, row) in touched.values() {
            match (*was, row.member) {
                (false, true) => members += 1,
                (true, false) => members -= 1,
                _ => {}
            }
        }
        Ok(members)
    }
}

fn is_membership(kind: timeline_store::EntryKind) -> bool {
    use timeline_store::EntryKind;
    matches!(
        kind,
        EntryKind::ConversationCreated | EntryKind::MembersAdded | EntryKind::MembersRemoved
    )
}
