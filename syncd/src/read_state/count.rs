//! Counting what a user has not read in a fixed stretch of a conversation.

use crate::error::Result;
use timeline_store::{ConversationRange, Entry, EntryKind, MessagePreview, TimelineStore};

/// Entries one count reads per store call.
const COUNT_PAGE: usize = 128;

/// Entry bytes one count's store call reads at most (plus the entry that
/// crosses it): a page of 128 whole entries could hold 128 texts and edit
/// histories at their limits, about 17 MiB, for a count that needs none
/// of their text.
pub const COUNT_PAGE_BYTES: usize = 1024 * 1024;

/// Most entries one count reads: a count over more stops there and is
/// reported as [`Count::saturated`]. A user far behind in a busy large
/// group (or marking "read through" a message far back) costs at most this
/// many entry reads per call.
pub const MAX_COUNTED_ENTRIES: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Messages from others in the range.
    pub count: u64,
    /// Of those, the ones that mention the user (by name or everyone).
    pub mentions: u64,
    /// Of those, the ones that mention everyone and not the user by name
    /// (in a large group the named ones reach the user's inbox instead).
    pub mentions_of_everyone_only: u64,
    /// Recalls and deletes in the range of messages from others after the
    /// count's base: each takes one back from `count` (the message was
    /// counted where it was sent, in this range or an earlier one).
    pub removed: u64,
    /// Of those, the ones that mentioned the user.
    pub removed_mentions: u64,
    /// Of those, the ones that mentioned everyone and not the user by name.
    pub removed_everyone_only: u64,
    /// The newest message of the range (from anyone).
    pub last_message: Option<MessagePreview>,
    /// The range held more than [`MAX_COUNTED_ENTRIES`] entries: `count`
    /// covers `(after, reached]` only, a lower bound.
    pub saturated: bool,
    /// How far the count got (`through` when not saturated).
    pub reached: u64,
}

impl Count {
    /// What stays unread: the messages counted less the ones taken back.
    pub fn unread(&self) -> u64 {
        self.count.saturating_sub(self.removed)
    }

    pub fn unread_mentions(&self) -> u64 {
        self.mentions.saturating_sub(self.removed_mentions)
    }

    pub fn unread_everyone_only(&self) -> u64 {
        self.mentions_of_everyone_only
            .saturating_sub(self.removed_everyone_only)
    }

    /// This count followed by `later` (a count of the next range with the
    /// same base).
    pub fn extend(&mut self, later: Count) {
        self.count += later.count;
        self.mentions += later.mentions;
        self.mentions_of_everyone_only += later.mentions_of_everyone_only;
        self.removed += later.removed;
        self.removed_mentions += later.removed_mentions;
        self.removed_everyone_only += later.removed_everyone_only;
        self.saturated = later.saturated;
        self.reached = later.reached;
        if later.last_message.is_some() {
            self.last_message = later.last_message;
        }
    }
}

/// The preview of a message entry (as it stands: edited text, or none
/// once recalled).
pub fn preview(entry: &Entry) -> MessagePreview {
    MessagePreview {
        conv_seq: entry.conv_seq,
        msg_id: entry.msg_id,
        sender_id: entry.sender_id,
        text: MessagePreview::preview_text(&entry.text),
        sent_at_ms: entry.sent_at_ms,
        removed: entry.is_removed(),
        edited: entry.state.version > 0,
    }
}

/// Messages of senders other than `user_id` with `after < conv_seq <=
/// through` (membership events do not count), and the recalls and
/// deletes in that range of such messages above `base` (`base <= after`:
/// where the user's count starts, so a message counted in an earlier
/// range and withdrawn in this one is taken back). Whether a message was
/// withdrawn later does not change the count: the same range counts the
/// same however late it is read.
pub async fn messages_from_others(
    store: &dyn TimelineStore,
    conversation_id: u64,
    user_id: u64,
    base: u64,
    after: u64,
    through: u64,
) -> Result<Count> {
    let mut count = Count::default();
    let mut from = after;
    let mut read = 0usize;
    while from < through {
        if read >= MAX_COUNTED_ENTRIES {
            count.saturated = true;
            count.reached = from;
            return Ok(count);
        }
        let range = ConversationRange::oldest_first(from, through.saturating_add(1), COUNT_PAGE)
            .with_max_bytes(COUNT_PAGE_BYTES);
        let entries = store.read_conversation(conversation_id, range).await?;
        let Some(last) = entries.last() else { break };
        from = last.conv_seq;
        read += entries.len();
        // A page the budget cut holds more than the budget (its last entry
        // crossed it): the range goes on past it.
        let cut = entries.iter().map(Entry::wire_bytes).sum::<usize>() > COUNT_PAGE_BYTES;
        for entry in entries.iter().filter(|e| e.kind.removes_target()) {
            let target = &entry.target;
            if target.sender_id != user_id && target.conv_seq > base {
                count.removed += 1;
                let named = target.mentions.contains(&user_id);
                if named || target.mention_all {
                    count.removed_mentions += 1;
                    if !named {
                        count.removed_everyone_only += 1;
                    }
                }
            }
        }
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Message) {
            if entry.sender_id != user_id {
                count.count += 1;
                if entry.mentions_user(user_id) {
                    count.mentions += 1;
                    if !entry.mentions.contains(&user_id) {
                        count.mentions_of_everyone_only += 1;
                    }
                }
            }
            count.last_message = Some(preview(entry));
        }
        if entries.len() < COUNT_PAGE && !cut {
            break;
        }
    }
    count.reached = through.max(after);
    Ok(count)
}

/// The newest message at or below `through`, looking back at most
/// [`COUNT_PAGE`] entries (membership events between are few), in reads
/// of [`COUNT_PAGE_BYTES`] each (and the entry that crosses it): a
/// conversation whose newest entries are heavy non-messages (large edits,
/// long member lists) costs up to 128 entries read in several calls, one
/// at a time in memory.
pub async fn last_message(
    store: &dyn TimelineStore,
    conversation_id: u64,
    through: u64,
) -> Result<Option<MessagePreview>> {
    let mut before = through.saturating_add(1);
    let mut looked = 0;
    while looked < COUNT_PAGE {
        let want = COUNT_PAGE - looked;
        let range =
            ConversationRange::newest_first(0, before, want).with_max_bytes(COUNT_PAGE_BYTES);
        let entries = store.read_conversation(conversation_id, range).await?;
        if let Some(message) = entries.iter().find(|e| e.kind == EntryKind::Message) {
            return Ok(Some(preview(message)));
        }
        match entries.last() {
            // Cut by the budget (a full read would have `want`): go on
            // before its oldest entry.
            Some(oldest) if entries.len() < want => {
                let cut = entries.iter().map(Entry::wire_bytes).sum::<usize>() > COUNT_PAGE_BYTES;
                if !cut {
                    break;
                }
                before = oldest.conv_seq;
            }
            Some(oldest) => before = oldest.conv_seq,
            None => break,
        }
        looked += entries.len();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline_store::EventLog;
    use timeline_store::testsuite::MemoryStore;
    use timeline_store::testsuite::conformance::fanout;

    /// A timeline of `n` messages of `text_bytes` each, from user 7.
    async fn timeline(n: u64, text_bytes: usize) -> MemoryStore {
        let store = MemoryStore::new();
        for conv_seq in 1..=n {
            let entry = Entry {
                conv_seq,
                msg_id: conv_seq,
                sender_id: 7,
                text: format!("{conv_seq}:{}", "x".repeat(text_bytes)),
                ..Entry::new(EntryKind::Message, 1)
            };
            store.commit_event(fanout(entry, &[])).await.unwrap();
        }
        store
    }

    #[tokio::test]
    async fn a_count_over_more_than_a_page_of_bytes_counts_every_message() {
        // 40 texts of 60 KB: about 2.4 MB, more than two pages' budget,
        // each page cut well before its 128 entries.
        let store = timeline(40, 60_000).await;
        let count = messages_from_others(&store, 1, 2, 0, 0, 40).await.unwrap();
        assert_eq!((count.count, count.reached), (40, 40));
        assert!(!count.saturated);
        let last = count.last_message.expect("a newest message");
        assert_eq!(last.conv_seq, 40);
        let from_the_middle = messages_from_others(&store, 1, 2, 0, 25, 40).await.unwrap();
        assert_eq!(from_the_middle.count, 15);
    }

    #[tokio::test]
    async fn the_newest_message_is_found_past_reads_cut_by_bytes() {
        // Ten messages, then 30 edits of 60 KB (not messages): about
        // 1.8 MB to look back through, more than one read's budget.
        let store = timeline(10, 10).await;
        for conv_seq in 11..=40 {
            let edit = Entry {
                conv_seq,
                msg_id: conv_seq,
                sender_id: 7,
                text: "e".repeat(60_000),
                ..Entry::new(EntryKind::Edit, 1)
            };
            store.commit_event(fanout(edit, &[])).await.unwrap();
        }
        let last = last_message(&store, 1, 40).await.unwrap();
        assert_eq!(last.map(|p| p.conv_seq), Some(10));
        assert_eq!(
            last_message(&store, 1, 5)
                .await
                .unwrap()
                .map(|p| p.conv_seq),
            Some(5)
        );
    }
}
