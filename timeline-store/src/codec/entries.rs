//! Entries as stored: the record of a timeline entry, its message state
//! and edit history, the stored codes of entry and removal kinds, and an
//! entry's inbox copies (whole, or a reference to the conversation entry
//! when the payload is heavy).
//!
//! Tags and codes are persisted: never renumber.

use super::{corrupt, unknown};
use crate::{
    Entry, EntryKind, MessageState, PreviousVersion, Removal, RemovalKind, Result, StoreError,
    Target,
};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EntryRecord {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// See [`entry_kind_code`]; an `int32` on the wire, as a prost enum is.
    #[prost(int32, tag = "2")]
    pub kind: i32,
    #[prost(uint64, tag = "3")]
    pub conversation_id: u64,
    #[prost(uint64, tag = "4")]
    pub conv_seq: u64,
    #[prost(uint64, tag = "5")]
    pub msg_id: u64,
    #[prost(uint64, tag = "6")]
    pub sender_id: u64,
    #[prost(string, tag = "7")]
    pub client_msg_id: String,
    #[prost(string, tag = "8")]
    pub text: String,
    #[prost(int64, tag = "9")]
    pub sent_at_ms: i64,
    #[prost(uint64, repeated, tag = "10")]
    pub members: Vec<u64>,
    /// An inbox copy stored without its text and members: read them from
    /// the conversation entry (see [`INBOX_INLINE_PAYLOAD_BYTES`]).
    #[prost(bool, tag = "11")]
    pub payload_in_conversation: bool,
    #[prost(uint64, tag = "12")]
    pub read_through: u64,
    #[prost(uint64, tag = "13")]
    pub unread: u64,
    #[prost(uint64, tag = "14")]
    pub unread_mentions: u64,
    #[prost(uint64, repeated, tag = "15")]
    pub mentions: Vec<u64>,
    #[prost(bool, tag = "16")]
    pub mention_all: bool,
    #[prost(bool, tag = "17")]
    pub read_fanout: bool,
    #[prost(message, optional, tag = "18")]
    pub target: Option<TargetRecord>,
    #[prost(message, optional, tag = "19")]
    pub state: Option<MessageStateRecord>,
    #[prost(bool, tag = "20")]
    pub priority: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TargetRecord {
    #[prost(uint64, tag = "1")]
    pub conv_seq: u64,
    #[prost(uint64, tag = "2")]
    pub msg_id: u64,
    #[prost(uint64, tag = "3")]
    pub sender_id: u64,
    #[prost(uint64, repeated, tag = "4")]
    pub mentions: Vec<u64>,
    #[prost(bool, tag = "5")]
    pub mention_all: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageStateRecord {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(int64, tag = "2")]
    pub edited_at_ms: i64,
    #[prost(uint64, repeated, tag = "3")]
    pub edits: Vec<u64>,
    #[prost(message, repeated, tag = "4")]
    pub previous: Vec<PreviousVersionRecord>,
    /// See [`removal_kind_code`]; 0: not removed.
    #[prost(int32, tag = "5")]
    pub removal_kind: i32,
    #[prost(uint64, tag = "6")]
    pub removed_by: u64,
    #[prost(int64, tag = "7")]
    pub removed_at_ms: i64,
    #[prost(uint64, tag = "8")]
    pub removed_conv_seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PreviousVersionRecord {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(int64, tag = "3")]
    pub at_ms: i64,
}

/// Stored codes of [`RemovalKind`] (0: not removed).
fn removal_kind_code(kind: RemovalKind) -> i32 {
    match kind {
        RemovalKind::Recalled => 1,
        RemovalKind::Deleted => 2,
    }
}

fn removal_kind(code: i32) -> Result<Option<RemovalKind>> {
    Ok(match code {
        0 => None,
        1 => Some(RemovalKind::Recalled),
        2 => Some(RemovalKind::Deleted),
        other => return Err(unknown("removal kind", other)),
    })
}

impl From<&Target> for Option<TargetRecord> {
    fn from(target: &Target) -> Self {
        (*target != Target::default()).then(|| TargetRecord {
            conv_seq: target.conv_seq,
            msg_id: target.msg_id,
            sender_id: target.sender_id,
            mentions: target.mentions.clone(),
            mention_all: target.mention_all,
        })
    }
}

impl From<Option<TargetRecord>> for Target {
    fn from(record: Option<TargetRecord>) -> Self {
        record.map_or_else(Target::default, |r| Target {
            conv_seq: r.conv_seq,
            msg_id: r.msg_id,
            sender_id: r.sender_id,
            mentions: r.mentions,
            mention_all: r.mention_all,
        })
    }
}

impl From<&MessageState> for Option<MessageStateRecord> {
    fn from(state: &MessageState) -> Self {
        if *state == MessageState::default() {
            return None;
        }
        let removal = state.removed;
        Some(MessageStateRecord {
            version: state.version,
            edited_at_ms: state.edited_at_ms,
            edits: state.edits.clone(),
            previous: state
                .previous
                .iter()
                .map(|p| PreviousVersionRecord {
                    version: p.version,
                    text: p.text.clone(),
                    at_ms: p.at_ms,
                })
                .collect(),
            removal_kind: removal.map_or(0, |r| removal_kind_code(r.kind)),
            removed_by: removal.map_or(0, |r| r.by),
            removed_at_ms: removal.map_or(0, |r| r.at_ms),
            removed_conv_seq: removal.map_or(0, |r| r.conv_seq),
        })
    }
}

fn message_state(record: Option<MessageStateRecord>) -> Result<MessageState> {
    let Some(record) = record else {
        return Ok(MessageState::default());
    };
    let removed = removal_kind(record.removal_kind)?.map(|kind| Removal {
        kind,
        by: record.removed_by,
        at_ms: record.removed_at_ms,
        conv_seq: record.removed_conv_seq,
    });
    Ok(MessageState {
        version: record.version,
        edited_at_ms: record.edited_at_ms,
        edits: record.edits,
        previous: record
            .previous
            .into_iter()
            .map(|p| PreviousVersion {
                version: p.version,
                text: p.text,
                at_ms: p.at_ms,
            })
            .collect(),
        removed,
    })
}

/// Stored codes of [`EntryKind`] (0 was "unspecified" and is never written).
pub(super) fn entry_kind_code(kind: EntryKind) -> i32 {
    match kind {
        EntryKind::Message => 1,
        EntryKind::ConversationCreated => 2,
        EntryKind::MembersAdded => 3,
        EntryKind::MembersRemoved => 4,
        EntryKind::ReadMarker => 5,
        EntryKind::Edit => 6,
        EntryKind::Recall => 7,
        EntryKind::Delete => 8,
        EntryKind::DeleteForMe => 9,
        EntryKind::ClearHistory => 10,
    }
}

fn entry_kind(code: i32) -> Result<EntryKind> {
    Ok(match code {
        1 => EntryKind::Message,
        2 => EntryKind::ConversationCreated,
        3 => EntryKind::MembersAdded,
        4 => EntryKind::MembersRemoved,
        5 => EntryKind::ReadMarker,
        6 => EntryKind::Edit,
        7 => EntryKind::Recall,
        8 => EntryKind::Delete,
        9 => EntryKind::DeleteForMe,
        10 => EntryKind::ClearHistory,
        other => return Err(unknown("entry kind", other)),
    })
}

impl From<&Entry> for EntryRecord {
    fn from(entry: &Entry) -> Self {
        Self {
            seq: entry.seq,
            kind: entry_kind_code(entry.kind),
            conversation_id: entry.conversation_id,
            conv_seq: entry.conv_seq,
            msg_id: entry.msg_id,
            sender_id: entry.sender_id,
            client_msg_id: entry.client_msg_id.clone(),
            text: entry.text.clone(),
            sent_at_ms: entry.sent_at_ms,
            members: entry.members.clone(),
            payload_in_conversation: false,
            read_through: entry.read_through,
            unread: entry.unread,
            unread_mentions: entry.unread_mentions,
            mentions: entry.mentions.clone(),
            mention_all: entry.mention_all,
            read_fanout: entry.read_fanout,
            target: (&entry.target).into(),
            state: (&entry.state).into(),
            priority: entry.priority,
        }
    }
}

impl TryFrom<EntryRecord> for Entry {
    type Error = StoreError;

    fn try_from(record: EntryRecord) -> Result<Self> {
        Ok(Self {
            seq: record.seq,
            kind: entry_kind(record.kind)?,
            conversation_id: record.conversation_id,
            conv_seq: record.conv_seq,
            msg_id: record.msg_id,
            sender_id: record.sender_id,
            client_msg_id: record.client_msg_id,
            text: record.text,
            sent_at_ms: record.sent_at_ms,
            members: record.members,
            read_through: record.read_through,
            unread: record.unread,
            unread_mentions: record.unread_mentions,
            mentions: record.mentions,
            mention_all: record.mention_all,
            read_fanout: record.read_fanout,
            target: record.target.into(),
            state: message_state(record.state)?,
            priority: record.priority,
        })
    }
}

/// Inbox copies of an entry whose text and member list weigh more than this
/// are stored without them, and a read fills them in from the conversation
/// entry (written in the same event, and never trimmed). A 64 KiB message to
/// a 500-member group is then 32 MiB less to write, hold in memtables,
/// flush and compact; small messages, most of them, still sync with one
/// range read.
pub const INBOX_INLINE_PAYLOAD_BYTES: usize = 4 * 1024;

/// What an entry's text and members weigh, to compare with
/// [`INBOX_INLINE_PAYLOAD_BYTES`].
pub fn payload_bytes(entry: &Entry) -> usize {
    entry.text.len() + entry.members.len() * std::mem::size_of::<u64>()
}

/// The payload bytes one inbox copy of `entry` stores: none when the copy
/// refers to the conversation entry.
pub fn inbox_copy_payload_bytes(entry: &Entry) -> usize {
    match payload_bytes(entry) {
        heavy if heavy > INBOX_INLINE_PAYLOAD_BYTES => 0,
        inline => inline,
    }
}

/// Encodes one event's conversation entry and its inbox copies, which
/// differ only in `seq` (and, for heavy payloads, in leaving the payload to
/// the conversation entry): each record is built once, not once per copy.
pub(crate) struct EntryEncoder {
    full: EntryRecord,
    /// The inbox form when the payload lives only in the conversation entry.
    reference: Option<EntryRecord>,
}

impl EntryEncoder {
    pub(crate) fn new(entry: &Entry) -> Self {
        let full = EntryRecord::from(entry);
        let reference = (payload_bytes(entry) > INBOX_INLINE_PAYLOAD_BYTES).then(|| EntryRecord {
            text: String::new(),
            members: Vec::new(),
            payload_in_conversation: true,
            ..full.clone()
        });
        Self { full, reference }
    }

    /// The conversation entry's bytes.
    pub(crate) fn conversation(&mut self) -> Vec<u8> {
        self.full.seq = 0;
        self.full.encode_to_vec()
    }

    /// One inbox copy's bytes, with `seq` set.
    pub(crate) fn inbox(&mut self, seq: u64) -> Vec<u8> {
        let record = self.reference.as_mut().unwrap_or(&mut self.full);
        record.seq = seq;
        record.encode_to_vec()
    }
}

/// The two fields of an [`EntryRecord`] retention reads: prost skips the
/// others (text, members, edit history) without allocating them.
#[derive(Clone, PartialEq, prost::Message)]
struct EntryTimeRecord {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(int64, tag = "9")]
    sent_at_ms: i64,
}

/// An inbox row's seq and sending time (see [`crate::InboxTime`]).
pub(crate) fn decode_inbox_time(bytes: &[u8]) -> Result<crate::InboxTime> {
    let record = EntryTimeRecord::decode(bytes).map_err(corrupt)?;
    Ok(crate::InboxTime {
        seq: record.seq,
        sent_at_ms: record.sent_at_ms,
    })
}

/// An inbox copy, and whether its payload must be read from the
/// conversation entry ([`fill_payload`]).
pub(crate) fn decode_inbox_entry(bytes: &[u8]) -> Result<(Entry, bool)> {
    let record = EntryRecord::decode(bytes).map_err(corrupt)?;
    let referenced = record.payload_in_conversation;
    Ok((record.try_into()?, referenced))
}

/// Completes an inbox copy stored without its payload from the bytes of
/// its conversation entry (`None`: missing, which a committed event never
/// leaves).
pub(crate) fn fill_payload(entry: &mut Entry, conversation_entry: Option<&[u8]>) -> Result<()> {
    let bytes = conversation_entry.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "inbox entry {} refers to conversation {} entry {}, which is missing",
            entry.seq, entry.conversation_id, entry.conv_seq
        ))
    })?;
    let full = decode_entry(bytes)?;
    entry.text = full.text;
    entry.members = full.members;
    // The conversation entry holds the message's current state (an edit
    // rewrites it, not the inbox copies); its text is what the copy shows.
    entry.state = MessageState {
        previous: Vec::new(),
        ..full.state
    };
    Ok(())
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry> {
    EntryRecord::decode(bytes).map_err(corrupt)?.try_into()
}
