//! What `tl` prints: one JSON object per line on stdout.

use client::pb;
use std::io::Write;

pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

pub(crate) fn conversation_json(c: &pb::Conversation) -> serde_json::Value {
    let kind = match pb::ConversationKind::try_from(c.kind) {
        Ok(pb::ConversationKind::Direct) => "direct",
        Ok(pb::ConversationKind::Group) => "group",
        _ => "unknown",
    };
    serde_json::json!({
        "conversation_id": c.conversation_id,
        "kind": kind,
        "members": c.members,
        "member_count": c.member_count,
        "read_fanout": c.read_fanout,
        "title": c.title,
        "created_at_ms": c.created_at_ms,
    })
}

pub(crate) fn send_json(r: &pb::SendReply) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": r.conversation_id,
        "conv_seq": r.conv_seq,
        "msg_id": r.msg_id,
        "client_msg_id": r.client_msg_id,
        "sent_at_ms": r.sent_at_ms,
        "duplicate": r.duplicate,
    })
}

pub(crate) fn change_json(reply: &client::pb::MessageChangeReply) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": reply.conversation_id,
        "conv_seq": reply.conv_seq,
        "msg_id": reply.msg_id,
        "sent_at_ms": reply.sent_at_ms,
        "duplicate": reply.duplicate,
    })
}
