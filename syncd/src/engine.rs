//! The engine: syncd's core behind one facade, free of gRPC (plain requests
//! in, plain results or [`SyncdError`](crate::SyncdError)s out, testable
//! without a socket).
//!
//! [`Engine`] owns one value per concept and delegates each call to it (see
//! the module map in the crate doc). Mutating calls run to completion in a
//! tracked task of their own ([`Lifecycle::to_completion`]), so a caller that
//! disconnects cannot cancel a write halfway.

use crate::amend::Amender;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::Result;
use crate::history::History;
use crate::horizon::Horizon;
use crate::idempotency::Idempotency;
use crate::inbox::Inbox;
use crate::lifecycle::Lifecycle;
use crate::limits::{
    DEFAULT_LARGE_GROUP_THRESHOLD, DEFAULT_SUBSCRIBER_STALL_LIMIT, MAX_HIDDEN_PER_CONVERSATION,
    MAX_INFLIGHT_COMMIT_BYTES,
};
use crate::membership::Membership;
use crate::observer::{CommitObserver, Observers};
use crate::push::{GroupHub, Hub, Push};
use crate::read_state::ReadState;
use crate::retention::{Retainer, RetentionQueue};
use crate::search_index::SearchIndexing;
use crate::send::Sender;
use crate::visibility::Visibility;
use crate::writer::EventWriter;
use seqsvc::MsgIdGenerator;
use seqsvc::client::SeqSource;
use std::sync::Arc;
use std::time::Duration;
use timeline_store::{Conversation, TimelineStore};

pub use crate::amend::{AmendCommand, AmendOutcome, HideCommand, Operation, Windows};
pub use crate::event::{MembershipChange, now_ms};
pub use crate::history::{HistoryPage, HistoryQuery};
pub use crate::inbox::SyncPage;
pub use crate::membership::NewConversation;
pub use crate::push::{Feed, PushNotice};
pub use crate::read_state::{
    ConversationState, ListPage, ListQuery, MarkResult, ReadReceipts, ReadStateSummary,
};
pub use crate::retention::Retention;
pub use crate::search_index::{SearchQuery, SearchResult};
pub use crate::send::{SendCommand, SendOutcome};

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Groups with more members than this use read fanout: messages are
    /// stored once, in the conversation timeline, instead of once per member.
    pub large_group_threshold: usize,
    /// A subscriber whose queue stays full this long is disconnected.
    pub subscriber_stall_limit: Duration,
    pub retention: Retention,
    /// Bytes of events being committed at once (see
    /// [`MAX_INFLIGHT_COMMIT_BYTES`]).
    pub commit_budget_bytes: usize,
    /// How long senders may recall and edit their messages.
    pub windows: Windows,
    /// Conversations one user may be a member of at once (see
    /// [`crate::limits::MAX_CONVERSATIONS_PER_USER`]).
    pub max_conversations_per_user: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            large_group_threshold: DEFAULT_LARGE_GROUP_THRESHOLD,
            subscriber_stall_limit: DEFAULT_SUBSCRIBER_STALL_LIMIT,
            retention: Retention::default(),
            commit_budget_bytes: MAX_INFLIGHT_COMMIT_BYTES,
            windows: Windows::default(),
            max_conversations_per_user: crate::limits::MAX_CONVERSATIONS_PER_USER,
        }
    }
}

pub struct Engine {
    config: EngineConfig,
    lifecycle: Arc<Lifecycle>,
    sender: Arc<Sender>,
    amender: Arc<Amender>,
    membership: Arc<Membership>,
    inbox: Inbox,
    history: History,
    push: Push,
    retainer: Arc<Retainer>,
    read_state: Arc<ReadState>,
    /// For health: the writer knows how the store and the allocator fare.
    writer: Arc<EventWriter>,
    seqs: SeqSource,
    /// History search, when the node keeps an index.
    search: Option<Arc<SearchIndexing>>,
}

impl Engine {
    /// `seqs`: an in-process [`seqsvc::Allocator`] or a seqsvc cluster.
    pub fn new(
        store: Arc<dyn TimelineStore>,
        seqs: impl Into<SeqSource>,
        ids: MsgIdGenerator,
        config: EngineConfig,
    ) -> Arc<Self> {
        Self::build(store, seqs.into(), ids, config, None)
    }

    /// An engine that keeps `index` fed from its timelines and answers
    /// searches from it.
    pub fn with_search(
        store: Arc<dyn TimelineStore>,
        seqs: impl Into<SeqSource>,
        ids: MsgIdGenerator,
        config: EngineConfig,
        index: Arc<dyn search::SearchIndex>,
    ) -> Arc<Self> {
        Self::build(store, seqs.into(), ids, config, Some(index))
    }

    /// [`with_search`](Self::with_search) when the node keeps an index,
    /// [`new`](Self::new) when search is off.
    pub fn with_optional_search(
        store: Arc<dyn TimelineStore>,
        seqs: impl Into<SeqSource>,
        ids: MsgIdGenerator,
        config: EngineConfig,
        index: Option<Arc<dyn search::SearchIndex>>,
    ) -> Arc<Self> {
        Self::build(store, seqs.into(), ids, config, index)
    }

    fn build(
        store: Arc<dyn TimelineStore>,
        seqs: SeqSource,
        ids: MsgIdGenerator,
        config: EngineConfig,
        index: Option<Arc<dyn search::SearchIndex>>,
    ) -> Arc<Self> {
        let lifecycle = Arc::new(Lifecycle::default());
        let horizon = Horizon::new();
        let visibility = Arc::new(Visibility::new(
            Arc::clone(&store),
            seqs.clone(),
            Arc::clone(&horizon),
        ));
        let directory = Arc::new(Directory::new(Arc::clone(&store)));
        // Sends and creations share the client id locks (one key space).
        let idempotency = Arc::new(Idempotency::new(Arc::clone(&store)));
        let hub = Hub::new();
        let groups = GroupHub::new();
        let retention_queue = Arc::new(RetentionQueue::new(&config.retention));
        // Order: the record is cached before subscribers hear of the event.
        let mut observers: Vec<Arc<dyn CommitObserver>> = vec![
            directory.clone(),
            hub.clone(),
            groups.clone(),
            retention_queue.clone(),
        ];
        let search = index.map(|index| {
            SearchIndexing::new(Arc::clone(&store), Some(Arc::clone(&visibility)), index)
        });
        if let Some(search) = &search {
            observers.push(search.feed());
        }
        let observers = Observers::new(observers);
        horizon.on_release(observers.release_hook());
        let writer = Arc::new(EventWriter::new(
            Arc::clone(&store),
            seqs.clone(),
            ids,
            horizon,
            observers,
            Arc::clone(&lifecycle),
            config.commit_budget_bytes,
        ));
        let read_state = Arc::new(ReadState::new(
            Arc::clone(&store),
            Arc::clone(&visibility),
            Arc::clone(&directory),
            Arc::clone(&writer),
        ));
        Arc::new(Self {
            read_state: Arc::clone(&read_state),
            sender: Arc::new(Sender::new(
                Arc::clone(&directory),
                Arc::clone(&writer),
                Arc::clone(&idempotency),
            )),
            amender: Arc::new(Amender::new(
                Arc::clone(&store),
                Arc::clone(&directory),
                Arc::clone(&writer),
                Arc::clone(&idempotency),
                Arc::clone(&visibility),
                config.windows,
            )),
            membership: Arc::new(Membership::new(
                Arc::clone(&directory),
                Arc::clone(&writer),
                idempotency,
                seqs.clone(),
                (
                    config.large_group_threshold,
                    config.max_conversations_per_user,
                ),
                Arc::clone(&read_state),
            )),
            writer,
            seqs,
            inbox: Inbox::new(Arc::clone(&store), Arc::clone(&visibility)),
            history: History::new(
                Arc::clone(&store),
                directory,
                Arc::clone(&visibility),
                Arc::clone(&read_state),
            ),
            push: Push::new(
                Arc::clone(&store),
                (hub, groups),
                Arc::clone(&visibility),
                Arc::clone(&lifecycle),
            ),
            retainer: Arc::new(Retainer::new(
                config.retention.clone(),
                store,
                visibility,
                retention_queue,
                read_state,
            )),
            lifecycle,
            config,
            search,
        })
    }

    #[cfg(test)]
    pub(crate) fn read_state(&self) -> &Arc<ReadState> {
        &self.read_state
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Starts the engine's own loops (retention, the receipt sweep), as
    /// tracked tasks.
    pub fn start(&self) {
        self.retainer.start(&self.lifecycle);
        self.retainer.start_receipt_sweep(&self.lifecycle);
        if let Some(search) = &self.search {
            search.start(&self.lifecycle);
        }
    }

    /// The search indexing, when this engine keeps an index.
    pub fn search_indexing(&self) -> Option<&Arc<SearchIndexing>> {
        self.search.as_ref()
    }

    pub async fn search(&self, principal: &Principal, query: SearchQuery) -> Result<SearchResult> {
        match &self.search {
            Some(search) => {
                // Checked and admitted before the read state is folded.
                let admitted = search.admit(principal, query)?;
                let hidden = crate::search_index::hidden(
                    &self.read_state,
                    principal,
                    admitted.conversation_id(),
                )
                .await?;
                search.search(admitted, hidden).await
            }
            None => Err(crate::error::SyncdError::FailedPrecondition(
                "history search is off on this node: it keeps no search index".into(),
            )),
        }
    }

    /// Ends every push feed and loop (so graceful shutdown does not wait on
    /// streams that never finish by themselves).
    pub fn begin_shutdown(&self) {
        self.lifecycle.begin_shutdown();
    }

    /// Begins shutdown and waits for every task the engine spawned.
    pub async fn shutdown(&self) {
        self.lifecycle.wait_for_tasks().await;
    }

    /// Why the node failed for good (its store is poisoned), if it has.
    pub fn failure(&self) -> Option<String> {
        self.lifecycle.failure()
    }

    /// Whether the node can serve now, and if not why (see
    /// [`crate::health`]).
    pub async fn health(&self) -> crate::health::Health {
        crate::health::check(&self.lifecycle, &self.writer, &self.seqs).await
    }

    /// Resolves with the reason once the node has failed for good.
    pub async fn failed(&self) -> String {
        self.lifecycle.failed().await
    }

    /// Tasks the engine is running (calls in progress, events finished in
    /// the background, loops, push pumps).
    pub fn running_tasks(&self) -> usize {
        self.lifecycle.running_tasks()
    }

    /// Turns true when shutdown begins: loops started outside the engine
    /// (the revocation feed) stop on it.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lifecycle.stopping()
    }

    /// Runs `task` as a task tracked by the engine's lifecycle, so shutdown
    /// waits for it (the gRPC layer's push stream pumps).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.lifecycle.spawn(task);
    }

    // The calls below delegate to the module that owns each; their docs
    // live there.

    pub async fn send(&self, principal: Principal, command: SendCommand) -> Result<SendOutcome> {
        let sender = Arc::clone(&self.sender);
        let work = async move { sender.send(principal, command).await };
        self.lifecycle.to_completion("send", work).await
    }

    /// Edits, recalls or deletes (for everyone) a message.
    pub async fn amend(
        &self,
        principal: Principal,
        operation: Operation,
        command: AmendCommand,
    ) -> Result<AmendOutcome> {
        let amender = Arc::clone(&self.amender);
        let work = async move { amender.amend(principal, operation, command).await };
        self.lifecycle.to_completion("amend", work).await
    }

    /// Deletes a message for the caller only
    /// ([`EntryKind::DeleteForMe`](timeline_store::EntryKind)) or clears
    /// their history through a point.
    pub async fn hide(
        &self,
        principal: Principal,
        kind: timeline_store::EntryKind,
        command: HideCommand,
    ) -> Result<AmendOutcome> {
        let amender = Arc::clone(&self.amender);
        let read_state = Arc::clone(&self.read_state);
        let work = async move {
            let conversation_id = command.conversation_id;
            let requested = command.conv_seq;
            let mut _one_hide = None;
            if kind == timeline_store::EntryKind::DeleteForMe {
                let (user_id, _) = crate::access::device_user(&principal)?;
                _one_hide = Some(read_state.one_hide(user_id, conversation_id).await);
                let hidden = read_state.hidden_count(user_id, conversation_id).await?;
                if hidden >= MAX_HIDDEN_PER_CONVERSATION {
                    return Err(crate::error::SyncdError::ResourceExhausted(format!(
                        "{hidden} messages of conversation {conversation_id} are deleted for you \
                         one by one, at most {MAX_HIDDEN_PER_CONVERSATION}: clear the history \
                         through a point instead"
                    )));
                }
            }
            if kind == timeline_store::EntryKind::ClearHistory {
                // A read marker that also clears: one event.
                let cleared = read_state
                    .clear(&principal, conversation_id, requested)
                    .await?;
                return Ok(AmendOutcome {
                    receipt: timeline_store::Receipt {
                        conversation_id,
                        conv_seq: cleared.read_through,
                        ..timeline_store::Receipt::default()
                    },
                    duplicate: false,
                    target_conv_seq: cleared.read_through,
                });
            }
            let outcome = amender.hide(principal, kind, command).await?;
            Ok(outcome)
        };
        self.lifecycle.to_completion("hide", work).await
    }

    pub async fn mark_read(
        &self,
        principal: Principal,
        conversation_id: u64,
        through: Option<u64>,
    ) -> Result<MarkResult> {
        let read_state = Arc::clone(&self.read_state);
        let work = async move { read_state.mark(&principal, conversation_id, through).await };
        self.lifecycle.to_completion("mark", work).await
    }

    pub async fn list_conversations(
        &self,
        principal: &Principal,
        query: ListQuery,
    ) -> Result<ListPage> {
        self.read_state.list(principal, query).await
    }

    pub async fn read_receipts(
        &self,
        principal: &Principal,
        conversation_id: u64,
        conv_seq: u64,
        page: crate::read_state::ReceiptsPage,
    ) -> Result<ReadReceipts> {
        self.read_state
            .receipts(principal, conversation_id, conv_seq, page)
            .await
    }

    /// The caller's unread totals and the state of the conversations that
    /// changed after the page's starting checkpoint (and of large groups
    /// with anything unread), at most
    /// [`crate::read_state::MAX_SUMMARY_CONVERSATIONS`].
    pub async fn read_state_summary(
        &self,
        principal: &Principal,
        page: &SyncPage,
    ) -> Result<ReadStateSummary> {
        let (user_id, _) = crate::access::device_user(principal)?;
        let summary = self.read_state.summary(user_id, page.after).await?;
        Ok(summary)
    }
}

impl Engine {
    pub async fn create_conversation(
        &self,
        principal: Principal,
        request: NewConversation,
    ) -> Result<Conversation> {
        let membership = Arc::clone(&self.membership);
        let work = async move { membership.create(principal, request).await };
        self.lifecycle.to_completion("create", work).await
    }

    pub async fn change_members(
        &self,
        principal: Principal,
        conversation_id: u64,
        members: Vec<u64>,
        change: MembershipChange,
    ) -> Result<(Conversation, u64)> {
        let membership = Arc::clone(&self.membership);
        let work =
            async move { (membership.change(&principal, conversation_id, members, change)).await };
        self.lifecycle.to_completion("membership", work).await
    }

    /// A page of the conversation's members (see [`Membership::list`]).
    pub async fn list_members(
        &self,
        principal: &Principal,
        conversation_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<crate::membership::MemberPage> {
        self.membership
            .list(principal, conversation_id, after, limit)
            .await
    }

    pub async fn sync(
        &self,
        principal: &Principal,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<SyncPage> {
        self.inbox.sync(principal, after_seq, limit).await
    }

    pub async fn ack(&self, principal: &Principal, seq: u64) -> Result<u64> {
        self.inbox.ack(principal, seq).await
    }

    pub async fn history(&self, principal: &Principal, query: HistoryQuery) -> Result<HistoryPage> {
        self.history.history(principal, query).await
    }

    pub async fn get_conversation(
        &self,
        principal: &Principal,
        conversation_id: u64,
    ) -> Result<Conversation> {
        self.history
            .get_conversation(principal, conversation_id)
            .await
    }

    pub async fn subscribe(
        &self,
        principal: &Principal,
        after_seq: u64,
        include_entries: bool,
    ) -> Result<Feed> {
        self.push
            .subscribe(principal, after_seq, include_entries)
            .await
    }

    pub async fn trim_user(&self, user_id: u64) -> Result<u64> {
        self.retainer.trim_user(user_id).await
    }
}
