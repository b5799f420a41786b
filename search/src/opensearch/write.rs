//! Writing to the index: a batch of updates as bulk items in `conv_seq`
//! order (memberships read, changed and written whole), sent in bounded
//! bulk requests, and which bulk replies are failures.

use super::client::Body;
use super::{OpenSearchIndex, WRITE_TIMEOUT, checkpoint_id, encode, member_id, message_id, number};
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
    /// The `indexed_through` of the update that changed it last: the
    /// document's version.
    version: u64,
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

    /// Writes the document whole as of `version`: OpenSearch keeps it only
    /// if no write of a higher version came first (`external_gte`: the
    /// same version again is a replay, and writes the same document).
    pub(super) fn index(&mut self, id: String, conversation: u64, source: Value, version: u64) {
        let action = json!({"index": {
            "_id": id,
            "routing": conversation.to_string(),
            "version": version,
            "version_type": "external_gte",
        }});
        self.push(action, Some(source));
    }
}

impl OpenSearchIndex {
    /// The stored sources of `ids` (each with its conversation, for
    /// routing), in order; `None` for a missing one. Realtime reads: no
    /// refresh is needed to see what was acknowledged.
    fn sources(&self, ids: &[(u64, String)]) -> Result<Vec<Option<Value>>> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MGET_CHUNK) {
            let docs: Vec<Value> = chunk
                .iter()
                .map(|(c, id)| json!({"_id": id, "routing": c.to_string()}))
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
                    "OpenSearch answered {} of {} document reads",
                    results.len(),
                    chunk.len()
                )));
            }
            for mut doc in results {
                if let Some(error) = doc.get("error") {
                    return Err(SearchError::Engine(format!(
                        "OpenSearch document read: {error}"
                    )));
                }
                found.push((doc["found"] == true).then(|| doc["_source"].take()));
            }
        }
        Ok(found)
    }

    /// The current memberships of `pairs`; missing ones are empty.
    fn memberships(
        &self,
        pairs: &BTreeSet<(u64, u64)>,
    ) -> Result<BTreeMap<(u64, u64), Membership>> {
        let ids: Vec<(u64, String)> = pairs.iter().map(|&(c, u)| (c, member_id(c, u))).collect();
        let mut found = BTreeMap::new();
        for (&pair, source) in pairs.iter().zip(self.sources(&ids)?) {
            let membership = match source {
                Some(source) => {
                    let state = &source["state"];
                    Membership {
                        intervals: intervals_of(&state["intervals"])?,
                        applied_through: number(state, "applied_through")?,
                        changed: false,
                        version: 0,
                    }
                }
                None => Membership::default(),
            };
            found.insert(pair, membership);
        }
        Ok(found)
    }

    /// The messages that edits of this batch change, by (conversation,
    /// `conv_seq`): as indexed for those the batch does not write first
    /// (`None`: not indexed, never or no longer), and `None` for the rest
    /// until the batch writes them.
    fn edited_messages(
        &self,
        fresh: &[&ConversationUpdate],
    ) -> Result<BTreeMap<(u64, u64), Option<Value>>> {
        let mut written = BTreeSet::new();
        let mut wanted = BTreeSet::new();
        let mut edited = BTreeMap::new();
        for update in fresh {
            let conv = update.conversation_id;
            for op in &update.ops {
                match op {
                    IndexOp::Upsert(doc) => {
                        written.insert((conv, doc.conv_seq));
                    }
                    IndexOp::ReplaceText { conv_seq, .. } => {
                        edited.insert((conv, *conv_seq), None);
                        if !written.contains(&(conv, *conv_seq)) {
                            wanted.insert((conv, *conv_seq));
                        }
                    }
                    _ => {}
                }
            }
        }
        let ids: Vec<(u64, String)> = wanted.iter().map(|&(c, s)| (c, message_id(c, s))).collect();
        let sources = self.sources(&ids)?;
        for (key, source) in wanted.into_iter().zip(sources) {
            edited.insert(key, source.filter(|s| s["kind"] == "m"));
        }
        Ok(edited)
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
        // The messages this batch edits, as it leaves them (`None`: not
        // indexed), so an edit rewrites the document whole; only those,
        // so a batch holds no second copy of every text it writes.
        let mut messages = self.edited_messages(&fresh)?;
        let mut bulk = Bulk::default();
        for update in fresh {
            let conv = update.conversation_id;
            // Every document this update writes is versioned by how far it
            // indexes: a later update of the conversation writes a higher
            // version, so a late write of an earlier stretch (an indexer
            // that lost its lease and resumed) changes nothing.
            let version = update.indexed_through;
            for op in &update.ops {
                match op {
                    IndexOp::Upsert(doc) => {
                        let source = message_source(doc);
                        let id = message_id(conv, doc.conv_seq);
                        if let Some(edited) = messages.get_mut(&(conv, doc.conv_seq)) {
                            *edited = Some(source.clone());
                        }
                        bulk.index(id, conv, source, version);
                    }
                    IndexOp::ReplaceText { conv_seq, text } => {
                        // Nothing if the message is not indexed.
                        let Some(Some(source)) = messages.get_mut(&(conv, *conv_seq)) else {
                            continue;
                        };
                        source["text"] = json!(text);
                        source["tokens"] = json!(encode::index_text(text));
                        let id = message_id(conv, *conv_seq);
                        bulk.index(id, conv, source.clone(), version);
                    }
                    IndexOp::Remove { conv_seq } => {
                        // Kept as a versioned tombstone, not deleted: a
                        // deletion's version is forgotten after a minute
                        // (`index.gc_deletes`), and a late write of the
                        // message would then bring it back. No query
                        // matches kind "x".
                        let tombstone = json!({
                            "kind": "x",
                            "conversation_id": conv,
                            "conv_seq": conv_seq,
                        });
                        bulk.index(message_id(conv, *conv_seq), conv, tombstone, version);
                        if let Some(edited) = messages.get_mut(&(conv, *conv_seq)) {
                            *edited = None;
                        }
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
                            member.version = version;
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
                member.version,
            );
        }
        Ok((bulk, staged))
    }
}

impl OpenSearchIndex {
    /// Sends staged documents, then the checkpoints they reach.
    pub(super) fn commit_staged(&self, documents: Bulk, staged: BTreeMap<u64, u64>) -> Result<()> {
        if staged.is_empty() {
            return Ok(());
        }
        // Searchable before the checkpoint says they are indexed.
        self.send(documents, "wait_for")?;
        let mut checkpoints = Bulk::default();
        for (&conv, &through) in &staged {
            checkpoints.index(
                checkpoint_id(conv),
                conv,
                json!({"kind": "c", "conversation_id": conv, "state": {"through": through}}),
                through,
            );
        }
        self.send(checkpoints, "false")?;
        let mut committed = self.checkpoints.write().unwrap_or_else(|e| e.into_inner());
        for (conv, through) in staged {
            let checkpoint = committed.entry(conv).or_default();
            *checkpoint = (*checkpoint).max(through);
        }
        Ok(())
    }
}

#[cfg(feature = "testsuite")]
impl OpenSearchIndex {
    /// [`crate::SearchIndex::apply`] by an indexer that stalls between
    /// reading what it changes and writing it (a node frozen mid-round,
    /// resumed after another node took over): `meanwhile` runs between.
    pub fn apply_after(
        &self,
        updates: &[ConversationUpdate],
        meanwhile: impl FnOnce(),
    ) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (documents, staged) = self.stage(updates)?;
        meanwhile();
        self.commit_staged(documents, staged)
    }

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

/// Every item of a bulk reply succeeded, or was refused because the index
/// holds a higher version of its document (written by a later update: a
/// newer state, kept).
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
        let superseded = error["type"] == "version_conflict_engine_exception";
        if !superseded {
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
    fn a_bulk_reply_fails_on_any_error_but_a_newer_version_kept() {
        let superseded = json!({"errors": true, "items": [
            {"index": {"_id": "a", "status": 201}},
            {"index": {"_id": "b", "status": 409,
                "error": {"type": "version_conflict_engine_exception", "reason": "newer"}}},
        ]});
        check_bulk(&superseded, 2).unwrap();
        assert!(check_bulk(&superseded, 3).is_err(), "an item unanswered");
        let missing = json!({"errors": true, "items": [
            {"update": {"_id": "b", "status": 404,
                "error": {"type": "document_missing_exception", "reason": "missing"}}},
        ]});
        assert!(
            check_bulk(&missing, 1).is_err(),
            "no partial update is sent"
        );
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
