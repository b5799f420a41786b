//! Following the inbox: pull by checkpoint (`sync_all`), then the push
//! stream (`watch`), reconnecting after transient errors and pulling
//! whenever a notice does not carry everything; large groups (read fanout)
//! are read from their timelines with a saved position per conversation.
//!
//! A checkpoint moves only after the entries below it were handed to the
//! caller, and is acknowledged to the server only after it was saved.

use crate::{
    CALL_TIMEOUT, CheckpointFile, Client, ClientError, LARGE_GROUP_PAGE, MAX_RECONNECT_DELAY,
    PUSHED_LARGE_GROUPS_PER_STREAM, RETRY_BASE_DELAY, Result, UNPUSHED_GROUPS_POLL, pb, reply,
    retryable, with_deadline,
};

impl Client {
    /// One page of inbox entries after `after_seq` (the device's stored
    /// checkpoint when `None`).
    pub async fn sync_page(&self, after_seq: Option<u64>, limit: u32) -> Result<pb::SyncReply> {
        let request = pb::SyncRequest {
            after_seq,
            limit,
            include_read_state: false,
        };
        reply(self.timeline().sync(with_deadline(request))).await
    }

    /// The inbox after `after_seq` as one stream of the pages Sync would
    /// give (CatchUp), up to a complete one.
    pub async fn catch_up(
        &self,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Result<tonic::Streaming<pb::SyncReply>> {
        let request = pb::SyncRequest {
            after_seq,
            limit,
            include_read_state: false,
        };
        // The call answers once the first page is read; the stream then
        // has no deadline (a long absence is many pages), its pages are
        // timed by the caller.
        match tokio::time::timeout(CALL_TIMEOUT, self.timeline().catch_up(request)).await {
            Ok(replies) => Ok(replies?.into_inner()),
            Err(_) => {
                Err(tonic::Status::deadline_exceeded("CatchUp did not answer in time").into())
            }
        }
    }

    /// [`Client::catch_up`], or `None` when the node cannot stream (an
    /// older node, or one with too many catch-ups open): the caller pages
    /// with Sync.
    async fn catch_up_if_streamed(
        &self,
        after_seq: u64,
    ) -> Result<Option<tonic::Streaming<pb::SyncReply>>> {
        match self.catch_up(Some(after_seq), 0).await {
            Ok(replies) => Ok(Some(replies)),
            Err(ClientError::Rpc(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unimplemented | tonic::Code::ResourceExhausted
                ) =>
            {
                tracing::debug!(code = ?status.code(), "catching up page by page");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Pulls every entry after the checkpoint (streamed by CatchUp, or page
    /// by page with Sync): for each page, hands the entries to `deliver`
    /// and saves the checkpoint; acks it after each Sync page, and once at
    /// the end of a stream (an ack is never lowered, so acking less often
    /// only delays the server's copy: the saved checkpoint is what the
    /// device reads from).
    /// Then reads what is new in the user's large groups (read fanout) from
    /// their conversation timelines, in conv_seq order, saving a checkpoint
    /// per conversation. A `deliver` error stops before any checkpoint
    /// moves past the entry.
    pub async fn sync_all(
        &self,
        checkpoint: &mut CheckpointFile,
        mut deliver: impl FnMut(&pb::Entry) -> std::io::Result<()>,
    ) -> Result<SyncOutcome> {
        let mut outcome = SyncOutcome::default();
        let mut replies = self.catch_up_if_streamed(checkpoint.seq()).await?;
        // Acked at least once a pass: a pass that failed after saving pages
        // left the server's copy behind.
        let mut acked = 0;
        let (large_groups, left_large_groups) = loop {
            let page = match &mut replies {
                Some(stream) => match tokio::time::timeout(CALL_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(page))) => page,
                    // The stream ended before a complete page (its reply
                    // cap, a stall): call again from the checkpoint; page
                    // with Sync when it brought nothing.
                    Ok(Ok(None)) => {
                        let moved = checkpoint.seq() > acked;
                        self.ack_if_moved(checkpoint, &mut acked).await?;
                        replies = if moved {
                            self.catch_up_if_streamed(checkpoint.seq()).await?
                        } else {
                            None
                        };
                        continue;
                    }
                    // The node took too long over a page of this device,
                    // or has no room: page with Sync.
                    Ok(Err(status)) if status.code() == tonic::Code::ResourceExhausted => {
                        self.ack_if_moved(checkpoint, &mut acked).await?;
                        replies = None;
                        continue;
                    }
                    Ok(Err(status)) => return Err(status.into()),
                    Err(_) => {
                        return Err(tonic::Status::deadline_exceeded(
                            "no catch-up page within the call timeout",
                        )
                        .into());
                    }
                },
                None => self.sync_page(Some(checkpoint.seq()), 0).await?,
            };
            if page.checkpoint_expired {
                return Err(ClientError::CheckpointExpired {
                    checkpoint: checkpoint.seq(),
                    oldest_seq: page.oldest_seq,
                });
            }
            outcome.user_id = page.user_id;
            outcome.delivered +=
                deliver_inbox(checkpoint, page.user_id, &page.entries, &mut deliver)?;
            if page.checkpoint > checkpoint.seq() {
                checkpoint.save(page.checkpoint)?;
            }
            if replies.is_none() || !page.has_more {
                self.ack_if_moved(checkpoint, &mut acked).await?;
            }
            if !page.has_more {
                break (page.large_groups, page.left_large_groups);
            }
        };
        outcome.large_groups = large_groups.len();
        // Groups the user left are read up to the last message sent while a
        // member, like the others.
        for top in large_groups.iter().chain(&left_large_groups) {
            // From the saved position, never before the membership began
            // (for a rejoin the server names the first join, so a position
            // saved in an earlier membership is kept: what was sent then
            // may still be unread).
            let mut read = checkpoint
                .conversation(top.conversation_id)
                .unwrap_or(0)
                .max(top.joined_conv_seq);
            while read < top.conv_seq {
                let page = self
                    .history(top.conversation_id, 0, Some(read), LARGE_GROUP_PAGE)
                    .await?;
                for entry in &page.entries {
                    deliver(entry).map_err(ClientError::Deliver)?;
                }
                outcome.delivered += page.entries.len();
                let Some(last) = page.entries.last() else {
                    break;
                };
                read = last.conv_seq;
                checkpoint.save_conversation(top.conversation_id, read)?;
                if !page.has_more {
                    break;
                }
            }
        }
        Ok(outcome)
    }

    /// Acks the saved checkpoint when it moved past what was acked.
    async fn ack_if_moved(&self, checkpoint: &CheckpointFile, acked: &mut u64) -> Result<()> {
        if checkpoint.seq() > *acked {
            self.ack(checkpoint.seq()).await?;
            *acked = checkpoint.seq();
        }
        Ok(())
    }

    pub async fn ack(&self, seq: u64) -> Result<u64> {
        let request = pb::AckRequest { seq };
        Ok(reply(self.timeline().ack(with_deadline(request)))
            .await?
            .checkpoint)
    }

    pub async fn subscribe(
        &self,
        after_seq: u64,
        include_entries: bool,
    ) -> Result<tonic::Streaming<pb::Notice>> {
        let request = pb::SubscribeRequest {
            after_seq,
            include_entries,
        };
        reply(self.timeline().subscribe(request)).await
    }

    /// Follows the inbox forever: catches up with sync, then applies pushed
    /// entries, pulling whenever a notice does not carry everything. Returns
    /// only on a non-transient error; reconnects after transient ones.
    pub async fn watch(
        &self,
        checkpoint: &mut CheckpointFile,
        mut deliver: impl FnMut(&pb::Entry) -> std::io::Result<()>,
    ) -> Result<()> {
        let mut delay = RETRY_BASE_DELAY;
        loop {
            match self.watch_once(checkpoint, &mut deliver).await {
                Err(ClientError::Rpc(status)) if retryable(&status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "watch interrupted, reconnecting");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
                Err(error) => return Err(error),
                Ok(()) => {
                    // The server ended the stream (shutdown): reconnect.
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                }
            }
        }
    }

    async fn watch_once(
        &self,
        checkpoint: &mut CheckpointFile,
        deliver: &mut impl FnMut(&pb::Entry) -> std::io::Result<()>,
    ) -> Result<()> {
        // Subscribed before catching up: a large group's notice is never in
        // the inbox, so one sent between the catch-up and the subscription
        // would otherwise go unheard until the group's next message.
        let mut notices = self.subscribe(checkpoint.seq(), true).await?;
        let synced = self.sync_all(checkpoint, &mut *deliver).await?;
        let user_id = synced.user_id;
        let mut large_groups = synced.large_groups;
        let mut poll = tokio::time::interval_at(
            tokio::time::Instant::now() + UNPUSHED_GROUPS_POLL,
            UNPUSHED_GROUPS_POLL,
        );
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The stream is pushed for some of the user's large groups only:
            // the others are polled.
            let polling = large_groups > PUSHED_LARGE_GROUPS_PER_STREAM;
            let notice = tokio::select! {
                notice = notices.message() => match notice? {
                    Some(notice) => notice,
                    None => break,
                },
                _ = poll.tick(), if polling => {
                    large_groups = self.sync_all(checkpoint, &mut *deliver).await?.large_groups;
                    continue;
                }
            };
            if notice.groups_resync {
                // Large-group notices were dropped, or the user joined more
                // large groups than the stream is pushed for: the tops come
                // with Sync.
                large_groups = self.sync_all(checkpoint, &mut *deliver).await?.large_groups;
                continue;
            }
            if !notice.groups.is_empty() {
                for group in &notice.groups {
                    let known = self
                        .read_group(checkpoint, group.conversation_id, group.conv_seq, deliver)
                        .await?;
                    if !known {
                        // No position saved yet (a group joined since the
                        // last sync): Sync names where reading starts.
                        large_groups = self.sync_all(checkpoint, &mut *deliver).await?.large_groups;
                        break;
                    }
                }
                continue;
            }
            if notice_is_complete(&notice) {
                // The notice carries every entry since the previous one.
                let fresh: Vec<pb::Entry> = notice
                    .entries
                    .into_iter()
                    .filter(|e| e.seq > checkpoint.seq())
                    .collect();
                deliver_inbox(checkpoint, user_id, &fresh, &mut *deliver)?;
                if notice.up_to_seq > checkpoint.seq() {
                    checkpoint.save(notice.up_to_seq)?;
                    self.ack(notice.up_to_seq).await?;
                }
                let next = follow_up(user_id, &fresh);
                if next.sync {
                    large_groups = self.sync_all(checkpoint, &mut *deliver).await?.large_groups;
                    continue;
                }
                for (conversation_id, through) in next.read {
                    let known = self
                        .read_group(checkpoint, conversation_id, through, deliver)
                        .await?;
                    if !known {
                        large_groups = self.sync_all(checkpoint, &mut *deliver).await?.large_groups;
                        break;
                    }
                }
            } else if notice.up_to_seq > checkpoint.seq() {
                large_groups = self.sync_all(checkpoint, &mut *deliver).await?.large_groups;
            }
        }
        Ok(())
    }

    /// Reads a large group from the saved position through `through`,
    /// saving the position per page. `false` when no position is saved
    /// for it (nothing read).
    async fn read_group(
        &self,
        checkpoint: &mut CheckpointFile,
        conversation_id: u64,
        through: u64,
        deliver: &mut impl FnMut(&pb::Entry) -> std::io::Result<()>,
    ) -> Result<bool> {
        let Some(mut read) = checkpoint.conversation(conversation_id) else {
            return Ok(false);
        };
        while read < through {
            let page = self
                .history(conversation_id, 0, Some(read), LARGE_GROUP_PAGE)
                .await?;
            for entry in &page.entries {
                deliver(entry).map_err(ClientError::Deliver)?;
            }
            let Some(last) = page.entries.last() else {
                break;
            };
            read = last.conv_seq;
            checkpoint.save_conversation(conversation_id, read)?;
            if !page.has_more {
                break;
            }
        }
        Ok(true)
    }
}

/// What one [`Client::sync_all`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Entries handed to the caller (inbox and large-group timelines).
    pub delivered: usize,
    /// Large groups the user belongs to.
    pub large_groups: usize,
    /// The device's user, as the server named it.
    pub user_id: u64,
}

/// Delivers inbox entries. A membership event marks where the device
/// starts reading that conversation's timeline should it be (or become) a
/// large group: what came before reached the inbox already.
fn deliver_inbox(
    checkpoint: &mut CheckpointFile,
    user_id: u64,
    entries: &[pb::Entry],
    deliver: &mut impl FnMut(&pb::Entry) -> std::io::Result<()>,
) -> Result<usize> {
    let mut delivered = 0;
    for entry in entries {
        // A large group's message in the inbox is a copy for its sender or
        // a member it mentions: the message itself is delivered with the
        // group's timeline, once.
        if entry.read_fanout && entry.kind == pb::EntryKind::Message as i32 {
            continue;
        }
        deliver(entry).map_err(ClientError::Deliver)?;
        delivered += 1;
        let joins = entry.kind == pb::EntryKind::ConversationCreated as i32
            || entry.kind == pb::EntryKind::MembersAdded as i32;
        // Where reading the conversation's timeline starts. Others joining
        // reach the inbox while the group writes to inboxes and at its
        // switch to read fanout: everything before is in the inbox. The
        // user's own rejoin keeps a saved position: what was sent in an
        // earlier membership may still be unread.
        let saved = checkpoint.conversation(entry.conversation_id);
        let own = entry.members.contains(&user_id);
        let start = match saved {
            Some(_) if own => None,
            Some(position) => (entry.conv_seq > position).then_some(entry.conv_seq),
            None => Some(entry.conv_seq),
        };
        if joins && let Some(start) = start {
            checkpoint.save_conversation(entry.conversation_id, start)?;
        }
    }
    Ok(delivered)
}

/// What a watch does after delivering pushed inbox entries.
#[derive(Debug, Default, PartialEq, Eq)]
struct FollowUp {
    /// Sync: a membership of the user's changed.
    sync: bool,
    /// Large groups to read at once, through the conv_seq.
    read: Vec<(u64, u64)>,
}

fn follow_up(user_id: u64, entries: &[pb::Entry]) -> FollowUp {
    // A membership event may start a large group (Sync lists it with the
    // position reading starts at) or end the user's: Sync reads a left group
    // up to the leave, while notices of what was sent just before it may
    // never come (the stream stops being pushed for the group at the leave).
    let sync = entries.iter().any(|e| {
        e.kind == pb::EntryKind::MembersAdded as i32
            || e.kind == pb::EntryKind::ConversationCreated as i32
            || (e.kind == pb::EntryKind::MembersRemoved as i32 && e.members.contains(&user_id))
    });
    // A large group's message copy (a mention of the user, or the user's
    // own message): the message itself is read from the group's timeline,
    // now rather than when the group's notice comes.
    let mut read: Vec<(u64, u64)> = Vec::new();
    for e in entries {
        if e.read_fanout && e.kind == pb::EntryKind::Message as i32 {
            match read.iter_mut().find(|(c, _)| *c == e.conversation_id) {
                Some((_, through)) => *through = (*through).max(e.conv_seq),
                None => read.push((e.conversation_id, e.conv_seq)),
            }
        }
    }
    FollowUp { sync, read }
}

/// Whether a pushed notice carries every entry since the previous notice
/// (it ends at its `up_to_seq`); when it does not, the device pulls the rest
/// with Sync.
pub fn notice_is_complete(notice: &pb::Notice) -> bool {
    notice
        .entries
        .last()
        .is_some_and(|e| e.seq == notice.up_to_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: pb::EntryKind, conversation_id: u64, conv_seq: u64) -> pb::Entry {
        pb::Entry {
            kind: kind as i32,
            conversation_id,
            conv_seq,
            ..pb::Entry::default()
        }
    }

    /// A leave is followed by a Sync, which reads the group up to the
    /// leave: notices of messages sent just before it may never come.
    #[test]
    fn the_users_own_leave_is_followed_by_a_sync() {
        let removed = |members: Vec<u64>| pb::Entry {
            members,
            ..entry(pb::EntryKind::MembersRemoved, 5, 10)
        };
        assert!(follow_up(7, &[removed(vec![3, 7])]).sync);
        assert!(!follow_up(7, &[removed(vec![3])]).sync, "someone else left");
        assert!(follow_up(7, &[entry(pb::EntryKind::MembersAdded, 5, 10)]).sync);
    }

    /// A large group's message copy in the inbox (a mention, or the user's
    /// own) has the group read at once, through the copy's conv_seq.
    #[test]
    fn a_large_group_copy_has_the_group_read_at_once() {
        let copy = |conversation_id, conv_seq| pb::Entry {
            read_fanout: true,
            ..entry(pb::EntryKind::Message, conversation_id, conv_seq)
        };
        let small = entry(pb::EntryKind::Message, 9, 4);
        let next = follow_up(7, &[copy(5, 10), small, copy(6, 3), copy(5, 12)]);
        assert_eq!(
            next,
            FollowUp {
                sync: false,
                read: vec![(5, 12), (6, 3)]
            }
        );
    }
}
