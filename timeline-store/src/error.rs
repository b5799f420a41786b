/// Errors by kind, so callers can choose between retrying and giving up.
/// Cloneable: one failed batch is the error of every write it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Disk or network I/O failed; the operation may or may not have applied.
    #[error("storage i/o failed: {0}")]
    Io(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The backend is overloaded, unreachable or shutting down.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A durability failure (an fsync error) left the store unable to take
    /// writes for the rest of this process: what it holds may not be
    /// durable, so only a restart, which recovers from the journal, tells
    /// what was written.
    #[error("storage poisoned: {0}")]
    Poisoned(String),
    /// A newer writer took over the keyspace (a cluster's writer lease):
    /// this node's writes are refused from now on, and the newer writer
    /// finishes whatever intent of this node was stored.
    #[error("writer fenced: {0}")]
    Fenced(String),
    /// The request exceeds a named limit of the store.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// Whether retrying the same operation can succeed (I/O trouble, an
    /// overloaded or unreachable backend), as opposed to a request that will
    /// fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Unavailable(_))
    }

    /// Whether a newer writer took over: this store takes no more writes,
    /// and retrying is useless (the newer writer finishes what was stored).
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced(_))
    }

    /// Whether no call can succeed for the rest of this process (a
    /// poisoned store): retrying is useless, and the process should stop so
    /// that a restart recovers.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Poisoned(_))
    }
}
