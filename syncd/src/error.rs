//! syncd's domain errors and their single mapping to gRPC statuses.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum SyncdError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency (store, allocator) failed; the request changed nothing
    /// that was acknowledged and may be retried.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = SyncdError> = std::result::Result<T, E>;

impl From<timeline_store::StoreError> for SyncdError {
    fn from(error: timeline_store::StoreError) -> Self {
        use timeline_store::StoreError as E;
        match error {
            E::InvalidArgument(m) => SyncdError::InvalidArgument(m),
            E::Corrupt(m) => SyncdError::Internal(format!("corrupt record: {m}")),
            other => SyncdError::Unavailable(other.to_string()),
        }
    }
}

impl From<seqsvc::SeqError> for SyncdError {
    fn from(error: seqsvc::SeqError) -> Self {
        match error {
            seqsvc::SeqError::InvalidArgument(m) => SyncdError::InvalidArgument(m),
            other => SyncdError::Unavailable(other.to_string()),
        }
    }
}

impl From<SyncdError> for Status {
    fn from(error: SyncdError) -> Self {
        let code = match &error {
            SyncdError::InvalidArgument(_) => Code::InvalidArgument,
            SyncdError::NotFound(_) => Code::NotFound,
            SyncdError::PermissionDenied(_) => Code::PermissionDenied,
            SyncdError::Unauthenticated(_) => Code::Unauthenticated,
            SyncdError::FailedPrecondition(_) => Code::FailedPrecondition,
            SyncdError::ResourceExhausted(_) => Code::ResourceExhausted,
            SyncdError::Unavailable(_) => Code::Unavailable,
            SyncdError::Internal(_) => Code::Internal,
        };
        if code == Code::Internal || code == Code::Unavailable {
            tracing::warn!(%error, ?code, "request failed");
        }
        Status::new(code, error.to_string())
    }
}
