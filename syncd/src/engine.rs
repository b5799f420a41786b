//! The send/fanout/sync core, free of gRPC: plain requests in, plain results
//! or [`SyncdError`]s out, testable without a socket.
//!
//! # The send path
//! 1. Validate; resolve the sender; take the idempotency key's lock and
//!    return the stored receipt if this client message id was seen.
//! 2. Take the conversation's membership lock (shared: sends run in
//!    parallel; membership changes are exclusive), load the members.
//! 3. Reserve the horizon for the conversation and every member's inbox,
//!    allocate `conv_seq`, one inbox seq per member and a message id.
//! 4. Commit the conversation entry, every inbox copy and the receipt as one
//!    durable event, then release the horizon and publish to subscribers.
//!
//! Mutating calls run in their own task: a caller that disconnects cannot
//! cancel a send halfway (which could otherwise release the idempotency lock
//! while the write is still in flight, and admit a duplicate).

use crate::auth::Principal;
use crate::error::{Result, SyncdError};
use crate::horizon::{Horizon, Scope};
use crate::hub::{Hub, Subscription};
use crate::keyed::KeyedLocks;
use crate::limits::*;
use seqsvc::{Allocator, MsgIdGenerator, Namespace};
use std::sync::Arc;
use timeline_store::{
    Conversation, ConversationKind, Entry, EntryKind, EventCommit, IdempotencyKey, InboxWrite,
    Receipt, TimelineStore,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// The counter id (in [`Namespace::Counter`]) that numbers conversations.
const CONVERSATION_ID_COUNTER: u64 = 0;

pub struct SendCommand {
    pub conversation_id: u64,
    pub text: String,
    /// `None`: the server picks one and the send is not idempotent.
    pub client_msg_id: Option<Uuid>,
    /// Services name the sender (0 = system); devices send as themselves.
    pub sender_id: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct SendOutcome {
    pub receipt: Receipt,
    pub client_msg_id: Uuid,
    pub duplicate: bool,
}

#[derive(Clone, Debug)]
pub struct SyncPage {
    pub entries: Vec<Entry>,
    pub has_more: bool,
    pub checkpoint: u64,
}

pub struct HistoryQuery {
    pub conversation_id: u64,
    /// Page backwards below this `conv_seq` (0: from the newest).
    pub before: u64,
    /// Page forwards above this `conv_seq`.
    pub after: Option<u64>,
    pub limit: usize,
}

#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// Ascending `conv_seq`.
    pub entries: Vec<Entry>,
    pub has_more: bool,
}

pub struct NewConversation {
    pub kind: ConversationKind,
    pub members: Vec<u64>,
    pub title: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    Add,
    Remove,
}

pub struct Engine {
    store: Arc<dyn TimelineStore>,
    allocator: Allocator,
    ids: MsgIdGenerator,
    horizon: Arc<Horizon>,
    hub: Arc<Hub>,
    send_keys: Arc<KeyedLocks<IdempotencyKey>>,
    membership_locks: Arc<KeyedLocks<u64>>,
    send_slots: Semaphore,
    /// Flips to true once on shutdown; push feeds end when they see it.
    shutdown: tokio::sync::watch::Sender<bool>,
}

fn device_user(principal: &Principal) -> Result<(u64, &str)> {
    match principal {
        Principal::Device { user_id, device_id } => Ok((*user_id, device_id)),
        Principal::Service { name } => Err(SyncdError::PermissionDenied(format!(
            "service {name:?} has no inbox: use a device token"
        ))),
    }
}

fn require_service(principal: &Principal) -> Result<()> {
    match principal {
        Principal::Service { .. } => Ok(()),
        Principal::Device { .. } => Err(SyncdError::PermissionDenied(
            "this call needs a service token".into(),
        )),
    }
}

fn clamp_limit(requested: usize, default: usize, max: usize) -> usize {
    if requested == 0 { default } else { requested.min(max) }
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
        return Err(SyncdError::InvalidArgument("user id 0 is not a valid member".into()));
    }
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup();
    Ok(members)
}

impl Engine {
    pub fn new(store: Arc<dyn TimelineStore>, allocator: Allocator, ids: MsgIdGenerator) -> Arc<Self> {
        Arc::new(Self {
            store,
            allocator,
            ids,
            horizon: Horizon::new(),
            hub: Hub::new(),
            send_keys: Arc::default(),
            membership_locks: Arc::default(),
            send_slots: Semaphore::new(MAX_INFLIGHT_SENDS),
            shutdown: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends every push feed (so graceful shutdown does not wait on streams
    /// that never finish by themselves).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn store(&self) -> &Arc<dyn TimelineStore> {
        &self.store
    }

    async fn conversation(&self, conversation_id: u64) -> Result<Conversation> {
        if conversation_id == 0 {
            return Err(SyncdError::InvalidArgument("conversation_id must be set".into()));
        }
        self.store
            .conversation(conversation_id)
            .await?
            .ok_or_else(|| SyncdError::NotFound(format!("conversation {conversation_id} does not exist")))
    }

    /// Sends a message (devices as themselves, services as `sender_id`).
    pub async fn send(self: &Arc<Self>, principal: Principal, command: SendCommand) -> Result<SendOutcome> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.send_to_completion(principal, command).await })
            .await
            .map_err(|e| SyncdError::Internal(format!("send task failed: {e}")))?
    }

    async fn send_to_completion(&self, principal: Principal, command: SendCommand) -> Result<SendOutcome> {
        if command.text.is_empty() {
            return Err(SyncdError::InvalidArgument("text must not be empty".into()));
        }
        if command.text.len() > MAX_TEXT_BYTES {
            return Err(SyncdError::InvalidArgument(format!(
                "text is {} bytes, at most {MAX_TEXT_BYTES}",
                command.text.len()
            )));
        }
        let sender_id = match &principal {
            Principal::Device { user_id, .. } => match command.sender_id {
                Some(other) if other != *user_id => {
                    return Err(SyncdError::PermissionDenied(format!(
                        "user {user_id} cannot send as user {other}"
                    )));
                }
                _ => *user_id,
            },
            Principal::Service { .. } => command.sender_id.unwrap_or(0),
        };
        let _slot = self
            .send_slots
            .acquire()
            .await
            .map_err(|_| SyncdError::Unavailable("server is shutting down".into()))?;
        let (client_msg_id, key) = match command.client_msg_id {
            Some(id) => (
                id,
                Some(IdempotencyKey {
                    principal: principal.idempotency_principal(),
                    client_msg_id: id,
                }),
            ),
            None => (Uuid::new_v4(), None),
        };
        let _same_key = match &key {
            Some(key) => Some(self.send_keys.write(key.clone()).await),
            None => None,
        };
        if let Some(key) = &key
            && let Some(receipt) = self.store.receipt(key).await?
        {
            if receipt.conversation_id != command.conversation_id {
                return Err(SyncdError::InvalidArgument(format!(
                    "client_msg_id {client_msg_id} was already used for conversation {}",
                    receipt.conversation_id
                )));
            }
            return Ok(SendOutcome { receipt, client_msg_id, duplicate: true });
        }
        let _membership = self.membership_locks.read(command.conversation_id).await;
        let conversation = self.conversation(command.conversation_id).await?;
        if sender_id != 0 && !conversation.is_member(sender_id) {
            return Err(SyncdError::PermissionDenied(format!(
                "user {sender_id} is not a member of conversation {}",
                conversation.conversation_id
            )));
        }
        let entry = Entry {
            kind: EntryKind::Message as i32,
            conversation_id: conversation.conversation_id,
            sender_id,
            client_msg_id: client_msg_id.to_string(),
            text: command.text,
            ..Default::default()
        };
        let receipt = self.commit(entry, &conversation.members, key, None).await?;
        Ok(SendOutcome { receipt, client_msg_id, duplicate: false })
    }

    /// Allocates and durably writes one event to the conversation and every
    /// recipient's inbox, then announces it.
    async fn commit(
        &self,
        mut entry: Entry,
        recipients: &[u64],
        receipt_key: Option<IdempotencyKey>,
        record: Option<Conversation>,
    ) -> Result<Receipt> {
        let conversation_id = entry.conversation_id;
        let mut keys = Vec::with_capacity(recipients.len() + 1);
        keys.push((Scope::Conversation, conversation_id));
        keys.extend(recipients.iter().map(|&user| (Scope::Inbox, user)));
        // Reserve before allocating: see horizon.rs for why the order matters.
        let reservation = self.horizon.reserve(keys);
        let conv_seq = self.allocator.next(Namespace::Conversation, conversation_id).await?;
        let inbox_seqs = self.allocator.next_batch(Namespace::Inbox, recipients).await?;
        let msg_id = self.ids.next_id().await?;
        let mut seqs = Vec::with_capacity(inbox_seqs.len() + 1);
        seqs.push(conv_seq);
        seqs.extend_from_slice(&inbox_seqs);
        let assignment = reservation.assign(seqs);

        entry.conv_seq = conv_seq;
        entry.msg_id = msg_id;
        // The wall clock, not the id's timestamp: after a restart the id
        // clock can run ahead of real time for up to RESERVE_AHEAD_MS.
        entry.sent_at_ms = now_ms();
        let receipt = Receipt {
            conversation_id,
            conv_seq,
            msg_id,
            sent_at_ms: entry.sent_at_ms,
        };
        let inbox = recipients
            .iter()
            .zip(inbox_seqs)
            .map(|(&user_id, seq)| InboxWrite { user_id, seq })
            .collect();
        self.store
            .commit_event(EventCommit {
                entry,
                inbox,
                receipt: receipt_key.map(|key| (key, receipt.clone())),
                conversation: record,
            })
            .await?;
        for ((scope, id), visible) in assignment.complete() {
            if scope == Scope::Inbox {
                self.hub.publish(id, visible);
            }
        }
        Ok(receipt)
    }

    pub async fn create_conversation(
        self: &Arc<Self>,
        principal: Principal,
        request: NewConversation,
    ) -> Result<Conversation> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.create_to_completion(principal, request).await })
            .await
            .map_err(|e| SyncdError::Internal(format!("create task failed: {e}")))?
    }

    async fn create_to_completion(&self, principal: Principal, request: NewConversation) -> Result<Conversation> {
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
            ConversationKind::Group | ConversationKind::Unspecified => {
                if members.is_empty() {
                    return Err(SyncdError::InvalidArgument("a conversation needs at least one member".into()));
                }
                ConversationKind::Group
            }
        };
        let conversation_id = self
            .allocator
            .next(Namespace::Counter, CONVERSATION_ID_COUNTER)
            .await?;
        let record = Conversation {
            conversation_id,
            kind: kind as i32,
            members: members.clone(),
            title: request.title,
            created_at_ms: now_ms(),
        };
        let entry = Entry {
            kind: EntryKind::ConversationCreated as i32,
            conversation_id,
            sender_id: creator,
            text: record.title.clone(),
            members: members.clone(),
            ..Default::default()
        };
        self.commit(entry, &members, None, Some(record.clone())).await?;
        Ok(record)
    }

    /// Adds or removes members (services only). Returns the new record and
    /// the `conv_seq` of the membership event (0 when nothing changed).
    pub async fn change_members(
        self: &Arc<Self>,
        principal: Principal,
        conversation_id: u64,
        members: Vec<u64>,
        change: MembershipChange,
    ) -> Result<(Conversation, u64)> {
        require_service(&principal)?;
        let this = Arc::clone(self);
        tokio::spawn(async move { this.change_to_completion(conversation_id, members, change).await })
            .await
            .map_err(|e| SyncdError::Internal(format!("membership task failed: {e}")))?
    }

    async fn change_to_completion(
        &self,
        conversation_id: u64,
        members: Vec<u64>,
        change: MembershipChange,
    ) -> Result<(Conversation, u64)> {
        let members = normalize_members(&members)?;
        if members.is_empty() {
            return Err(SyncdError::InvalidArgument("members must not be empty".into()));
        }
        let _exclusive = self.membership_locks.write(conversation_id).await;
        let conversation = self.conversation(conversation_id).await?;
        if conversation.kind == ConversationKind::Direct as i32 {
            return Err(SyncdError::FailedPrecondition(format!(
                "conversation {conversation_id} is direct: its members are fixed"
            )));
        }
        let (changed, new_members, kind): (Vec<u64>, Vec<u64>, EntryKind) = match change {
            MembershipChange::Add => {
                let changed: Vec<u64> =
                    members.iter().copied().filter(|m| !conversation.is_member(*m)).collect();
                let mut all = conversation.members.clone();
                all.extend(&changed);
                all.sort_unstable();
                (changed, all, EntryKind::MembersAdded)
            }
            MembershipChange::Remove => {
                let changed: Vec<u64> =
                    members.iter().copied().filter(|m| conversation.is_member(*m)).collect();
                let rest = conversation
                    .members
                    .iter()
                    .copied()
                    .filter(|m| changed.binary_search(m).is_err())
                    .collect();
                (changed, rest, EntryKind::MembersRemoved)
            }
        };
        if changed.is_empty() {
            return Ok((conversation, 0));
        }
        if new_members.len() > MAX_CONVERSATION_MEMBERS {
            return Err(SyncdError::InvalidArgument(format!(
                "conversation would have {} members, at most {MAX_CONVERSATION_MEMBERS}",
                new_members.len()
            )));
        }
        // Removed members are told too; added ones see the event as their first.
        let recipients = match change {
            MembershipChange::Add => new_members.clone(),
            MembershipChange::Remove => conversation.members.clone(),
        };
        let record = Conversation { members: new_members, ..conversation };
        let entry = Entry {
            kind: kind as i32,
            conversation_id,
            members: changed,
            ..Default::default()
        };
        let receipt = self.commit(entry, &recipients, None, Some(record.clone())).await?;
        Ok((record, receipt.conv_seq))
    }

    /// Inbox entries after the checkpoint, never past the sync horizon.
    pub async fn sync(&self, principal: &Principal, after_seq: Option<u64>, limit: usize) -> Result<SyncPage> {
        let (user_id, device_id) = device_user(principal)?;
        let after = match after_seq {
            Some(seq) => seq,
            None => self.store.checkpoint(user_id, device_id).await?,
        };
        let limit = clamp_limit(limit, DEFAULT_SYNC_LIMIT, MAX_SYNC_LIMIT);
        let through = self.horizon.limit((Scope::Inbox, user_id));
        let mut entries = self.store.read_inbox(user_id, after, through, limit + 1).await?;
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        let checkpoint = entries.last().map_or(after, |e| e.seq);
        Ok(SyncPage { entries, has_more, checkpoint })
    }

    /// The highest inbox seq a device may be told about right now.
    async fn visible_top(&self, user_id: u64) -> Result<u64> {
        let limit = self.horizon.limit((Scope::Inbox, user_id));
        Ok(self.store.last_inbox_seq(user_id).await?.min(limit))
    }

    /// Stores the device's checkpoint (never lowered; never past its inbox).
    pub async fn ack(&self, principal: &Principal, seq: u64) -> Result<u64> {
        let (user_id, device_id) = device_user(principal)?;
        let top = self.visible_top(user_id).await?;
        if seq > top {
            return Err(SyncdError::InvalidArgument(format!(
                "cannot acknowledge seq {seq}: the inbox only reaches {top}"
            )));
        }
        Ok(self.store.save_checkpoint(user_id, device_id, seq).await?)
    }

    pub async fn history(&self, principal: &Principal, query: HistoryQuery) -> Result<HistoryPage> {
        let conversation = self.get_conversation(principal, query.conversation_id).await?;
        let limit = clamp_limit(query.limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT);
        let visible_end = self
            .horizon
            .limit((Scope::Conversation, conversation.conversation_id))
            .saturating_add(1);
        let id = conversation.conversation_id;
        if let Some(after) = query.after {
            if query.before != 0 {
                return Err(SyncdError::InvalidArgument("set before or after, not both".into()));
            }
            let mut entries = self.store.read_conversation(id, after, visible_end, false, limit + 1).await?;
            let has_more = entries.len() > limit;
            entries.truncate(limit);
            return Ok(HistoryPage { entries, has_more });
        }
        let before = if query.before == 0 { u64::MAX } else { query.before };
        let mut entries = self
            .store
            .read_conversation(id, 0, before.min(visible_end), true, limit + 1)
            .await?;
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        entries.reverse();
        Ok(HistoryPage { entries, has_more })
    }

    /// The conversation, if the caller may see it (a member, or a service).
    pub async fn get_conversation(&self, principal: &Principal, conversation_id: u64) -> Result<Conversation> {
        let conversation = self.conversation(conversation_id).await?;
        if let Principal::Device { user_id, .. } = principal
            && !conversation.is_member(*user_id)
        {
            return Err(SyncdError::PermissionDenied(format!(
                "user {user_id} is not a member of conversation {conversation_id}"
            )));
        }
        Ok(conversation)
    }

    /// Starts a push feed for a device whose checkpoint is `after_seq`.
    pub async fn subscribe(self: &Arc<Self>, principal: &Principal, after_seq: u64, include_entries: bool) -> Result<Feed> {
        let (user_id, _) = device_user(principal)?;
        let subscription = self.hub.subscribe(user_id)?;
        // Read the top only after subscribing, so nothing published in
        // between is missed.
        subscription.raise(self.visible_top(user_id).await?);
        Ok(Feed {
            engine: Arc::clone(self),
            subscription,
            user_id,
            last_sent: after_seq,
            include_entries,
            shutdown: self.shutdown.subscribe(),
        })
    }
}

/// One subscriber's view of its inbox's progress.
pub struct Feed {
    engine: Arc<Engine>,
    subscription: Subscription,
    user_id: u64,
    last_sent: u64,
    include_entries: bool,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// "Entries exist up to `up_to_seq`", with the entries when the subscriber
/// asked for them and is close enough behind.
#[derive(Clone, Debug)]
pub struct PushNotice {
    pub up_to_seq: u64,
    pub entries: Vec<Entry>,
}

impl Feed {
    /// Waits for the inbox to move past what this feed has announced;
    /// `None` once the server is shutting down.
    pub async fn next(&mut self) -> Result<Option<PushNotice>> {
        let top = tokio::select! {
            top = self.subscription.wait_above(self.last_sent) => top,
            _ = self.shutdown.wait_for(|&stopping| stopping) => return Ok(None),
        };
        let behind = top - self.last_sent;
        let entries = if self.include_entries && behind <= MAX_PUSH_ENTRIES as u64 {
            self.engine
                .store
                .read_inbox(self.user_id, self.last_sent, top, MAX_PUSH_ENTRIES)
                .await?
        } else {
            // Far behind: a bare notice; the device pulls with Sync.
            Vec::new()
        };
        self.last_sent = top;
        Ok(Some(PushNotice { up_to_seq: top, entries }))
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
