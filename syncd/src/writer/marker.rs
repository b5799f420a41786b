//! Read markers through the writer: an inbox-only event of one user.
//!
//! A marker's inbox seq is allocated under the conversation's allocation
//! lock, together with reading the conversation's last allocated
//! `conv_seq` (the marker's position, `X`). So in the user's inbox every
//! event of the conversation up to `X` comes before the marker and every
//! later one after it. The marker then waits until every event up to `X`
//! is settled (durable, or a gap for good) and counts the messages from
//! others in `(read_through, X]`: the count is a fact about a fixed range,
//! the same whenever it is made, so a device folding its inbox and the
//! server folding it agree.

use super::{EventWriter, Guard};
use crate::error::{Result, SyncdError};
use crate::event::now_ms;
use crate::horizon::Scope;
use crate::lifecycle::within_admission_wait;
use crate::limits::COMMIT_BYTES_PER_COPY;
use crate::read_state::count::{MAX_COUNTED_ENTRIES, messages_from_others};
use seqsvc::Namespace;
use std::time::Duration;
use timeline_store::{Entry, EntryKind, EventCommit, InboxWrite, ReaderMark};

/// What a committed marker says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkOutcome {
    /// The marker's inbox seq.
    pub seq: u64,
    pub read_through: u64,
    /// Messages from others in `(read_through, conv_seq]`.
    pub unread: u64,
    /// Of those, the ones that mention the user.
    pub unread_mentions: u64,
    /// The marker's position in the conversation's order.
    pub conv_seq: u64,
}

/// How often a marker looks whether the events before it have settled.
const SETTLE_POLL: Duration = Duration::from_millis(1);

impl EventWriter {
    /// Writes a marker "`user_id` read `conversation_id` through
    /// `read_through`" into the user's inbox, and into `peer`'s (the other
    /// member of a direct conversation: the sender's read receipt);
    /// `read_through` above the conversation's last allocated `conv_seq` is
    /// lowered to it.
    ///
    /// With `cleared_through`, the marker is a clear of the user's history
    /// through that `conv_seq` ([`EntryKind::ClearHistory`]): the hiding and
    /// the read state it leaves are one event.
    pub async fn commit_marker(
        &self,
        user_id: u64,
        conversation_id: u64,
        read_through: u64,
        peer: Option<u64>,
        cleared_through: Option<u64>,
    ) -> Result<MarkOutcome> {
        self.admit()?;
        let mut recipients = vec![user_id];
        recipients.extend(peer.filter(|&p| p != user_id));
        let copies = recipients.len();
        let bytes = self
            .take_budget(Some(user_id), (copies, copies * COMMIT_BYTES_PER_COPY))
            .await?;
        let keys: Vec<_> = recipients.iter().map(|&u| (Scope::Inbox, u)).collect();
        self.prime(&keys).await?;
        let reservation = self.horizon.reserve(keys);
        let (position, seqs) = {
            let _in_order = self.allocation_locks.write(conversation_id).await;
            let position = self
                .seqs
                .current(Namespace::Conversation, conversation_id)
                .await?;
            let seqs = self.seqs.next_batch(Namespace::Inbox, &recipients).await?;
            (position, seqs)
        };
        let seq = seqs[0];
        // Every event has its own id (the ScyllaDB store keys its recovery
        // record by it).
        let msg_id = self.ids.next_id().await?;
        let inbox = recipients
            .iter()
            .zip(&seqs)
            .map(|(&user_id, &seq)| InboxWrite { user_id, seq })
            .collect();
        let assignment = reservation.assign(seqs);
        let read_through = read_through.min(position);
        self.wait_settled(conversation_id, position).await?;
        let counted = messages_from_others(
            self.store.as_ref(),
            conversation_id,
            user_id,
            read_through,
            read_through,
            position,
        )
        .await?;
        if counted.saturated {
            // Refused (the seq becomes a gap) rather than stored inexact.
            return Err(SyncdError::InvalidArgument(format!(
                "through {read_through} is more than {MAX_COUNTED_ENTRIES} entries behind the \
                 newest of conversation {conversation_id}; mark a later message"
            )));
        }
        let (unread, unread_mentions) = (counted.unread(), counted.unread_mentions());
        let entry = Entry {
            msg_id,
            conv_seq: position,
            sender_id: user_id,
            sent_at_ms: now_ms(),
            read_through,
            unread,
            unread_mentions,
            target: timeline_store::Target {
                conv_seq: cleared_through.unwrap_or(0),
                ..timeline_store::Target::default()
            },
            ..Entry::new(
                if cleared_through.is_some() {
                    EntryKind::ClearHistory
                } else {
                    EntryKind::ReadMarker
                },
                conversation_id,
            )
        };
        let commit = EventCommit {
            keep_copies: false,
            rewrites: Vec::new(),
            entry,
            inbox,
            receipt: None,
            conversation: None,
            large_group_index: Vec::new(),
            members: Vec::new(),
            readers: vec![ReaderMark {
                user_id,
                read_through,
                joined: 0,
            }],
        };
        let held: Vec<Guard> = Vec::new();
        self.land(commit, assignment, held, bytes).await?;
        Ok(MarkOutcome {
            seq,
            read_through,
            unread,
            unread_mentions,
            conv_seq: position,
        })
    }

    /// Waits until no event of the conversation at or below `position` is
    /// in flight (each is durable or will never be).
    async fn wait_settled(&self, conversation_id: u64, position: u64) -> Result<()> {
        let key = (Scope::Conversation, conversation_id);
        let settled = async {
            while self.horizon.in_flight_limit(key) < position {
                tokio::time::sleep(SETTLE_POLL).await;
            }
            Ok(())
        };
        within_admission_wait(settled, || {
            format!(
                "earlier events of conversation {conversation_id} are still being written; retry later"
            )
        })
        .await?
    }
}
