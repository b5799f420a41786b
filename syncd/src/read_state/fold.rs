//! The fold: one user's inbox entries, in seq order, into one read-state
//! row per conversation. Pure and deterministic: a device replaying its
//! inbox with the same rules gets the same counts (docs/PROTOCOL.md).
//!
//! The rules, per conversation:
//! - the user's own join (creation, being added) makes them a member and
//!   starts counting there: everything up to the join is read;
//! - the user's own removal ends membership: nothing is unread;
//! - a message from someone else after the marker, while a member, is
//!   unread; membership events never are;
//! - the user's own message reads everything up to it (in a write-fanout
//!   conversation every earlier event of it is earlier in the inbox);
//! - a read marker above the current one raises it, and what stays unread
//!   (and unread mentions) is the count it carries, up to its position; one
//!   at or below it changes nothing (not even the position: a large
//!   group's row counts on from there); a clear at the current marker
//!   applies its count too;
//! - a message from someone else that mentions the user (by name or
//!   everyone), after the marker, while a member, is an unread mention;
//! - a large group's message in the inbox is a copy for a member it names
//!   (it counts as a mention only: its unread is counted from the
//!   timeline) or for its sender (it reads everything up to it);
//! - another member's marker (direct conversations) is a read receipt: how
//!   far the peer has read;
//! - a recall or delete of a message from someone else that is counted
//!   (after the marker and the join, at or below what the row covers)
//!   takes it back from the unread count (and from the mentions if it
//!   mentioned the user); in a large group only a mention by name is in the
//!   row (the rest is counted from the timeline, which takes back the same
//!   way);
//! - an edit or recall of the previewed message changes the preview;
//! - delete for me and clear history hide messages from the user's own
//!   view; delete for me changes no count, a clear is also the user's read
//!   marker through what it clears (it carries the count like a marker).
//!
//! An entry at or below a row's `last_seq` is already in it (a save that
//! was cut short): folding it again changes nothing.

use super::count::preview;
use timeline_store::{Entry, EntryKind, MessagePreview, ReadStateRow};

/// Folds `entry` (of `user_id`'s inbox) into `row` (its conversation's).
pub fn apply(row: &mut ReadStateRow, entry: &Entry, user_id: u64) {
    if entry.seq <= row.last_seq {
        return;
    }
    row.conversation_id = entry.conversation_id;
    row.last_seq = entry.seq;
    let unread_from_other =
        entry.sender_id != user_id && row.member && entry.conv_seq > row.read_through;
    match entry.kind {
        EntryKind::Message if entry.read_fanout => {
            if entry.sender_id == user_id {
                row.read_through = row.read_through.max(entry.conv_seq);
                row.counted_through = row.counted_through.max(entry.conv_seq);
                row.unread = 0;
                row.mentions = 0;
            } else if unread_from_other && entry.mentions_user(user_id) {
                row.mentions += 1;
            }
            return;
        }
        EntryKind::ReadMarker if entry.sender_id != user_id => {
            row.peer_read_through = row.peer_read_through.max(entry.read_through);
            return;
        }
        // The user's own view only: no count changes, and no position (in a
        // large group the row's counts come from the timeline).
        EntryKind::DeleteForMe => {
            let conv_seq = entry.target.conv_seq;
            if conv_seq > row.cleared_through
                && let Err(at) = row.hidden.binary_search(&conv_seq)
            {
                row.hidden.insert(at, conv_seq);
            }
            return;
        }
        EntryKind::ClearHistory => {
            row.cleared_through = row.cleared_through.max(entry.target.conv_seq);
            let cleared = row.cleared_through;
            row.hidden.retain(|&conv_seq| conv_seq > cleared);
            // It is also a read marker (of the user's own): below.
        }
        EntryKind::Recall | EntryKind::Delete => {
            let target = &entry.target;
            let after_marker = target.sender_id != user_id
                && row.member
                && target.conv_seq > row.read_through
                && target.conv_seq > row.joined_conv_seq;
            let named = target.mentions.contains(&user_id);
            if entry.read_fanout {
                // Only the named mention is in the row (from its copy).
                if after_marker && named {
                    row.mentions = row.mentions.saturating_sub(1);
                }
            } else if after_marker && target.conv_seq <= row.counted_through {
                row.unread = row.unread.saturating_sub(1);
                if named || target.mention_all {
                    row.mentions = row.mentions.saturating_sub(1);
                }
            }
            if let Some(preview) = row
                .last_message
                .as_mut()
                .filter(|p| p.conv_seq == target.conv_seq)
            {
                preview.text.clear();
                preview.removed = true;
            }
            if entry.read_fanout {
                return;
            }
        }
        EntryKind::Edit => {
            let target = &entry.target;
            if let Some(preview) = row
                .last_message
                .as_mut()
                .filter(|p| p.conv_seq == target.conv_seq)
            {
                preview.text = timeline_store::MessagePreview::preview_text(&entry.text);
                preview.edited = true;
            }
            if entry.read_fanout {
                return;
            }
        }
        _ => {}
    }
    // A marker moves what the row covers only when it is applied: one
    // that is not (stale, or a clear at the same marker) must not skip
    // the range before its position, which a large group's row counts
    // from its timeline.
    if !matches!(entry.kind, EntryKind::ReadMarker | EntryKind::ClearHistory) {
        row.counted_through = row.counted_through.max(entry.conv_seq);
    }
    match entry.kind {
        EntryKind::Message => {
            row.last_activity_ms = entry.sent_at_ms;
            // Which message, not its text: the list reads the text from
            // the conversation entry, so a recall or an edit shows at once
            // and no stored row keeps a withdrawn text.
            row.last_message = Some(MessagePreview {
                text: String::new(),
                ..preview(entry)
            });
            if entry.sender_id == user_id {
                row.read_through = row.read_through.max(entry.conv_seq);
                row.unread = 0;
                row.mentions = 0;
            } else if unread_from_other {
                row.unread += 1;
                if entry.mentions_user(user_id) {
                    row.mentions += 1;
                }
            }
        }
        EntryKind::ConversationCreated | EntryKind::MembersAdded => {
            row.last_activity_ms = entry.sent_at_ms;
            if entry.members.contains(&user_id) {
                row.member = true;
                row.joined_conv_seq = entry.conv_seq;
                row.read_through = row.read_through.max(entry.conv_seq);
                row.unread = 0;
                row.mentions = 0;
            }
        }
        EntryKind::MembersRemoved => {
            row.last_activity_ms = entry.sent_at_ms;
            if entry.members.contains(&user_id) {
                row.member = false;
                row.unread = 0;
                row.mentions = 0;
            }
        }
        // Handled above; they are events of the conversation the row
        // covers up to, like membership events, but never unread.
        EntryKind::Edit | EntryKind::Recall | EntryKind::Delete => {}
        EntryKind::DeleteForMe => unreachable!("folded above"),
        EntryKind::ReadMarker | EntryKind::ClearHistory => {
            // A clear carries a fresh count from the marker it keeps (its
            // read_through may equal the row's): apply it then too.
            let applies = entry.read_through > row.read_through
                || (entry.kind == EntryKind::ClearHistory
                    && entry.read_through == row.read_through);
            if applies {
                row.counted_through = row.counted_through.max(entry.conv_seq);
                row.read_through = entry.read_through;
                (row.unread, row.mentions) = if row.member {
                    (entry.unread, entry.unread_mentions)
                } else {
                    (0, 0)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const BOB: u64 = 2;
    const CONV: u64 = 10;

    fn at(seq: u64, conv_seq: u64, kind: EntryKind) -> Entry {
        Entry {
            seq,
            conv_seq,
            sent_at_ms: 1_000 + seq as i64,
            ..Entry::new(kind, CONV)
        }
    }

    fn message(seq: u64, conv_seq: u64, sender_id: u64) -> Entry {
        Entry {
            sender_id,
            text: format!("m{conv_seq}"),
            ..at(seq, conv_seq, EntryKind::Message)
        }
    }

    fn members(seq: u64, conv_seq: u64, kind: EntryKind, who: &[u64]) -> Entry {
        Entry {
            members: who.to_vec(),
            ..at(seq, conv_seq, kind)
        }
    }

    fn marker(seq: u64, conv_seq: u64, read_through: u64, unread: u64) -> Entry {
        Entry {
            read_through,
            unread,
            sender_id: ME,
            ..at(seq, conv_seq, EntryKind::ReadMarker)
        }
    }

    fn fold(entries: &[Entry]) -> ReadStateRow {
        let mut row = ReadStateRow::default();
        for entry in entries {
            apply(&mut row, entry, ME);
        }
        row
    }

    #[test]
    fn only_messages_from_others_after_the_join_count() {
        let row = fold(&[
            members(1, 1, EntryKind::ConversationCreated, &[ME, BOB]),
            message(2, 2, BOB),
            members(3, 3, EntryKind::MembersAdded, &[7]),
            message(4, 4, BOB),
        ]);
        assert_eq!((row.member, row.read_through, row.unread), (true, 1, 2));
        assert_eq!(row.last_message.unwrap().conv_seq, 4);
    }

    #[test]
    fn own_messages_never_count_and_read_everything_before() {
        let row = fold(&[
            members(1, 1, EntryKind::ConversationCreated, &[ME, BOB]),
            message(2, 2, BOB),
            message(3, 3, ME),
        ]);
        assert_eq!((row.read_through, row.unread), (3, 0));
        let row = fold(&[
            members(1, 1, EntryKind::ConversationCreated, &[ME, BOB]),
            message(3, 3, ME),
            message(4, 4, BOB),
        ]);
        assert_eq!(row.unread, 1);
    }

    #[test]
    fn leaving_clears_and_a_rejoin_counts_from_the_rejoin() {
        let row = fold(&[
            members(1, 1, EntryKind::MembersAdded, &[ME]),
            message(2, 2, BOB),
            members(3, 3, EntryKind::MembersRemoved, &[ME]),
        ]);
        assert_eq!((row.member, row.unread), (false, 0));
        let row = fold(&[
            members(1, 1, EntryKind::MembersAdded, &[ME]),
            message(2, 2, BOB),
            members(3, 3, EntryKind::MembersRemoved, &[ME]),
            members(4, 9, EntryKind::MembersAdded, &[ME]),
            message(5, 10, BOB),
        ]);
        assert_eq!((row.member, row.read_through, row.unread), (true, 9, 1));
    }

    #[test]
    fn markers_only_raise() {
        let base = [
            members(1, 1, EntryKind::ConversationCreated, &[ME, BOB]),
            message(2, 2, BOB),
            message(3, 3, BOB),
            message(4, 4, BOB),
        ];
        let mut entries = base.to_vec();
        entries.push(marker(5, 4, 3, 1));
        entries.push(marker(6, 4, 2, 2));
        let row = fold(&entries);
        assert_eq!(
            (row.read_through, row.unread),
            (3, 1),
            "the stale marker changes nothing"
        );
        assert_eq!(row.last_activity_ms, 1_004, "a marker is not activity");
    }

    #[test]
    fn folding_an_entry_again_changes_nothing() {
        let entries = [
            members(1, 1, EntryKind::ConversationCreated, &[ME, BOB]),
            message(2, 2, BOB),
        ];
        let mut row = fold(&entries);
        let once = row.clone();
        apply(&mut row, &entries[1], ME);
        assert_eq!(row, once);
    }

    #[test]
    fn a_marker_not_applied_leaves_the_position_and_a_clear_at_the_marker_applies() {
        let mut row = fold(&[members(1, 1, EntryKind::ConversationCreated, &[ME, BOB])]);
        // A stale marker (below the current one) moves nothing.
        apply(&mut row, &marker(2, 9, 1, 0), ME);
        assert_eq!((row.read_through, row.counted_through), (1, 1));
        // A clear at the current marker carries a fresh count to its
        // position: applied, and the row covers up to it.
        let clear = Entry {
            target: timeline_store::Target {
                conv_seq: 1,
                ..Default::default()
            },
            ..Entry {
                kind: EntryKind::ClearHistory,
                ..marker(3, 9, 1, 4)
            }
        };
        apply(&mut row, &clear, ME);
        assert_eq!(
            (
                row.read_through,
                row.unread,
                row.counted_through,
                row.cleared_through
            ),
            (1, 4, 9, 1)
        );
    }
}
