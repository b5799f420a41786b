//! The rules of changing a sent message, pure: who may, until when, and
//! what an edit or a removal stores in place of the message and its edits.

use crate::auth::Principal;
use crate::error::{Result, SyncdError};
use crate::limits::{MAX_EDIT_HISTORY_BYTES, MAX_EDITS_PER_MESSAGE};
use std::time::Duration;
use timeline_store::{
    Entry, EntryKind, InboxWrite, MessageState, PreviousVersion, Removal, RemovalKind, Rewrite,
};

/// How long after a message was sent its sender may still change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Default 2 minutes (as WeChat). Services have no window.
    pub recall: Duration,
    /// Default 48 hours.
    pub edit: Duration,
}

pub const DEFAULT_RECALL_WINDOW: Duration = Duration::from_secs(120);
pub const DEFAULT_EDIT_WINDOW: Duration = Duration::from_secs(48 * 3600);

impl Default for Windows {
    fn default() -> Self {
        Self {
            recall: DEFAULT_RECALL_WINDOW,
            edit: DEFAULT_EDIT_WINDOW,
        }
    }
}

/// What a caller asks to do to a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Edit,
    Recall,
    /// For everyone (moderation): services only.
    Delete,
}

impl Operation {
    pub fn kind(self) -> EntryKind {
        match self {
            Self::Edit => EntryKind::Edit,
            Self::Recall => EntryKind::Recall,
            Self::Delete => EntryKind::Delete,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Edit => "edit",
            Self::Recall => "recall",
            Self::Delete => "delete",
        }
    }
}

/// The stored entry at the target's `conv_seq` is a message the caller
/// named (`msg_id` 0: not checked) and may still change. `actor` is the
/// caller's user (0 for a service).
pub fn check(
    operation: Operation,
    principal: &Principal,
    target: &Entry,
    msg_id: u64,
    windows: &Windows,
    now_ms: i64,
) -> Result<()> {
    let (conversation_id, conv_seq) = (target.conversation_id, target.conv_seq);
    if msg_id != 0 && target.msg_id != msg_id {
        return Err(SyncdError::InvalidArgument(format!(
            "conv_seq {conv_seq} of conversation {conversation_id} is message {}, not {msg_id}: \
             is {msg_id} in another conversation?",
            target.msg_id
        )));
    }
    if target.kind != EntryKind::Message {
        return Err(SyncdError::InvalidArgument(format!(
            "conv_seq {conv_seq} of conversation {conversation_id} is not a message ({:?}); \
             only messages can be changed",
            target.kind
        )));
    }
    if let Some(removal) = target.state.removed {
        let how = match removal.kind {
            RemovalKind::Recalled => "recalled",
            RemovalKind::Deleted => "deleted",
        };
        return Err(SyncdError::FailedPrecondition(format!(
            "message {} (conv_seq {conv_seq} of conversation {conversation_id}) was already {how}",
            target.msg_id
        )));
    }
    if operation == Operation::Edit && target.state.edits.len() >= MAX_EDITS_PER_MESSAGE {
        return Err(SyncdError::FailedPrecondition(format!(
            "message {} was edited {} times, the most a message can be",
            target.msg_id, MAX_EDITS_PER_MESSAGE
        )));
    }
    let user_id = match principal {
        // Services act for the backend: any message, no window.
        Principal::Service { .. } => return Ok(()),
        Principal::Device { user_id, .. } => *user_id,
    };
    if operation == Operation::Delete {
        return Err(SyncdError::PermissionDenied(
            "deleting a message for everyone needs a service token; recall your own message, \
             or delete it for yourself (for_me)"
                .into(),
        ));
    }
    if target.sender_id != user_id {
        return Err(SyncdError::PermissionDenied(format!(
            "user {user_id} cannot {} message {}: only its sender can",
            operation.verb(),
            target.msg_id
        )));
    }
    let window = match operation {
        Operation::Recall => windows.recall,
        _ => windows.edit,
    };
    let age_ms = now_ms.saturating_sub(target.sent_at_ms).max(0) as u128;
    if age_ms > window.as_millis() {
        return Err(SyncdError::FailedPrecondition(format!(
            "the {} window of {}s has passed: message {} was sent {}s ago",
            operation.verb(),
            window.as_secs(),
            target.msg_id,
            age_ms / 1000
        )));
    }
    Ok(())
}

/// How an edit or removal event rewrites what it acts on, once the event
/// has its own `conv_seq` and time.
#[derive(Clone, Debug)]
pub enum Amendment {
    /// The target's conversation entry gets the new text (inbox copies keep
    /// the text they were sent with; devices apply the edit event).
    Edit { target: Entry },
    /// The target and every one of its edits lose their text, in the
    /// conversation timeline and in every inbox copy.
    Remove {
        kind: RemovalKind,
        by: u64,
        target: Entry,
        target_copies: Vec<InboxWrite>,
        edits: Vec<(Entry, Vec<InboxWrite>)>,
    },
}

impl Amendment {
    /// The stored entries that replace the old ones; `conv_seq` and
    /// `at_ms` are the event's own, `text` an edit's new text.
    pub fn rewrites(self, conv_seq: u64, at_ms: i64, text: &str) -> Vec<Rewrite> {
        match self {
            Self::Edit { target } => vec![Rewrite {
                entry: edited(target, conv_seq, at_ms, text),
                inbox: Vec::new(),
            }],
            Self::Remove {
                kind,
                by,
                target,
                target_copies,
                edits,
            } => {
                let removal = Removal {
                    kind,
                    by,
                    at_ms,
                    conv_seq,
                };
                let mut rewrites = Vec::with_capacity(1 + edits.len());
                rewrites.push(Rewrite {
                    entry: tombstone(target, removal),
                    inbox: target_copies,
                });
                rewrites.extend(edits.into_iter().map(|(edit, copies)| Rewrite {
                    entry: Entry {
                        text: String::new(),
                        ..edit
                    },
                    inbox: copies,
                }));
                rewrites
            }
        }
    }

    /// (stored copies rewritten, bytes they take from the commit budget).
    pub fn cost(&self) -> (usize, usize) {
        match self {
            Self::Edit { target } => (0, target.text.len() * 2 + history_bytes(&target.state)),
            Self::Remove {
                target_copies,
                edits,
                ..
            } => {
                let copies =
                    target_copies.len() + edits.iter().map(|(_, c)| c.len()).sum::<usize>();
                let entries = 1 + edits.len();
                (
                    copies,
                    (copies + entries) * crate::limits::COMMIT_BYTES_PER_COPY,
                )
            }
        }
    }
}

fn history_bytes(state: &MessageState) -> usize {
    state.previous.iter().map(|p| p.text.len()).sum()
}

/// The message after an edit at `version`: the new text, the replaced one
/// kept as history (the oldest dropped past [`MAX_EDIT_HISTORY_BYTES`]).
pub fn edited(mut message: Entry, version: u64, at_ms: i64, text: &str) -> Entry {
    let replaced = PreviousVersion {
        version: message.state.version,
        text: std::mem::replace(&mut message.text, text.to_owned()),
        at_ms: if message.state.version == 0 {
            message.sent_at_ms
        } else {
            message.state.edited_at_ms
        },
    };
    let state = &mut message.state;
    state.previous.push(replaced);
    while history_bytes(state) > MAX_EDIT_HISTORY_BYTES {
        state.previous.remove(0);
    }
    state.version = version;
    state.edited_at_ms = at_ms;
    state.edits.push(version);
    message
}

/// The message once withdrawn: no text, no history; who, when and which
/// event did it, its edits' positions and its metadata stay.
pub fn tombstone(message: Entry, removal: Removal) -> Entry {
    Entry {
        text: String::new(),
        state: MessageState {
            previous: Vec::new(),
            removed: Some(removal),
            ..message.state
        },
        ..message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(sender_id: u64, sent_at_ms: i64) -> Entry {
        Entry {
            conv_seq: 5,
            msg_id: 55,
            sender_id,
            text: "hello".into(),
            sent_at_ms,
            ..Entry::new(EntryKind::Message, 9)
        }
    }

    fn device(user_id: u64) -> Principal {
        Principal::Device {
            user_id,
            device_id: "phone".into(),
        }
    }

    fn service() -> Principal {
        Principal::Service {
            name: "moderation".into(),
        }
    }

    #[test]
    fn only_the_sender_within_the_window_and_services_always() {
        let windows = Windows::default();
        let sent = 1_000_000;
        let m = message(1, sent);
        let in_window = sent + 119_000;
        let late = sent + 121_000;
        assert!(check(Operation::Recall, &device(1), &m, 0, &windows, in_window).is_ok());
        assert!(matches!(
            check(Operation::Recall, &device(1), &m, 0, &windows, late),
            Err(SyncdError::FailedPrecondition(_))
        ));
        assert!(matches!(
            check(Operation::Recall, &device(2), &m, 0, &windows, in_window),
            Err(SyncdError::PermissionDenied(_))
        ));
        assert!(check(Operation::Recall, &service(), &m, 0, &windows, late * 100).is_ok());
        assert!(check(Operation::Edit, &device(1), &m, 0, &windows, late).is_ok());
        assert!(matches!(
            check(
                Operation::Edit,
                &device(1),
                &m,
                0,
                &windows,
                sent + 49 * 3600 * 1000
            ),
            Err(SyncdError::FailedPrecondition(_))
        ));
        assert!(matches!(
            check(Operation::Delete, &device(1), &m, 0, &windows, in_window),
            Err(SyncdError::PermissionDenied(_))
        ));
        assert!(check(Operation::Delete, &service(), &m, 0, &windows, late).is_ok());
    }

    #[test]
    fn wrong_id_other_kinds_and_removed_messages_are_refused() {
        let windows = Windows::default();
        let m = message(1, 0);
        assert!(matches!(
            check(Operation::Recall, &service(), &m, 56, &windows, 0),
            Err(SyncdError::InvalidArgument(_))
        ));
        let created = Entry {
            kind: EntryKind::MembersAdded,
            ..m.clone()
        };
        assert!(matches!(
            check(Operation::Edit, &service(), &created, 0, &windows, 0),
            Err(SyncdError::InvalidArgument(_))
        ));
        let removal = Removal {
            kind: RemovalKind::Recalled,
            by: 1,
            at_ms: 1,
            conv_seq: 6,
        };
        let gone = tombstone(m, removal);
        for op in [Operation::Edit, Operation::Recall, Operation::Delete] {
            assert!(matches!(
                check(op, &service(), &gone, 0, &windows, 0),
                Err(SyncdError::FailedPrecondition(_))
            ));
        }
    }

    #[test]
    fn edits_keep_bounded_history_and_a_removal_keeps_no_text() {
        let mut m = message(1, 10);
        for version in 6..6 + MAX_EDITS_PER_MESSAGE as u64 {
            m = edited(m, version, version as i64, &"x".repeat(10 * 1024));
        }
        assert_eq!(m.state.version, 5 + MAX_EDITS_PER_MESSAGE as u64);
        assert_eq!(m.state.edits.len(), MAX_EDITS_PER_MESSAGE);
        assert!(history_bytes(&m.state) <= MAX_EDIT_HISTORY_BYTES);
        assert!(matches!(
            check(Operation::Edit, &service(), &m, 0, &Windows::default(), 0),
            Err(SyncdError::FailedPrecondition(_))
        ));
        let first = edited(message(1, 10), 6, 20, "hi");
        assert_eq!(first.text, "hi");
        assert_eq!(
            first.state.previous,
            vec![PreviousVersion {
                version: 0,
                text: "hello".into(),
                at_ms: 10
            }]
        );
        let edit_event = Entry {
            kind: EntryKind::Edit,
            conv_seq: 6,
            text: "hi".into(),
            ..Entry::new(EntryKind::Edit, 9)
        };
        let rewrites = Amendment::Remove {
            kind: RemovalKind::Recalled,
            by: 1,
            target: first,
            target_copies: vec![InboxWrite { user_id: 1, seq: 3 }],
            edits: vec![(edit_event, vec![InboxWrite { user_id: 1, seq: 4 }])],
        }
        .rewrites(7, 30, "");
        assert_eq!(rewrites.len(), 2);
        assert!(rewrites.iter().all(|r| r.entry.text.is_empty()));
        assert!(rewrites[0].entry.state.previous.is_empty());
        assert_eq!(rewrites[0].entry.state.removed.unwrap().conv_seq, 7);
    }
}
