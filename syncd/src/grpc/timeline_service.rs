//! `timeline.v1.Timeline`: calls made by devices (and services where noted).

use super::Tenure;
use super::catch_up::{self, CatchUps, Guards};
use super::{authenticate, authenticate_verified, convert, parse_client_id, parse_client_msg_id};
use crate::auth::{Authenticator, Principal};
use crate::engine::{
    AmendCommand, AmendOutcome, Engine, HideCommand, HistoryQuery, NewConversation, Operation,
    SendCommand,
};
use crate::error::SyncdError;
use crate::limits::SUBSCRIBER_QUEUE;
use futures_util::StreamExt;
use proto::timeline::v1 as pb;
use std::sync::Arc;
use timeline_store::EntryKind;
use tokio::sync::mpsc::error::TrySendError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub struct TimelineService {
    engine: Arc<Engine>,
    auth: Arc<Authenticator>,
    catch_ups: CatchUps,
    tenure: Tenure,
}

impl TimelineService {
    pub fn new(engine: Arc<Engine>, auth: Arc<Authenticator>) -> Self {
        Self {
            engine,
            auth,
            catch_ups: CatchUps::new(),
            tenure: Tenure::always(),
        }
    }

    /// Sync, CatchUp and History answer only while `tenure` holds after
    /// their reads (a cluster's writer): they read up to what the horizon
    /// says is safe, which only the writer knows.
    pub fn with_tenure(self, tenure: Tenure) -> Self {
        Self { tenure, ..self }
    }
}

/// A change of one message as the engine takes it (the operation id parsed).
fn amend_command(
    conversation_id: u64,
    conv_seq: u64,
    msg_id: u64,
    text: String,
    client_op_id: &str,
) -> Result<AmendCommand, Status> {
    Ok(AmendCommand {
        conversation_id,
        conv_seq,
        msg_id,
        text,
        client_op_id: parse_client_id("client_op_id", client_op_id)?,
    })
}

fn change_reply(outcome: AmendOutcome) -> pb::MessageChangeReply {
    pb::MessageChangeReply {
        conversation_id: outcome.receipt.conversation_id,
        conv_seq: outcome.receipt.conv_seq,
        msg_id: outcome.receipt.msg_id,
        sent_at_ms: outcome.receipt.sent_at_ms,
        duplicate: outcome.duplicate,
    }
}

pub(crate) fn send_reply(outcome: crate::engine::SendOutcome) -> pb::SendReply {
    pb::SendReply {
        conversation_id: outcome.receipt.conversation_id,
        conv_seq: outcome.receipt.conv_seq,
        msg_id: outcome.receipt.msg_id,
        client_msg_id: outcome.client_msg_id.to_string(),
        sent_at_ms: outcome.receipt.sent_at_ms,
        duplicate: outcome.duplicate,
    }
}

#[tonic::async_trait]
impl pb::timeline_server::Timeline for TimelineService {
    #[tracing::instrument(skip_all, fields(conversation_id = request.get_ref().conversation_id))]
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let command = SendCommand {
            conversation_id: request.conversation_id,
            text: request.text,
            client_msg_id: parse_client_msg_id(&request.client_msg_id)?,
            sender_id: None,
            mentions: crate::send::Mentions {
                users: request.mentions,
                everyone: request.mention_all,
            },
            priority: request.priority,
        };
        let outcome = self.engine.send(principal, command).await?;
        Ok(Response::new(send_reply(outcome)))
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let reply = sync_reply(&self.engine, &principal, &request, &self.tenure).await?;
        Ok(Response::new(reply))
    }

    type CatchUpStream = catch_up::Replies;

    async fn catch_up(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<Self::CatchUpStream>, Status> {
        let verified = authenticate_verified(&self.auth, &request).await?;
        let guards = Guards {
            revocations: Arc::clone(self.auth.revocations()),
            tenure: self.tenure.clone(),
        };
        let replies = self
            .catch_ups
            .start(&self.engine, verified, guards, request.into_inner())
            .await?;
        Ok(Response::new(replies))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let checkpoint = self.engine.ack(&principal, request.get_ref().seq).await?;
        Ok(Response::new(pb::AckReply { checkpoint }))
    }

    type SubscribeStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Notice, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let verified = authenticate_verified(&self.auth, &request).await?;
        let principal = verified.principal.clone();
        let request = request.into_inner();
        let mut feed = self
            .engine
            .subscribe(&principal, request.after_seq, request.include_entries)
            .await?;
        // Boxed: the channel allocates its slots 32 at a time whatever its
        // bound, so each open stream holds 32 of them (2 KiB of notices
        // unboxed, 0.5 KiB of pointers boxed) for as long as it is open.
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Box<pb::Notice>, Status>>(SUBSCRIBER_QUEUE);
        let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel::<Status>();
        let stall_limit = self.engine.config().subscriber_stall_limit;
        let revocations = Arc::clone(self.auth.revocations());
        self.engine.spawn(async move {
            let revoked = revocations.until_revoked(&verified);
            tokio::pin!(revoked);
            // Resolved once per stream, not per notice (a registry lookup
            // with label hashing each time otherwise).
            let sent = NoticeCounters::new();
            let reason = loop {
                let notice = tokio::select! {
                    notice = feed.next() => match notice.transpose() {
                        Some(notice) => notice,
                        None => break "shutdown",
                    },
                    () = tx.closed() => break "client_gone",
                    refusal = &mut revoked => {
                        // The stream ends as a call with the token would.
                        let _ = tx.send(Err(Status::from(refusal))).await;
                        break "revoked";
                    }
                };
                let message = notice
                    .map(|n| {
                        Box::new(pb::Notice {
                            up_to_seq: n.up_to_seq,
                            entries: n.entries.into_iter().map(convert::entry).collect(),
                            groups: n.groups.into_iter().map(convert::group_notice).collect(),
                            groups_resync: n.groups_resync,
                        })
                    })
                    .map_err(Status::from);
                let failed = message.is_err();
                let counter = match &message {
                    Ok(n) if !n.groups.is_empty() || n.groups_resync => &sent.groups,
                    Ok(n) if !n.entries.is_empty() => &sent.inline,
                    _ => &sent.none,
                };
                // A subscriber that keeps up has room in its queue: no timer
                // is armed for it. A full queue waits, while the feed
                // coalesces, so a stuck reader holds at most
                // SUBSCRIBER_QUEUE notices, and only for so long.
                let queued = match tx.try_send(message) {
                    Ok(()) => Ok(Ok(())),
                    Err(TrySendError::Closed(_)) => Ok(Err(())),
                    Err(TrySendError::Full(message)) => {
                        tokio::time::timeout(stall_limit, tx.send(message))
                            .await
                            .map(|sent| sent.map_err(|_| ()))
                    }
                };
                match queued {
                    Ok(Ok(())) if !failed => counter.increment(1),
                    Ok(Ok(())) => break "error",
                    Ok(Err(())) => break "client_gone",
                    Err(_) => {
                        tracing::warn!(
                            ?stall_limit,
                            "disconnecting a subscriber that stopped reading"
                        );
                        let _ = stalled_tx.send(Status::resource_exhausted(format!(
                            "subscriber read nothing for {} s: disconnected; sync, then subscribe again",
                            stall_limit.as_secs_f32()
                        )));
                        break "stalled";
                    }
                }
            };
            metrics::counter!("syncd_push_disconnects_total", "reason" => reason).increment(1);
        });
        // After the queued notices: the stall error, if the task sent one.
        let stalled = futures_util::stream::once(stalled_rx)
            .filter_map(|status| std::future::ready(status.ok().map(Err)));
        let notices = ReceiverStream::new(rx)
            .map(|notice| notice.map(|boxed| *boxed))
            .chain(stalled);
        Ok(Response::new(Box::pin(notices)))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let page = self
            .engine
            .history(
                &principal,
                HistoryQuery {
                    conversation_id: request.conversation_id,
                    before: request.before,
                    after: request.after,
                    limit: request.limit as usize,
                },
            )
            .await?;
        self.tenure.check()?;
        Ok(Response::new(pb::HistoryReply {
            entries: page.entries.into_iter().map(convert::entry).collect(),
            has_more: page.has_more,
        }))
    }

    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let kind = convert::conversation_kind(request.kind).ok_or_else(|| {
            SyncdError::InvalidArgument(format!("unknown conversation kind {}", request.kind))
        })?;
        let conversation = self
            .engine
            .create_conversation(
                principal,
                NewConversation {
                    kind,
                    members: request.members,
                    title: request.title,
                    client_request_id: parse_client_id(
                        "client_request_id",
                        &request.client_request_id,
                    )?,
                },
            )
            .await?;
        Ok(Response::new(pb::CreateConversationReply {
            conversation: Some(convert::conversation(conversation)),
        }))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let marked = self
            .engine
            .mark_read(principal, request.conversation_id, request.through)
            .await?;
        Ok(Response::new(pb::MarkReadReply {
            conversation_id: marked.conversation_id,
            read_through: marked.read_through,
            unread: marked.unread,
            seq: marked.seq,
            mentions: marked.mentions,
        }))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::MessageChangeReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let command = amend_command(
            request.conversation_id,
            request.conv_seq,
            request.msg_id,
            request.text,
            &request.client_op_id,
        )?;
        let outcome = self
            .engine
            .amend(principal, Operation::Edit, command)
            .await?;
        Ok(Response::new(change_reply(outcome)))
    }

    async fn recall_message(
        &self,
        request: Request<pb::MessageChangeRequest>,
    ) -> Result<Response<pb::MessageChangeReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let command = amend_command(
            request.conversation_id,
            request.conv_seq,
            request.msg_id,
            String::new(),
            &request.client_op_id,
        )?;
        let outcome = self
            .engine
            .amend(principal, Operation::Recall, command)
            .await?;
        Ok(Response::new(change_reply(outcome)))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::MessageChangeReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let client_op_id = parse_client_id("client_op_id", &request.client_op_id)?;
        let outcome = if request.for_me {
            let command = HideCommand {
                conversation_id: request.conversation_id,
                conv_seq: Some(request.conv_seq),
                msg_id: request.msg_id,
                client_op_id,
            };
            self.engine
                .hide(principal, EntryKind::DeleteForMe, command)
                .await?
        } else {
            let command = AmendCommand {
                conversation_id: request.conversation_id,
                conv_seq: request.conv_seq,
                msg_id: request.msg_id,
                text: String::new(),
                client_op_id,
            };
            self.engine
                .amend(principal, Operation::Delete, command)
                .await?
        };
        Ok(Response::new(change_reply(outcome)))
    }

    async fn clear_history(
        &self,
        request: Request<pb::ClearHistoryRequest>,
    ) -> Result<Response<pb::MessageChangeReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let command = HideCommand {
            conversation_id: request.conversation_id,
            conv_seq: request.through,
            msg_id: 0,
            client_op_id: parse_client_id("client_op_id", &request.client_op_id)?,
        };
        let outcome = self
            .engine
            .hide(principal, EntryKind::ClearHistory, command)
            .await?;
        Ok(Response::new(change_reply(outcome)))
    }

    async fn get_read_receipts(
        &self,
        request: Request<pb::GetReadReceiptsRequest>,
    ) -> Result<Response<pb::GetReadReceiptsReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let page = crate::read_state::ReceiptsPage {
            after_member: request.after_member,
            limit: request.limit as usize,
        };
        let receipts = self
            .engine
            .read_receipts(&principal, request.conversation_id, request.conv_seq, page)
            .await?;
        Ok(Response::new(pb::GetReadReceiptsReply {
            read_count: receipts.read_by.len() as u64,
            member_count: receipts.member_count,
            read_by: receipts.read_by,
            next_after_member: receipts.next_after_member,
        }))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let order = match pb::SearchOrder::try_from(request.order) {
            Ok(pb::SearchOrder::NewestFirst) => search::SortOrder::NewestFirst,
            Ok(pb::SearchOrder::Relevance) => search::SortOrder::Relevance,
            Err(_) => {
                return Err(SyncdError::InvalidArgument(format!(
                    "unknown search order {}",
                    request.order
                ))
                .into());
            }
        };
        let query = crate::engine::SearchQuery {
            query: request.query,
            conversation_id: request.conversation_id,
            sender_id: request.sender_id,
            sent_from_ms: request.sent_from_ms,
            sent_before_ms: request.sent_before_ms,
            order,
            limit: request.limit as usize,
            cursor: (!request.cursor.is_empty()).then_some(request.cursor),
        };
        let result = self.engine.search(&principal, query).await?;
        Ok(Response::new(convert::search_reply(result)))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let request = request.into_inner();
        let query = crate::engine::ListQuery {
            limit: request.limit as usize,
            cursor: request.cursor,
            known_version: request.known_version,
        };
        let page = self.engine.list_conversations(&principal, query).await?;
        Ok(Response::new(pb::ListConversationsReply {
            conversations: page
                .conversations
                .into_iter()
                .map(convert::conversation_state)
                .collect(),
            total_unread: page.total_unread,
            total_mentions: page.total_mentions,
            cursor: page.cursor,
            version: page.version,
            not_modified: page.not_modified,
            as_of_seq: page.as_of_seq,
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let conversation = self
            .engine
            .get_conversation(&principal, request.get_ref().conversation_id)
            .await?;
        Ok(Response::new(pb::GetConversationReply {
            conversation: Some(convert::conversation(conversation)),
        }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersReply>, Status> {
        let principal = authenticate(&self.auth, &request).await?;
        let r = request.get_ref();
        let page = self
            .engine
            .list_members(&principal, r.conversation_id, r.after, r.limit as usize)
            .await?;
        Ok(Response::new(pb::ListMembersReply {
            members: page.members,
            member_count: page.member_count,
            next_after: page.next_after,
        }))
    }
}

/// `syncd_push_notices_total` by what a notice carried.
struct NoticeCounters {
    groups: metrics::Counter,
    inline: metrics::Counter,
    none: metrics::Counter,
}

impl NoticeCounters {
    fn new() -> Self {
        let by =
            |kind: &'static str| metrics::counter!("syncd_push_notices_total", "entries" => kind);
        Self {
            groups: by("groups"),
            inline: by("inline"),
            none: by("none"),
        }
    }
}

/// What Sync answers from `request.after_seq` (one of the pages CatchUp
/// streams), once `tenure` still holds after the reads.
pub(super) async fn sync_reply(
    engine: &Engine,
    principal: &Principal,
    request: &pb::SyncRequest,
    tenure: &Tenure,
) -> Result<pb::SyncReply, Status> {
    let page = engine
        .sync(principal, request.after_seq, request.limit as usize)
        .await?;
    let read_state = if request.include_read_state && !page.has_more && page.expired_below.is_none()
    {
        let summary = engine.read_state_summary(principal, &page).await?;
        Some(pb::ReadStateSummary {
            total_unread: summary.total_unread,
            total_mentions: summary.total_mentions,
            truncated: summary.truncated,
            as_of_seq: summary.as_of_seq,
            conversations: summary
                .conversations
                .into_iter()
                .map(convert::conversation_state)
                .collect(),
        })
    } else {
        None
    };
    tenure.check()?;
    Ok(pb::SyncReply {
        read_state,
        entries: page.entries.into_iter().map(convert::entry).collect(),
        has_more: page.has_more,
        checkpoint: page.checkpoint,
        large_groups: page
            .large_groups
            .into_iter()
            .map(convert::group_top)
            .collect(),
        left_large_groups: page
            .left_large_groups
            .into_iter()
            .map(convert::group_top)
            .collect(),
        user_id: crate::access::device_user(principal)?.0,
        checkpoint_expired: page.expired_below.is_some(),
        oldest_seq: page.expired_below.unwrap_or(0),
    })
}
