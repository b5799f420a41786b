//! The gRPC layer: one file per service, translating wire types to the
//! engine's plain types and back. No business rules live here.

mod admin_service;
mod convert;
mod timeline_service;

pub use admin_service::AdminService;
pub use timeline_service::TimelineService;

use crate::auth::{Principal, TokenAuthority};
use crate::error::SyncdError;
use tonic::Status;

/// Reads `authorization: Bearer <token>` and verifies it.
pub(crate) fn authenticate<T>(
    auth: &TokenAuthority,
    request: &tonic::Request<T>,
) -> Result<Principal, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| SyncdError::Unauthenticated("missing authorization metadata".into()))?;
    let value = header
        .to_str()
        .map_err(|_| SyncdError::Unauthenticated("authorization metadata is not text".into()))?;
    let token = value.strip_prefix("Bearer ").ok_or_else(|| {
        SyncdError::Unauthenticated("authorization must be \"Bearer <token>\"".into())
    })?;
    Ok(auth.verify(token.trim())?)
}

/// Parses an optional client message id: empty means none.
pub(crate) fn parse_client_msg_id(text: &str) -> Result<Option<uuid::Uuid>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    uuid::Uuid::parse_str(text).map(Some).map_err(|_| {
        SyncdError::InvalidArgument(format!("client_msg_id {text:?} is not a UUID")).into()
    })
}
