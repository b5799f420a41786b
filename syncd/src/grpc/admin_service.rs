//! `timeline.v1.Admin`: calls made by backend services (service tokens).

use super::timeline_service::send_reply;
use super::{authenticate, convert, parse_client_msg_id};
use crate::access;
use crate::auth::{Authenticator, Principal};
use crate::engine::{Engine, MembershipChange, SendCommand};
use proto::timeline::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminService {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
}

impl AdminService {
    pub fn new(engine: Arc<Engine>, auth: Arc<Authenticator>) -> Self {
        Self { engine, auth }
    }

    async fn service<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let principal = authenticate(&self.auth, request).await?;
        access::require_service(&principal)?;
        Ok(principal)
    }

    async fn change(
        &self,
        request: Request<pb::ChangeMembersRequest>,
        change: MembershipChange,
    ) -> Result<Response<pb::ChangeMembersReply>, Status> {
        let principal = self.service(&request).await?;
        let request = request.into_inner();
        let (conversation, conv_seq) = self
            .engine
            .change_members(principal, request.conversation_id, request.members, change)
            .await?;
        Ok(Response::new(pb::ChangeMembersReply {
            conversation: Some(convert::conversation(conversation)),
            conv_seq,
        }))
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn add_members(
        &self,
        request: Request<pb::ChangeMembersRequest>,
    ) -> Result<Response<pb::ChangeMembersReply>, Status> {
        self.change(request, MembershipChange::Add).await
    }

    async fn remove_members(
        &self,
        request: Request<pb::ChangeMembersRequest>,
    ) -> Result<Response<pb::ChangeMembersReply>, Status> {
        self.change(request, MembershipChange::Remove).await
    }

    async fn append_message(
        &self,
        request: Request<pb::AppendMessageRequest>,
    ) -> Result<Response<pb::SendReply>, Status> {
        let principal = self.service(&request).await?;
        let request = request.into_inner();
        let command = SendCommand {
            conversation_id: request.conversation_id,
            text: request.text,
            client_msg_id: parse_client_msg_id(&request.client_msg_id)?,
            sender_id: Some(request.sender_id),
            mentions: crate::send::Mentions {
                users: request.mentions,
                everyone: request.mention_all,
            },
            priority: request.priority,
        };
        let outcome = self.engine.send(principal, command).await?;
        Ok(Response::new(send_reply(outcome)))
    }

    async fn revoke_devices(
        &self,
        request: Request<pb::RevokeDevicesRequest>,
    ) -> Result<Response<pb::RevokeDevicesReply>, Status> {
        self.revoke(request).await
    }
}

impl AdminService {
    /// `RevokeDevices`: a service ends a device's (or every device's)
    /// tokens issued up to now.
    pub(crate) async fn revoke(
        &self,
        request: Request<pb::RevokeDevicesRequest>,
    ) -> Result<Response<pb::RevokeDevicesReply>, Status> {
        self.service(&request).await?;
        let request = request.into_inner();
        let user_id = request.user_id;
        access::check_user_id("user_id", user_id)?;
        let device_id = (!request.device_id.is_empty()).then_some(request.device_id);
        if let Some(device_id) = &device_id {
            crate::auth::validate_name("device_id", device_id)?;
        }
        let revoked_before = self
            .auth
            .revocations()
            .revoke(user_id, device_id.clone())
            .await?;
        tracing::info!(user_id, device_id = ?device_id, revoked_before, "tokens revoked");
        Ok(Response::new(pb::RevokeDevicesReply {
            user_id,
            device_id: device_id.unwrap_or_default(),
            revoked_before,
        }))
    }
}
