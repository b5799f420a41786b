//! Who may do what: the one place that turns a principal and a conversation
//! into "allowed" or a [`SyncdError::PermissionDenied`] with its message.
//!
//! - Devices act as their user: they read their own inbox, read and send to
//!   conversations their user belongs to, and never speak for another user.
//! - Services have no inbox; they may read any conversation, send as any
//!   member or as the system (sender 0), and change members.

use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::limits::MAX_USER_ID;
use timeline_store::Conversation;

/// The user and device behind a device token; services have no inbox.
pub fn device_user(principal: &Principal) -> Result<(u64, &str)> {
    match principal {
        Principal::Device { user_id, device_id } => Ok((*user_id, device_id)),
        Principal::Service { name } => Err(SyncdError::PermissionDenied(format!(
            "service {name:?} has no inbox: use a device token"
        ))),
    }
}

/// Calls only backend services may make (membership changes, appends).
pub fn require_service(principal: &Principal) -> Result<()> {
    match principal {
        Principal::Service { .. } => Ok(()),
        Principal::Device { .. } => Err(SyncdError::PermissionDenied(
            "this call needs a service token".into(),
        )),
    }
}

/// A user id the stores can keep faithfully: 1 to [`MAX_USER_ID`] (0 is
/// the system).
pub fn check_user_id(what: &str, user_id: u64) -> Result<()> {
    if user_id == 0 || user_id > MAX_USER_ID {
        return Err(SyncdError::InvalidArgument(format!(
            "{what} {user_id} is not a user id (1 to {MAX_USER_ID})"
        )));
    }
    Ok(())
}

/// Who a message is from: a device sends as its own user (naming another
/// is refused), a service as the user it names or the system (0).
pub fn sender_of(principal: &Principal, requested: Option<u64>) -> Result<u64> {
    if let Some(sender) = requested.filter(|&id| id != 0) {
        check_user_id("sender", sender)?;
    }
    match principal {
        Principal::Device { user_id, .. } => match requested {
            Some(other) if other != *user_id => Err(SyncdError::PermissionDenied(format!(
                "user {user_id} cannot send as user {other}"
            ))),
            _ => Ok(*user_id),
        },
        Principal::Service { .. } => Ok(requested.unwrap_or(0)),
    }
}

/// A message from `sender_id` may enter the conversation: a member, or the
/// system. Membership is the record's list or, for a large group, one
/// lookup in the member table.
pub async fn may_send(
    directory: &Directory,
    sender_id: u64,
    conversation: &Conversation,
) -> Result<()> {
    if sender_id != 0 && !directory.is_member(conversation, sender_id).await? {
        return Err(not_a_member(sender_id, conversation.conversation_id));
    }
    Ok(())
}

/// The caller may read the conversation (record and history): a member's
/// device, or a service.
pub async fn may_read(
    directory: &Directory,
    principal: &Principal,
    conversation: &Conversation,
) -> Result<()> {
    match principal {
        Principal::Device { user_id, .. }
            if !directory.is_member(conversation, *user_id).await? =>
        {
            Err(not_a_member(*user_id, conversation.conversation_id))
        }
        _ => Ok(()),
    }
}

/// What a device is told when the conversation it names is missing: the
/// same as for one it is not a member of, so a device cannot probe which
/// conversation ids exist. Services, which may read any conversation,
/// still learn that it is missing; other errors pass through.
pub fn conceal_missing(
    principal: &Principal,
    conversation_id: u64,
    error: SyncdError,
) -> SyncdError {
    match (principal, error) {
        (Principal::Device { user_id, .. }, SyncdError::NotFound(_)) => {
            not_a_member(*user_id, conversation_id)
        }
        (_, error) => error,
    }
}

fn not_a_member(user_id: u64, conversation_id: u64) -> SyncdError {
    SyncdError::PermissionDenied(format!(
        "user {user_id} is not a member of conversation {conversation_id}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(user_id: u64) -> Principal {
        Principal::Device {
            user_id,
            device_id: "d".into(),
        }
    }

    fn service() -> Principal {
        Principal::Service { name: "ops".into() }
    }

    fn conversation(members: Vec<u64>) -> Conversation {
        crate::testkit::record(7, &members, false)
    }

    #[test]
    fn devices_act_as_their_user_and_services_as_anyone() {
        assert_eq!(sender_of(&device(1), None).unwrap(), 1);
        assert_eq!(sender_of(&device(1), Some(1)).unwrap(), 1);
        assert!(sender_of(&device(1), Some(2)).is_err());
        assert_eq!(sender_of(&service(), None).unwrap(), 0);
        assert_eq!(sender_of(&service(), Some(9)).unwrap(), 9);
        assert!(device_user(&service()).is_err());
        assert_eq!(device_user(&device(3)).unwrap(), (3, "d"));
        assert!(require_service(&device(3)).is_err());
        assert!(require_service(&service()).is_ok());
    }

    #[tokio::test]
    async fn members_read_and_send_others_do_not() {
        let directory = Directory::new(std::sync::Arc::new(
            timeline_store::testsuite::MemoryStore::new(),
        ));
        let d = &directory;
        let c = conversation(vec![1, 2]);
        assert!(may_read(d, &device(1), &c).await.is_ok());
        assert!(may_read(d, &service(), &c).await.is_ok());
        let denied = may_read(d, &device(3), &c).await.unwrap_err();
        assert_eq!(
            denied.to_string(),
            "user 3 is not a member of conversation 7"
        );
        assert!(may_send(d, 2, &c).await.is_ok());
        assert!(
            may_send(d, 0, &c).await.is_ok(),
            "the system may always send"
        );
        assert!(may_send(d, 3, &c).await.is_err());
        // A large group's record lists nobody: the member table answers
        // (empty here), not the record.
        let large = Conversation {
            read_fanout: true,
            ..conversation(Vec::new())
        };
        assert!(may_read(d, &device(1), &large).await.is_err());
        assert!(may_send(d, 0, &large).await.is_ok());
    }

    /// Ids at or above 2^63 do not fit a CQL bigint; accepted, they would all
    /// share one inbox on ScyllaDB. Every way a user id enters is refused.
    #[tokio::test]
    async fn user_ids_beyond_the_signed_range_are_invalid_everywhere() {
        use crate::engine::MembershipChange;
        use crate::testkit::{fixture, group, message};
        let huge = 1u64 << 63;
        let engine = fixture().build().await.engine;
        let invalid = |r: Result<()>| matches!(r, Err(SyncdError::InvalidArgument(_)));

        let created = engine
            .create_conversation(
                device(1),
                crate::engine::NewConversation {
                    kind: timeline_store::ConversationKind::Group,
                    members: vec![2, huge],
                    title: String::new(),
                    client_request_id: None,
                },
            )
            .await;
        assert!(invalid(created.map(drop)), "a member id of 2^63");
        let conversation_id = group(&engine, 1, vec![2]).await;
        for id in [huge, u64::MAX] {
            let added = engine
                .change_members(service(), conversation_id, vec![id], MembershipChange::Add)
                .await;
            assert!(invalid(added.map(drop)), "adding member {id}");
            let mut append = message(conversation_id, "x", None);
            append.sender_id = Some(id);
            assert!(
                invalid(engine.send(service(), append).await.map(drop)),
                "sender {id}"
            );
            assert!(invalid(sender_of(&service(), Some(id)).map(drop)));
        }
        let authority = crate::auth::TokenAuthority::from_key([7; 32]);
        let issued = authority.issue(
            &Principal::Device {
                user_id: huge,
                device_id: "d".into(),
            },
            std::time::Duration::from_secs(60),
        );
        assert!(invalid(issued.map(drop)), "a token for user 2^63");
        let largest = MAX_USER_ID;
        assert_eq!(sender_of(&service(), Some(largest)).unwrap(), largest);
    }
}
