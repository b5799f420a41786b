//! Searching the OpenSearch index: the caller's membership intervals, the
//! text clauses and the filters form one bool query, sorted in page order
//! and continued with `search_after`, so authorisation and paging happen
//! inside the engine, before anything is scored or cut.
//!
//! The request's time limit is one deadline for the whole search (a
//! user's takes two requests): each request asks OpenSearch to stop
//! collecting when the time left runs out (it then answers `timed_out`
//! with what it found), and waits at most [`REPLY_SLACK`] more for the
//! reply; without one the page is empty and says it ran out of time.

use super::{
    OpenSearchIndex, REPLY_SLACK, client::Body, encode, message_id, number, write::intervals_of,
};
use crate::error::{Result, SearchError};
use crate::model::{
    MAX_FILTER_INTERVALS, MessageDoc, Rank, SearchPage, SearchRequest, Searcher, SortOrder,
};
use crate::page;
use http::Method;
use serde_json::{Value, json};
use std::time::Instant;

/// Who may be found, as far as the memberships read in time say.
struct Allowed {
    /// `None`: the searcher may find nothing.
    filter: Option<Value>,
    /// The memberships' search ran out of time: some may be missing.
    timed_out: bool,
}

/// A page that ran out of time before anything was found.
fn out_of_time() -> SearchPage {
    SearchPage {
        timed_out: true,
        ..SearchPage::default()
    }
}

impl OpenSearchIndex {
    pub(super) fn run_search(&self, request: &SearchRequest) -> Result<SearchPage> {
        let parsed = request.parse()?;
        let deadline = Instant::now() + parsed.timeout;
        let mut filter = vec![json!({"term": {"kind": "m"}})];
        let mut timed_out = false;
        if let Searcher::User(user) = request.searcher {
            let Some(allowed) = self.authorisation(user, request, deadline)? else {
                return Ok(out_of_time());
            };
            timed_out = allowed.timed_out;
            match allowed.filter {
                Some(allowed) => filter.push(allowed),
                None => {
                    return Ok(SearchPage {
                        timed_out,
                        ..SearchPage::default()
                    });
                }
            }
        }
        if let Some(conversation) = request.conversation_id {
            filter.push(json!({"term": {"conversation_id": conversation}}));
        }
        if let Some(sender) = request.sender_id {
            filter.push(json!({"term": {"sender_id": sender}}));
        }
        if request.sent_from_ms.is_some() || request.sent_before_ms.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(from) = request.sent_from_ms {
                range.insert("gte".into(), json!(from));
            }
            if let Some(before) = request.sent_before_ms {
                range.insert("lt".into(), json!(before));
            }
            filter.push(json!({"range": {"sent_at_ms": range}}));
        }
        let clauses: Vec<Value> = parsed
            .clauses
            .iter()
            .map(|clause| {
                json!({"match_phrase": {"tokens": {
                    "query": encode::query_phrase(clause),
                    "slop": 0,
                }}})
            })
            .collect();
        let tail = [
            json!({"sent_at_ms": "desc"}),
            json!({"conversation_id": "desc"}),
            json!({"conv_seq": "desc"}),
        ];
        let (mut bool_query, sort) = match request.order {
            // Matching without scoring.
            SortOrder::NewestFirst => {
                filter.extend(clauses);
                (json!({"filter": filter}), tail.to_vec())
            }
            SortOrder::Relevance => {
                let mut sort = vec![json!({"_score": "desc"})];
                sort.extend(tail);
                (json!({"filter": filter, "must": clauses}), sort)
            }
        };
        if matches!(request.searcher, Searcher::User(_)) && !request.hidden.messages.is_empty() {
            let ids: Vec<String> = request
                .hidden
                .messages
                .iter()
                .map(|&(c, seq)| message_id(c, seq))
                .collect();
            bool_query["must_not"] = json!([{"ids": {"values": ids}}]);
        }
        let mut body = json!({
            "size": parsed.limit + 1,
            "track_total_hits": false,
            "query": {"bool": bool_query},
            "sort": sort,
            "_source": ["conversation_id", "conv_seq", "sender_id", "sent_at_ms", "text", "state"],
        });
        if let Some(after) = parsed.after {
            let mut values = Vec::new();
            if request.order == SortOrder::Relevance {
                values.push(json!(after.score));
            }
            values.extend([
                json!(after.sent_at_ms),
                json!(after.conversation_id),
                json!(after.conv_seq),
            ]);
            body["search_after"] = Value::Array(values);
        }
        let Some(reply) = self.query(request.conversation_id, body, deadline)? else {
            return Ok(out_of_time());
        };
        let timed_out = timed_out || reply["timed_out"] == true;
        let mut ranked = Vec::new();
        for hit in reply["hits"]["hits"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
        {
            let source = &hit["_source"];
            let doc = MessageDoc {
                conversation_id: number(source, "conversation_id")?,
                conv_seq: number(source, "conv_seq")?,
                msg_id: number(&source["state"], "msg_id")?,
                sender_id: number(source, "sender_id")?,
                text: source["text"]
                    .as_str()
                    .ok_or_else(|| SearchError::Corrupt("OpenSearch message without text".into()))?
                    .to_owned(),
                sent_at_ms: source["sent_at_ms"].as_i64().ok_or_else(|| {
                    SearchError::Corrupt("OpenSearch message without sent_at_ms".into())
                })?,
            };
            let score = match request.order {
                SortOrder::Relevance => hit["sort"][0].as_f64().unwrap_or_default() as f32,
                SortOrder::NewestFirst => 0.0,
            };
            let rank = Rank {
                order: request.order,
                score,
                sent_at_ms: doc.sent_at_ms,
                conversation_id: doc.conversation_id,
                conv_seq: doc.conv_seq,
            };
            ranked.push((rank, doc));
        }
        page::cut(ranked, &parsed, timed_out, |rank, doc| {
            Ok(page::hit(doc, &parsed.clauses, rank.score))
        })
    }

    /// One search request, given the time left until `deadline`; `None`
    /// when it is out of time. A conversation's search asks only its shard.
    fn query(
        &self,
        conversation: Option<u64>,
        mut body: Value,
        deadline: Instant,
    ) -> Result<Option<Value>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        body["timeout"] = json!(format!("{}ms", left.as_millis().max(1)));
        let path = match conversation {
            Some(c) => format!("/_search?routing={c}"),
            None => "/_search".to_owned(),
        };
        let reply =
            self.expect_ok_within(Method::POST, &path, Body::Json(body), left + REPLY_SLACK)?;
        if let Some(reply) = &reply {
            check_shards(reply)?;
        }
        Ok(reply)
    }

    /// The user's readable stretches as one filter (one `conv_seq` range
    /// per membership interval), or `None` when there are none.
    /// `None` when out of time before any membership was read.
    fn authorisation(
        &self,
        user: u64,
        request: &SearchRequest,
        deadline: Instant,
    ) -> Result<Option<Allowed>> {
        let conversation = request.conversation_id;
        let mut filter = vec![
            json!({"term": {"kind": "u"}}),
            json!({"term": {"user_id": user}}),
        ];
        if let Some(c) = conversation {
            filter.push(json!({"term": {"conversation_id": c}}));
        }
        let body = json!({
            "size": MAX_FILTER_INTERVALS + 1,
            "track_total_hits": false,
            "query": {"bool": {"filter": filter}},
            "_source": ["conversation_id", "state"],
        });
        let Some(reply) = self.query(conversation, body, deadline)? else {
            return Ok(None);
        };
        // Fewer memberships than the user has only narrow what they find;
        // the page says so.
        let timed_out = reply["timed_out"] == true;
        let memberships = reply["hits"]["hits"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let too_many = || SearchError::TooManyMemberships {
            limit: MAX_FILTER_INTERVALS,
        };
        if memberships.len() > MAX_FILTER_INTERVALS {
            return Err(too_many());
        }
        let mut ranges = Vec::new();
        for membership in memberships {
            let source = &membership["_source"];
            let conversation = number(source, "conversation_id")?;
            let floor = request.hidden.floor(conversation);
            for (from, to) in intervals_of(&source["state"]["intervals"])?.0 {
                // Above what the user cleared.
                let from = from.max(floor);
                if from >= to {
                    continue;
                }
                let mut range = json!({"gte": from});
                if to != u64::MAX {
                    range["lt"] = json!(to);
                }
                ranges.push(json!({"bool": {"filter": [
                    {"term": {"conversation_id": conversation}},
                    {"range": {"conv_seq": range}},
                ]}}));
            }
        }
        if ranges.len() > MAX_FILTER_INTERVALS {
            return Err(too_many());
        }
        Ok(Some(Allowed {
            filter: (!ranges.is_empty())
                .then(|| json!({"bool": {"should": ranges, "minimum_should_match": 1}})),
            timed_out,
        }))
    }
}

/// A reply from fewer shards than asked is an error, not a short page.
pub(super) fn check_shards(reply: &Value) -> Result<()> {
    let failed = reply["_shards"]["failed"].as_u64().unwrap_or(0);
    if failed == 0 {
        return Ok(());
    }
    Err(SearchError::Engine(format!(
        "OpenSearch: {failed} shards failed: {}",
        reply["_shards"]["failures"][0]["reason"]
    )))
}
