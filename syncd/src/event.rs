//! Events as values: what one committed change of a conversation writes,
//! built by a named constructor per kind of event, so the write path never
//! assembles an event from positional options.

use crate::amend::Amendment;
use crate::fanout::{Change, Fanout, fanout};
use timeline_store::{
    Conversation, Entry, EntryKind, IdempotencyKey, MemberChange, ReaderMark, Target,
};
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
    /// The conversation record after the event, when it changes it (as
    /// stored: a large group's lists nobody).
    pub record: Option<Conversation>,
    /// Rows of the large group's member table the event writes.
    pub member_rows: Vec<MemberChange>,
    /// How the event rewrites an earlier message once it has its own
    /// `conv_seq` and time (edits, recalls, deletes).
    pub amendment: Option<Amendment>,
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
            member_rows: Vec::new(),
            amendment: None,
        }
    }

    /// Who may hold an inbox copy of `target` in a large group (its
    /// sender and the members it names) or get one of a change by
    /// `actor`: ascending, no system. [`Event::amending`] takes those of
    /// them who are members now.
    pub fn copy_candidates(target: &Entry, actor: u64) -> Vec<u64> {
        let mut copies = target.mentions.clone();
        copies.push(target.sender_id);
        copies.push(actor);
        copies.retain(|&user| user != 0);
        copies.sort_unstable();
        copies.dedup();
        copies
    }

    /// An edit, recall or delete for everyone of `target` (the stored
    /// conversation entry) by `actor` (0: a service), into `conversation`.
    /// It reaches whoever a message would, and in a large group also the
    /// members who hold an inbox copy of the target (`copy_holders`: the
    /// current members among [`Event::copy_candidates`]).
    pub fn amending(
        conversation: &Conversation,
        kind: EntryKind,
        actor: u64,
        target: &Entry,
        text: String,
        amendment: Amendment,
        copy_holders: Vec<u64>,
    ) -> Self {
        let mut fanout = fanout(Change::Message, conversation, conversation);
        if conversation.read_fanout {
            fanout.recipients = copy_holders;
        }
        Self {
            entry: Entry {
                sender_id: actor,
                text,
                target: target_of(target),
                read_fanout: conversation.read_fanout,
                ..Entry::new(kind, conversation.conversation_id)
            },
            fanout,
            receipt_key: None,
            fingerprint: 0,
            record: None,
            member_rows: Vec::new(),
            amendment: Some(amendment),
        }
    }

    /// A delete for me (`target` set) or a clear through `through` by
    /// `user_id`: an event of that user's inbox only.
    pub fn hiding(conversation_id: u64, user_id: u64, kind: EntryKind, target: Target) -> Self {
        Self {
            entry: Entry {
                sender_id: user_id,
                target,
                ..Entry::new(kind, conversation_id)
            },
            fanout: Fanout {
                recipients: vec![user_id],
                index: Vec::new(),
            },
            receipt_key: None,
            fingerprint: 0,
            record: None,
            member_rows: Vec::new(),
            amendment: None,
        }
    }

    /// A new conversation, created by `creator` (0: a service), with its
    /// whole member list (one call's worth). Every member hears of it, in
    /// either fanout mode; a large group's members go to its member table.
    pub fn conversation_created(record: Conversation, creator: u64) -> Self {
        let member_rows = if record.read_fanout {
            rows(&record.members, true)
        } else {
            Vec::new()
        };
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
            record: Some(record.stored()),
            member_rows,
            amendment: None,
        }
    }

    /// Members `changed` joined or left: `before` is the record the change
    /// was decided on, `after` the record it leaves, listing every member
    /// when `before` did (a group switching to read fanout lists them once
    /// more, for the switch's fanout and its member table).
    ///
    /// The member table gets the changed members' rows, or, when the
    /// record stops listing members (the switch, or a large group stored
    /// before members were paged), a row for every member: at most the
    /// large-group threshold plus one call's worth, once per group.
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
        let member_rows = if !after.read_fanout {
            Vec::new()
        } else if before.lists_members() {
            // The removed are not named here: they have no row to delete,
            // and the directory caches no member answers for a record that
            // lists its members, so none of theirs needs dropping.
            rows(&after.members, true)
        } else {
            rows(&changed, change == MembershipChange::Add)
        };
        Self {
            entry: Entry {
                members: changed,
                ..Entry::new(kind, after.conversation_id)
            },
            fanout,
            receipt_key: None,
            fingerprint: 0,
            record: Some(after.stored()),
            member_rows,
            amendment: None,
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

fn rows(users: &[u64], member: bool) -> Vec<MemberChange> {
    users
        .iter()
        .map(|&user_id| MemberChange { user_id, member })
        .collect()
}

/// What an edit or removal event says about its target.
pub fn target_of(target: &Entry) -> Target {
    Target {
        conv_seq: target.conv_seq,
        msg_id: target.msg_id,
        sender_id: target.sender_id,
        mentions: target.mentions.clone(),
        mention_all: target.mention_all,
    }
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
