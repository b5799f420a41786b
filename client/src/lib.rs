//! Timeline client library: connect with a token, send with automatic client
//! message ids and safe retries, sync by checkpoint (persisted to a file
//! before it is acknowledged), and watch the push stream with reconnects.
//!
//! # Invariants
//! - A send is retried only with the same client message id, so a retry can
//!   never create a second message.
//! - A checkpoint is saved only after the entries up to it were handed to
//!   the caller, and acknowledged to the server only after it was saved: a
//!   crash can repeat entries, never skip them.
//!
//! Servers are `http://` or `https://` URLs (TLS checked against the
//! system's roots or a CA of the caller's, [`ConnectOptions`]).
//!
//! Layout: connecting, sending and conversations here; following the inbox
//! (sync, push, large groups) in `sync`; read state, search and message
//! changes in their own modules; `view` rebuilds what a device shows. The
//! `tl` binary (src/main.rs) is a thin CLI over this library.

pub mod checkpoint;
mod lifecycle;
mod read_state;
mod search;
mod sync;
pub mod view;

pub use search::search_hit_json;

pub use checkpoint::CheckpointFile;
pub use proto::timeline::v1 as pb;
pub use read_state::conversation_state_json;
pub use sync::{SyncOutcome, notice_is_complete};

use pb::admin_client::AdminClient;
use pb::timeline_client::TimelineClient;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// Attempts per idempotent call (send, create) before giving up on a
/// retryable error.
pub const SEND_ATTEMPTS: u32 = 5;
/// First retry delay; doubles per attempt.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(100);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline for unary calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest reply the client decodes.
pub const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// History page size when reading a large group's new messages.
pub const LARGE_GROUP_PAGE: u32 = 500;
/// Large groups the server pushes one Subscribe stream's notices for; a
/// watch whose Sync lists more polls Sync every
/// [`UNPUSHED_GROUPS_POLL`] for the others.
pub const PUSHED_LARGE_GROUPS_PER_STREAM: usize = 1_000;
pub const UNPUSHED_GROUPS_POLL: Duration = Duration::from_secs(2);
/// Longest wait between reconnect attempts of a watch.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    /// The server refused or failed the call (the status is the whole story,
    /// so it is not chained as a source).
    #[error("{}", describe(.0))]
    Rpc(Status),
    #[error("checkpoint file {path}: {error}")]
    Checkpoint { path: String, error: std::io::Error },
    #[error("invalid token: {0}")]
    Token(String),
    /// Retention trimmed entries after the checkpoint: the device must
    /// resync what it shows (History) and continue from `oldest_seq - 1`.
    #[error(
        "checkpoint {checkpoint} expired: inbox entries below {oldest_seq} were trimmed by retention \
         (reload conversations with history, then continue from {oldest_seq})"
    )]
    CheckpointExpired { checkpoint: u64, oldest_seq: u64 },
    /// The caller's sink refused an entry; the checkpoint was not advanced.
    #[error("delivering entries: {0}")]
    Deliver(std::io::Error),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Rpc(status)
    }
}

/// `code: message`, the code named for every status: callers print this
/// after their own `error: ` (a catch-all "error" read `error: error: ...`).
fn describe(status: &Status) -> String {
    let code = match status.code() {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    };
    match status.message() {
        "" => code.to_owned(),
        // What a plaintext call to a TLS server gets back: the server
        // closes the connection at the HTTP/2 preface.
        message if status.code() == Code::Internal && message.contains("h2 protocol error") => {
            format!("{code}: {message} (if the server uses TLS, connect to https://)")
        }
        message => format!("{code}: {message}"),
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Auth>;

#[derive(Clone)]
pub struct Client {
    timeline: TimelineClient<Authed>,
    admin: AdminClient<Authed>,
}

/// Whether a failed call may be repeated. `Cancelled` is what a call gets
/// when the server's connection drops under it (a server killed mid-call):
/// every repeated call carries its client id, so a repeat is safe.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
    )
}

/// Runs an idempotent call (its request carries a client id, so a repeat
/// returns the first result) up to [`SEND_ATTEMPTS`] times while it fails
/// transiently.
async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    let mut delay = RETRY_BASE_DELAY;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if retryable(&status) && attempt < SEND_ATTEMPTS => {
                tracing::warn!(attempt, code = ?status.code(), "{what} failed, retrying with the same client id");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// The reply of a unary call.
async fn reply<T>(
    call: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    Ok(call.await?.into_inner())
}

/// The conversation a reply must carry.
fn carried(conversation: Option<pb::Conversation>) -> Result<pb::Conversation> {
    conversation.ok_or_else(|| Status::internal("reply carries no conversation").into())
}

/// Transport settings for [`Client::connect_with`].
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// HTTP/2 receive window, in bytes, per stream and per connection: how
    /// much the device buffers before the server has to wait for it to read.
    /// `None` keeps the transport's defaults (2 MiB per stream, 5 MiB per
    /// connection); a memory-constrained device may want far less.
    pub receive_window: Option<u32>,
    /// For `https://` servers: trust certificates signed by this CA (PEM)
    /// instead of the system's roots (a private CA, a test's own).
    pub ca_cert_pem: Option<Vec<u8>>,
}

impl Client {
    /// A handle for one call (a clone shares the connection).
    fn timeline(&self) -> TimelineClient<Authed> {
        self.timeline.clone()
    }

    fn admin(&self) -> AdminClient<Authed> {
        self.admin.clone()
    }

    /// Connects to `server` (`http://host:port`, or `https://host:port` for
    /// TLS, checked against the system's roots or
    /// [`ConnectOptions::ca_cert_pem`]). The connection is made lazily
    /// again after failures; calls fail with `unavailable` meanwhile.
    pub async fn connect(server: &str, token: &str) -> Result<Self> {
        Self::connect_with(server, token, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with transport settings.
    pub async fn connect_with(server: &str, token: &str, options: ConnectOptions) -> Result<Self> {
        let connect_error = |reason: String| ClientError::Connect {
            server: server.to_owned(),
            reason,
        };
        let header = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            ClientError::Token("contains characters not allowed in metadata".into())
        })?;
        let mut endpoint =
            Endpoint::from_shared(server.to_owned()).map_err(|e| connect_error(e.to_string()))?;
        if server.starts_with("https://") {
            let config = match &options.ca_cert_pem {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| connect_error(source_chain(&e)))?;
        } else if options.ca_cert_pem.is_some() {
            return Err(connect_error(
                "a CA certificate was given for a plaintext server: use an https:// address".into(),
            ));
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(options.receive_window)
            .initial_connection_window_size(options.receive_window)
            .connect()
            .await
            .map_err(|e| connect_error(source_chain(&e)))?;
        let auth = Auth { header };
        Ok(Self {
            timeline: TimelineClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_REPLY_BYTES),
            admin: AdminClient::with_interceptor(channel, auth)
                .max_decoding_message_size(MAX_REPLY_BYTES),
        })
    }

    /// Sends a message. Picks a client message id when none is given and
    /// retries transient failures with that same id.
    pub async fn send(
        &self,
        conversation_id: u64,
        text: &str,
        client_msg_id: Option<uuid::Uuid>,
    ) -> Result<pb::SendReply> {
        self.send_mentioning(conversation_id, text, client_msg_id, &[], false)
            .await
    }

    /// [`send`](Self::send), mentioning `mentions` (and everyone, with
    /// `mention_all`).
    pub async fn send_mentioning(
        &self,
        conversation_id: u64,
        text: &str,
        client_msg_id: Option<uuid::Uuid>,
        mentions: &[u64],
        mention_all: bool,
    ) -> Result<pb::SendReply> {
        let client_msg_id = client_msg_id.unwrap_or_else(uuid::Uuid::new_v4).to_string();
        let request = pb::SendRequest {
            conversation_id,
            text: text.to_owned(),
            client_msg_id,
            mentions: mentions.to_vec(),
            mention_all,
            priority: false,
        };
        with_retries("send", || {
            let (mut timeline, request) = (self.timeline(), request.clone());
            async move { timeline.send(with_deadline(request)).await }
        })
        .await
    }

    /// Appends a message as a backend service (`sender_id` 0: system).
    pub async fn append(
        &self,
        conversation_id: u64,
        sender_id: u64,
        text: &str,
        client_msg_id: Option<uuid::Uuid>,
    ) -> Result<pb::SendReply> {
        self.append_with_priority(conversation_id, sender_id, text, client_msg_id, false)
            .await
    }

    /// [`append`](Self::append), marked high priority when `priority`:
    /// pushed to a large group's subscribers ahead of ordinary messages.
    pub async fn append_with_priority(
        &self,
        conversation_id: u64,
        sender_id: u64,
        text: &str,
        client_msg_id: Option<uuid::Uuid>,
        priority: bool,
    ) -> Result<pb::SendReply> {
        let request = pb::AppendMessageRequest {
            conversation_id,
            sender_id,
            text: text.to_owned(),
            client_msg_id: client_msg_id.map(|id| id.to_string()).unwrap_or_default(),
            mentions: Vec::new(),
            mention_all: false,
            priority,
        };
        reply(self.admin().append_message(with_deadline(request))).await
    }

    /// A page of history: backwards below `before` (0: newest) or forwards
    /// above `after`. Entries come in ascending `conv_seq` order.
    pub async fn history(
        &self,
        conversation_id: u64,
        before: u64,
        after: Option<u64>,
        limit: u32,
    ) -> Result<pb::HistoryReply> {
        let request = pb::HistoryRequest {
            conversation_id,
            before,
            after,
            limit,
        };
        reply(self.timeline().history(with_deadline(request))).await
    }

    /// Creates a conversation, retrying transient failures with one client
    /// request id, so a retry never creates a second conversation.
    pub async fn create_conversation(
        &self,
        kind: pb::ConversationKind,
        members: Vec<u64>,
        title: &str,
    ) -> Result<pb::Conversation> {
        self.create_conversation_with_id(kind, members, title, None)
            .await
    }

    /// [`Client::create_conversation`] with the caller's client request id
    /// (picked when `None`): calling again with the same id and request
    /// returns the conversation the first call created.
    pub async fn create_conversation_with_id(
        &self,
        kind: pb::ConversationKind,
        members: Vec<u64>,
        title: &str,
        client_request_id: Option<uuid::Uuid>,
    ) -> Result<pb::Conversation> {
        let request = pb::CreateConversationRequest {
            kind: kind as i32,
            members,
            title: title.to_owned(),
            client_request_id: client_request_id
                .unwrap_or_else(uuid::Uuid::new_v4)
                .to_string(),
        };
        let created = with_retries("create conversation", || {
            let (mut timeline, request) = (self.timeline(), request.clone());
            async move { timeline.create_conversation(with_deadline(request)).await }
        })
        .await?;
        carried(created.conversation)
    }

    pub async fn conversation(&self, conversation_id: u64) -> Result<pb::Conversation> {
        let request = pb::GetConversationRequest { conversation_id };
        let found = reply(self.timeline().get_conversation(with_deadline(request))).await?;
        carried(found.conversation)
    }

    /// A page of the conversation's members with ids above `after`
    /// (`next_after` 0: the last page).
    pub async fn list_members(
        &self,
        conversation_id: u64,
        after: u64,
        limit: u32,
    ) -> Result<pb::ListMembersReply> {
        let request = pb::ListMembersRequest {
            conversation_id,
            after,
            limit,
        };
        reply(self.timeline().list_members(with_deadline(request))).await
    }

    pub async fn add_members(
        &self,
        conversation_id: u64,
        members: Vec<u64>,
    ) -> Result<pb::ChangeMembersReply> {
        let request = members_request(conversation_id, members);
        reply(self.admin().add_members(request)).await
    }

    pub async fn remove_members(
        &self,
        conversation_id: u64,
        members: Vec<u64>,
    ) -> Result<pb::ChangeMembersReply> {
        let request = members_request(conversation_id, members);
        reply(self.admin().remove_members(request)).await
    }
}

impl Client {
    /// Revokes the tokens of `user_id`'s device (of every device of the
    /// user when `device_id` is `None`) issued up to now (service token).
    pub async fn revoke_devices(
        &self,
        user_id: u64,
        device_id: Option<&str>,
    ) -> Result<pb::RevokeDevicesReply> {
        let request = pb::RevokeDevicesRequest {
            user_id,
            device_id: device_id.unwrap_or_default().to_owned(),
        };
        reply(self.admin().revoke_devices(with_deadline(request))).await
    }
}

fn members_request(conversation_id: u64, members: Vec<u64>) -> Request<pb::ChangeMembersRequest> {
    with_deadline(pb::ChangeMembersRequest {
        conversation_id,
        members,
    })
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The JSON form of an entry printed by `tl` (one object per line).
pub fn entry_json(entry: &pb::Entry) -> serde_json::Value {
    let kind = match pb::EntryKind::try_from(entry.kind) {
        // A large group's message in an inbox: the copy a mentioned member
        // gets (the message itself comes from the group's history).
        Ok(pb::EntryKind::Message) if entry.read_fanout && entry.seq > 0 => "mention",
        Ok(pb::EntryKind::Message) => "message",
        Ok(pb::EntryKind::ConversationCreated) => "conversation_created",
        Ok(pb::EntryKind::MembersAdded) => "members_added",
        Ok(pb::EntryKind::MembersRemoved) => "members_removed",
        Ok(pb::EntryKind::ReadMarker) => "read_marker",
        Ok(pb::EntryKind::Edit) => "edit",
        Ok(pb::EntryKind::Recall) => "recall",
        Ok(pb::EntryKind::Delete) => "delete",
        Ok(pb::EntryKind::DeleteForMe) => "delete_for_me",
        Ok(pb::EntryKind::ClearHistory) => "clear_history",
        _ => "unknown",
    };
    if entry.kind == pb::EntryKind::ReadMarker as i32 {
        return serde_json::json!({
            "seq": entry.seq,
            "kind": kind,
            "conversation_id": entry.conversation_id,
            "conv_seq": entry.conv_seq,
            "sender_id": entry.sender_id,
            "read_through": entry.read_through,
            "unread": entry.unread,
            "unread_mentions": entry.unread_mentions,
            "sent_at_ms": entry.sent_at_ms,
        });
    }
    let mut json = serde_json::json!({
        "seq": entry.seq,
        "kind": kind,
        "conversation_id": entry.conversation_id,
        "conv_seq": entry.conv_seq,
        "msg_id": entry.msg_id,
        "sender_id": entry.sender_id,
        "client_msg_id": entry.client_msg_id,
        "text": entry.text,
        "sent_at_ms": entry.sent_at_ms,
        "members": entry.members,
        "mentions": entry.mentions,
        "mention_all": entry.mention_all,
        "priority": entry.priority,
    });
    if let Some(target) = &entry.target {
        json["target_conv_seq"] = target.conv_seq.into();
        json["target_msg_id"] = target.msg_id.into();
    }
    if entry.kind == pb::EntryKind::Message as i32 {
        json["edited"] = entry.edited.into();
        json["version"] = entry.version.into();
        json["recalled"] = entry.removed.is_some().into();
        if let Some(removed) = &entry.removed {
            json["removed_by"] = removed.by.into();
            json["removed_at_ms"] = removed.at_ms.into();
            json["removal"] = match pb::RemovalKind::try_from(removed.kind) {
                Ok(pb::RemovalKind::Deleted) => "deleted",
                _ => "recalled",
            }
            .into();
        }
        if !entry.previous_versions.is_empty() {
            json["previous_versions"] = entry
                .previous_versions
                .iter()
                .map(
                    |p| serde_json::json!({"version": p.version, "text": p.text, "at_ms": p.at_ms}),
                )
                .collect::<Vec<_>>()
                .into();
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_described_by_its_code_never_as_error() {
        let described = ClientError::Rpc(Status::internal("store failed")).to_string();
        assert_eq!(described, "internal: store failed");
        assert_eq!(
            ClientError::Rpc(Status::unimplemented("")).to_string(),
            "unimplemented"
        );
        for code in 0..=16 {
            let described = describe(&Status::new(Code::from(code), "why"));
            assert!(!described.starts_with("error"), "{described}");
            assert!(described.ends_with(": why"), "{described}");
        }
    }
}
