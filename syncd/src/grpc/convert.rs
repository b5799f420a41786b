//! Wire <-> store type conversions.

use proto::timeline::v1 as pb;
use timeline_store::{Conversation, ConversationKind, Entry, EntryKind, RemovalKind, Target};

pub(crate) fn entry(e: Entry) -> pb::Entry {
    pb::Entry {
        seq: e.seq,
        kind: entry_kind(e.kind) as i32,
        conversation_id: e.conversation_id,
        conv_seq: e.conv_seq,
        msg_id: e.msg_id,
        sender_id: e.sender_id,
        client_msg_id: e.client_msg_id,
        text: e.text,
        sent_at_ms: e.sent_at_ms,
        members: e.members,
        read_through: e.read_through,
        unread: e.unread,
        unread_mentions: e.unread_mentions,
        mentions: e.mentions,
        mention_all: e.mention_all,
        read_fanout: e.read_fanout,
        target: (e.target != Target::default()).then_some(pb::MessageTarget {
            conv_seq: e.target.conv_seq,
            msg_id: e.target.msg_id,
            sender_id: e.target.sender_id,
            mentions: e.target.mentions,
            mention_all: e.target.mention_all,
        }),
        version: e.state.version,
        edited: e.state.version > 0,
        edited_at_ms: e.state.edited_at_ms,
        previous_versions: e
            .state
            .previous
            .into_iter()
            .map(|p| pb::PreviousVersion {
                version: p.version,
                text: p.text,
                at_ms: p.at_ms,
            })
            .collect(),
        removed: e.state.removed.map(|r| pb::Removal {
            kind: match r.kind {
                RemovalKind::Recalled => pb::RemovalKind::Recalled,
                RemovalKind::Deleted => pb::RemovalKind::Deleted,
            } as i32,
            by: r.by,
            at_ms: r.at_ms,
            conv_seq: r.conv_seq,
        }),
        priority: e.priority,
    }
}

pub(crate) fn group_notice(n: crate::push::GroupNotice) -> pb::GroupNotice {
    pb::GroupNotice {
        conversation_id: n.conversation_id,
        conv_seq: n.conv_seq,
        priority: n.priority,
    }
}

pub(crate) fn conversation_state(s: crate::engine::ConversationState) -> pb::ConversationState {
    pb::ConversationState {
        conversation_id: s.conversation_id,
        kind: wire_conversation_kind(s.kind) as i32,
        title: s.title,
        last_conv_seq: s.last_conv_seq,
        last_message: s.last_message.map(|m| pb::MessagePreview {
            conv_seq: m.conv_seq,
            msg_id: m.msg_id,
            sender_id: m.sender_id,
            text: m.text,
            sent_at_ms: m.sent_at_ms,
            removed: m.removed,
            edited: m.edited,
        }),
        unread: s.unread,
        read_through: s.read_through,
        member: s.member,
        last_activity_ms: s.last_activity_ms,
        read_fanout: s.read_fanout,
        mentions: s.mentions,
        peer_read_through: s.peer_read_through,
        counting: s.counting,
    }
}

pub(crate) fn group_top(top: crate::inbox::GroupTop) -> pb::ConversationTop {
    pb::ConversationTop {
        conversation_id: top.conversation_id,
        conv_seq: top.conv_seq,
        joined_conv_seq: top.joined_conv_seq,
    }
}

pub(crate) fn conversation(c: Conversation) -> pb::Conversation {
    pb::Conversation {
        conversation_id: c.conversation_id,
        kind: wire_conversation_kind(c.kind) as i32,
        members: c.members,
        title: c.title,
        created_at_ms: c.created_at_ms,
        read_fanout: c.read_fanout,
        member_count: c.member_count,
    }
}

pub(crate) fn entry_kind(kind: EntryKind) -> pb::EntryKind {
    match kind {
        EntryKind::Message => pb::EntryKind::Message,
        EntryKind::ConversationCreated => pb::EntryKind::ConversationCreated,
        EntryKind::MembersAdded => pb::EntryKind::MembersAdded,
        EntryKind::MembersRemoved => pb::EntryKind::MembersRemoved,
        EntryKind::ReadMarker => pb::EntryKind::ReadMarker,
        EntryKind::Edit => pb::EntryKind::Edit,
        EntryKind::Recall => pb::EntryKind::Recall,
        EntryKind::Delete => pb::EntryKind::Delete,
        EntryKind::DeleteForMe => pb::EntryKind::DeleteForMe,
        EntryKind::ClearHistory => pb::EntryKind::ClearHistory,
    }
}

fn wire_conversation_kind(kind: ConversationKind) -> pb::ConversationKind {
    match kind {
        ConversationKind::Direct => pb::ConversationKind::Direct,
        ConversationKind::Group => pb::ConversationKind::Group,
    }
}

/// `None` for a number the wire enum does not know.
pub(crate) fn conversation_kind(kind: i32) -> Option<ConversationKind> {
    match pb::ConversationKind::try_from(kind).ok()? {
        // Unspecified has always meant a group.
        pb::ConversationKind::Unspecified | pb::ConversationKind::Group => {
            Some(ConversationKind::Group)
        }
        pb::ConversationKind::Direct => Some(ConversationKind::Direct),
    }
}

pub(crate) fn search_reply(result: crate::engine::SearchResult) -> pb::SearchReply {
    pb::SearchReply {
        hits: result
            .page
            .hits
            .into_iter()
            .map(|hit| pb::SearchHit {
                conversation_id: hit.conversation_id,
                conv_seq: hit.conv_seq,
                msg_id: hit.msg_id,
                sender_id: hit.sender_id,
                // Offsets fit: a text is at most `MAX_TEXT_BYTES`.
                highlights: hit
                    .highlights
                    .iter()
                    .map(|&(start, end)| pb::Highlight {
                        start: start as u32,
                        end: end as u32,
                    })
                    .collect(),
                text: hit.text,
                sent_at_ms: hit.sent_at_ms,
                score: hit.score,
            })
            .collect(),
        next_cursor: result.page.next_cursor.unwrap_or_default(),
        timed_out: result.page.timed_out,
        lagging_events: result.lagging_events,
        catching_up: result.catching_up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_numbering_matches_the_wire() {
        let pairs = [
            (
                entry_kind(EntryKind::Message) as i32,
                pb::EntryKind::Message as i32,
            ),
            (
                entry_kind(EntryKind::ConversationCreated) as i32,
                pb::EntryKind::ConversationCreated as i32,
            ),
            (
                entry_kind(EntryKind::MembersAdded) as i32,
                pb::EntryKind::MembersAdded as i32,
            ),
            (
                entry_kind(EntryKind::MembersRemoved) as i32,
                pb::EntryKind::MembersRemoved as i32,
            ),
            (
                wire_conversation_kind(ConversationKind::Direct) as i32,
                pb::ConversationKind::Direct as i32,
            ),
            (
                wire_conversation_kind(ConversationKind::Group) as i32,
                pb::ConversationKind::Group as i32,
            ),
        ];
        for (store, wire) in pairs {
            assert_eq!(store, wire);
        }
    }
}
