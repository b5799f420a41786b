//! Read markers and the conversation list.

use crate::{Client, Result, pb, reply, with_deadline, with_retries};

impl Client {
    /// Raises the read marker of `conversation_id` to `through` (`None`:
    /// the newest entry). Retried on transient failures: a mark is a
    /// monotonic max, so a repeat changes nothing.
    pub async fn mark_read(
        &self,
        conversation_id: u64,
        through: Option<u64>,
    ) -> Result<pb::MarkReadReply> {
        let request = pb::MarkReadRequest {
            conversation_id,
            through,
        };
        with_retries("mark read", || {
            let (mut timeline, request) = (self.timeline(), request);
            async move { timeline.mark_read(with_deadline(request)).await }
        })
        .await
    }

    /// How many and which members have read the message at `conv_seq`,
    /// summed over every page (one call per 1,000 members).
    pub async fn read_receipts(
        &self,
        conversation_id: u64,
        conv_seq: u64,
    ) -> Result<pb::GetReadReceiptsReply> {
        let mut total = pb::GetReadReceiptsReply::default();
        let mut after_member = 0;
        loop {
            let page = self
                .read_receipts_page(conversation_id, conv_seq, after_member, 0)
                .await?;
            total.read_count += page.read_count;
            total.member_count += page.member_count;
            total.read_by.extend(page.read_by);
            // A cursor that does not move on would loop forever.
            if page.next_after_member <= after_member {
                return Ok(total);
            }
            after_member = page.next_after_member;
        }
    }

    /// One page of receipts: the members after `after_member`, at most
    /// `limit` of them (0: the server's 1,000).
    pub async fn read_receipts_page(
        &self,
        conversation_id: u64,
        conv_seq: u64,
        after_member: u64,
        limit: u32,
    ) -> Result<pb::GetReadReceiptsReply> {
        let request = pb::GetReadReceiptsRequest {
            conversation_id,
            conv_seq,
            after_member,
            limit,
        };
        reply(self.timeline().get_read_receipts(with_deadline(request))).await
    }

    /// One page of inbox entries after `after_seq`, with the unread counts
    /// of the conversations they touch when the page is complete.
    pub async fn sync_with_read_state(
        &self,
        after_seq: Option<u64>,
        limit: u32,
    ) -> Result<pb::SyncReply> {
        let request = pb::SyncRequest {
            after_seq,
            limit,
            include_read_state: true,
        };
        reply(self.timeline().sync(with_deadline(request))).await
    }

    /// One page of the conversation list (`cursor` empty: the first).
    pub async fn list_conversations(
        &self,
        limit: u32,
        cursor: &str,
        known_version: &str,
    ) -> Result<pb::ListConversationsReply> {
        let request = pb::ListConversationsRequest {
            limit,
            cursor: cursor.to_owned(),
            known_version: known_version.to_owned(),
        };
        reply(self.timeline().list_conversations(with_deadline(request))).await
    }
}

/// The JSON form of a conversation of the list printed by `tl`.
pub fn conversation_state_json(c: &pb::ConversationState) -> serde_json::Value {
    let kind = match pb::ConversationKind::try_from(c.kind) {
        Ok(pb::ConversationKind::Direct) => "direct",
        Ok(pb::ConversationKind::Group) => "group",
        _ => "unknown",
    };
    let last_message = c.last_message.as_ref().map(|m| {
        serde_json::json!({
            "conv_seq": m.conv_seq,
            "msg_id": m.msg_id,
            "sender_id": m.sender_id,
            "text": m.text,
            "sent_at_ms": m.sent_at_ms,
        })
    });
    serde_json::json!({
        "conversation_id": c.conversation_id,
        "kind": kind,
        "title": c.title,
        "last_conv_seq": c.last_conv_seq,
        "last_message": last_message,
        "unread": c.unread,
        "mentions": c.mentions,
        "read_through": c.read_through,
        "peer_read_through": c.peer_read_through,
        "member": c.member,
        "last_activity_ms": c.last_activity_ms,
    })
}
