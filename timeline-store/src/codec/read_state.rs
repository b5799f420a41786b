//! Read-state rows (a user's position and counts in one conversation) as
//! stored.

use super::corrupt;
use crate::{MessagePreview, ReadStateRow, Result};
use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReadStateRecord {
    #[prost(uint64, tag = "1")]
    pub conversation_id: u64,
    #[prost(bool, tag = "2")]
    pub member: bool,
    #[prost(uint64, tag = "3")]
    pub read_through: u64,
    #[prost(uint64, tag = "4")]
    pub unread: u64,
    #[prost(uint64, tag = "5")]
    pub counted_through: u64,
    #[prost(uint64, tag = "6")]
    pub joined_conv_seq: u64,
    #[prost(uint64, tag = "7")]
    pub last_seq: u64,
    #[prost(int64, tag = "8")]
    pub last_activity_ms: i64,
    #[prost(message, optional, tag = "9")]
    pub last_message: Option<MessagePreviewRecord>,
    #[prost(uint64, tag = "10")]
    pub mentions: u64,
    #[prost(uint64, tag = "11")]
    pub peer_read_through: u64,
    #[prost(uint64, tag = "12")]
    pub cleared_through: u64,
    #[prost(uint64, repeated, tag = "13")]
    pub hidden: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessagePreviewRecord {
    #[prost(uint64, tag = "1")]
    pub conv_seq: u64,
    #[prost(uint64, tag = "2")]
    pub msg_id: u64,
    #[prost(uint64, tag = "3")]
    pub sender_id: u64,
    #[prost(string, tag = "4")]
    pub text: String,
    #[prost(int64, tag = "5")]
    pub sent_at_ms: i64,
    #[prost(bool, tag = "6")]
    pub removed: bool,
    #[prost(bool, tag = "7")]
    pub edited: bool,
}

pub(crate) fn encode_read_state(row: &ReadStateRow) -> Vec<u8> {
    ReadStateRecord {
        conversation_id: row.conversation_id,
        member: row.member,
        read_through: row.read_through,
        unread: row.unread,
        counted_through: row.counted_through,
        joined_conv_seq: row.joined_conv_seq,
        last_seq: row.last_seq,
        last_activity_ms: row.last_activity_ms,
        last_message: row.last_message.as_ref().map(|m| MessagePreviewRecord {
            conv_seq: m.conv_seq,
            msg_id: m.msg_id,
            sender_id: m.sender_id,
            text: m.text.clone(),
            sent_at_ms: m.sent_at_ms,
            removed: m.removed,
            edited: m.edited,
        }),
        mentions: row.mentions,
        peer_read_through: row.peer_read_through,
        cleared_through: row.cleared_through,
        hidden: row.hidden.clone(),
    }
    .encode_to_vec()
}

pub(crate) fn decode_read_state(bytes: &[u8]) -> Result<ReadStateRow> {
    let record = ReadStateRecord::decode(bytes).map_err(corrupt)?;
    Ok(ReadStateRow {
        conversation_id: record.conversation_id,
        member: record.member,
        read_through: record.read_through,
        unread: record.unread,
        counted_through: record.counted_through,
        joined_conv_seq: record.joined_conv_seq,
        last_seq: record.last_seq,
        last_activity_ms: record.last_activity_ms,
        last_message: record.last_message.map(|m| MessagePreview {
            conv_seq: m.conv_seq,
            msg_id: m.msg_id,
            sender_id: m.sender_id,
            text: m.text,
            sent_at_ms: m.sent_at_ms,
            removed: m.removed,
            edited: m.edited,
        }),
        mentions: record.mentions,
        peer_read_through: record.peer_read_through,
        cleared_through: record.cleared_through,
        hidden: record.hidden,
    })
}
