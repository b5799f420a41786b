//! Large-group memberships as the embedded store's index keeps them.

use super::corrupt;
use crate::{EventPosition, LargeGroupMembership, Result};
use prost::Message;

/// A large-group membership as the embedded index stores it. An empty
/// value (indexes written before positions were kept) decodes as a
/// membership joined at position zero.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(crate) struct LargeGroupMembershipRecord {
    #[prost(uint64, tag = "1")]
    pub joined_inbox_seq: u64,
    #[prost(uint64, tag = "2")]
    pub joined_conv_seq: u64,
    #[prost(bool, tag = "3")]
    pub left: bool,
    #[prost(uint64, tag = "4")]
    pub left_inbox_seq: u64,
    #[prost(uint64, tag = "5")]
    pub left_conv_seq: u64,
}

pub(crate) fn encode_membership(membership: &LargeGroupMembership) -> Vec<u8> {
    let left = membership.left.unwrap_or_default();
    LargeGroupMembershipRecord {
        joined_inbox_seq: membership.joined.inbox_seq,
        joined_conv_seq: membership.joined.conv_seq,
        left: membership.left.is_some(),
        left_inbox_seq: left.inbox_seq,
        left_conv_seq: left.conv_seq,
    }
    .encode_to_vec()
}

pub(crate) fn decode_membership(
    conversation_id: u64,
    bytes: &[u8],
) -> Result<LargeGroupMembership> {
    let record = LargeGroupMembershipRecord::decode(bytes).map_err(corrupt)?;
    Ok(LargeGroupMembership {
        conversation_id,
        joined: EventPosition {
            inbox_seq: record.joined_inbox_seq,
            conv_seq: record.joined_conv_seq,
        },
        left: record.left.then_some(EventPosition {
            inbox_seq: record.left_inbox_seq,
            conv_seq: record.left_conv_seq,
        }),
    })
}
