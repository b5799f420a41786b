//! Who gets a copy of an event: the write- and read-fanout rules in one
//! function.
//!
//! - **Write fanout** (small groups, direct conversations): every member's
//!   inbox gets a copy of every event. A membership event reaches the
//!   members before and after it, so the removed learn of their removal.
//! - **Read fanout** (groups past the large-group threshold): a message is
//!   written once, to the conversation timeline; members read it there
//!   through the large-group index. Membership events reach only the members
//!   they concern, and the index changes with them. The switch from write to
//!   read fanout reaches every member: its `conv_seq` is where their devices
//!   start reading the conversation timeline, so nothing is seen twice or
//!   missed across it.

use timeline_store::{Conversation, LargeGroupIndexChange};

/// What happened to the conversation.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    Message,
    Created,
    /// Members that joined (none of them members before).
    Added(&'a [u64]),
    /// Members that left (all of them members before).
    Removed(&'a [u64]),
}

/// The inbox copies and large-group index changes one event makes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fanout {
    /// Users whose inbox gets a copy, ascending.
    pub recipients: Vec<u64>,
    pub index: Vec<LargeGroupIndexChange>,
}

/// The fanout of `change`, given the conversation's record before the
/// event and after it (the same record for messages and creations).
pub fn fanout(change: Change<'_>, before: &Conversation, after: &Conversation) -> Fanout {
    let switching = after.read_fanout && !before.read_fanout;
    match change {
        Change::Message if after.read_fanout => Fanout::default(),
        Change::Message => inbox_only(&after.members),
        Change::Created if after.read_fanout => Fanout {
            recipients: after.members.clone(),
            index: index(&after.members, after.conversation_id, true),
        },
        Change::Created => inbox_only(&after.members),
        Change::Added(_) if !after.read_fanout => inbox_only(&after.members),
        Change::Removed(_) if !after.read_fanout => inbox_only(&before.members),
        Change::Added(_) if switching => Fanout {
            recipients: after.members.clone(),
            index: index(&after.members, after.conversation_id, true),
        },
        // Only when the threshold was lowered between restarts: a group
        // that shrinks can still be past the new one. Those who stay are
        // indexed, or they would lose the group.
        Change::Removed(left) if switching => {
            let mut index = index(&after.members, after.conversation_id, true);
            index.extend(self::index(left, after.conversation_id, false));
            Fanout {
                recipients: before.members.clone(),
                index,
            }
        }
        Change::Added(joined) => Fanout {
            recipients: joined.to_vec(),
            index: index(joined, after.conversation_id, true),
        },
        Change::Removed(left) => Fanout {
            recipients: left.to_vec(),
            index: index(left, after.conversation_id, false),
        },
    }
}

fn inbox_only(members: &[u64]) -> Fanout {
    Fanout {
        recipients: members.to_vec(),
        index: Vec::new(),
    }
}

fn index(users: &[u64], conversation_id: u64, member: bool) -> Vec<LargeGroupIndexChange> {
    users
        .iter()
        .map(|&user_id| LargeGroupIndexChange {
            user_id,
            conversation_id,
            member,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(members: &[u64], read_fanout: bool) -> Conversation {
        crate::testkit::record(9, members, read_fanout)
    }

    /// `(user, member)` pairs of the index changes.
    fn joined(f: &Fanout) -> Vec<(u64, bool)> {
        f.index.iter().map(|c| (c.user_id, c.member)).collect()
    }

    #[test]
    fn who_gets_a_copy() {
        let small = group(&[1, 2, 3], false);
        let small_plus_4 = group(&[1, 2, 3, 4], false);
        let small_minus_3 = group(&[1, 2], false);
        let large = group(&[1, 2, 3], true);
        let large_plus_4 = group(&[1, 2, 3, 4], true);
        let large_minus_3 = group(&[1, 2], true);
        type Row<'a> = (
            &'a str,
            Change<'a>,
            &'a Conversation,
            &'a Conversation,
            &'a [u64],
            &'a [(u64, bool)],
        );
        let table: &[Row] = &[
            (
                "message, small",
                Change::Message,
                &small,
                &small,
                &[1, 2, 3],
                &[],
            ),
            (
                "message, large: none",
                Change::Message,
                &large,
                &large,
                &[],
                &[],
            ),
            (
                "created small",
                Change::Created,
                &small,
                &small,
                &[1, 2, 3],
                &[],
            ),
            (
                "created large: all, indexed",
                Change::Created,
                &large,
                &large,
                &[1, 2, 3],
                &[(1, true), (2, true), (3, true)],
            ),
            (
                "added, small: all after",
                Change::Added(&[4]),
                &small,
                &small_plus_4,
                &[1, 2, 3, 4],
                &[],
            ),
            (
                "removed, small: all before",
                Change::Removed(&[3]),
                &small,
                &small_minus_3,
                &[1, 2, 3],
                &[],
            ),
            (
                "added, switching to read fanout: all after, indexed",
                Change::Added(&[4]),
                &small,
                &large_plus_4,
                &[1, 2, 3, 4],
                &[(1, true), (2, true), (3, true), (4, true)],
            ),
            (
                "added, large: the joined only",
                Change::Added(&[4]),
                &large,
                &large_plus_4,
                &[4],
                &[(4, true)],
            ),
            (
                "removed, large: the left only",
                Change::Removed(&[3]),
                &large,
                &large_minus_3,
                &[3],
                &[(3, false)],
            ),
            (
                "removed, switching (threshold lowered): all before, the rest indexed",
                Change::Removed(&[3]),
                &small,
                &large_minus_3,
                &[1, 2, 3],
                &[(1, true), (2, true), (3, false)],
            ),
        ];
        for (name, change, before, after, recipients, index) in table {
            let got = fanout(*change, before, after);
            assert_eq!(got.recipients, *recipients, "{name}: recipients");
            assert_eq!(joined(&got), *index, "{name}: index changes");
        }
    }
}
