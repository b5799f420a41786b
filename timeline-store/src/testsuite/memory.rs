//! Every capability over maps in memory, with the semantics the conformance
//! suite checks: the model a randomized test can run thousands of times.

use crate::{
    Checkpoints, Conversation, ConversationMembers, ConversationRange, ConversationReads, Entry,
    EventCommit, EventLog, IdempotencyKey, InboxRange, InboxReads, InboxRetention, InboxTime,
    InboxWrite, LargeGroupMembership, Order, ReadReceipts, ReadStateRow, ReadStateSnapshot,
    ReadStates, ReaderMark, Receipt, Receipts, RecordedRevocation, Result, Revocation, Revocations,
    RevokedBefore,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// A cheap-to-clone handle; clones share one store, so dropping a handle
/// and using a clone is a reopen that keeps everything (nothing is lost at
/// a "restart": use a fresh store to model losing data).
#[derive(Clone, Default)]
pub struct MemoryStore {
    // A std mutex: no call awaits while holding it, and every operation is
    // a few map updates.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    inbox: BTreeMap<(u64, u64), Entry>,
    conv: BTreeMap<(u64, u64), Entry>,
    conversations: HashMap<u64, Conversation>,
    receipts: HashMap<IdempotencyKey, Receipt>,
    checkpoints: HashMap<(u64, String), u64>,
    large_groups: BTreeMap<(u64, u64), LargeGroupMembership>,
    inbox_floors: HashMap<u64, u64>,
    /// `(user_id, device_id)`; `None`: every device of the user.
    revocations: HashMap<(u64, Option<String>), u64>,
    /// `(recorded_at_ms, insertion number)` -> revocation.
    revocation_feed: BTreeMap<(u64, u64), Revocation>,
    read_states: HashMap<u64, (u64, BTreeMap<u64, ReadStateRow>)>,
    readers: BTreeMap<(u64, u64), ReaderMark>,
    copies: HashMap<(u64, u64), Vec<InboxWrite>>,
    /// `(conversation_id, user_id)` of every current member-table row.
    members: BTreeSet<(u64, u64)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere (a failed assertion) must not hide the store.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl EventLog for MemoryStore {
    async fn commit_event(&self, commit: EventCommit) -> Result<()> {
        let mut state = self.state();
        let entry = &commit.entry;
        if entry.kind.in_conversation_timeline() {
            let conv_entry = Entry {
                seq: 0,
                ..entry.clone()
            };
            state
                .conv
                .insert((entry.conversation_id, entry.conv_seq), conv_entry);
        }
        for write in &commit.inbox {
            let copy = Entry {
                seq: write.seq,
                ..entry.clone()
            };
            state.inbox.insert((write.user_id, write.seq), copy);
        }
        if commit.keep_copies {
            state.copies.insert(
                (entry.conversation_id, entry.conv_seq),
                commit.inbox.clone(),
            );
        }
        for rewrite in &commit.rewrites {
            let target = &rewrite.entry;
            if target.kind.in_conversation_timeline() {
                state.conv.insert(
                    (target.conversation_id, target.conv_seq),
                    Entry {
                        seq: 0,
                        ..target.clone()
                    },
                );
            }
            for write in &rewrite.inbox {
                // A trimmed copy stays trimmed.
                if write.seq < state.inbox_floors.get(&write.user_id).copied().unwrap_or(0) {
                    continue;
                }
                let copy = Entry {
                    seq: write.seq,
                    ..target.clone()
                };
                state.inbox.insert((write.user_id, write.seq), copy);
            }
        }
        for change in &commit.large_group_index {
            let key = (change.user_id, change.conversation_id);
            let position = commit.position_of(change.user_id);
            let previous = state.large_groups.get(&key).copied();
            let membership = LargeGroupMembership::changed(previous, change, position);
            state.large_groups.insert(key, membership);
        }
        for change in &commit.members {
            let key = (entry.conversation_id, change.user_id);
            if change.member {
                state.members.insert(key);
            } else {
                state.members.remove(&key);
            }
        }
        for mark in &commit.readers {
            let stored = state
                .readers
                .entry((entry.conversation_id, mark.user_id))
                .or_insert(ReaderMark {
                    user_id: mark.user_id,
                    ..ReaderMark::default()
                });
            *stored = stored.raised(mark);
        }
        if let Some((key, receipt)) = commit.receipt {
            state.receipts.insert(key, receipt);
        }
        if let Some(conversation) = commit.conversation {
            state
                .conversations
                .insert(conversation.conversation_id, conversation);
        }
        Ok(())
    }

    /// Nothing to do: a commit is applied under one lock, whole.
    async fn recover(&self) -> Result<usize> {
        Ok(0)
    }
}

#[async_trait]
impl InboxReads for MemoryStore {
    async fn read_inbox(&self, user_id: u64, range: InboxRange) -> Result<Vec<Entry>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.state();
        let keys = (user_id, range.after + 1)..=(user_id, range.through);
        let mut budget = range.budget();
        let mut entries = Vec::new();
        for (_, entry) in state.inbox.range(keys).take(range.limit) {
            let mut entry = entry.clone();
            if !range.payloads && crate::payload_bytes(&entry) > crate::INBOX_INLINE_PAYLOAD_BYTES {
                // As the other backends store a heavy copy.
                entry.text.clear();
                entry.members.clear();
            }
            let past_budget = budget.spend(&entry);
            entries.push(entry);
            if past_budget {
                break;
            }
        }
        Ok(entries)
    }

    async fn last_inbox_seq(&self, user_id: u64) -> Result<u64> {
        let state = self.state();
        let range = (user_id, 0)..=(user_id, u64::MAX);
        Ok(state
            .inbox
            .range(range)
            .next_back()
            .map_or(0, |(&(_, seq), _)| seq))
    }
}

#[async_trait]
impl InboxRetention for MemoryStore {
    async fn trim_inbox(&self, user_id: u64, below_seq: u64, max_entries: usize) -> Result<usize> {
        let mut state = self.state();
        let floor = state.inbox_floors.entry(user_id).or_insert(0);
        *floor = (*floor).max(below_seq);
        let keys: Vec<(u64, u64)> = state
            .inbox
            .range((user_id, 0)..(user_id, below_seq))
            .take(max_entries)
            .map(|(&key, _)| key)
            .collect();
        for key in &keys {
            state.inbox.remove(key);
        }
        Ok(keys.len())
    }

    async fn inbox_floor(&self, user_id: u64) -> Result<u64> {
        Ok(self
            .state()
            .inbox_floors
            .get(&user_id)
            .copied()
            .unwrap_or(0))
    }

    async fn inbox_times(&self, user_id: u64, range: InboxRange) -> Result<Vec<InboxTime>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let keys = (user_id, range.after + 1)..=(user_id, range.through);
        Ok(self
            .state()
            .inbox
            .range(keys)
            .take(range.limit)
            .map(|(&(_, seq), entry)| InboxTime {
                seq,
                sent_at_ms: entry.sent_at_ms,
            })
            .collect())
    }
}

#[async_trait]
impl crate::ConversationScan for MemoryStore {
    async fn conversation_ids(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .state()
            .conversations
            .keys()
            .copied()
            .filter(|&id| after.is_none_or(|a| id > a))
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        Ok(ids)
    }
}

#[async_trait]
impl ConversationMembers for MemoryStore {
    async fn members_among(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<u64>> {
        let state = self.state();
        Ok(users
            .iter()
            .copied()
            .filter(|&user| state.members.contains(&(conversation_id, user)))
            .collect())
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
        let state = self.state();
        Ok(state
            .members
            .range((conversation_id, start)..=(conversation_id, u64::MAX))
            .take(limit)
            .map(|&(_, user)| user)
            .collect())
    }
}

#[async_trait]
impl ConversationReads for MemoryStore {
    async fn conversation(&self, conversation_id: u64) -> Result<Option<Conversation>> {
        Ok(self.state().conversations.get(&conversation_id).cloned())
    }

    async fn read_conversation(&self, id: u64, range: ConversationRange) -> Result<Vec<Entry>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.state();
        let entries = state.conv.range((id, range.after + 1)..(id, range.before));
        let in_order: Box<dyn Iterator<Item = &Entry>> = match range.order {
            Order::OldestFirst => Box::new(entries.map(|(_, e)| e)),
            Order::NewestFirst => Box::new(entries.rev().map(|(_, e)| e)),
        };
        let mut budget = range.budget();
        let mut read = Vec::new();
        for entry in in_order.take(range.limit) {
            read.push(entry.clone());
            if budget.spend(entry) {
                break;
            }
        }
        Ok(read)
    }

    async fn large_group_memberships(&self, user_id: u64) -> Result<Vec<LargeGroupMembership>> {
        let state = self.state();
        let range = (user_id, 0)..=(user_id, u64::MAX);
        Ok(state.large_groups.range(range).map(|(_, m)| *m).collect())
    }

    async fn inbox_copies(&self, conversation_id: u64, conv_seq: u64) -> Result<Vec<InboxWrite>> {
        let state = self.state();
        Ok(state
            .copies
            .get(&(conversation_id, conv_seq))
            .cloned()
            .unwrap_or_default())
    }
}

#[async_trait]
impl Checkpoints for MemoryStore {
    async fn save_checkpoint(&self, user_id: u64, device_id: &str, seq: u64) -> Result<u64> {
        let mut state = self.state();
        let stored = state
            .checkpoints
            .entry((user_id, device_id.to_owned()))
            .or_insert(0);
        *stored = (*stored).max(seq);
        Ok(*stored)
    }

    async fn checkpoint(&self, user_id: u64, device_id: &str) -> Result<u64> {
        let key = (user_id, device_id.to_owned());
        Ok(self.state().checkpoints.get(&key).copied().unwrap_or(0))
    }
}

#[async_trait]
impl Receipts for MemoryStore {
    async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>> {
        Ok(self.state().receipts.get(key).cloned())
    }
}

#[async_trait]
impl Revocations for MemoryStore {
    async fn revoke(&self, revocation: &Revocation, recorded_at_ms: u64) -> Result<u64> {
        let mut state = self.state();
        let key = (revocation.user_id, revocation.device_id.clone());
        let stored = state.revocations.entry(key).or_insert(0);
        *stored = (*stored).max(revocation.before_s);
        let stored = *stored;
        let n = state.revocation_feed.len() as u64;
        state
            .revocation_feed
            .insert((recorded_at_ms, n), revocation.clone());
        Ok(stored)
    }

    async fn revoked_before(&self, user_id: u64, device_id: &str) -> Result<RevokedBefore> {
        let state = self.state();
        let get = |device: Option<String>| {
            state
                .revocations
                .get(&(user_id, device))
                .copied()
                .unwrap_or(0)
        };
        Ok(RevokedBefore {
            user: get(None),
            device: get(Some(device_id.to_owned())),
        })
    }

    async fn revocations_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<RecordedRevocation>> {
        Ok(self
            .state()
            .revocation_feed
            .range((since_ms, 0)..)
            .take(limit)
            .map(|(&(recorded_at_ms, _), revocation)| RecordedRevocation {
                revocation: revocation.clone(),
                recorded_at_ms,
            })
            .collect())
    }
}

#[async_trait]
impl ReadReceipts for MemoryStore {
    async fn reader_marks(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<ReaderMark>> {
        let state = self.state();
        let mut marks: Vec<ReaderMark> = users
            .iter()
            .filter_map(|&user| state.readers.get(&(conversation_id, user)).copied())
            .collect();
        marks.sort_unstable_by_key(|m| m.user_id);
        marks.dedup_by_key(|m| m.user_id);
        Ok(marks)
    }
}

#[async_trait]
impl ReadStates for MemoryStore {
    async fn read_states(&self, user_id: u64) -> Result<ReadStateSnapshot> {
        let state = self.state();
        Ok(state
            .read_states
            .get(&user_id)
            .map(|(applied_seq, rows)| ReadStateSnapshot {
                applied_seq: *applied_seq,
                rows: rows.values().cloned().collect(),
            })
            .unwrap_or_default())
    }

    async fn save_read_states(
        &self,
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    ) -> Result<()> {
        let mut state = self.state();
        let (stored, stored_rows) = state.read_states.entry(user_id).or_default();
        if applied_seq < *stored {
            return Ok(());
        }
        *stored = applied_seq;
        for row in rows {
            stored_rows.insert(row.conversation_id, row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        let store = MemoryStore::new();
        crate::testsuite::conformance::run_all(|| {
            let store = store.clone();
            async move { store }
        })
        .await;
    }
}
