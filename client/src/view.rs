//! What a device shows of its conversations, rebuilt from the entries it
//! syncs (inbox pages, push notices, or History pages of large groups), in
//! any mix and with repeats: the rules every device applies.
//!
//! - A message is shown with the text it carries, unless the view already
//!   holds a newer version of it (an edit applied before a repeat of the
//!   original arrived) or knows it was withdrawn.
//! - An edit replaces the text only if its version (its `conv_seq`, the
//!   server's order) is above the one shown: edits racing end the same on
//!   every device, whatever order they arrive in.
//! - A recall or delete withdraws the message for good: its text is
//!   dropped and nothing brings it back.
//! - Delete for me hides one message; clear history hides everything up
//!   to a point (this user's devices only).

use crate::pb;
use std::collections::{BTreeMap, BTreeSet};

/// One message as a device shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShownMessage {
    pub sender_id: u64,
    pub text: String,
    /// 0: as sent; else the `conv_seq` of the edit shown.
    pub version: u64,
    /// Recalled or deleted: `text` is empty.
    pub removed: bool,
}

/// One conversation as a device shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationView {
    /// By `conv_seq`, hidden ones left out of [`visible`](Self::visible).
    pub messages: BTreeMap<u64, ShownMessage>,
    pub hidden: BTreeSet<u64>,
    pub cleared_through: u64,
    /// Withdrawals seen before their message (a device may sync the recall
    /// of a message it never had, or get History before an old inbox copy).
    removed: BTreeSet<u64>,
    /// Edits seen before their message: version and text.
    pending_edits: BTreeMap<u64, (u64, String)>,
}

impl ConversationView {
    /// Applies one entry of this conversation.
    pub fn apply(&mut self, entry: &pb::Entry) {
        let target = entry.target.as_ref().map_or(0, |t| t.conv_seq);
        match pb::EntryKind::try_from(entry.kind) {
            Ok(pb::EntryKind::Message) => {
                let removed = entry.removed.is_some() || self.removed.contains(&entry.conv_seq);
                let mut shown = ShownMessage {
                    sender_id: entry.sender_id,
                    text: if removed {
                        String::new()
                    } else {
                        entry.text.clone()
                    },
                    version: entry.version,
                    removed,
                };
                if let Some((version, text)) = self.pending_edits.remove(&entry.conv_seq)
                    && version > shown.version
                    && !removed
                {
                    (shown.version, shown.text) = (version, text);
                }
                match self.messages.get(&entry.conv_seq) {
                    Some(held) if held.removed || held.version > shown.version => {}
                    _ => {
                        self.messages.insert(entry.conv_seq, shown);
                    }
                }
            }
            Ok(pb::EntryKind::Edit) => match self.messages.get_mut(&target) {
                Some(held) if !held.removed && entry.conv_seq > held.version => {
                    held.version = entry.conv_seq;
                    held.text = entry.text.clone();
                }
                Some(_) => {}
                None => {
                    let pending = self.pending_edits.entry(target).or_default();
                    if entry.conv_seq > pending.0 {
                        *pending = (entry.conv_seq, entry.text.clone());
                    }
                }
            },
            Ok(pb::EntryKind::Recall | pb::EntryKind::Delete) => {
                self.removed.insert(target);
                self.pending_edits.remove(&target);
                if let Some(held) = self.messages.get_mut(&target) {
                    held.removed = true;
                    held.text.clear();
                }
            }
            Ok(pb::EntryKind::DeleteForMe) => {
                self.hidden.insert(target);
            }
            Ok(pb::EntryKind::ClearHistory) => {
                self.cleared_through = self.cleared_through.max(target);
            }
            _ => {}
        }
    }

    /// The messages shown, by `conv_seq` (hidden and cleared ones left out).
    pub fn visible(&self) -> BTreeMap<u64, ShownMessage> {
        self.messages
            .iter()
            .filter(|(seq, _)| **seq > self.cleared_through && !self.hidden.contains(seq))
            .map(|(seq, m)| (*seq, m.clone()))
            .collect()
    }
}

/// Every conversation of a device.
#[derive(Clone, Debug, Default)]
pub struct DeviceView {
    pub conversations: BTreeMap<u64, ConversationView>,
}

impl DeviceView {
    pub fn apply(&mut self, entry: &pb::Entry) {
        self.conversations
            .entry(entry.conversation_id)
            .or_default()
            .apply(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: pb::EntryKind, conv_seq: u64, target: u64, text: &str) -> pb::Entry {
        pb::Entry {
            kind: kind as i32,
            conversation_id: 1,
            conv_seq,
            sender_id: 7,
            text: text.into(),
            target: (target > 0).then(|| pb::MessageTarget {
                conv_seq: target,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn edits_apply_by_version_whatever_the_order_and_a_recall_is_final() {
        let message = entry(pb::EntryKind::Message, 1, 0, "v0");
        let edit2 = entry(pb::EntryKind::Edit, 2, 1, "v2");
        let edit3 = entry(pb::EntryKind::Edit, 3, 1, "v3");
        let recall = entry(pb::EntryKind::Recall, 4, 1, "");
        let orders = [
            vec![&message, &edit2, &edit3],
            vec![&message, &edit3, &edit2],
            vec![&edit3, &message, &edit2, &message],
        ];
        for order in orders {
            let mut view = ConversationView::default();
            for e in order {
                view.apply(e);
            }
            assert_eq!(view.messages[&1].text, "v3");
            assert_eq!(view.messages[&1].version, 3);
        }
        for order in [
            vec![&message, &edit2, &recall, &edit3, &message],
            vec![&recall, &message, &edit3],
        ] {
            let mut view = ConversationView::default();
            for e in order {
                view.apply(e);
            }
            let shown = &view.messages[&1];
            assert!(shown.removed && shown.text.is_empty(), "{shown:?}");
        }
    }

    #[test]
    fn hiding_is_per_message_and_through_a_point() {
        let mut view = ConversationView::default();
        for seq in 1..=5 {
            view.apply(&entry(pb::EntryKind::Message, seq, 0, "m"));
        }
        view.apply(&entry(pb::EntryKind::DeleteForMe, 6, 4, ""));
        view.apply(&entry(pb::EntryKind::ClearHistory, 7, 2, ""));
        assert_eq!(view.visible().keys().copied().collect::<Vec<_>>(), [3, 5]);
    }
}
