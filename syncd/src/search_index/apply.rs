//! From conversation-timeline entries to index operations: the one place
//! that decides what each kind of entry does to the index. Exhaustive on
//! purpose: a new entry kind does not compile until it is decided here.

use search::{ConversationUpdate, IndexOp, MessageDoc};
use timeline_store::{Entry, EntryKind};

/// What `entry` changes in the index, if anything.
pub fn index_op(entry: &Entry) -> Option<IndexOp> {
    match entry.kind {
        // Only text is searchable; an empty message (a recalled one among
        // them: its stored entry has no text) has nothing to find.
        EntryKind::Message if entry.text.is_empty() || entry.is_removed() => None,
        EntryKind::Message => Some(IndexOp::Upsert(MessageDoc {
            conversation_id: entry.conversation_id,
            conv_seq: entry.conv_seq,
            msg_id: entry.msg_id,
            sender_id: entry.sender_id,
            text: entry.text.clone(),
            sent_at_ms: entry.sent_at_ms,
        })),
        // A creation names every first member; an addition the new ones.
        EntryKind::ConversationCreated | EntryKind::MembersAdded => Some(IndexOp::Joined {
            users: entry.members.clone(),
            conv_seq: entry.conv_seq,
        }),
        EntryKind::MembersRemoved => Some(IndexOp::Left {
            users: entry.members.clone(),
            conv_seq: entry.conv_seq,
        }),
        // An edit replaces the text; read again after a recall it has none
        // (the recall that follows removes the message).
        EntryKind::Edit if entry.text.is_empty() => None,
        EntryKind::Edit => Some(IndexOp::ReplaceText {
            conv_seq: entry.target.conv_seq,
            text: entry.text.clone(),
        }),
        EntryKind::Recall | EntryKind::Delete => Some(IndexOp::Remove {
            conv_seq: entry.target.conv_seq,
        }),
        // Never in a conversation timeline.
        EntryKind::ReadMarker | EntryKind::DeleteForMe | EntryKind::ClearHistory => None,
    }
}

/// The update for a stretch of one conversation's timeline (ascending
/// `conv_seq`), indexed through `through` once applied.
pub fn update(conversation_id: u64, entries: &[Entry], through: u64) -> ConversationUpdate {
    ConversationUpdate {
        conversation_id,
        ops: entries.iter().filter_map(index_op).collect(),
        indexed_through: through,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_with_text_are_indexed_memberships_become_intervals() {
        let mut message = Entry::new(EntryKind::Message, 7);
        message.conv_seq = 3;
        message.text = "hi".into();
        assert!(matches!(index_op(&message), Some(IndexOp::Upsert(doc)) if doc.conv_seq == 3));
        message.text.clear();
        assert_eq!(index_op(&message), None);
        let mut edit = Entry::new(EntryKind::Edit, 7);
        edit.conv_seq = 5;
        edit.target.conv_seq = 3;
        edit.text = "fixed".into();
        assert_eq!(
            index_op(&edit),
            Some(IndexOp::ReplaceText {
                conv_seq: 3,
                text: "fixed".into()
            })
        );
        let mut recall = Entry::new(EntryKind::Recall, 7);
        recall.target.conv_seq = 3;
        assert_eq!(index_op(&recall), Some(IndexOp::Remove { conv_seq: 3 }));
        let mut removed = Entry::new(EntryKind::MembersRemoved, 7);
        removed.conv_seq = 4;
        removed.members = vec![2];
        assert_eq!(
            index_op(&removed),
            Some(IndexOp::Left {
                users: vec![2],
                conv_seq: 4
            })
        );
    }
}
