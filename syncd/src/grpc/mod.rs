//! The gRPC layer: one file per service, translating wire types to the
//! engine's plain types and back. No business rules live here.

mod admin_service;
mod catch_up;
mod convert;
mod timeline_service;

pub use admin_service::AdminService;
pub use timeline_service::TimelineService;

use crate::auth::{Authenticator, Principal, Verified};
use crate::error::{SyncdError, quoted};
use std::sync::Arc;
use tonic::Status;

/// Whether this node may still answer as the writer it was when a call
/// arrived: always on one node; in a cluster, while it holds the lease of
/// the generation the service belongs to. The router checks at a call's
/// arrival; a call that reads checks again after its reads (a node frozen
/// between the two, or a CatchUp streaming for seconds, must not answer
/// from a horizon that no longer knows every write: another writer may
/// have written below what it would show).
#[derive(Clone)]
pub struct Tenure(Option<Arc<dyn Fn() -> bool + Send + Sync>>);

impl Tenure {
    /// A node that is the only writer of its store.
    pub fn always() -> Self {
        Self(None)
    }

    /// A node that writes while `holds` says so.
    pub fn while_holding(holds: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(holds)))
    }

    pub(crate) fn check(&self) -> Result<(), Status> {
        match &self.0 {
            Some(holds) if !holds() => Err(Status::unavailable(
                "this node stopped being the writer during the call; retry (any node)",
            )),
            _ => Ok(()),
        }
    }
}

/// Reads `authorization: Bearer <token>` and verifies it.
pub(crate) async fn authenticate<T>(
    auth: &Authenticator,
    request: &tonic::Request<T>,
) -> Result<Principal, Status> {
    Ok(authenticate_verified(auth, request).await?.principal)
}

/// [`authenticate`], with what else the token says (for push streams,
/// which check it again when a revocation arrives).
pub(crate) async fn authenticate_verified<T>(
    auth: &Authenticator,
    request: &tonic::Request<T>,
) -> Result<Verified, Status> {
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
    Ok(auth.authenticate(token.trim()).await?)
}

/// Parses a client-chosen id (`client_msg_id`, `client_request_id`); empty
/// means none. The one spelling accepted is the hyphenated 8-4-4-4-12 form
/// (either case): other spellings of the same UUID are refused rather than
/// quietly taken, and the nil UUID is refused because it is what a client
/// that never set its id sends.
pub(crate) fn parse_client_id(field: &str, text: &str) -> Result<Option<uuid::Uuid>, SyncdError> {
    if text.is_empty() {
        return Ok(None);
    }
    let hyphenated = text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let id = hyphenated
        .then(|| uuid::Uuid::parse_str(text).ok())
        .flatten()
        .ok_or_else(|| {
            SyncdError::InvalidArgument(format!(
                "{field} {} is not a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
                quoted(text)
            ))
        })?;
    if id.is_nil() {
        return Err(SyncdError::InvalidArgument(format!(
            "{field} must not be the nil UUID"
        )));
    }
    Ok(Some(id))
}

/// [`parse_client_id`] for `client_msg_id`, as a status.
pub(crate) fn parse_client_msg_id(text: &str) -> Result<Option<uuid::Uuid>, Status> {
    Ok(parse_client_id("client_msg_id", text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_have_one_spelling() {
        let id = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let parsed = parse_client_msg_id(id).unwrap().unwrap();
        assert_eq!(
            parse_client_msg_id(&id.to_uppercase()).unwrap(),
            Some(parsed)
        );
        assert_eq!(parse_client_msg_id("").unwrap(), None);
        for other in [
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "67e5504410b1426f9247bb680e5fe0c8",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "00000000-0000-0000-0000-000000000000",
            " 67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044+10b1-426f-9247-bb680e5fe0c8",
            "nope",
        ] {
            let refused = parse_client_msg_id(other);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|s| s.code() == tonic::Code::InvalidArgument),
                "{other}: {refused:?}"
            );
        }
    }

    #[test]
    fn errors_quote_a_short_prefix_of_client_input() {
        let huge = "é".repeat(256 * 1024);
        let status = parse_client_msg_id(&huge).unwrap_err();
        assert!(status.message().len() < 200, "{}", status.message());
        assert!(
            status.message().contains("524288 bytes"),
            "{}",
            status.message()
        );
    }
}
