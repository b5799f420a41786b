//! Conversations and their members: creation (devices and services) and
//! membership changes (services only).
//!
//! A membership change holds the conversation's membership lock exclusively
//! from reading the record until its event is complete, so no send decides
//! its recipients on members that are about to change. A group that grows
//! past the large-group threshold switches to read fanout and stays there
//! (no flapping around the threshold); who then gets a copy of what is
//! [`crate::fanout`]'s business.
//!
//! Every member a create or add names is admitted first: its lock is held
//! (ascending ids, after the conversation's lock) until the event is
//! complete, and the change is refused, changing nothing, when any of them
//! is already in [`crate::limits::MAX_CONVERSATIONS_PER_USER`] conversations. So two
//! concurrent joins of one user cannot both pass the bound.

use crate::access;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::event::{Event, MembershipChange, now_ms};
use crate::idempotency::{Fingerprint, Idempotency, Unfingerprinted, check_same_request};
use crate::keyed::KeyedLocks;
use crate::lifecycle::within_admission_wait;
use crate::limits::{
    ADMISSION_COUNTS_IN_FLIGHT, DEFAULT_MEMBERS_LIMIT, MAX_CONVERSATION_MEMBERS, MAX_MEMBERS_LIMIT,
    MAX_MEMBERS_PER_CALL, MAX_TITLE_BYTES,
};
use crate::read_state::ReadState;
use crate::writer::{EventWriter, Held};
use seqsvc::Namespace;
use seqsvc::client::SeqSource;
use std::sync::Arc;
use timeline_store::{Conversation, ConversationKind, IdempotencyKey};
use uuid::Uuid;

/// The counter id (in [`Namespace::Counter`]) that numbers conversations.
const CONVERSATION_ID_COUNTER: u64 = 0;

pub struct NewConversation {
    pub kind: ConversationKind,
    pub members: Vec<u64>,
    pub title: String,
    /// `None`: not idempotent (a retry may create a second conversation).
    pub client_request_id: Option<Uuid>,
}

pub struct Membership {
    directory: Arc<Directory>,
    writer: Arc<EventWriter>,
    idempotency: Arc<Idempotency>,
    seqs: SeqSource,
    large_group_threshold: usize,
    /// [`crate::limits::MAX_CONVERSATIONS_PER_USER`] unless configured.
    max_conversations_per_user: usize,
    read_state: Arc<ReadState>,
    /// One join per user at a time, from its count to its event's end.
    admissions: Arc<KeyedLocks<u64>>,
}

impl Membership {
    pub fn new(
        directory: Arc<Directory>,
        writer: Arc<EventWriter>,
        idempotency: Arc<Idempotency>,
        seqs: SeqSource,
        (large_group_threshold, max_conversations_per_user): (usize, usize),
        read_state: Arc<ReadState>,
    ) -> Self {
        Self {
            directory,
            writer,
            idempotency,
            seqs,
            large_group_threshold,
            max_conversations_per_user,
            read_state,
            admissions: Arc::default(),
        }
    }

    /// Takes the admission locks of `joining` (ascending, as normalized)
    /// and refuses when any of them is in the most conversations a user
    /// may be in ([`crate::limits::MAX_CONVERSATIONS_PER_USER`] unless configured). The guards are held until the event that
    /// adds them is complete.
    async fn admit(&self, joining: &[u64]) -> Result<Vec<crate::writer::Guard>> {
        use futures_util::{StreamExt, TryStreamExt};
        let mut guards: Vec<crate::writer::Guard> = Vec::with_capacity(joining.len());
        for &user_id in joining {
            // Bounded like the other admission locks: a join of the user
            // still being finished in the background holds it until it lands.
            let guard = within_admission_wait(self.admissions.write(user_id), || {
                format!("another membership change of user {user_id} is in flight: retry")
            })
            .await?;
            guards.push(Box::new(guard));
        }
        let counts: Vec<(u64, usize)> = futures_util::stream::iter(joining.iter().copied())
            .map(|user_id| async move {
                let count = self.read_state.memberships(user_id).await?;
                Ok::<_, SyncdError>((user_id, count))
            })
            .buffer_unordered(ADMISSION_COUNTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let most = self.max_conversations_per_user;
        let mut full: Vec<u64> = counts
            .into_iter()
            .filter(|&(_, count)| count >= most)
            .map(|(user_id, _)| user_id)
            .collect();
        if !full.is_empty() {
            full.sort_unstable();
            let named: Vec<String> = full.iter().take(10).map(u64::to_string).collect();
            let more = full.len() - named.len();
            let who = match (named.len(), more) {
                (1, _) => format!("user {} is", named[0]),
                (_, 0) => format!("users {} are", named.join(", ")),
                _ => format!("users {} and {more} more are", named.join(", ")),
            };
            return Err(SyncdError::ResourceExhausted(format!(
                "{who} already in {most} conversations, the most one user may be in: \
                 nothing changed"
            )));
        }
        Ok(guards)
    }

    /// Creates a conversation; a device is always one of its members. With
    /// a client request id it is idempotent like a send: the id's lock is
    /// held and its receipt commits with the creation event, so a retry
    /// (after UNAVAILABLE, say) returns the first conversation.
    pub async fn create(
        &self,
        principal: Principal,
        request: NewConversation,
    ) -> Result<Conversation> {
        if request.title.len() > MAX_TITLE_BYTES {
            return Err(SyncdError::InvalidArgument(format!(
                "title is {} bytes, at most {MAX_TITLE_BYTES}",
                request.title.len()
            )));
        }
        let mut members = request.members.clone();
        let creator = match &principal {
            Principal::Device { user_id, .. } => {
                members.push(*user_id);
                *user_id
            }
            Principal::Service { .. } => 0,
        };
        let members = normalize_members(&members)?;
        let kind = match request.kind {
            ConversationKind::Direct => {
                if members.len() != 2 {
                    return Err(SyncdError::InvalidArgument(format!(
                        "a direct conversation has exactly 2 members, got {}",
                        members.len()
                    )));
                }
                ConversationKind::Direct
            }
            ConversationKind::Group => {
                if members.is_empty() {
                    return Err(SyncdError::InvalidArgument(
                        "a conversation needs at least one member".into(),
                    ));
                }
                ConversationKind::Group
            }
        };
        // Of the normalized request, so a retry listing the members in
        // another order (or naming the device itself) is the same request.
        let fingerprint = Fingerprint::new("create conversation")
            .u64(kind as i32 as u64)
            .u64(members.len() as u64);
        let fingerprint = members
            .iter()
            .fold(fingerprint, |f, &m| f.u64(m))
            .bytes(request.title.as_bytes())
            .finish();
        let claim = match request.client_request_id {
            Some(id) => {
                let key = IdempotencyKey {
                    principal: principal.idempotency_principal(),
                    client_msg_id: id,
                };
                let claim = self.idempotency.claim(key).await?;
                if let Some(receipt) = &claim.earlier {
                    // Receipts without a fingerprint predate creation
                    // receipts: they are sends, never a creation.
                    check_same_request(
                        receipt,
                        fingerprint,
                        Unfingerprinted::Differs,
                        "client_request_id",
                        id,
                    )?;
                    // The receipt committed with the creation event, so the
                    // record exists; it is returned as it is now.
                    let record = self.directory.peek(receipt.conversation_id).await?;
                    return Ok((*record).clone());
                }
                Some(claim)
            }
            None => None,
        };
        let admitted = self.admit(&members).await?;
        let conversation_id = self
            .seqs
            .next(Namespace::Counter, CONVERSATION_ID_COUNTER)
            .await?;
        let record = Conversation {
            conversation_id,
            kind,
            read_fanout: members.len() > self.large_group_threshold,
            member_count: members.len() as u64,
            members,
            title: request.title,
            created_at_ms: now_ms(),
        };
        let mut event = Event::conversation_created(record, creator);
        let record = event.record.clone().expect("a creation carries its record");
        let mut until_complete = admitted;
        if let Some(claim) = claim {
            event = event.with_receipt(claim.key.clone(), fingerprint);
            until_complete.push(Box::new(claim.into_guard()));
        }
        self.writer
            .commit(event, Held::until_complete(until_complete))
            .await?;
        Ok(record)
    }

    /// Adds or removes members (services only). Returns the new record and
    /// the `conv_seq` of the membership event (0 when nothing changed).
    pub async fn change(
        &self,
        principal: &Principal,
        conversation_id: u64,
        members: Vec<u64>,
        change: MembershipChange,
    ) -> Result<(Conversation, u64)> {
        access::require_service(principal)?;
        let members = normalize_members(&members)?;
        if members.is_empty() {
            return Err(SyncdError::InvalidArgument(
                "members must not be empty".into(),
            ));
        }
        let exclusive = self.directory.exclusive(conversation_id).await?;
        let before = Arc::clone(&exclusive.record);
        if before.kind == ConversationKind::Direct {
            return Err(SyncdError::FailedPrecondition(format!(
                "conversation {conversation_id} is direct: its members are fixed"
            )));
        }
        let changed = self.changed(&before, &members, change).await?;
        if changed.is_empty() {
            return Ok(((*before).clone(), 0));
        }
        let member_count = match change {
            MembershipChange::Add => before.member_count + changed.len() as u64,
            MembershipChange::Remove => before.member_count.saturating_sub(changed.len() as u64),
        };
        if member_count > MAX_CONVERSATION_MEMBERS as u64 {
            return Err(SyncdError::InvalidArgument(format!(
                "conversation would have {member_count} members, at most {MAX_CONVERSATION_MEMBERS}"
            )));
        }
        let mut until_complete = match change {
            MembershipChange::Add => self.admit(&changed).await?,
            MembershipChange::Remove => Vec::new(),
        };
        let read_fanout = before.read_fanout || member_count > self.large_group_threshold as u64;
        // Only a record that lists its members is rewritten with a list
        // (and, crossing the threshold, lists them one last time for the
        // switch): a large group's change costs the changed members alone.
        let listed = if before.lists_members() {
            listed_after(&before.members, &changed, change)
        } else {
            Vec::new()
        };
        let after = Conversation {
            read_fanout,
            members: listed,
            member_count,
            ..(*before).clone()
        };
        let event = Event::members_changed(&before, after, change, changed);
        let stored = event
            .record
            .clone()
            .expect("a membership event carries the record it leaves");
        until_complete.push(Box::new(exclusive.into_guard()));
        let receipt = self
            .writer
            .commit(event, Held::until_complete(until_complete))
            .await?;
        Ok((stored, receipt.conv_seq))
    }

    /// The members of the request that really change: those not yet
    /// members (add) or members now (remove). One lookup per named member
    /// in a large group's member table, never a read of the whole list.
    async fn changed(
        &self,
        before: &Conversation,
        members: &[u64],
        change: MembershipChange,
    ) -> Result<Vec<u64>> {
        let current = self.directory.members_among(before, members).await?;
        Ok(match change {
            MembershipChange::Add => members
                .iter()
                .copied()
                .filter(|m| current.binary_search(m).is_err())
                .collect(),
            MembershipChange::Remove => current,
        })
    }

    /// A page of the conversation's members after `after` (0: the first),
    /// for a service or a member's device: ascending ids and the cursor
    /// of the next page (0: this was the last). Read a page at a time
    /// from the record's list or the member table, so a listing of any
    /// size holds one page.
    pub async fn list(
        &self,
        principal: &Principal,
        conversation_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<MemberPage> {
        let record = self
            .directory
            .peek(conversation_id)
            .await
            .map_err(|e| access::conceal_missing(principal, conversation_id, e))?;
        access::may_read(&self.directory, principal, &record).await?;
        let limit = crate::limits::clamp_limit(limit, DEFAULT_MEMBERS_LIMIT, MAX_MEMBERS_LIMIT);
        // One more than asked says whether a next page exists.
        let mut members = self
            .directory
            .member_page(&record, after, limit + 1)
            .await?;
        let next_after = if members.len() > limit {
            members.truncate(limit);
            members.last().copied().unwrap_or(0)
        } else {
            0
        };
        Ok(MemberPage {
            members,
            member_count: record.member_count,
            next_after,
        })
    }
}

/// One page of a conversation's members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPage {
    /// Ascending user ids.
    pub members: Vec<u64>,
    /// Members in the whole conversation now.
    pub member_count: u64,
    /// The cursor of the next page; 0 when this page is the last.
    pub next_after: u64,
}

/// A listed member list after `changed` (all of them new members for an
/// add, all of them members for a remove) changes it.
fn listed_after(listed: &[u64], changed: &[u64], change: MembershipChange) -> Vec<u64> {
    match change {
        MembershipChange::Add => {
            let mut all = listed.to_vec();
            all.extend(changed);
            all.sort_unstable();
            all
        }
        MembershipChange::Remove => listed
            .iter()
            .copied()
            .filter(|m| changed.binary_search(m).is_err())
            .collect(),
    }
}

/// Sorted, deduplicated member ids; 0 is not a user.
fn normalize_members(members: &[u64]) -> Result<Vec<u64>> {
    if members.len() > MAX_MEMBERS_PER_CALL {
        return Err(SyncdError::InvalidArgument(format!(
            "{} members in one call, at most {MAX_MEMBERS_PER_CALL}",
            members.len()
        )));
    }
    if members.contains(&0) {
        return Err(SyncdError::InvalidArgument(
            "user id 0 is not a valid member".into(),
        ));
    }
    for &member in members {
        crate::access::check_user_id("member", member)?;
    }
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup();
    Ok(members)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bound_tests;
