//! History search.

use crate::{Client, Result, pb, reply, with_deadline};

impl Client {
    /// One page of hits for `request` (a search changes nothing, but is
    /// not retried: a slow one is better narrowed than repeated).
    pub async fn search(&self, request: pb::SearchRequest) -> Result<pb::SearchReply> {
        reply(self.timeline().search(with_deadline(request))).await
    }
}

/// A hit as `tl search` prints it: highlights as `[start, end)` byte
/// offsets into `text`.
pub fn search_hit_json(hit: &pb::SearchHit) -> serde_json::Value {
    serde_json::json!({
        "conversation_id": hit.conversation_id,
        "conv_seq": hit.conv_seq,
        "msg_id": hit.msg_id,
        "sender_id": hit.sender_id,
        "text": hit.text,
        "sent_at_ms": hit.sent_at_ms,
        "highlights": hit.highlights.iter().map(|h| [h.start, h.end]).collect::<Vec<_>>(),
        "score": hit.score,
    })
}
