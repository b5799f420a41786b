//! Reads of the timelines on the embedded store: inbox pages (one range
//! read, stopped by its byte budget), conversation pages in either
//! direction, the member table of large groups, and the scan of every
//! conversation.

use super::*;

/// Entries an inbox read makes room for at once: a page's worth (the reply
/// limit is 1,000), so a page is not copied as its vector grows, while a
/// read with a huge limit grows as entries arrive.
const INBOX_READ_CAPACITY: usize = 1_024;

fn decode_entries(
    iter: impl Iterator<Item = fjall::Guard>,
    range: ConversationRange,
) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut budget = range.budget();
    for guard in iter.take(range.limit) {
        let value = guard.value().map_err(io)?;
        let entry = codec::decode_entry(value.as_ref())?;
        let past_budget = budget.spend(&entry);
        entries.push(entry);
        if past_budget {
            break;
        }
    }
    Ok(entries)
}

#[async_trait]
impl ConversationScan for EmbeddedStore {
    async fn conversation_ids(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let Some(start) = after.map_or(Some(0), |a| a.checked_add(1)) else {
            return Ok(Vec::new());
        };
        self.read(move |ks| {
            let mut ids = Vec::new();
            for guard in ks.conversations.range(start.to_be_bytes()..).take(limit) {
                let key = guard.key().map_err(io)?;
                let id: [u8; 8] = key
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("conversation key length"))?;
                ids.push(u64::from_be_bytes(id));
            }
            Ok(ids)
        })
        .await
    }
}

#[async_trait]
impl crate::ConversationMembers for EmbeddedStore {
    async fn members_among(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<u64>> {
        let users = users.to_vec();
        self.read(move |ks| {
            let mut found = Vec::new();
            for user_id in users {
                if ks
                    .members
                    .contains_key(key2(conversation_id, user_id))
                    .map_err(io)?
                {
                    found.push(user_id);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn list_members(
        &self,
        conversation_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.read(move |ks| {
            let keys = key2(conversation_id, start)..=key2(conversation_id, u64::MAX);
            let mut members = Vec::new();
            for guard in ks.members.range(keys).take(limit) {
                let key = guard.key().map_err(io)?;
                let user: [u8; 8] = key[8..]
                    .try_into()
                    .map_err(|_| corrupt("member key length"))?;
                members.push(u64::from_be_bytes(user));
            }
            Ok(members)
        })
        .await
    }
}

#[async_trait]
impl ConversationReads for EmbeddedStore {
    async fn conversation(&self, conversation_id: u64) -> Result<Option<Conversation>> {
        self.read(move |ks| {
            ks.conversations
                .get(conversation_id.to_be_bytes())
                .map_err(io)?
                .map(|v| codec::decode_conversation(v.as_ref()))
                .transpose()
        })
        .await
    }

    async fn read_conversation(&self, id: u64, range: ConversationRange) -> Result<Vec<Entry>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |ks| {
            let keys = key2(id, range.after + 1)..key2(id, range.before);
            let iter = ks.conv.range(keys);
            match range.order {
                Order::NewestFirst => decode_entries(iter.rev(), range),
                Order::OldestFirst => decode_entries(iter, range),
            }
        })
        .await
    }

    async fn inbox_copies(&self, conversation_id: u64, conv_seq: u64) -> Result<Vec<InboxWrite>> {
        self.read(move |ks| {
            ks.copies
                .get(key2(conversation_id, conv_seq))
                .map_err(io)?
                .map_or(Ok(Vec::new()), |v| codec::decode_inbox_copies(v.as_ref()))
        })
        .await
    }

    async fn large_group_memberships(&self, user_id: u64) -> Result<Vec<LargeGroupMembership>> {
        self.read(move |ks| {
            let mut groups = Vec::new();
            for guard in ks.large_groups.prefix(user_id.to_be_bytes()) {
                let (key, value) = guard.into_inner().map_err(io)?;
                let id: [u8; 8] = key[8..]
                    .try_into()
                    .map_err(|_| corrupt("large group key length"))?;
                groups.push(codec::decode_membership(
                    u64::from_be_bytes(id),
                    value.as_ref(),
                )?);
            }
            Ok(groups)
        })
        .await
    }
}

#[async_trait]
impl InboxReads for EmbeddedStore {
    async fn read_inbox(&self, user_id: u64, range: InboxRange) -> Result<Vec<Entry>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |ks| {
            let keys = key2(user_id, range.after + 1)..=key2(user_id, range.through);
            let mut entries = Vec::with_capacity(range.limit.min(INBOX_READ_CAPACITY));
            let mut budget = range.budget();
            for guard in ks.inbox.range(keys).take(range.limit) {
                let value = guard.value().map_err(io)?;
                let (mut entry, referenced) = codec::decode_inbox_entry(value.as_ref())?;
                if referenced && range.payloads {
                    let conversation_entry = ks
                        .conv
                        .get(key2(entry.conversation_id, entry.conv_seq))
                        .map_err(io)?;
                    codec::fill_payload(&mut entry, conversation_entry.as_deref())?;
                }
                let past_budget = budget.spend(&entry);
                entries.push(entry);
                if past_budget {
                    break;
                }
            }
            Ok(entries)
        })
        .await
    }

    async fn last_inbox_seq(&self, user_id: u64) -> Result<u64> {
        self.read(move |ks| {
            let range = key2(user_id, 0)..=key2(user_id, u64::MAX);
            match ks.inbox.range(range).next_back() {
                Some(guard) => {
                    let key = guard.key().map_err(io)?;
                    let seq: [u8; 8] = key[8..]
                        .try_into()
                        .map_err(|_| corrupt("inbox key length"))?;
                    Ok(u64::from_be_bytes(seq))
                }
                None => Ok(0),
            }
        })
        .await
    }
}
