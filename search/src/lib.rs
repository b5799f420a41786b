//! History search: the index of message text every search backend keeps,
//! as one trait ([`SearchIndex`]), with one tokenisation ([`tokens`]) and
//! one parse of requests ([`SearchRequest::parse`]) shared by all, and two
//! backends: the embedded one ([`TantivyIndex`], in the node's data
//! directory) and the distributed one ([`OpenSearchIndex`], an OpenSearch
//! cluster shared by every node).
//!
//! The index is a projection of the conversation timelines, never a
//! source of truth: per conversation it holds the messages, every user's
//! membership intervals (by `conv_seq`) and an indexed-through checkpoint,
//! all changed together by one [`ConversationUpdate`] and committed
//! atomically, so a feeder that restarts from the checkpoint neither loses
//! nor doubles anything.
//!
//! Authorisation is part of the query, before scoring and paging: a user's
//! search matches only messages whose `conv_seq` lies in one of their
//! intervals, so every page is full while more hits exist.
//!
//! The calls block (disk I/O, CPU-bound search): async callers run them on
//! a blocking thread.

pub mod error;
#[cfg(feature = "testsuite")]
pub mod memory;
pub mod model;
pub mod opensearch;
mod page;
mod tantivy_index;
pub mod tokens;

pub use error::{Result, SearchError};
pub use model::{
    ConversationUpdate, Hidden, IndexOp, Intervals, MessageDoc, SearchHit, SearchPage,
    SearchRequest, Searcher, SortOrder,
};
pub use opensearch::{OpenSearchIndex, OpenSearchOptions};
pub use tantivy_index::{TantivyIndex, WRITER_MEMORY_BYTES};

/// A search index backend. Updates come from one feeder at a time.
pub trait SearchIndex: Send + Sync + 'static {
    /// Every conversation's indexed-through `conv_seq`, by conversation id
    /// ascending (conversations never indexed are absent).
    fn checkpoints(&self) -> Result<Vec<(u64, u64)>>;

    /// The conversation's indexed-through `conv_seq` (0: nothing yet).
    fn checkpoint(&self, conversation_id: u64) -> Result<u64>;

    /// Applies the updates and their checkpoints durably: after `Ok` all
    /// of them survive a crash and are searchable; after `Err` or a crash
    /// no checkpoint has moved, and applying the same updates again gives
    /// the index they would have given once (a backend without atomic
    /// batches may hold some of their documents meanwhile). An update whose
    /// `indexed_through` is not above the conversation's checkpoint is
    /// already applied and is skipped whole.
    fn apply(&self, updates: &[ConversationUpdate]) -> Result<()>;

    /// One page of hits, authorised before scoring.
    fn search(&self, request: &SearchRequest) -> Result<SearchPage>;

    /// Forgets everything (before a rebuild from the timelines).
    fn clear(&self) -> Result<()>;

    /// Reads again what other processes may have indexed since this one
    /// opened the index (the checkpoints of a shared index). The indexer
    /// calls it before each start of indexing: on a cluster node that
    /// becomes the writer, the earlier writers indexed meanwhile (a
    /// single node pays one read at its start). An index only this process
    /// writes has nothing to read.
    fn reload(&self) -> Result<()> {
        Ok(())
    }
}
