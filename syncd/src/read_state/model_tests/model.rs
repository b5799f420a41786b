//! The model the read-state test checks the server against: what each
//! member has read and what is unread, by the rules; and a device's own
//! fold of its inbox, written again apart from the server's.

use std::collections::{BTreeMap, BTreeSet};
use timeline_store::{Entry, EntryKind};

#[derive(Default)]
pub(super) struct ConversationModel {
    /// A direct conversation (two members for life; markers are read
    /// receipts for the other).
    pub(super) direct: bool,
    pub(super) members: BTreeSet<u64>,
    /// Every message: (conv_seq, sender, mentioned by name, everyone).
    pub(super) messages: Vec<(u64, u64, BTreeSet<u64>, bool)>,
    pub(super) top: u64,
}

#[derive(Clone, Copy, Default)]
pub(super) struct Reader {
    pub(super) member: bool,
    pub(super) joined: u64,
    pub(super) read_through: u64,
}

#[derive(Default)]
pub(super) struct Model {
    pub(super) conversations: BTreeMap<u64, ConversationModel>,
    pub(super) readers: BTreeMap<(u64, u64), Reader>,
    /// The reader index: per (conversation, user) the highest mark or own
    /// message.
    pub(super) index: BTreeMap<(u64, u64), u64>,
    /// Per (conversation, user): the highest marker the user raised (what
    /// the other member of a direct conversation is told).
    pub(super) marked: BTreeMap<(u64, u64), u64>,
}

impl Model {
    pub(super) fn join(&mut self, user: u64, conversation: u64, at: u64) {
        let reader = self.readers.entry((user, conversation)).or_default();
        reader.member = true;
        reader.joined = at;
        reader.read_through = reader.read_through.max(at);
    }

    /// (unread, unread mentions).
    pub(super) fn unread(&self, user: u64, conversation: u64) -> (u64, u64) {
        let Some(reader) = self.readers.get(&(user, conversation)) else {
            return (0, 0);
        };
        if !reader.member {
            return (0, 0);
        }
        let from = reader.read_through.max(reader.joined);
        let unread: Vec<_> = self.conversations[&conversation]
            .messages
            .iter()
            .filter(|(seq, sender, _, _)| *seq > from && *sender != user)
            .collect();
        let mentions = unread
            .iter()
            .filter(|(_, _, named, everyone)| *everyone || named.contains(&user))
            .count();
        (unread.len() as u64, mentions as u64)
    }

    pub(super) fn raise_index(&mut self, conversation: u64, user: u64, through: u64) {
        let stored = self.index.entry((conversation, user)).or_default();
        *stored = (*stored).max(through);
    }

    /// Who has read the message at `conv_seq`: current members other than
    /// its sender whose index entry reaches it.
    /// Current members other than the sender who were members when it was
    /// sent (their latest join is before it).
    pub(super) fn receivers(&self, conversation: u64, conv_seq: u64, sender: u64) -> Vec<u64> {
        self.conversations[&conversation]
            .members
            .iter()
            .copied()
            .filter(|&m| m != sender && self.readers[&(m, conversation)].joined < conv_seq)
            .collect()
    }

    pub(super) fn read_by(&self, conversation: u64, conv_seq: u64, sender: u64) -> Vec<u64> {
        self.receivers(conversation, conv_seq, sender)
            .into_iter()
            .filter(|&m| {
                self.index
                    .get(&(conversation, m))
                    .is_some_and(|&r| r >= conv_seq)
            })
            .collect()
    }
}

/// What a device keeps per conversation, by the rules of the protocol
/// (written here again, apart from the server's fold).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct DeviceRow {
    pub(super) member: bool,
    pub(super) read_through: u64,
    pub(super) unread: u64,
    pub(super) mentions: u64,
}

pub(super) fn replay(rows: &mut BTreeMap<u64, DeviceRow>, entry: &Entry, user: u64) {
    let row = rows.entry(entry.conversation_id).or_default();
    let mine = entry.members.contains(&user);
    match entry.kind {
        EntryKind::ConversationCreated | EntryKind::MembersAdded if mine => {
            *row = DeviceRow {
                member: true,
                read_through: row.read_through.max(entry.conv_seq),
                unread: 0,
                mentions: 0,
            };
        }
        EntryKind::MembersRemoved if mine => {
            row.member = false;
            row.unread = 0;
            row.mentions = 0;
        }
        EntryKind::Message if entry.sender_id == user => {
            row.read_through = row.read_through.max(entry.conv_seq);
            row.unread = 0;
            row.mentions = 0;
        }
        EntryKind::Message if row.member && entry.conv_seq > row.read_through => {
            row.unread += 1;
            if entry.mention_all || entry.mentions.contains(&user) {
                row.mentions += 1;
            }
        }
        EntryKind::ReadMarker
            if entry.sender_id == user && entry.read_through > row.read_through =>
        {
            row.read_through = entry.read_through;
            if row.member {
                (row.unread, row.mentions) = (entry.unread, entry.unread_mentions);
            }
        }
        _ => {}
    }
}
