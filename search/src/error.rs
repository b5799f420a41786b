use thiserror::Error;

/// What can go wrong in the search index, by kind: the caller's mistakes
/// (bad input, changing nothing) apart from the index's own failures.
#[derive(Debug, Error)]
pub enum SearchError {
    /// The query, a filter, the limit or the cursor is not acceptable.
    #[error("{0}")]
    InvalidQuery(String),
    /// The searcher belongs to more conversations than one query may
    /// filter by: it must name a conversation.
    #[error(
        "the searcher belongs to more than {limit} conversation memberships; filter by conversation"
    )]
    TooManyMemberships { limit: usize },
    /// The searcher deleted more messages for themselves one by one than
    /// one query may exclude: it must name a conversation.
    #[error(
        "more than {limit} messages are deleted for the searcher one by one; filter by conversation"
    )]
    TooManyHidden { limit: usize },
    /// An update breaks the rules of `ConversationUpdate` (a feeder's
    /// bug): refused, nothing applied.
    #[error("invalid index update: {0}")]
    InvalidUpdate(String),
    /// The backend's settings are unusable (a bad URL or index name).
    #[error("search backend: {0}")]
    Config(String),
    /// The index on disk is not one this version wrote, or is damaged.
    #[error("search index is corrupt: {0}")]
    Corrupt(String),
    /// The index engine failed (I/O, a lock held by another process).
    #[error("search index: {0}")]
    Engine(String),
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;

impl SearchError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidQuery(message.into())
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(error: tantivy::TantivyError) -> Self {
        Self::Engine(error.to_string())
    }
}
