//! Domain values <-> the records every backend stores: the one place that
//! knows tags and stored codes.
//!
//! Records are prost messages, so values have one compact, forward-
//! compatible encoding (new fields get new tags; old readers skip them).
//! Tags and codes are persisted: never renumber. A code this build does not
//! know decodes to [`StoreError::Corrupt`], never to a guess.
//!
//! Layout: conversations, receipts, where an event's inbox copies went and
//! the large-group index changes here; `entries` (timeline entries and their
//! inbox copies), `memberships` (large-group memberships), `read_state`
//! (read-state rows).

use crate::{
    Conversation, ConversationKind, InboxWrite, LargeGroupIndexChange, Receipt, Result, StoreError,
};
use prost::Message;

/// Where one event's inbox copies went (for rewriting them later).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InboxCopiesRecord {
    #[prost(uint64, repeated, tag = "1")]
    pub users: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub seqs: Vec<u64>,
}

pub(crate) fn encode_inbox_copies(inbox: &[InboxWrite]) -> Vec<u8> {
    InboxCopiesRecord {
        users: inbox.iter().map(|w| w.user_id).collect(),
        seqs: inbox.iter().map(|w| w.seq).collect(),
    }
    .encode_to_vec()
}

pub(crate) fn decode_inbox_copies(bytes: &[u8]) -> Result<Vec<InboxWrite>> {
    let record = InboxCopiesRecord::decode(bytes).map_err(corrupt)?;
    if record.users.len() != record.seqs.len() {
        return Err(StoreError::Corrupt(
            "inbox copies lists differ in length".into(),
        ));
    }
    Ok(record
        .users
        .into_iter()
        .zip(record.seqs)
        .map(|(user_id, seq)| InboxWrite { user_id, seq })
        .collect())
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConversationRecord {
    #[prost(uint64, tag = "1")]
    pub conversation_id: u64,
    /// See [`conversation_kind_code`].
    #[prost(int32, tag = "2")]
    pub kind: i32,
    #[prost(uint64, repeated, tag = "3")]
    pub members: Vec<u64>,
    #[prost(string, tag = "4")]
    pub title: String,
    #[prost(int64, tag = "5")]
    pub created_at_ms: i64,
    #[prost(bool, tag = "6")]
    pub read_fanout: bool,
    /// 0 in records written before the count was kept: they list every
    /// member, so the list's length is the count.
    #[prost(uint64, tag = "7")]
    pub member_count: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReceiptRecord {
    #[prost(uint64, tag = "1")]
    pub conversation_id: u64,
    #[prost(uint64, tag = "2")]
    pub conv_seq: u64,
    #[prost(uint64, tag = "3")]
    pub msg_id: u64,
    #[prost(int64, tag = "4")]
    pub sent_at_ms: i64,
    #[prost(fixed64, tag = "5")]
    pub fingerprint: u64,
    /// When the store wrote it (ms since the epoch; embedded store only, 0
    /// in older records, which then count from `sent_at_ms`).
    #[prost(uint64, tag = "6")]
    pub stored_at_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(crate) struct LargeGroupIndexChangeRecord {
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    #[prost(uint64, tag = "2")]
    pub conversation_id: u64,
    #[prost(bool, tag = "3")]
    pub member: bool,
}

/// Stored codes of [`ConversationKind`] (0 was "unspecified" and is never
/// written).
fn conversation_kind_code(kind: ConversationKind) -> i32 {
    match kind {
        ConversationKind::Direct => 1,
        ConversationKind::Group => 2,
    }
}

fn conversation_kind(code: i32) -> Result<ConversationKind> {
    Ok(match code {
        1 => ConversationKind::Direct,
        2 => ConversationKind::Group,
        other => return Err(unknown("conversation kind", other)),
    })
}

fn unknown(what: &str, code: i32) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} code {code}"))
}

fn corrupt(error: prost::DecodeError) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

impl From<&Conversation> for ConversationRecord {
    fn from(conversation: &Conversation) -> Self {
        Self {
            conversation_id: conversation.conversation_id,
            kind: conversation_kind_code(conversation.kind),
            members: conversation.members.clone(),
            title: conversation.title.clone(),
            created_at_ms: conversation.created_at_ms,
            read_fanout: conversation.read_fanout,
            member_count: conversation.member_count,
        }
    }
}

impl TryFrom<ConversationRecord> for Conversation {
    type Error = StoreError;

    fn try_from(record: ConversationRecord) -> Result<Self> {
        Ok(Self {
            conversation_id: record.conversation_id,
            kind: conversation_kind(record.kind)?,
            member_count: match record.member_count {
                0 => record.members.len() as u64,
                count => count,
            },
            members: record.members,
            title: record.title,
            created_at_ms: record.created_at_ms,
            read_fanout: record.read_fanout,
        })
    }
}

impl From<&Receipt> for ReceiptRecord {
    fn from(receipt: &Receipt) -> Self {
        Self {
            conversation_id: receipt.conversation_id,
            conv_seq: receipt.conv_seq,
            msg_id: receipt.msg_id,
            sent_at_ms: receipt.sent_at_ms,
            fingerprint: receipt.fingerprint,
            stored_at_ms: 0,
        }
    }
}

impl From<ReceiptRecord> for Receipt {
    fn from(record: ReceiptRecord) -> Self {
        Self {
            conversation_id: record.conversation_id,
            conv_seq: record.conv_seq,
            msg_id: record.msg_id,
            sent_at_ms: record.sent_at_ms,
            fingerprint: record.fingerprint,
        }
    }
}

impl From<LargeGroupIndexChange> for LargeGroupIndexChangeRecord {
    fn from(change: LargeGroupIndexChange) -> Self {
        Self {
            user_id: change.user_id,
            conversation_id: change.conversation_id,
            member: change.member,
        }
    }
}

impl From<LargeGroupIndexChangeRecord> for LargeGroupIndexChange {
    fn from(record: LargeGroupIndexChangeRecord) -> Self {
        Self {
            user_id: record.user_id,
            conversation_id: record.conversation_id,
            member: record.member,
        }
    }
}

pub(crate) fn encode_conversation(conversation: &Conversation) -> Vec<u8> {
    ConversationRecord::from(conversation).encode_to_vec()
}

pub(crate) fn decode_conversation(bytes: &[u8]) -> Result<Conversation> {
    ConversationRecord::decode(bytes)
        .map_err(corrupt)?
        .try_into()
}

pub(crate) fn encode_receipt(receipt: &Receipt) -> Vec<u8> {
    ReceiptRecord::from(receipt).encode_to_vec()
}

pub(crate) fn decode_receipt(bytes: &[u8]) -> Result<Receipt> {
    Ok(ReceiptRecord::decode(bytes).map_err(corrupt)?.into())
}

/// A receipt with the time it is written, for stores that expire receipts
/// themselves.
pub(crate) fn encode_stored_receipt(receipt: &Receipt, stored_at_ms: u64) -> Vec<u8> {
    ReceiptRecord {
        stored_at_ms,
        ..ReceiptRecord::from(receipt)
    }
    .encode_to_vec()
}

/// A stored receipt and whether it is past [`crate::RECEIPT_RETENTION`] at
/// `now_ms`.
pub(crate) fn decode_stored_receipt(bytes: &[u8], now_ms: u64) -> Result<(Receipt, bool)> {
    let record = ReceiptRecord::decode(bytes).map_err(corrupt)?;
    let stored_at = match record.stored_at_ms {
        0 => u64::try_from(record.sent_at_ms).unwrap_or(0),
        at => at,
    };
    let window = crate::RECEIPT_RETENTION.as_millis() as u64;
    let expired = now_ms.saturating_sub(stored_at) > window;
    Ok((record.into(), expired))
}

mod entries;
mod memberships;
mod read_state;
#[cfg(test)]
mod tests;

pub(crate) use entries::{
    EntryEncoder, EntryRecord, decode_entry, decode_inbox_entry, decode_inbox_time, fill_payload,
};
pub use entries::{INBOX_INLINE_PAYLOAD_BYTES, inbox_copy_payload_bytes, payload_bytes};
pub(crate) use memberships::{decode_membership, encode_membership};
pub(crate) use read_state::{decode_read_state, encode_read_state};
