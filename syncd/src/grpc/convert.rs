//! Wire <-> store type conversions.

use proto::timeline::v1 as pb;
use timeline_store::{Conversation, ConversationKind, Entry};

pub(crate) fn entry(e: Entry) -> pb::Entry {
    pb::Entry {
        seq: e.seq,
        // Store and wire enums share their numbering.
        kind: e.kind,
        conversation_id: e.conversation_id,
        conv_seq: e.conv_seq,
        msg_id: e.msg_id,
        sender_id: e.sender_id,
        client_msg_id: e.client_msg_id,
        text: e.text,
        sent_at_ms: e.sent_at_ms,
        members: e.members,
    }
}

pub(crate) fn conversation(c: Conversation) -> pb::Conversation {
    pb::Conversation {
        conversation_id: c.conversation_id,
        kind: c.kind,
        members: c.members,
        title: c.title,
        created_at_ms: c.created_at_ms,
        read_fanout: c.read_fanout,
    }
}

pub(crate) fn conversation_kind(kind: i32) -> Option<ConversationKind> {
    match pb::ConversationKind::try_from(kind).ok()? {
        pb::ConversationKind::Unspecified => Some(ConversationKind::Unspecified),
        pb::ConversationKind::Direct => Some(ConversationKind::Direct),
        pb::ConversationKind::Group => Some(ConversationKind::Group),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline_store::EntryKind;

    #[test]
    fn enum_numbering_matches_the_wire() {
        let pairs = [
            (EntryKind::Message as i32, pb::EntryKind::Message as i32),
            (
                EntryKind::ConversationCreated as i32,
                pb::EntryKind::ConversationCreated as i32,
            ),
            (
                EntryKind::MembersAdded as i32,
                pb::EntryKind::MembersAdded as i32,
            ),
            (
                EntryKind::MembersRemoved as i32,
                pb::EntryKind::MembersRemoved as i32,
            ),
            (
                ConversationKind::Direct as i32,
                pb::ConversationKind::Direct as i32,
            ),
            (
                ConversationKind::Group as i32,
                pb::ConversationKind::Group as i32,
            ),
        ];
        for (store, wire) in pairs {
            assert_eq!(store, wire);
        }
    }
}
