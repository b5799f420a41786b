//! Writing to the index: a batch of updates as bulk items in `conv_seq`
//! order (memberships read, changed and written whole), sent in bounded
//! bulk requests, and which bulk replies are failures.

use super::client::Body;
use super::{OpenSearchIndex, WRITE_TIMEOUT, encode, member_id, message_id, number};
use crate::error::{Result, SearchError};
use crate::model::{ConversationUpdate, IndexOp, Intervals, MessageDoc};
use http::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Largest bulk request sent, in bytes (a larger batch is sent as several).
pub const MAX_BULK_BYTES: usize = 8 * 1024 * 1024;
/// Memberships fetched per request while applying.
const MGET_CHUNK: usize = 1000;

/// A membership being changed: its intervals and the highest `conv_seq`
/// applied to them.
#[derive(Clone, Default)]
struct Membership {
    intervals: Intervals,
    applied_through: u64,
    changed: bool,
}

/// Bulk request lines, one item (action and source) at a time.
#[derive(Default)]
pub(super) struct Bulk {
    pub(super) items: Vec<Vec<u8>>,
}

impl Bulk {
    pub(super) fn push(&mut self, action: Value, source: Option<Value>) {
        let mut item = serde_json::to_vec(&action).expect("a JSON value serialises");
        item.push(b'\n');
        if let Some(source) = source {
            serde_json::to_writer(&mut item, &source).expect("a JSON value serialises");
            item.push(b'\n');
        }
        self.items.push(item);
    }

    pub(super) fn index(&mut self, id: String, conversation: u64, source: Value) {
        let action = json!({"index": {"_id": id, "routing": conversation.to_string()}});
        self.push(action, Some(source));
    }
}

impl OpenSearchIndex {
    /// The current memberships of `pairs` (realtime reads: no refresh
    /// needed); missing ones are empty.
    fn memberships(
        &self,
        pairs: &BTreeSet<(u64, u64)>,
    ) -> Result<BTreeMap<(u64, u64), Membership>> {
        let mut found = BTreeMap::new();
        let pairs: Vec<(u64, u64)> = pairs.iter().copied().collect();
        for chunk in pairs.chunks(MGET_CHUNK) {
            let docs: Vec<Value> = chunk
                .iter()
                .map(|&(c, u)| json!({"_id": member_id(c, u), "routing": c.to_string()}))
                .collect();
            let reply = self.expect_ok(
                Method::POST,
                "/_mget",
                Body::Json(json!({"docs": docs})),
                WRITE_TIMEOUT,
            )?;
            let results = reply["docs"].as_array().cloned().unwrap_or_default();
            if results.len() != chunk.len() {
                return Err(SearchError::Engine(format!(
                    "OpenSearch answered {} of {} membership reads",
                    results.len(),
                    chunk.len()
                )));
            }
            for (&pair, doc) in chunk.iter().zip(&results) {
                if let Some(error) = doc.get("error") {
                    return Err(SearchError::Engine(format!(
                        "OpenSearch membership read: {error}"
                    )));
                }
                let membership = if doc["found"] == true {
                    let state = &doc["_source"]["state"];
                    Membership {
                        intervals: intervals_of(&state["intervals"])?,
                        applied_through: number(state, "applied_through")?,
                        changed: false,
                    }
                } else {
                    Membership::default()
                };
                found.insert(pair, membership);
            }
        }
        Ok(found)
    }

    /// Sends the items as bulk requests of at most [`MAX_BULK_BYTES`], in
    /// order, each acknowledged before the next is sent.
    pub(super) fn send(&self, bulk: Bulk, refresh: &str) -> Result<()> {
        let mut items = bulk.items.into_iter().peekable();
        while items.peek().is_some() {
            let mut body = Vec::new();
            let mut count = 0;
            while let Some(item) = items.peek() {
                if count > 0 && body.len() + item.len() > MAX_BULK_BYTES {
                    break;
                }
                body.extend_from_slice(item);
                count += 1;
                items.next();
            }
            let path = format!("/_bulk?refresh={refresh}");
            let reply = self.expect_ok(Method::POST, &path, Body::Lines(body), WRITE_TIMEOUT)?;
            check_bulk(&reply, count)?;
        }
        Ok(())
    }

    /// The documents of the updates not yet applied, and the checkpoints
    /// they reach.
    pub(super) fn stage(
        &self,
        updates: &[ConversationUpdate],
    ) -> Result<(Bulk, BTreeMap<u64, u64>)> {
        let mut staged: BTreeMap<u64, u64> = BTreeMap::new();
        let mut fresh = Vec::new();
        {
            let committed = self.committed();
            for update in updates {
                let conv = update.conversation_id;
                let checkpoint = staged
                    .get(&conv)
                    .or_else(|| committed.get(&conv))
                    .copied()
                    .unwrap_or(0);
                if update.indexed_through > checkpoint {
                    staged.insert(conv, update.indexed_through);
                    fresh.push(update);
                }
            }
        }
        let pairs: BTreeSet<(u64, u64)> = fresh
            .iter()
            .flat_map(|u| {
                u.ops.iter().flat_map(move |op| match op {
                    IndexOp::Joined { users, .. } | IndexOp::Left { users, .. } => users
                        .iter()
                        .map(|&user| (u.conversation_id, user))
                        .collect(),
                    _ => Vec::new(),
                })
            })
            .collect();
        let mut members = self.memberships(&pairs)?;
        let mut bulk = Bulk::default();
        for update in fresh {
            let conv = update.conversation_id;
            for op in &update.ops {
                match op {
                    IndexOp::Upsert(doc) => {
                        bulk.index(message_id(conv, doc.conv_seq), conv, message_source(doc));
                    }
                    IndexOp::ReplaceText { conv_seq, text } => {
                        // A partial update: nothing if the message is not
                        // indexed (the reply's "missing" is expected).
                        let action = json!({"update": {
                            "_id": message_id(conv, *conv_seq),
                            "routing": conv.to_string(),
                        }});
                        let doc = json!({"doc": {
                            "text": text,
                            "tokens": encode::index_text(text),
                        }});
                        bulk.push(action, Some(doc));
                    }
                    IndexOp::Remove { conv_seq } => {
                        let action = json!({"delete": {
                            "_id": message_id(conv, *conv_seq),
                            "routing": conv.to_string(),
                        }});
                        bulk.push(action, None);
                    }
                    IndexOp::Joined { users, conv_seq } | IndexOp::Left { users, conv_seq } => {
                        let joined = matches!(op, IndexOp::Joined { .. });
                        for &user in users {
                            let member = members.entry((conv, user)).or_default();
                            // Applied before a crash that came before the
                            // checkpoint: not again.
                            if *conv_seq <= member.applied_through {
                                continue;
                            }
                            if joined {
                                member.intervals.join(*conv_seq);
                            } else {
                                member.intervals.leave(*conv_seq);
                            }
                            member.applied_through = *conv_seq;
                            member.changed = true;
                        }
                    }
                }
            }
        }
        for ((conv, user), member) in members.into_iter().filter(|(_, m)| m.changed) {
            let flat: Vec<u64> = member
                .intervals
                .0
                .iter()
                .flat_map(|&(from, to)| [from, to])
                .collect();
            bulk.index(
                member_id(conv, user),
                conv,
                json!({
                    "kind": "u",
                    "conversation_id": conv,
                    "user_id": user,
                    "state": {"intervals": flat, "applied_through": member.applied_through},
                }),
            );
        }
        Ok((bulk, staged))
    }
}

#[cfg(feature = "testsuite")]
impl OpenSearchIndex {
    /// [`crate::SearchIndex::apply`] as a crash cuts it short: only the
    /// first `keep(n)` of the batch's `n` documents reach the index, and
    /// no checkpoint.
    pub fn apply_interrupted(
        &self,
        updates: &[ConversationUpdate],
        keep: impl FnOnce(usize) -> usize,
    ) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (mut documents, _) = self.stage(updates)?;
        let kept = keep(documents.items.len());
        documents.items.truncate(kept);
        self.send(documents, "wait_for")
    }
}

fn message_source(doc: &MessageDoc) -> Value {
    json!({
        "kind": "m",
        "conversation_id": doc.conversation_id,
        "conv_seq": doc.conv_seq,
        "sender_id": doc.sender_id,
        "sent_at_ms": doc.sent_at_ms,
        "text": doc.text,
        "tokens": encode::index_text(&doc.text),
        "state": {"msg_id": doc.msg_id},
    })
}

pub(super) fn intervals_of(value: &Value) -> Result<Intervals> {
    let bad = || SearchError::Corrupt("OpenSearch membership intervals".into());
    let flat: Vec<u64> = value
        .as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|v| v.as_u64().ok_or_else(bad))
        .collect::<Result<_>>()?;
    if !flat.len().is_multiple_of(2) {
        return Err(bad());
    }
    Ok(Intervals(flat.chunks(2).map(|p| (p[0], p[1])).collect()))
}

/// Every item of a bulk reply succeeded, or failed as expected (an edit
/// of a message that is not indexed).
fn check_bulk(reply: &Value, sent: usize) -> Result<()> {
    let items = reply["items"].as_array().map_or(&[][..], Vec::as_slice);
    if items.len() != sent {
        return Err(SearchError::Engine(format!(
            "OpenSearch bulk answered {} of {sent} items",
            items.len()
        )));
    }
    if reply["errors"] != true {
        return Ok(());
    }
    for item in items {
        let Some((action, result)) = item.as_object().and_then(|o| o.iter().next()) else {
            return Err(SearchError::Engine("OpenSearch bulk: an empty item".into()));
        };
        let Some(error) = result.get("error") else {
            continue;
        };
        let missing = action == "update" && error["type"] == "document_missing_exception";
        if !missing {
            return Err(SearchError::Engine(format!(
                "OpenSearch bulk {action} {}: status {}: {}: {}",
                result["_id"],
                result["status"],
                error["type"].as_str().unwrap_or("error"),
                error["reason"].as_str().unwrap_or_default()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bulk_reply_fails_on_any_error_but_an_edit_of_a_missing_message() {
        let missing = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 201}},
            {"update": {"_id": "b", "status": 404,
                "error": {"type": "document_missing_exception", "reason": "missing"}}},
            {"delete": {"_id": "c", "status": 404, "result": "not_found"}},
        ]});
        check_bulk(&missing, 3).unwrap();
        assert!(check_bulk(&missing, 4).is_err(), "an item unanswered");
        let rejected = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 429,
                "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}},
        ]});
        let error = check_bulk(&rejected, 1).unwrap_err().to_string();
        assert!(error.contains("es_rejected_execution_exception"), "{error}");
    }

    #[test]
    fn membership_intervals_round_trip_through_their_flat_form() {
        let flat = json!([1, 5, 9, u64::MAX]);
        assert_eq!(intervals_of(&flat).unwrap().0, [(1, 5), (9, u64::MAX)]);
        assert!(intervals_of(&json!([1])).is_err());
    }
}
