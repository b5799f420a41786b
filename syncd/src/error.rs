//! syncd's domain errors and their single mapping to gRPC statuses.

use crate::limits::MAX_QUOTED_BYTES;
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

/// Client input for an error message: quoted whole when short, otherwise
/// its first [`MAX_QUOTED_BYTES`] (cut on a character boundary) with its
/// full length, so a huge field is never echoed back.
pub fn quoted(input: &str) -> String {
    if input.len() <= MAX_QUOTED_BYTES {
        return format!("{input:?}");
    }
    let mut end = MAX_QUOTED_BYTES;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &input[..end], input.len())
}

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

impl From<search::SearchError> for SyncdError {
    fn from(error: search::SearchError) -> Self {
        use search::SearchError as E;
        match error {
            E::InvalidQuery(m) => SyncdError::InvalidArgument(m),
            e @ (E::TooManyMemberships { .. } | E::TooManyHidden { .. }) => {
                SyncdError::FailedPrecondition(e.to_string())
            }
            e @ (E::Corrupt(_) | E::Config(_) | E::InvalidUpdate(_)) => {
                SyncdError::Internal(e.to_string())
            }
            e @ E::Engine(_) => SyncdError::Unavailable(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_input_is_quoted_by_a_prefix_on_a_char_boundary() {
        assert_eq!(quoted("short"), "\"short\"");
        let exact = "a".repeat(MAX_QUOTED_BYTES);
        assert_eq!(quoted(&exact), format!("{exact:?}"));
        // 2-byte characters: byte 64 is a boundary, 63 would not be.
        let wide = format!("a{}", "é".repeat(100));
        let q = quoted(&wide);
        assert!(q.ends_with("… (201 bytes)"), "{q}");
        assert_eq!(q, format!("\"a{}\"… (201 bytes)", "é".repeat(31)));
    }
}
