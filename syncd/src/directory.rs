//! The conversation directory: records by id, cached, with the membership
//! lock of each conversation.
//!
//! # The fill rule
//! Only a caller holding the conversation's membership lock (shared or
//! exclusive) may put a record it read from the store into the cache: an
//! unlocked reader could otherwise put back a record that a concurrent
//! membership change has just replaced. The types carry the rule:
//! [`Directory::peek`] reads without the lock and never fills;
//! [`Directory::shared`] and [`Directory::exclusive`] take the lock, fill,
//! and hand back the record together with the guard ([`Locked`]). A changed
//! record enters the cache only once its event has committed
//! ([`Directory::committed`], called from the one announce path).
//!
//! Sends take the lock shared (they run in parallel) until their seqs are
//! allocated; membership changes take it exclusive until their event is
//! complete, so no send is between "members loaded" and "conv_seq
//! allocated" while the members change, and none reads the old record
//! while the change is unannounced (see [`crate::writer`]). Waiting for
//! either is bounded ([`MAX_ADMISSION_WAIT`]): a membership change stuck in
//! the background answers the sends behind it UNAVAILABLE instead of
//! holding their send slots.
//!
//! # Large groups' members
//! A large group's record lists nobody; whether a user belongs is a point
//! lookup in the store's member table, made by every send and every device
//! read of the group. Answers are cached by (conversation, user). Any
//! reader may fill (reads hold no lock), so a fill could carry an answer
//! read before a membership change committed: every committed change of a
//! large group's members bumps a counter (one of
//! [`MEMBER_CHANGE_COUNTERS`], by conversation) and drops the users it names,
//! and a fill whose read began before a bump is dropped, both under one
//! mutex, so a stale answer is either dropped by the change or never put.

use crate::error::{Result, SyncdError};
use crate::keyed::{KeyGuard, KeyedLocks};
use crate::lifecycle::within_admission_wait;
#[cfg(doc)]
use crate::limits::MAX_ADMISSION_WAIT;
use crate::limits::{CACHED_CONVERSATION_MEMBERS, CACHED_MEMBER_ANSWERS};
use crate::observer::CommitObserver;
use std::sync::Arc;
use timeline_store::{Conversation, EventCommit, TimelineStore};

pub struct Directory {
    store: Arc<dyn TimelineStore>,
    /// Conversation records, weighed by member count.
    cache: moka::sync::Cache<u64, Arc<Conversation>>,
    locks: Arc<KeyedLocks<u64>>,
    /// Large groups' member-table answers by (conversation, user).
    member_answers: moka::sync::Cache<(u64, u64), bool>,
    /// Committed changes of large groups' members so far (see the module
    /// doc): guards fills against answers read before a change.
    /// By conversation id modulo their number, so churn in one group
    /// spoils the fills of a few others only.
    member_changes: Box<[std::sync::Mutex<u64>]>,
}

/// A conversation record read under its membership lock, with the lock.
pub struct Locked {
    pub record: Arc<Conversation>,
    guard: KeyGuard<u64>,
}

impl Locked {
    /// The lock, to be held until the event that depends on the record
    /// is complete.
    pub fn into_guard(self) -> KeyGuard<u64> {
        self.guard
    }
}

impl Directory {
    pub fn new(store: Arc<dyn TimelineStore>) -> Self {
        Self {
            store,
            cache: moka::sync::Cache::builder()
                .weigher(|_, record: &Arc<Conversation>| {
                    u32::try_from(record.members.len() + 1).unwrap_or(u32::MAX)
                })
                .max_capacity(CACHED_CONVERSATION_MEMBERS)
                .build(),
            locks: Arc::default(),
            member_answers: moka::sync::Cache::new(CACHED_MEMBER_ANSWERS),
            member_changes: (0..MEMBER_CHANGE_COUNTERS)
                .map(|_| std::sync::Mutex::new(0))
                .collect(),
        }
    }

    /// The record, without the lock (for reads that decide nothing a
    /// membership change could invalidate). Never fills the cache.
    pub async fn peek(&self, conversation_id: u64) -> Result<Arc<Conversation>> {
        self.load(conversation_id, false).await
    }

    /// The record under the shared membership lock (sends).
    pub async fn shared(&self, conversation_id: u64) -> Result<Locked> {
        check_id(conversation_id)?;
        let guard =
            within_admission_wait(self.locks.read(conversation_id), || busy(conversation_id))
                .await?;
        let record = self.load(conversation_id, true).await?;
        Ok(Locked { record, guard })
    }

    /// The record under the exclusive membership lock (membership changes).
    pub async fn exclusive(&self, conversation_id: u64) -> Result<Locked> {
        check_id(conversation_id)?;
        let guard =
            within_admission_wait(self.locks.write(conversation_id), || busy(conversation_id))
                .await?;
        let record = self.load(conversation_id, true).await?;
        Ok(Locked { record, guard })
    }

    /// Whether `user_id` belongs to the conversation: the record's list,
    /// or one point lookup in the store's member table for a large group
    /// (whose record lists nobody).
    pub async fn is_member(&self, record: &Conversation, user_id: u64) -> Result<bool> {
        Ok(self.members_among(record, &[user_id]).await?.len() == 1)
    }

    /// Those of `users` (ascending, no duplicates, at most a call's worth)
    /// who are members, ascending.
    pub async fn members_among(&self, record: &Conversation, users: &[u64]) -> Result<Vec<u64>> {
        if record.lists_members() {
            return Ok(users
                .iter()
                .copied()
                .filter(|&user| record.listed_member(user) == Some(true))
                .collect());
        }
        let conversation_id = record.conversation_id;
        let mut members = Vec::with_capacity(users.len());
        let mut unknown = Vec::new();
        for &user in users {
            match self.member_answers.get(&(conversation_id, user)) {
                Some(true) => members.push(user),
                Some(false) => {}
                None => unknown.push(user),
            }
        }
        if unknown.is_empty() {
            return Ok(members);
        }
        let changes_before = *self.changes(conversation_id);
        let found = self.store.members_among(conversation_id, &unknown).await?;
        self.fill_answers(conversation_id, changes_before, &unknown, &found);
        members.extend(found);
        members.sort_unstable();
        Ok(members)
    }

    /// Caches what the member table answered for `asked` (`found`: those
    /// who are members), unless a change committed since `changes_before`.
    fn fill_answers(
        &self,
        conversation_id: u64,
        changes_before: u64,
        asked: &[u64],
        found: &[u64],
    ) {
        let changes = self.changes(conversation_id);
        if *changes != changes_before {
            return;
        }
        for &user in asked {
            let member = found.binary_search(&user).is_ok();
            self.member_answers.insert((conversation_id, user), member);
        }
    }

    fn changes(&self, conversation_id: u64) -> std::sync::MutexGuard<'_, u64> {
        self.member_changes[(conversation_id % MEMBER_CHANGE_COUNTERS) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A committed event changed these members of a conversation: their
    /// cached answers go, and fills read before now are refused.
    fn members_changed(&self, conversation_id: u64, users: impl Iterator<Item = u64>) {
        let mut changes = self.changes(conversation_id);
        *changes += 1;
        for user in users {
            self.member_answers.invalidate(&(conversation_id, user));
        }
    }

    /// Up to `limit` members with ids above `after`, ascending (fewer:
    /// the last page), from the record's list or the member table.
    pub async fn member_page(
        &self,
        record: &Conversation,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>> {
        if record.lists_members() {
            let start = record.members.partition_point(|&m| m <= after);
            return Ok(record.members[start..]
                .iter()
                .take(limit)
                .copied()
                .collect());
        }
        Ok(self
            .store
            .list_members(record.conversation_id, after, limit)
            .await?)
    }

    /// A record written by a committed event. Its writer held the
    /// exclusive lock (or the conversation is new), so no reader can have
    /// cached an older one since.
    pub fn committed(&self, record: &Conversation) {
        self.cache
            .insert(record.conversation_id, Arc::new(record.clone()));
    }

    async fn load(&self, conversation_id: u64, fill: bool) -> Result<Arc<Conversation>> {
        check_id(conversation_id)?;
        if let Some(cached) = self.cache.get(&conversation_id) {
            return Ok(cached);
        }
        let record = Arc::new(self.store.conversation(conversation_id).await?.ok_or_else(
            || SyncdError::NotFound(format!("conversation {conversation_id} does not exist")),
        )?);
        if fill {
            self.cache.insert(conversation_id, Arc::clone(&record));
        }
        Ok(record)
    }
}

/// The record enters the cache before the event's seqs are readable: a
/// member added by the event may read the conversation as soon as its inbox
/// shows the join, and must not be refused by the old record.
impl CommitObserver for Directory {
    fn before_visible(&self, commit: &EventCommit) {
        if let Some(record) = &commit.conversation {
            self.committed(record);
        }
        if !commit.members.is_empty() {
            self.members_changed(
                commit.entry.conversation_id,
                commit.members.iter().map(|change| change.user_id),
            );
        }
    }
}

/// Counters of membership changes the member-answer fills check.
const MEMBER_CHANGE_COUNTERS: u64 = 64;

fn busy(conversation_id: u64) -> String {
    format!(
        "conversation {conversation_id} is busy: a membership change is still being stored; retry later"
    )
}

fn check_id(conversation_id: u64) -> Result<()> {
    if conversation_id == 0 {
        return Err(SyncdError::InvalidArgument(
            "conversation_id must be set".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use timeline_store::testsuite::MemoryStore;

    /// An answer read before a membership change committed is never
    /// cached, whichever way the two interleave.
    #[test]
    fn an_answer_read_across_a_change_is_not_cached() {
        let directory = Directory::new(Arc::new(MemoryStore::default()));
        let before = *directory.changes(7);
        directory.members_changed(7, [2].into_iter());
        directory.fill_answers(7, before, &[2, 3], &[2]);
        assert_eq!(directory.member_answers.get(&(7, 2)), None);

        let before = *directory.changes(7);
        directory.fill_answers(7, before, &[2, 3], &[2]);
        assert_eq!(directory.member_answers.get(&(7, 2)), Some(true));
        assert_eq!(directory.member_answers.get(&(7, 3)), Some(false));
        // Filled first, changed after: the change drops what it names.
        directory.members_changed(7, [2].into_iter());
        assert_eq!(directory.member_answers.get(&(7, 2)), None);
        assert_eq!(directory.member_answers.get(&(7, 3)), Some(false));

        // A change in another conversation spoils nothing here.
        let before = *directory.changes(7);
        directory.members_changed(8, [2].into_iter());
        directory.fill_answers(7, before, &[2], &[2]);
        assert_eq!(directory.member_answers.get(&(7, 2)), Some(true));
    }
}
