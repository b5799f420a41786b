//! History search in syncd: feeding the index from the conversation
//! timelines, and answering searches with the caller's authorisation.
//!
//! The index ([`search::SearchIndex`]) is a projection of the timelines.
//! [`feed::Feed`], an observer of committed events, only hints which
//! conversations moved; the indexer reads each such conversation's
//! timeline from the store, from the index's checkpoint up to what is
//! readable now ([`Visibility`]: never past a lower `conv_seq` still in
//! flight), and applies it with the new checkpoint in one commit
//! ([`round`]: many conversations per commit, taken in turn, the one
//! waiting longest first, up to a budget of entries and bytes). A dropped
//! hint, a crash or a restart therefore loses nothing: a scan of every
//! conversation ([`timeline_store::ConversationScan`]) at start, after a
//! dropped hint and every [`SEARCH_SCAN_INTERVAL`] (the events other nodes
//! commit) finds the timelines that are ahead of the index. Rounds fed by
//! hints commit at most once per [`SEARCH_COMMIT_INTERVAL`] unless the
//! last one filled its budget; the scans' catch-up rounds run back to back.
//!
//! Membership intervals live in the index itself, fed from the same
//! timeline entries as the messages, so they are always at the same point
//! of the conversation as its documents.

pub mod apply;
pub mod feed;
mod round;

use crate::auth::Principal;
use crate::error::{Result, SyncdError};
use crate::horizon::Scope;
use crate::lifecycle::{Lifecycle, stopped};
use crate::limits::{
    MAX_CONCURRENT_SEARCHES, MAX_SEARCHES_PER_USER, SEARCH_BATCH_CONVERSATIONS,
    SEARCH_COMMIT_INTERVAL, SEARCH_LAG_CONVERSATIONS, SEARCH_RETRY_DELAY, SEARCH_SCAN_INTERVAL,
    SEARCH_SCAN_PAGE,
};
use crate::shares::{Share, Shares};
use crate::visibility::Visibility;
use feed::Feed;
use search::{SearchIndex, SearchPage, SearchRequest, Searcher, SortOrder};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use timeline_store::{ConversationRange, TimelineStore};

/// A search as the API asks it (the engine adds who asks).
#[derive(Clone, Debug, Default)]
pub struct SearchQuery {
    pub query: String,
    pub conversation_id: Option<u64>,
    pub sender_id: Option<u64>,
    pub sent_from_ms: Option<i64>,
    pub sent_before_ms: Option<i64>,
    pub order: SortOrder,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// A page of hits, and how far the index is behind the timelines.
#[derive(Clone, Debug)]
pub struct SearchResult {
    pub page: SearchPage,
    /// Readable events (of the searched conversation, or of all) this node
    /// knows of that the index does not hold yet.
    pub lagging_events: u64,
    /// The index is scanning for timelines ahead of it (after a start or a
    /// dropped hint): more may be missing than `lagging_events` says.
    pub catching_up: bool,
}

pub struct SearchIndexing {
    store: Arc<dyn TimelineStore>,
    /// What is readable now; `None` offline (a rebuild, with nothing in
    /// flight): the whole stored timeline.
    visibility: Option<Arc<Visibility>>,
    index: Arc<dyn SearchIndex>,
    feed: Arc<Feed>,
    scanning: AtomicBool,
    /// Searches running now: each holds a blocking thread for up to the
    /// query deadline, and reads share that pool.
    searches: Arc<tokio::sync::Semaphore>,
    /// Each user's share of them (only users holding a search are in it).
    searches_per_user: Arc<Shares<u64>>,
}

/// A checked search holding one of the node's search slots.
#[derive(Debug)]
pub struct AdmittedSearch {
    request: SearchRequest,
    permit: tokio::sync::OwnedSemaphorePermit,
    _share: Option<Share<u64>>,
}

impl AdmittedSearch {
    pub fn conversation_id(&self) -> Option<u64> {
        self.request.conversation_id
    }
}

impl SearchIndexing {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        visibility: Option<Arc<Visibility>>,
        index: Arc<dyn SearchIndex>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            visibility,
            index,
            feed: Arc::new(Feed::default()),
            scanning: AtomicBool::new(true),
            searches: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SEARCHES)),
            searches_per_user: Shares::new(MAX_SEARCHES_PER_USER),
        })
    }

    /// The observer to register on the commit path.
    pub fn feed(&self) -> Arc<Feed> {
        Arc::clone(&self.feed)
    }

    /// Starts the indexer as a tracked task: a scan first, then hints, a
    /// scan again after a dropped hint and every [`SEARCH_SCAN_INTERVAL`].
    pub fn start(self: &Arc<Self>, lifecycle: &Lifecycle) {
        let this = Arc::clone(self);
        let mut stopping = lifecycle.stopping();
        lifecycle.spawn(async move {
            // A shared index (OpenSearch) may have been indexed by other
            // nodes since this one opened it: a cluster node that becomes
            // the writer goes on from where the earlier writers got, not
            // from what it read at its start. Here, off the takeover's
            // path; on failure the index is read from lower checkpoints,
            // and stretches sent again are refused or rewritten the same.
            let index = Arc::clone(&this.index);
            tokio::select! {
                reloaded = tokio::task::spawn_blocking(move || index.reload()) => {
                    let failed = match reloaded {
                        Ok(reloaded) => reloaded.err().map(|e| e.to_string()),
                        Err(panicked) => Some(panicked.to_string()),
                    };
                    if let Some(error) = failed {
                        tracing::warn!(%error, "search index: checkpoints not read again");
                    }
                }
                () = stopped(&mut stopping) => return,
            }
            let mut scan_due = true;
            loop {
                if scan_due {
                    this.scanning.store(true, Ordering::SeqCst);
                    match this.scan().await {
                        Ok(()) => {
                            scan_due = false;
                            this.scanning.store(false, Ordering::SeqCst);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "search index scan failed; retrying");
                            tokio::select! {
                                () = tokio::time::sleep(SEARCH_RETRY_DELAY) => continue,
                                () = stopped(&mut stopping) => return,
                            }
                        }
                    }
                }
                let batch = this.feed.batch(SEARCH_BATCH_CONVERSATIONS);
                if !batch.is_empty() {
                    let round_started = tokio::time::Instant::now();
                    let candidates: Vec<u64> = batch.iter().map(|&(c, _)| c).collect();
                    // A round that filled its budget leaves work behind:
                    // the next one starts at once (a backlog is indexed at
                    // the rate commits allow, not one budget per interval).
                    let mut full = false;
                    match this.round(&candidates).await {
                        Ok(stretches) => {
                            full = stretches.len() < candidates.len()
                                || stretches.iter().any(|s| !s.done);
                            for stretch in &stretches {
                                this.feed.settle(stretch.conversation, stretch.through);
                            }
                            // Heads the store cannot serve yet (nothing
                            // moved, and they are still pending): wait for
                            // news rather than spin on them.
                            let stuck = !stretches.iter().any(|s| s.moved())
                                && stretches
                                    .iter()
                                    .any(|s| this.feed.head_of(s.conversation).is_some());
                            if stuck {
                                tokio::select! {
                                    () = tokio::time::sleep(SEARCH_RETRY_DELAY) => {}
                                    () = this.feed.notified() => {}
                                    () = stopped(&mut stopping) => return,
                                }
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "search indexing failed; retrying");
                            tokio::select! {
                                () = tokio::time::sleep(SEARCH_RETRY_DELAY) => {}
                                () = stopped(&mut stopping) => return,
                            }
                        }
                    }
                    // Otherwise at most one commit per interval: the hints
                    // of what is sent meanwhile gather into the next round,
                    // so a commit's fixed cost (a segment, its files, the
                    // deletes it applies) is shared by more entries.
                    let next_round = if full {
                        tokio::time::Instant::now()
                    } else {
                        round_started + SEARCH_COMMIT_INTERVAL
                    };
                    tokio::select! {
                        // Stopping wins over a round that is due as well.
                        biased;
                        () = stopped(&mut stopping) => return,
                        () = tokio::time::sleep_until(next_round) => {}
                    }
                    continue;
                }
                if this.feed.take_overflow() {
                    scan_due = true;
                    continue;
                }
                tokio::select! {
                    () = this.feed.notified() => {}
                    () = tokio::time::sleep(SEARCH_SCAN_INTERVAL) => scan_due = true,
                    () = stopped(&mut stopping) => return,
                }
            }
        });
    }

    /// Indexes every conversation whose timeline is ahead of the index.
    pub async fn scan(&self) -> Result<()> {
        let mut after = None;
        loop {
            let ids = self.store.conversation_ids(after, SEARCH_SCAN_PAGE).await?;
            let mut ahead = Vec::new();
            for &id in &ids {
                let checkpoint = self.index.checkpoint(id)?;
                let readable = self.readable(id).await?;
                if readable > checkpoint {
                    ahead.push(id);
                }
            }
            self.catch_up(ahead.into()).await?;
            if ids.len() < SEARCH_SCAN_PAGE {
                return Ok(());
            }
            after = ids.last().copied();
        }
    }

    /// The highest `conv_seq` of the conversation safe to index: every
    /// lower one is stored or never will be.
    async fn readable(&self, conversation: u64) -> Result<u64> {
        match &self.visibility {
            Some(visibility) => {
                visibility
                    .readable_through(Scope::Conversation, conversation)
                    .await
            }
            None => {
                let newest = ConversationRange::newest_first(0, u64::MAX, 1);
                let last = self.store.read_conversation(conversation, newest).await?;
                Ok(last.first().map_or(0, |e| e.conv_seq))
            }
        }
    }

    /// Brings each conversation up to what is readable now, in rounds
    /// taking them in turn: one that is still behind after its stretch
    /// goes behind the others.
    async fn catch_up(&self, mut waiting: VecDeque<u64>) -> Result<()> {
        while !waiting.is_empty() {
            let candidates: Vec<u64> = waiting
                .iter()
                .take(SEARCH_BATCH_CONVERSATIONS)
                .copied()
                .collect();
            let stretches = self.round(&candidates).await?;
            let touched: HashMap<u64, bool> =
                stretches.iter().map(|s| (s.conversation, s.done)).collect();
            for stretch in &stretches {
                self.feed.settle(stretch.conversation, stretch.through);
            }
            // Those the round did not reach keep their place in front.
            waiting.retain(|c| !touched.contains_key(c));
            waiting.extend(stretches.iter().filter(|s| !s.done).map(|s| s.conversation));
        }
        Ok(())
    }

    /// Forgets the index and indexes every timeline again.
    pub async fn rebuild(&self) -> Result<usize> {
        let index = Arc::clone(&self.index);
        tokio::task::spawn_blocking(move || index.clear())
            .await
            .map_err(|e| SyncdError::Internal(format!("indexing task failed: {e}")))??;
        self.scan().await?;
        Ok(self.index.checkpoints()?.len())
    }

    /// `principal`'s search as the index takes it, checked and admitted
    /// before anything else is done for it (the read-state fold for what
    /// is hidden costs reads and writes): a device finds what its user
    /// could read while a member; a service finds everything. Past
    /// [`MAX_CONCURRENT_SEARCHES`] running, RESOURCE_EXHAUSTED at once.
    pub fn admit(&self, principal: &Principal, query: SearchQuery) -> Result<AdmittedSearch> {
        let searcher = match principal {
            Principal::Device { user_id, .. } => Searcher::User(*user_id),
            Principal::Service { .. } => Searcher::Service,
        };
        let request = SearchRequest {
            searcher,
            query: query.query,
            conversation_id: query.conversation_id,
            sender_id: query.sender_id,
            sent_from_ms: query.sent_from_ms,
            sent_before_ms: query.sent_before_ms,
            order: query.order,
            limit: query.limit,
            cursor: query.cursor,
            timeout: search::model::MAX_QUERY_TIME,
            hidden: search::Hidden::default(),
        };
        request.parse()?;
        let permit = Arc::clone(&self.searches)
            .try_acquire_owned()
            .map_err(|_| {
                SyncdError::ResourceExhausted(format!(
                    "{MAX_CONCURRENT_SEARCHES} searches are running on this node; retry shortly"
                ))
            })?;
        // A service searches for many users: only devices have a share.
        let share = match principal {
            Principal::Device { user_id, .. } => {
                Some(self.searches_per_user.take(*user_id, 1).map_err(|_| {
                    SyncdError::ResourceExhausted(format!(
                        "{MAX_SEARCHES_PER_USER} searches of this user are running; retry shortly"
                    ))
                })?)
            }
            Principal::Service { .. } => None,
        };
        Ok(AdmittedSearch {
            request,
            permit,
            _share: share,
        })
    }

    /// One page of an admitted search. `hidden`: what a device's user
    /// deleted for themselves or cleared.
    pub async fn search(
        &self,
        admitted: AdmittedSearch,
        hidden: search::Hidden,
    ) -> Result<SearchResult> {
        let AdmittedSearch {
            mut request,
            permit,
            _share,
        } = admitted;
        request.hidden = hidden;
        let conversation = request.conversation_id;
        let index = Arc::clone(&self.index);
        let page = tokio::task::spawn_blocking(move || {
            let _running = (permit, _share);
            index.search(&request)
        })
        .await
        .map_err(|e| SyncdError::Internal(format!("search task failed: {e}")))??;
        Ok(SearchResult {
            page,
            lagging_events: self.lag(conversation)?,
            catching_up: self.scanning.load(Ordering::SeqCst),
        })
    }

    /// Events known readable and not yet indexed.
    fn lag(&self, conversation: Option<u64>) -> Result<u64> {
        let heads = match conversation {
            Some(c) => self.feed.head_of(c).map(|h| (c, h)).into_iter().collect(),
            None => self.feed.heads(SEARCH_LAG_CONVERSATIONS),
        };
        let mut lag = 0u64;
        for (conversation, head) in heads {
            lag += head.saturating_sub(self.index.checkpoint(conversation)?);
        }
        Ok(lag)
    }
}

/// What a device's user deleted for themselves or cleared (of one
/// conversation, or of all): their searches never find it. A service
/// hides nothing.
pub(crate) async fn hidden(
    read_state: &crate::read_state::ReadState,
    principal: &Principal,
    conversation: Option<u64>,
) -> Result<search::Hidden> {
    let Principal::Device { user_id, .. } = principal else {
        return Ok(search::Hidden::default());
    };
    let mut hidden = search::Hidden::default();
    let snapshot = read_state.fold(*user_id).await?;
    for row in &snapshot.rows {
        if conversation.is_some_and(|c| c != row.conversation_id) {
            continue;
        }
        if row.cleared_through > 0 {
            hidden
                .cleared_through
                .insert(row.conversation_id, row.cleared_through);
        }
        hidden
            .messages
            .extend(row.hidden.iter().map(|&seq| (row.conversation_id, seq)));
    }
    Ok(hidden)
}

#[cfg(test)]
mod tests;
