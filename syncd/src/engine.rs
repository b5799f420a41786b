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
use crate::horizon::{Assignment, Horizon, Scope, safe_limit};
use crate::hub::{Hub, Subscription};
use crate::keyed::KeyedLocks;
use crate::limits::*;
use seqsvc::client::SeqSource;
use seqsvc::{MsgIdGenerator, Namespace};
use std::sync::Arc;
use std::time::Duration;
use timeline_store::{
    Conversation, ConversationKind, ConversationRange, Entry, EntryKind, EventCommit,
    IdempotencyKey, InboxRange, InboxWrite, LargeGroupIndexChange, Receipt, TimelineStore,
};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Runs `work` in a task of its own, so that a caller going away (a client
/// disconnecting cancels its handler) cannot stop a write halfway.
async fn to_completion<T: Send + 'static>(
    what: &str,
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| SyncdError::Internal(format!("{what} task failed: {e}")))?
}

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Groups with more members than this use read fanout: messages are
    /// stored once, in the conversation timeline, instead of once per member.
    pub large_group_threshold: usize,
    /// A subscriber whose queue stays full this long is disconnected.
    pub subscriber_stall_limit: Duration,
    pub retention: Retention,
}

/// How long inbox entries are kept. Conversation timelines (history) are
/// kept regardless. A device whose checkpoint falls below what is kept gets
/// "checkpoint expired" from Sync, never a silent gap.
#[derive(Clone, Debug)]
pub struct Retention {
    /// Keep only seqs within this distance of the newest (0: no limit). With
    /// seq gaps that is at most this many entries.
    pub max_entries: u64,
    /// Trim entries older than this (`None`: no limit).
    pub max_age: Option<Duration>,
    /// Time between retention passes.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_entries: 0,
            max_age: None,
            interval: RETENTION_INTERVAL,
        }
    }
}

impl Retention {
    pub fn enabled(&self) -> bool {
        self.max_entries > 0 || self.max_age.is_some()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            large_group_threshold: DEFAULT_LARGE_GROUP_THRESHOLD,
            subscriber_stall_limit: DEFAULT_SUBSCRIBER_STALL_LIMIT,
            retention: Retention::default(),
        }
    }
}

fn index_changes(users: &[u64], conversation_id: u64, member: bool) -> Vec<LargeGroupIndexChange> {
    users
        .iter()
        .map(|&user_id| LargeGroupIndexChange {
            user_id,
            conversation_id,
            member,
        })
        .collect()
}

/// Locks a caller holds for an event, kept until the event is complete.
type Held = Vec<Box<dyn Send + Sync>>;

/// Longest wait between attempts to finish a failed event.
const MAX_FINISH_RETRY_DELAY: Duration = Duration::from_secs(5);

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
    /// `(conversation_id, newest safe conv_seq)` of every large group the
    /// user belongs to (0 when it has no entries yet).
    pub large_groups: Vec<(u64, u64)>,
    /// `Some(floor)` when entries after the checkpoint were trimmed by
    /// retention: no entries are returned, the device must resync.
    pub expired_below: Option<u64>,
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
    config: EngineConfig,
    store: Arc<dyn TimelineStore>,
    seqs: SeqSource,
    ids: MsgIdGenerator,
    horizon: Arc<Horizon>,
    hub: Arc<Hub>,
    send_keys: Arc<KeyedLocks<IdempotencyKey>>,
    membership_locks: Arc<KeyedLocks<u64>>,
    /// Held while one event of a conversation allocates its `conv_seq` and
    /// inbox seqs, so that conv_seq order is every member's inbox order.
    allocation_locks: Arc<KeyedLocks<u64>>,
    /// Conversation records, weighed by member count (see `conversation`).
    conversations: moka::sync::Cache<u64, Arc<Conversation>>,
    send_slots: Semaphore,
    /// Inboxes written since the last retention pass (bounded).
    trim_candidates: std::sync::Mutex<std::collections::HashSet<u64>>,
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
    if requested == 0 {
        default
    } else {
        requested.min(max)
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
    let mut members = members.to_vec();
    members.sort_unstable();
    members.dedup();
    Ok(members)
}

impl Engine {
    /// `seqs`: an in-process [`seqsvc::Allocator`] or a seqsvc cluster.
    pub fn new(
        store: Arc<dyn TimelineStore>,
        seqs: impl Into<SeqSource>,
        ids: MsgIdGenerator,
        config: EngineConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            store,
            seqs: seqs.into(),
            ids,
            horizon: Horizon::new(),
            hub: Hub::new(),
            send_keys: Arc::default(),
            membership_locks: Arc::default(),
            allocation_locks: Arc::default(),
            conversations: moka::sync::Cache::builder()
                .weigher(|_, record: &Arc<Conversation>| {
                    u32::try_from(record.members.len() + 1).unwrap_or(u32::MAX)
                })
                .max_capacity(CACHED_CONVERSATION_MEMBERS)
                .build(),
            send_slots: Semaphore::new(MAX_INFLIGHT_SENDS),
            trim_candidates: Default::default(),
            shutdown: tokio::sync::watch::channel(false).0,
        })
    }

    /// Ends every push feed (so graceful shutdown does not wait on streams
    /// that never finish by themselves).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn TimelineStore> {
        &self.store
    }

    /// The conversation record, from the cache or the store. Only callers
    /// holding the conversation's membership lock (shared or exclusive) may
    /// `fill` the cache: an unlocked reader could otherwise put back a record
    /// that a concurrent membership change has just replaced.
    async fn conversation(&self, conversation_id: u64, fill: bool) -> Result<Arc<Conversation>> {
        if conversation_id == 0 {
            return Err(SyncdError::InvalidArgument(
                "conversation_id must be set".into(),
            ));
        }
        if let Some(cached) = self.conversations.get(&conversation_id) {
            return Ok(cached);
        }
        let record = Arc::new(self.store.conversation(conversation_id).await?.ok_or_else(
            || SyncdError::NotFound(format!("conversation {conversation_id} does not exist")),
        )?);
        if fill {
            self.conversations
                .insert(conversation_id, Arc::clone(&record));
        }
        Ok(record)
    }

    /// Sends a message (devices as themselves, services as `sender_id`).
    pub async fn send(
        self: &Arc<Self>,
        principal: Principal,
        command: SendCommand,
    ) -> Result<SendOutcome> {
        let this = Arc::clone(self);
        to_completion("send", async move {
            this.send_to_completion(principal, command).await
        })
        .await
    }

    async fn send_to_completion(
        &self,
        principal: Principal,
        command: SendCommand,
    ) -> Result<SendOutcome> {
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
        let same_key = match &key {
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
            return Ok(SendOutcome {
                receipt,
                client_msg_id,
                duplicate: true,
            });
        }
        let membership = self.membership_locks.read(command.conversation_id).await;
        let conversation = self.conversation(command.conversation_id, true).await?;
        if sender_id != 0 && !conversation.is_member(sender_id) {
            return Err(SyncdError::PermissionDenied(format!(
                "user {sender_id} is not a member of conversation {}",
                conversation.conversation_id
            )));
        }
        let entry = Entry {
            sender_id,
            client_msg_id: client_msg_id.to_string(),
            text: command.text,
            ..Entry::new(EntryKind::Message, conversation.conversation_id)
        };
        let held: Held = vec![Box::new(same_key), Box::new(membership)];
        // Large groups: written once, to the conversation timeline only.
        let recipients: &[u64] = if conversation.read_fanout {
            &[]
        } else {
            &conversation.members
        };
        let receipt = self
            .commit(entry, recipients, key, None, Vec::new(), held)
            .await?;
        Ok(SendOutcome {
            receipt,
            client_msg_id,
            duplicate: false,
        })
    }

    /// Allocates and durably writes one event to the conversation and every
    /// recipient's inbox, then announces it.
    ///
    /// `held` are the caller's locks (idempotency key, membership). If the
    /// store fails in a way that may have written part of the event, the
    /// event is finished in the background with the same seqs, and `held`
    /// stay locked until it is: a retry of the same send then finds the
    /// receipt instead of writing the message again, and the sync horizon
    /// stays below those seqs until they are complete.
    async fn commit(
        &self,
        mut entry: Entry,
        recipients: &[u64],
        receipt_key: Option<IdempotencyKey>,
        record: Option<Conversation>,
        large_group_index: Vec<LargeGroupIndexChange>,
        held: Held,
    ) -> Result<Receipt> {
        let conversation_id = entry.conversation_id;
        let mut keys = Vec::with_capacity(recipients.len() + 1);
        keys.push((Scope::Conversation, conversation_id));
        keys.extend(recipients.iter().map(|&user| (Scope::Inbox, user)));
        // Reserve before allocating: see horizon.rs for why the order matters.
        let reservation = self.horizon.reserve(keys);
        let (conv_seq, inbox_seqs) = {
            // Two events of one conversation must take their seqs in the
            // same order for every member: a lower conv_seq gets the lower
            // inbox seq in each inbox. Allocation is short; writes run
            // outside this lock.
            let _in_order = self.allocation_locks.write(conversation_id).await;
            let conv_seq = self
                .seqs
                .next(Namespace::Conversation, conversation_id)
                .await?;
            let inbox_seqs = self.seqs.next_batch(Namespace::Inbox, recipients).await?;
            (conv_seq, inbox_seqs)
        };
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
        let commit = EventCommit {
            entry,
            inbox,
            receipt: receipt_key.map(|key| (key, receipt.clone())),
            conversation: record,
            large_group_index,
        };
        match self.store.commit_event(commit.clone()).await {
            Ok(()) => {
                self.announce(commit.conversation, assignment);
                Ok(receipt)
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, conversation_id, msg_id, "event failed; finishing it in the background");
                self.finish_in_background(commit, assignment, held);
                Err(SyncdError::Unavailable(format!(
                    "{error}; the message will be stored, retry with the same client_msg_id"
                )))
            }
            // Refused before anything was written: the seqs become gaps.
            Err(error) => Err(error.into()),
        }
    }

    /// Marks an event's seqs durable, updates the cached record, and tells
    /// subscribers.
    fn announce(&self, record: Option<Conversation>, assignment: Assignment) {
        if let Some(record) = record {
            // Callers hold the membership lock exclusively (or the id is new).
            self.conversations
                .insert(record.conversation_id, Arc::new(record));
        }
        for ((scope, id), visible) in assignment.complete() {
            if scope == Scope::Inbox {
                self.hub.publish(id, visible);
                self.note_for_retention(id);
            }
        }
    }

    fn note_for_retention(&self, user_id: u64) {
        if self.config.retention.enabled() {
            let mut candidates = self
                .trim_candidates
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // Full: the user is noted again on their next message.
            if candidates.len() < MAX_TRIM_CANDIDATES {
                candidates.insert(user_id);
            }
        }
    }

    /// Trims the inboxes written since the last pass, every
    /// `RETENTION_INTERVAL`, until shutdown. Does nothing without retention.
    pub async fn run_retention(self: Arc<Self>) {
        if !self.config.retention.enabled() {
            return;
        }
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.config.retention.interval) => {}
                _ = shutdown.wait_for(|&stopping| stopping) => return,
            }
            let users: Vec<u64> = {
                let mut candidates = self
                    .trim_candidates
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                candidates.drain().collect()
            };
            for user_id in users {
                if let Err(error) = self.trim_user(user_id).await {
                    tracing::warn!(%error, user_id, "retention pass failed; retrying next pass");
                    self.note_for_retention(user_id);
                }
            }
        }
    }

    /// Trims one inbox to the retention policy. Returns the new floor.
    pub async fn trim_user(&self, user_id: u64) -> Result<u64> {
        let retention = &self.config.retention;
        let mut below = 0;
        if retention.max_entries > 0 {
            let top = self.store.last_inbox_seq(user_id).await?;
            below = (top + 1).saturating_sub(retention.max_entries);
        }
        if let Some(max_age) = retention.max_age {
            let cutoff = now_ms().saturating_sub(max_age.as_millis() as i64);
            let floor = self.store.inbox_floor(user_id).await?;
            let through = self.readable_through(Scope::Inbox, user_id).await?;
            let oldest = self
                .store
                .read_inbox(
                    user_id,
                    InboxRange {
                        after: floor.saturating_sub(1),
                        through,
                        limit: RETENTION_AGE_SCAN,
                    },
                )
                .await?;
            match oldest.iter().find(|e| e.sent_at_ms >= cutoff) {
                Some(young) => below = below.max(young.seq),
                None => {
                    if let Some(last) = oldest.last() {
                        below = below.max(last.seq + 1);
                        // Possibly more old entries past this page.
                        self.note_for_retention(user_id);
                    }
                }
            }
        }
        if below > self.store.inbox_floor(user_id).await? {
            while self
                .store
                .trim_inbox(user_id, below, RETENTION_TRIM_BATCH)
                .await?
                == RETENTION_TRIM_BATCH
            {}
        }
        Ok(below)
    }

    /// Retries an event until the store takes it (writes are idempotent
    /// upserts with the same seqs), holding its locks and its horizon
    /// reservation meanwhile. A crash in between leaves the store's own
    /// record of the event, which `TimelineStore::recover` finishes at start.
    fn finish_in_background(&self, commit: EventCommit, assignment: Assignment, held: Held) {
        let store = Arc::clone(&self.store);
        let hub = Arc::clone(&self.hub);
        let conversations = self.conversations.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                tokio::time::sleep(delay).await;
                match store.commit_event(commit.clone()).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, msg_id = commit.entry.msg_id, "still cannot finish event");
                        delay = (delay * 2).min(MAX_FINISH_RETRY_DELAY);
                    }
                }
            }
            if let Some(record) = commit.conversation {
                conversations.insert(record.conversation_id, Arc::new(record));
            }
            for ((scope, id), visible) in assignment.complete() {
                if scope == Scope::Inbox {
                    hub.publish(id, visible);
                }
            }
            tracing::info!(
                msg_id = commit.entry.msg_id,
                "event finished in the background"
            );
            drop(held);
        });
    }

    pub async fn create_conversation(
        self: &Arc<Self>,
        principal: Principal,
        request: NewConversation,
    ) -> Result<Conversation> {
        let this = Arc::clone(self);
        to_completion("create", async move {
            this.create_to_completion(principal, request).await
        })
        .await
    }

    async fn create_to_completion(
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
        let conversation_id = self
            .seqs
            .next(Namespace::Counter, CONVERSATION_ID_COUNTER)
            .await?;
        let read_fanout = members.len() > self.config.large_group_threshold;
        let record = Conversation {
            conversation_id,
            kind,
            members: members.clone(),
            title: request.title,
            created_at_ms: now_ms(),
            read_fanout,
        };
        let index = if read_fanout {
            index_changes(&members, conversation_id, true)
        } else {
            Vec::new()
        };
        let entry = Entry {
            sender_id: creator,
            text: record.title.clone(),
            members: members.clone(),
            ..Entry::new(EntryKind::ConversationCreated, conversation_id)
        };
        // Every member hears of the creation, in either mode.
        self.commit(
            entry,
            &members,
            None,
            Some(record.clone()),
            index,
            Vec::new(),
        )
        .await?;
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
        to_completion("membership", async move {
            this.change_to_completion(conversation_id, members, change)
                .await
        })
        .await
    }

    async fn change_to_completion(
        &self,
        conversation_id: u64,
        members: Vec<u64>,
        change: MembershipChange,
    ) -> Result<(Conversation, u64)> {
        let members = normalize_members(&members)?;
        if members.is_empty() {
            return Err(SyncdError::InvalidArgument(
                "members must not be empty".into(),
            ));
        }
        let exclusive = self.membership_locks.write(conversation_id).await;
        let conversation = self.conversation(conversation_id, true).await?;
        if conversation.kind == ConversationKind::Direct {
            return Err(SyncdError::FailedPrecondition(format!(
                "conversation {conversation_id} is direct: its members are fixed"
            )));
        }
        let (changed, new_members, kind): (Vec<u64>, Vec<u64>, EntryKind) = match change {
            MembershipChange::Add => {
                let changed: Vec<u64> = members
                    .iter()
                    .copied()
                    .filter(|m| !conversation.is_member(*m))
                    .collect();
                let mut all = conversation.members.clone();
                all.extend(&changed);
                all.sort_unstable();
                (changed, all, EntryKind::MembersAdded)
            }
            MembershipChange::Remove => {
                let changed: Vec<u64> = members
                    .iter()
                    .copied()
                    .filter(|m| conversation.is_member(*m))
                    .collect();
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
            return Ok(((*conversation).clone(), 0));
        }
        if new_members.len() > MAX_CONVERSATION_MEMBERS {
            return Err(SyncdError::InvalidArgument(format!(
                "conversation would have {} members, at most {MAX_CONVERSATION_MEMBERS}",
                new_members.len()
            )));
        }
        // A group that grows past the threshold switches to read fanout and
        // stays there (no flapping back and forth around the threshold).
        let read_fanout =
            conversation.read_fanout || new_members.len() > self.config.large_group_threshold;
        let (recipients, index) = match (change, read_fanout) {
            // Write fanout: every member gets the event, the removed included.
            (MembershipChange::Add, false) => (new_members.clone(), Vec::new()),
            (MembershipChange::Remove, false) => (conversation.members.clone(), Vec::new()),
            // Read fanout: the others read the event in the conversation
            // timeline; only the members it concerns get an inbox copy.
            // The switch itself reaches every member: its conv_seq is where
            // their devices start reading the conversation timeline.
            (MembershipChange::Add, true) if !conversation.read_fanout => (
                new_members.clone(),
                index_changes(&new_members, conversation_id, true),
            ),
            (MembershipChange::Add, true) => (
                changed.clone(),
                index_changes(&changed, conversation_id, true),
            ),
            (MembershipChange::Remove, true) => (
                changed.clone(),
                index_changes(&changed, conversation_id, false),
            ),
        };
        let record = Conversation {
            members: new_members,
            read_fanout,
            ..(*conversation).clone()
        };
        let entry = Entry {
            members: changed,
            ..Entry::new(kind, conversation_id)
        };
        let receipt = self
            .commit(
                entry,
                &recipients,
                None,
                Some(record.clone()),
                index,
                vec![Box::new(exclusive)],
            )
            .await?;
        Ok((record, receipt.conv_seq))
    }

    /// The highest seq of a timeline that is safe to read now (see
    /// horizon.rs for why the allocator is asked first).
    async fn readable_through(&self, scope: Scope, id: u64) -> Result<u64> {
        let namespace = match scope {
            Scope::Inbox => Namespace::Inbox,
            Scope::Conversation => Namespace::Conversation,
        };
        let allocated = self.seqs.current(namespace, id).await?;
        Ok(safe_limit(&self.horizon, (scope, id), allocated))
    }

    /// Inbox entries after the checkpoint, never past the sync horizon.
    pub async fn sync(
        &self,
        principal: &Principal,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<SyncPage> {
        let (user_id, device_id) = device_user(principal)?;
        let after = match after_seq {
            Some(seq) => seq,
            None => self.store.checkpoint(user_id, device_id).await?,
        };
        let limit = clamp_limit(limit, DEFAULT_SYNC_LIMIT, MAX_SYNC_LIMIT);
        let through = self.readable_through(Scope::Inbox, user_id).await?;
        let mut entries = self
            .store
            .read_inbox(
                user_id,
                InboxRange {
                    after,
                    through,
                    limit: limit + 1,
                },
            )
            .await?;
        // Read the floor after the entries: retention raises it before it
        // deletes, so any entry this read missed is below the floor seen
        // here. No gap after the checkpoint, no trimming to worry about.
        if entries.first().is_none_or(|e| e.seq != after + 1) {
            let floor = self.store.inbox_floor(user_id).await?;
            if after + 1 < floor {
                return Ok(SyncPage {
                    entries: Vec::new(),
                    has_more: false,
                    checkpoint: after,
                    large_groups: Vec::new(),
                    expired_below: Some(floor),
                });
            }
        }
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        let checkpoint = entries.last().map_or(after, |e| e.seq);
        let mut large_groups = Vec::new();
        for conversation_id in self.store.large_groups(user_id).await? {
            let end = self
                .readable_through(Scope::Conversation, conversation_id)
                .await?
                .saturating_add(1);
            let newest = self
                .store
                .read_conversation(conversation_id, ConversationRange::newest_first(0, end, 1))
                .await?;
            large_groups.push((conversation_id, newest.first().map_or(0, |e| e.conv_seq)));
        }
        Ok(SyncPage {
            entries,
            has_more,
            checkpoint,
            large_groups,
            expired_below: None,
        })
    }

    /// The highest inbox seq a device may be told about right now.
    async fn visible_top(&self, user_id: u64) -> Result<u64> {
        let limit = self.readable_through(Scope::Inbox, user_id).await?;
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
        let conversation = self
            .get_conversation(principal, query.conversation_id)
            .await?;
        let limit = clamp_limit(query.limit, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT);
        let visible_end = self
            .readable_through(Scope::Conversation, conversation.conversation_id)
            .await?
            .saturating_add(1);
        let id = conversation.conversation_id;
        if let Some(after) = query.after {
            if query.before != 0 {
                return Err(SyncdError::InvalidArgument(
                    "set before or after, not both".into(),
                ));
            }
            let mut entries = self
                .store
                .read_conversation(
                    id,
                    ConversationRange::oldest_first(after, visible_end, limit + 1),
                )
                .await?;
            let has_more = entries.len() > limit;
            entries.truncate(limit);
            return Ok(HistoryPage { entries, has_more });
        }
        let before = if query.before == 0 {
            u64::MAX
        } else {
            query.before
        };
        let mut entries = self
            .store
            .read_conversation(
                id,
                ConversationRange::newest_first(0, before.min(visible_end), limit + 1),
            )
            .await?;
        let has_more = entries.len() > limit;
        entries.truncate(limit);
        entries.reverse();
        Ok(HistoryPage { entries, has_more })
    }

    /// The conversation, if the caller may see it (a member, or a service).
    pub async fn get_conversation(
        &self,
        principal: &Principal,
        conversation_id: u64,
    ) -> Result<Conversation> {
        let conversation = self.conversation(conversation_id, false).await?;
        if let Principal::Device { user_id, .. } = principal
            && !conversation.is_member(*user_id)
        {
            return Err(SyncdError::PermissionDenied(format!(
                "user {user_id} is not a member of conversation {conversation_id}"
            )));
        }
        Ok((*conversation).clone())
    }

    /// Starts a push feed for a device whose checkpoint is `after_seq`.
    pub async fn subscribe(
        self: &Arc<Self>,
        principal: &Principal,
        after_seq: u64,
        include_entries: bool,
    ) -> Result<Feed> {
        let (user_id, _) = device_user(principal)?;
        let floor = self.store.inbox_floor(user_id).await?;
        if after_seq + 1 < floor {
            return Err(SyncdError::FailedPrecondition(format!(
                "checkpoint {after_seq} expired: entries below {floor} were trimmed; sync to resync"
            )));
        }
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
            let entries = self
                .engine
                .store
                .read_inbox(
                    self.user_id,
                    InboxRange {
                        after: self.last_sent,
                        through: top,
                        limit: MAX_PUSH_ENTRIES,
                    },
                )
                .await?;
            // As in sync: a gap may be a trim; then the device must pull
            // (and learn that its checkpoint expired) instead.
            let gap = entries.first().is_none_or(|e| e.seq != self.last_sent + 1);
            if gap && self.last_sent + 1 < self.engine.store.inbox_floor(self.user_id).await? {
                Vec::new()
            } else {
                entries
            }
        } else {
            // Far behind: a bare notice; the device pulls with Sync.
            Vec::new()
        };
        self.last_sent = top;
        Ok(Some(PushNotice {
            up_to_seq: top,
            entries,
        }))
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqsvc::{Allocator, AllocatorConfig, MemoryMaxSeqStore};
    use std::collections::HashSet;
    use std::time::Duration;
    use timeline_store::testsuite::{Faults, FaultyStore};
    use timeline_store::{EmbeddedStore, EmbeddedStoreConfig};

    /// The embedded store with faults a real deployment sees (see
    /// `FaultyStore`): with `jitter`, every commit is delayed by a random
    /// 0-2 ms, so writes become durable in a different order than their
    /// seqs were allocated (the situation the sync horizon exists for), and
    /// every inbox read by up to 0.5 ms, so writes start between a reader's
    /// limit and its read. `fail_next_commits` makes commits fail with an
    /// I/O error, writing nothing, like a store that times out.
    type TestStore = FaultyStore<EmbeddedStore>;

    fn test_store(dir: &std::path::Path, jitter: bool) -> TestStore {
        let inner = EmbeddedStore::open(dir, EmbeddedStoreConfig::default()).unwrap();
        let faults = if jitter {
            Faults {
                commit_delay: Duration::from_millis(2),
                inbox_read_delay: Duration::from_micros(500),
                ..Faults::default()
            }
        } else {
            Faults::default()
        };
        FaultyStore::new(inner, Uuid::new_v4().as_u64_pair().0).with_faults(faults)
    }

    #[tokio::test]
    async fn a_failed_event_is_finished_in_the_background_and_a_retry_sees_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(test_store(dir.path(), false));
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        let allocator = Allocator::new(AllocatorConfig::default(), Arc::clone(&seq_store)).unwrap();
        let ids = MsgIdGenerator::open(1, seqsvc::snowflake::system_clock(), seq_store)
            .await
            .unwrap();
        let engine = Engine::new(flaky.clone(), allocator, ids, EngineConfig::default());
        let conversation = group(&engine, 1, vec![2]).await;
        flaky.fail_next_commits(3);
        let id = Uuid::new_v4();
        let first = engine
            .send(device(1, "phone"), message(conversation, "late", Some(id)))
            .await;
        assert!(
            matches!(first, Err(SyncdError::Unavailable(_))),
            "{first:?}"
        );
        // The retry waits for the background attempt, then gets its receipt.
        let retry = engine
            .send(device(1, "phone"), message(conversation, "late", Some(id)))
            .await
            .unwrap();
        assert!(
            retry.duplicate,
            "the retry must not write the message again"
        );
        let inbox = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        let copies: Vec<_> = inbox.entries.iter().filter(|e| e.text == "late").collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].msg_id, retry.receipt.msg_id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_10000_member_group_costs_one_write_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(test_store(dir.path(), false));
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        let allocator = Allocator::new(AllocatorConfig::default(), Arc::clone(&seq_store)).unwrap();
        let ids = MsgIdGenerator::open(1, seqsvc::snowflake::system_clock(), seq_store)
            .await
            .unwrap();
        let engine = Engine::new(store.clone(), allocator, ids, EngineConfig::default());
        let ops = Principal::Service { name: "ops".into() };
        let first: Vec<u64> = (1..=400).collect();
        let created = engine
            .create_conversation(
                ops.clone(),
                NewConversation {
                    kind: ConversationKind::Group,
                    members: first,
                    title: String::new(),
                },
            )
            .await
            .unwrap();
        assert!(!created.read_fanout, "400 members: write fanout");
        let conversation = created.conversation_id;
        for chunk in (401..=10_000u64).collect::<Vec<_>>().chunks(1_000) {
            engine
                .change_members(
                    ops.clone(),
                    conversation,
                    chunk.to_vec(),
                    MembershipChange::Add,
                )
                .await
                .unwrap();
        }
        let record = engine.get_conversation(&ops, conversation).await.unwrap();
        assert_eq!(record.members.len(), 10_000);
        assert!(
            record.read_fanout,
            "switched to read fanout past 500 members"
        );

        let before = store.counters().inbox_copies;
        let sent = engine
            .send(device(5, "d"), message(conversation, "to everyone", None))
            .await
            .unwrap();
        let after = store.counters().inbox_copies;
        assert_eq!(
            after - before,
            0,
            "a message to a large group writes no inbox copies"
        );

        // A member finds it through the sync reply and reads it by conv_seq.
        let page = engine
            .sync(&device(7_777, "d"), Some(0), 100)
            .await
            .unwrap();
        assert!(
            page.entries
                .iter()
                .any(|e| e.kind == EntryKind::MembersAdded),
            "membership events reach the inbox"
        );
        assert_eq!(
            page.large_groups,
            vec![(conversation, sent.receipt.conv_seq)]
        );
        let query = HistoryQuery {
            conversation_id: conversation,
            before: 0,
            after: Some(sent.receipt.conv_seq - 1),
            limit: 10,
        };
        let history = engine.history(&device(7_777, "d"), query).await.unwrap();
        assert_eq!(
            history
                .entries
                .iter()
                .map(|e| e.text.as_str())
                .collect::<Vec<_>>(),
            ["to everyone"]
        );

        // Leaving removes the group from the member's sync reply.
        engine
            .change_members(ops, conversation, vec![7_777], MembershipChange::Remove)
            .await
            .unwrap();
        let page = engine
            .sync(&device(7_777, "d"), Some(0), 1_000)
            .await
            .unwrap();
        assert!(page.large_groups.is_empty());
        assert_eq!(page.entries.last().unwrap().kind, EntryKind::MembersRemoved);
    }

    #[tokio::test]
    async fn retention_trims_inboxes_and_expired_checkpoints_are_told() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn TimelineStore> =
            Arc::new(EmbeddedStore::open(dir.path(), EmbeddedStoreConfig::default()).unwrap());
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        let allocator = Allocator::new(AllocatorConfig::default(), Arc::clone(&seq_store)).unwrap();
        let ids = MsgIdGenerator::open(1, seqsvc::snowflake::system_clock(), seq_store)
            .await
            .unwrap();
        let config = EngineConfig {
            retention: Retention {
                max_entries: 10,
                ..Retention::default()
            },
            ..EngineConfig::default()
        };
        let engine = Engine::new(store, allocator, ids, config);
        let conversation = group(&engine, 1, vec![2]).await;
        let early = engine
            .sync(&device(2, "early"), Some(0), 100)
            .await
            .unwrap()
            .checkpoint;
        for i in 0..30 {
            engine
                .send(device(1, "d"), message(conversation, &i.to_string(), None))
                .await
                .unwrap();
        }
        let floor = engine.trim_user(2).await.unwrap();
        assert_eq!(floor, 31 - 10 + 1, "31 entries, the newest 10 kept");
        // A device far behind is told, with no entries: never a silent gap.
        let expired = engine
            .sync(&device(2, "early"), Some(early), 100)
            .await
            .unwrap();
        assert_eq!(expired.expired_below, Some(floor));
        assert!(expired.entries.is_empty());
        assert!(matches!(
            engine.subscribe(&device(2, "early"), early, true).await,
            Err(SyncdError::FailedPrecondition(_))
        ));
        // From the floor on, sync works as usual; history keeps everything.
        let resumed = engine
            .sync(&device(2, "early"), Some(floor - 1), 100)
            .await
            .unwrap();
        assert_eq!(resumed.entries.len(), 10);
        assert_eq!(resumed.expired_below, None);
        let query = HistoryQuery {
            conversation_id: conversation,
            before: 0,
            after: Some(0),
            limit: 100,
        };
        assert_eq!(
            engine
                .history(&device(2, "d"), query)
                .await
                .unwrap()
                .entries
                .len(),
            31
        );
    }

    async fn engine(dir: &std::path::Path, jitter: bool) -> Arc<Engine> {
        let store: Arc<dyn TimelineStore> = Arc::new(test_store(dir, jitter));
        let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
        let allocator = Allocator::new(
            AllocatorConfig {
                step: 16,
                section_size: 4,
            },
            Arc::clone(&seq_store),
        )
        .unwrap();
        let ids = MsgIdGenerator::open(1, seqsvc::snowflake::system_clock(), seq_store)
            .await
            .unwrap();
        Engine::new(store, allocator, ids, EngineConfig::default())
    }

    fn device(user_id: u64, device_id: &str) -> Principal {
        Principal::Device {
            user_id,
            device_id: device_id.into(),
        }
    }

    async fn group(engine: &Arc<Engine>, creator: u64, members: Vec<u64>) -> u64 {
        engine
            .create_conversation(
                device(creator, "d"),
                NewConversation {
                    kind: ConversationKind::Group,
                    members,
                    title: String::new(),
                },
            )
            .await
            .unwrap()
            .conversation_id
    }

    fn message(conversation_id: u64, text: &str, id: Option<Uuid>) -> SendCommand {
        SendCommand {
            conversation_id,
            text: text.into(),
            client_msg_id: id,
            sender_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tight_loop_sync_never_skips_when_commits_land_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path(), true).await;
        let mut conversations = Vec::new();
        for members in [vec![1, 2, 3], vec![1, 4], vec![1, 2, 4, 5], vec![1, 5]] {
            conversations.push(group(&engine, 1, members).await);
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (engine, done) = (Arc::clone(&engine), Arc::clone(&done));
            tokio::spawn(async move {
                let me = device(1, "tight");
                let (mut checkpoint, mut seen) = (0, Vec::new());
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    let page = engine.sync(&me, Some(checkpoint), 3).await.unwrap();
                    checkpoint = page.checkpoint;
                    seen.extend(page.entries.iter().map(|e| e.seq));
                    if finished && !page.has_more {
                        return seen;
                    }
                    // An empty read completes without awaiting anything; yield
                    // so this loop cannot starve the senders' tasks.
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut senders = tokio::task::JoinSet::new();
        for task in 0..24u64 {
            let engine = Arc::clone(&engine);
            let conversation = conversations[task as usize % conversations.len()];
            senders.spawn(async move {
                for i in 0..25 {
                    engine
                        .send(
                            device(1, "s"),
                            message(conversation, &format!("{task}/{i}"), None),
                        )
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(result) = senders.join_next().await {
            result.unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let seen = reader.await.unwrap();
        let all: Vec<u64> = engine
            .store
            .read_inbox(
                1,
                InboxRange {
                    after: 0,
                    through: u64::MAX,
                    limit: 10_000,
                },
            )
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(all.len(), 4 + 24 * 25);
        let entries = engine
            .store
            .read_inbox(
                1,
                InboxRange {
                    after: 0,
                    through: u64::MAX,
                    limit: 10_000,
                },
            )
            .await
            .unwrap();
        let mut last_conv_seq = std::collections::HashMap::new();
        for entry in &entries {
            let last = last_conv_seq.entry(entry.conversation_id).or_insert(0);
            assert!(
                entry.conv_seq > *last,
                "inbox order differs from conv_seq order"
            );
            *last = entry.conv_seq;
        }
        let missing: Vec<_> = all.iter().filter(|s| !seen.contains(s)).collect();
        let extra: Vec<_> = seen.iter().filter(|s| !all.contains(s)).collect();
        assert_eq!(
            seen, all,
            "the tight-loop reader skipped an entry: missing {missing:?} extra {extra:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_retries_of_one_send_store_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path(), true).await;
        let conversation = group(&engine, 1, vec![1, 2]).await;
        let id = Uuid::new_v4();
        let mut retries = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let engine = Arc::clone(&engine);
            retries.spawn(async move {
                engine
                    .send(device(1, "phone"), message(conversation, "once", Some(id)))
                    .await
            });
        }
        let mut msg_ids = HashSet::new();
        let mut firsts = 0;
        while let Some(outcome) = retries.join_next().await {
            let outcome = outcome.unwrap().unwrap();
            msg_ids.insert(outcome.receipt.msg_id);
            firsts += usize::from(!outcome.duplicate);
        }
        assert_eq!((msg_ids.len(), firsts), (1, 1));
        let inbox = engine
            .sync(&device(2, "tablet"), Some(0), 100)
            .await
            .unwrap();
        assert_eq!(inbox.entries.iter().filter(|e| e.text == "once").count(), 1);
        // The same id for another conversation is a client bug: refused.
        let other = group(&engine, 1, vec![1, 3]).await;
        let reused = engine
            .send(device(1, "phone"), message(other, "x", Some(id)))
            .await;
        assert!(matches!(reused, Err(SyncdError::InvalidArgument(_))));
        // Another user may use the same UUID independently.
        let theirs = engine
            .send(device(2, "phone"), message(conversation, "mine", Some(id)))
            .await
            .unwrap();
        assert!(!theirs.duplicate);
    }

    #[tokio::test]
    async fn membership_rules_and_access_checks() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path(), false).await;
        let ops = Principal::Service { name: "ops".into() };
        let conversation = group(&engine, 1, vec![2]).await;
        // Devices cannot change members; services can, and every member hears.
        let denied = engine
            .change_members(device(1, "d"), conversation, vec![3], MembershipChange::Add)
            .await;
        assert!(matches!(denied, Err(SyncdError::PermissionDenied(_))));
        let (record, conv_seq) = engine
            .change_members(ops.clone(), conversation, vec![3, 2], MembershipChange::Add)
            .await
            .unwrap();
        assert_eq!(record.members, vec![1, 2, 3]);
        assert!(conv_seq > 0);
        let (_, unchanged) = engine
            .change_members(ops.clone(), conversation, vec![3], MembershipChange::Add)
            .await
            .unwrap();
        assert_eq!(unchanged, 0, "adding an existing member is a no-op");
        engine
            .change_members(ops.clone(), conversation, vec![2], MembershipChange::Remove)
            .await
            .unwrap();
        // The removed member learned of the removal, then lost access.
        let removed = engine.sync(&device(2, "d"), Some(0), 100).await.unwrap();
        let kinds: Vec<EntryKind> = removed.entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::ConversationCreated,
                EntryKind::MembersAdded,
                EntryKind::MembersRemoved
            ]
        );
        let history = HistoryQuery {
            conversation_id: conversation,
            before: 0,
            after: None,
            limit: 10,
        };
        assert!(matches!(
            engine.history(&device(2, "d"), history).await,
            Err(SyncdError::PermissionDenied(_))
        ));
        assert!(matches!(
            engine
                .send(device(2, "d"), message(conversation, "x", None))
                .await,
            Err(SyncdError::PermissionDenied(_))
        ));
        // Direct conversations have fixed members.
        let direct = engine
            .create_conversation(
                device(1, "d"),
                NewConversation {
                    kind: ConversationKind::Direct,
                    members: vec![4],
                    title: String::new(),
                },
            )
            .await
            .unwrap();
        assert_eq!(direct.members, vec![1, 4]);
        let fixed = engine
            .change_members(
                ops.clone(),
                direct.conversation_id,
                vec![5],
                MembershipChange::Add,
            )
            .await;
        assert!(matches!(fixed, Err(SyncdError::FailedPrecondition(_))));
        let three = NewConversation {
            kind: ConversationKind::Direct,
            members: vec![4, 5],
            title: String::new(),
        };
        assert!(matches!(
            engine.create_conversation(device(1, "d"), three).await,
            Err(SyncdError::InvalidArgument(_))
        ));
        // Services have no inbox; acks cannot run ahead of the inbox.
        assert!(matches!(
            engine.sync(&ops, None, 10).await,
            Err(SyncdError::PermissionDenied(_))
        ));
        assert!(matches!(
            engine.ack(&device(1, "d"), 1_000_000).await,
            Err(SyncdError::InvalidArgument(_))
        ));
        let top = engine
            .sync(&device(1, "d"), None, 100)
            .await
            .unwrap()
            .checkpoint;
        assert_eq!(engine.ack(&device(1, "d"), top).await.unwrap(), top);
        assert!(
            engine
                .sync(&device(1, "d"), None, 100)
                .await
                .unwrap()
                .entries
                .is_empty(),
            "sync resumes from the ack"
        );
    }

    #[tokio::test]
    async fn push_feed_delivers_entries_and_coalesces_when_far_behind() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path(), false).await;
        let conversation = group(&engine, 1, vec![2]).await;
        let mut feed = engine
            .subscribe(&device(2, "watch"), 0, true)
            .await
            .unwrap();
        let first = feed.next().await.unwrap().unwrap();
        assert_eq!(
            first.entries.len(),
            1,
            "the creation event is pushed at once"
        );
        engine
            .send(device(1, "d"), message(conversation, "pushed", None))
            .await
            .unwrap();
        let notice = feed.next().await.unwrap().unwrap();
        assert_eq!(
            notice
                .entries
                .iter()
                .map(|e| e.text.as_str())
                .collect::<Vec<_>>(),
            ["pushed"]
        );
        assert_eq!(notice.up_to_seq, notice.entries[0].seq);
        for i in 0..(MAX_PUSH_ENTRIES + 10) {
            engine
                .send(device(1, "d"), message(conversation, &i.to_string(), None))
                .await
                .unwrap();
        }
        let behind = feed.next().await.unwrap().unwrap();
        assert!(
            behind.entries.is_empty(),
            "far behind: a bare notice, the device pulls"
        );
        assert!(behind.up_to_seq >= notice.up_to_seq + MAX_PUSH_ENTRIES as u64);
        engine.begin_shutdown();
        assert!(
            feed.next().await.unwrap().is_none(),
            "feeds end on shutdown"
        );
    }
}
