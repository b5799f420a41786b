//! Events as values: what one committed change of a conversation writes,
//! built by a named constructor per kind of event, so the write path never
//! assembles an event from positional options.

use crate::fanout::{Change, Fanout, fanout};
use timeline_store::{Conversation, Entry, EntryKind, IdempotencyKey, ReaderMark};
use uuid::Uuid;

/// One event before it is written: the conversation entry (seqs, id and
/// time not yet assigned), who gets a copy, and what else commits with it.
pub struct Event {
    pub entry: Entry,
    pub fanout: Fanout,
    /// The idempotency key whose receipt commits with the event.
    pub receipt_key: Option<IdempotencyKey>,
    /// What the receipt remembers of the request (0: nothing).
    pub fingerprint: u64,
    /// The conversation record after the event, when it changes it.
    pub record: Option<Conversation>,
}

/// Which membership change an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    Add,
    Remove,
}

impl Event {
    /// A message from `sender_id` (0: the system) into `conversation`.
    /// In a large group, the members it mentions by name get an inbox
    /// copy (so a mention is never missed), and so does its sender (their
    /// read marker moves past it in the same commit); the others read it
    /// from the conversation timeline.
    pub fn message(
        conversation: &Conversation,
        sender_id: u64,
        client_msg_id: Uuid,
        text: String,
        mentions: crate::send::Mentions,
    ) -> Self {
        let mut fanout = fanout(Change::Message, conversation, conversation);
        if conversation.read_fanout {
            let mut copies = mentions.users.clone();
            if sender_id != 0 {
                copies.push(sender_id);
            }
            copies.sort_unstable();
            copies.dedup();
            fanout.recipients = copies;
        }
        Self {
            entry: Entry {
                sender_id,
                client_msg_id: client_msg_id.to_string(),
                text,
                mentions: mentions.users,
                mention_all: mentions.everyone,
                read_fanout: conversation.read_fanout,
                ..Entry::new(EntryKind::Message, conversation.conversation_id)
            },
            fanout,
            receipt_key: None,
            fingerprint: 0,
            record: None,
        }
    }

    /// A new conversation, created by `creator` (0: a service). Every
    /// member hears of it, in either fanout mode.
    pub fn conversation_created(record: Conversation, creator: u64) -> Self {
        Self {
            entry: Entry {
                sender_id: creator,
                text: record.title.clone(),
                members: record.members.clone(),
                ..Entry::new(EntryKind::ConversationCreated, record.conversation_id)
            },
            fanout: fanout(Change::Created, &record, &record),
            receipt_key: None,
            fingerprint: 0,
            record: Some(record),
        }
    }

    /// Members `changed` joined or left: `before` is the record the change
    /// was decided on, `after` the record it leaves.
    pub fn members_changed(
        before: &Conversation,
        after: Conversation,
        change: MembershipChange,
        changed: Vec<u64>,
    ) -> Self {
        let (kind, shape) = match change {
            MembershipChange::Add => (EntryKind::MembersAdded, Change::Added(&changed)),
            MembershipChange::Remove => (EntryKind::MembersRemoved, Change::Removed(&changed)),
        };
        let fanout = fanout(shape, before, &after);
        Self {
            entry: Entry {
                members: changed,
                ..Entry::new(kind, after.conversation_id)
            },
            fanout,
            receipt_key: None,
            fingerprint: 0,
            record: Some(after),
        }
    }

    /// The reader-index marks this event raises once it has a `conv_seq`:
    /// a message's sender has read through it.
    pub fn reader_marks(entry: &Entry) -> Vec<ReaderMark> {
        match entry.kind {
            EntryKind::Message if entry.sender_id != 0 => vec![ReaderMark {
                user_id: entry.sender_id,
                read_through: entry.conv_seq,
                joined: 0,
            }],
            // Joins: a message before them was never the member's to read.
            EntryKind::ConversationCreated | EntryKind::MembersAdded => entry
                .members
                .iter()
                .map(|&user_id| ReaderMark {
                    user_id,
                    read_through: 0,
                    joined: entry.conv_seq,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The event commits a receipt under `key` that remembers
    /// `fingerprint` (see [`crate::idempotency`]).
    pub fn with_receipt(mut self, key: IdempotencyKey, fingerprint: u64) -> Self {
        self.receipt_key = Some(key);
        self.fingerprint = fingerprint;
        self
    }

    /// A message marked high priority (see [`crate::push::groups`]).
    pub fn with_priority(mut self, priority: bool) -> Self {
        self.entry.priority = priority;
        self
    }

    pub fn conversation_id(&self) -> u64 {
        self.entry.conversation_id
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
