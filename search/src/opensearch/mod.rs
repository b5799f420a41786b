//! The distributed backend: one OpenSearch index, every document routed by
//! its conversation (`routing=conversation_id`), so a conversation's
//! messages, memberships and checkpoint share a shard, and a search within
//! one conversation asks one shard.
//!
//! Three kinds of document, each with a deterministic id, so writing one
//! again replaces it: messages (`m{conversation}.{conv_seq}`), memberships
//! (`u{conversation}.{user}`: the intervals, and the highest `conv_seq`
//! applied to them) and checkpoints (`c{conversation}`).
//!
//! Every document is written whole with an external version, the
//! `indexed_through` of the update that wrote it (`external_gte`), and a
//! removed message stays as a tombstone of kind `x`: a late write of an
//! earlier stretch (the indexer of a writer that lost its lease, resumed)
//! is refused by OpenSearch, so several indexers on one index never set a
//! document, a membership or a checkpoint back.
//!
//! OpenSearch has no transaction over several documents, so an update is
//! made exact by its order: the documents first (bulk requests, each
//! acknowledged only once durable in the translog and waiting for a refresh
//! so that they are searchable), then the checkpoints. A crash between the
//! two leaves documents above the checkpoint; the feeder then sends the
//! same stretch again, and applying it twice gives the same index:
//! upserts and removals set a document to one state, an edit of a message
//! rewrites it with its new text, and membership changes at or below a membership's
//! applied `conv_seq` are skipped. Nothing is lost (the checkpoint never
//! passes what is durable) and nothing is doubled (ids are deterministic).
//!
//! Text is indexed with the shared tokeniser, spelled for OpenSearch's
//! built-in analyzer ([`encode`]), so both backends match alike.

mod client;
mod encode;
mod query;
#[cfg(test)]
mod timeout_tests;
mod write;

use crate::error::{Result, SearchError};
use crate::model::ConversationUpdate;
use client::{Body, Http, reason};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
pub use write::MAX_BULK_BYTES;

/// The layout of documents and mappings this version writes; an index
/// with another is refused, and one of an earlier schema is replaced by
/// `syncd reindex`. 2: every
/// document written with an external version, removals as tombstones.
pub const SCHEMA_VERSION: u64 = 2;
/// How long a bulk write may take (it waits for a refresh).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long creating, checking or dropping the index may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the query's own time limit its reply may take to come
/// (OpenSearch stops collecting at the limit, then still has to answer);
/// past it the search answers without that reply, as out of time.
pub const REPLY_SLACK: Duration = Duration::from_secs(3);
/// How often the index makes writes searchable. A write returns once they
/// are, so this bounds how long each commit of the indexer waits.
pub const REFRESH_INTERVAL: &str = "200ms";
/// Checkpoints read per request at open.
const CHECKPOINT_PAGE: usize = 1000;
/// The index's analyzer: OpenSearch's standard one, with the gap word.
const ANALYZER: &str = "timeline_tokens";
/// Longest index name accepted (OpenSearch's limit is 255 bytes).
const MAX_INDEX_NAME: usize = 100;

/// Where the index lives and how it is laid out when created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSearchOptions {
    /// `http://host:port` of a node of the cluster.
    pub url: String,
    /// The index name (lower-case letters, digits, `-` and `_`).
    pub index: String,
    /// Primary shards, when the index is created.
    pub shards: u32,
    /// Replicas of each shard, when the index is created.
    pub replicas: u32,
}

impl OpenSearchOptions {
    pub fn new(url: impl Into<String>, index: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            index: index.into(),
            shards: 1,
            replicas: 0,
        }
    }

    /// Whether the options could name an index (nothing is contacted), so
    /// that a node refuses them before it opens anything.
    pub fn check(&self) -> Result<()> {
        client::base_url(&self.url)?;
        check_index_name(&self.index)?;
        if self.shards == 0 {
            return Err(SearchError::Config(
                "OpenSearch shards must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

pub struct OpenSearchIndex {
    http: Http,
    index: String,
    /// The one writer at a time.
    writer: Mutex<()>,
    /// The checkpoints as last acknowledged (read at open).
    checkpoints: RwLock<BTreeMap<u64, u64>>,
}

fn message_id(conversation: u64, conv_seq: u64) -> String {
    format!("m{conversation}.{conv_seq}")
}

fn member_id(conversation: u64, user: u64) -> String {
    format!("u{conversation}.{user}")
}

fn checkpoint_id(conversation: u64) -> String {
    format!("c{conversation}")
}

/// The schema version a mapping reply names (`None`: not a search index
/// of any version).
fn schema_of(mapping: &Value) -> Option<u64> {
    mapping
        .as_object()
        .and_then(|indices| indices.values().next())
        .and_then(|index| index["mappings"]["_meta"]["schema"].as_u64())
}

fn check_index_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INDEX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(SearchError::Config(format!(
            "OpenSearch index name {name:?}: 1-{MAX_INDEX_NAME} of a-z 0-9 - _, \
             not starting with - or _"
        )))
    }
}

impl OpenSearchIndex {
    /// Connects to the node, creates the index if missing (or checks that
    /// an existing one is this version's) and reads the checkpoints.
    pub fn open(options: &OpenSearchOptions) -> Result<Self> {
        Self::open_with(options, false)
    }

    /// [`open`](Self::open) for a rebuild from the timelines (`syncd
    /// reindex`): an index an earlier version wrote, of another schema, is
    /// deleted and created again, since the rebuild replaces all of it.
    pub fn open_to_rebuild(options: &OpenSearchOptions) -> Result<Self> {
        Self::open_with(options, true)
    }

    fn open_with(options: &OpenSearchOptions, replace_other_schema: bool) -> Result<Self> {
        options.check()?;
        let http = Http::new(&options.url)?;
        let (status, reply) = http.call(Method::GET, "/", Body::Empty, ADMIN_TIMEOUT)?;
        let version = reply["version"]["number"].as_str();
        if status != StatusCode::OK || version.is_none() {
            return Err(SearchError::Engine(format!(
                "{} does not answer as an OpenSearch node (status {status}): {}",
                http.base(),
                reason(&reply)
            )));
        }
        let this = Self {
            http,
            index: options.index.clone(),
            writer: Mutex::new(()),
            checkpoints: RwLock::default(),
        };
        this.ensure_index(options, replace_other_schema)?;
        // Everything acknowledged becomes visible to the checkpoint search.
        this.expect_ok(Method::POST, "/_refresh", Body::Empty, ADMIN_TIMEOUT)?;
        let checkpoints = this.load_checkpoints()?;
        *this.checkpoints.write().unwrap_or_else(|e| e.into_inner()) = checkpoints;
        Ok(this)
    }

    /// The index name.
    pub fn name(&self) -> &str {
        &self.index
    }

    /// Drops the whole index (tests and benchmarks clean up with it).
    pub fn delete(self) -> Result<()> {
        let path = format!("/{}", self.index);
        let (status, reply) = self
            .http
            .call(Method::DELETE, &path, Body::Empty, ADMIN_TIMEOUT)?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.failed("delete the index", status, &reply))
        }
    }

    fn failed(&self, what: &str, status: StatusCode, reply: &Value) -> SearchError {
        SearchError::Engine(format!(
            "OpenSearch {what} ({}, index {}): status {status}: {}",
            self.http.base(),
            self.index,
            reason(reply)
        ))
    }

    /// A call on the index (`path` after its name) that must succeed.
    fn expect_ok(
        &self,
        method: Method,
        path: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Value> {
        let full = format!("/{}{path}", self.index);
        let (status, reply) = self.http.call(method, &full, body, timeout)?;
        if status.is_success() {
            Ok(reply)
        } else {
            Err(self.failed(path, status, &reply))
        }
    }

    /// [`expect_ok`](Self::expect_ok), or `None` when no reply came
    /// within `timeout`.
    fn expect_ok_within(
        &self,
        method: Method,
        path: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Option<Value>> {
        let full = format!("/{}{path}", self.index);
        match self.http.call_within(method, &full, body, timeout)? {
            Some((status, reply)) if status.is_success() => Ok(Some(reply)),
            Some((status, reply)) => Err(self.failed(path, status, &reply)),
            None => Ok(None),
        }
    }

    fn definition(options: &OpenSearchOptions) -> Value {
        let id = || json!({"type": "unsigned_long"});
        json!({
            "settings": {
                "number_of_shards": options.shards,
                "number_of_replicas": options.replicas,
                "refresh_interval": REFRESH_INTERVAL,
                "analysis": {"analyzer": {ANALYZER: {
                    "type": "standard",
                    "stopwords": [encode::GAP],
                    "max_token_length": 255,
                }}},
            },
            "mappings": {
                "dynamic": "strict",
                "_meta": {"schema": SCHEMA_VERSION},
                "_routing": {"required": true},
                "properties": {
                    "kind": {"type": "keyword"},
                    "conversation_id": id(),
                    "conv_seq": id(),
                    "sender_id": id(),
                    "user_id": id(),
                    "sent_at_ms": {"type": "long"},
                    "tokens": {"type": "text", "analyzer": ANALYZER, "index_options": "positions"},
                    "text": {"type": "text", "index": false},
                    // What is only read back: msg_id, intervals, checkpoints.
                    "state": {"type": "object", "enabled": false},
                },
            },
        })
    }

    /// Creates the index as a version of another schema would have, or
    /// (`None`) as an index that is none of ours (tests of what this
    /// version makes of them).
    #[cfg(feature = "testsuite")]
    pub fn create_with_schema(options: &OpenSearchOptions, schema: Option<u64>) -> Result<()> {
        let http = Http::new(&options.url)?;
        let mut definition = Self::definition(options);
        definition["mappings"]["_meta"] = match schema {
            Some(schema) => json!({"schema": schema}),
            None => json!({}),
        };
        let path = format!("/{}", options.index);
        let (status, reply) =
            http.call(Method::PUT, &path, Body::Json(definition), ADMIN_TIMEOUT)?;
        if status.is_success() {
            Ok(())
        } else {
            Err(SearchError::Engine(format!(
                "create index {}: status {status}: {}",
                options.index,
                reason(&reply)
            )))
        }
    }

    /// Drops the index whatever it holds (tests clean up with it).
    #[cfg(feature = "testsuite")]
    pub fn drop_index(options: &OpenSearchOptions) -> Result<()> {
        Self {
            http: Http::new(&options.url)?,
            index: options.index.clone(),
            writer: Mutex::new(()),
            checkpoints: RwLock::default(),
        }
        .delete()
    }

    fn ensure_index(&self, options: &OpenSearchOptions, replace_other_schema: bool) -> Result<()> {
        let path = format!("/{}/_mapping", self.index);
        let (status, reply) = self
            .http
            .call(Method::GET, &path, Body::Empty, ADMIN_TIMEOUT)?;
        match status {
            StatusCode::OK => match self.check_mapping(&reply) {
                // Only an earlier version's search index: never a later
                // version's (a rollback) or an index that is none of ours
                // (a name given by mistake).
                Err(SearchError::Corrupt(reason))
                    if replace_other_schema
                        && schema_of(&reply).is_some_and(|s| s < SCHEMA_VERSION) =>
                {
                    tracing::warn!(index = %self.index, %reason, "deleting the index to rebuild it");
                    self.expect_ok(Method::DELETE, "", Body::Empty, ADMIN_TIMEOUT)?;
                }
                checked => return checked,
            },
            StatusCode::NOT_FOUND => {}
            _ => return Err(self.failed("read the mapping", status, &reply)),
        }
        let create = format!("/{}", self.index);
        let (status, reply) = self.http.call(
            Method::PUT,
            &create,
            Body::Json(Self::definition(options)),
            ADMIN_TIMEOUT,
        )?;
        if status.is_success() {
            return Ok(());
        }
        if reply["error"]["type"] == "resource_already_exists_exception" {
            // Created meanwhile by another process: check it instead.
            let (status, reply) = self
                .http
                .call(Method::GET, &path, Body::Empty, ADMIN_TIMEOUT)?;
            if status == StatusCode::OK {
                return self.check_mapping(&reply);
            }
        }
        Err(self.failed("create the index", status, &reply))
    }

    fn check_mapping(&self, reply: &Value) -> Result<()> {
        match schema_of(reply) {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(schema) if schema < SCHEMA_VERSION => Err(SearchError::Corrupt(format!(
                "OpenSearch index {} is an earlier version's search index \
                 (schema {schema}, this version writes {SCHEMA_VERSION}): \
                 rebuild it with `syncd reindex`",
                self.index
            ))),
            Some(schema) => Err(SearchError::Corrupt(format!(
                "OpenSearch index {} was written by a later version \
                 (schema {schema}, this version writes {SCHEMA_VERSION}): \
                 run that version, or name another index with --opensearch-index",
                self.index
            ))),
            None => Err(SearchError::Corrupt(format!(
                "OpenSearch index {} is not a Timeline search index: \
                 name another with --opensearch-index",
                self.index
            ))),
        }
    }

    fn load_checkpoints(&self) -> Result<BTreeMap<u64, u64>> {
        let mut checkpoints = BTreeMap::new();
        let mut after: Option<u64> = None;
        loop {
            let mut body = json!({
                "size": CHECKPOINT_PAGE,
                "query": {"term": {"kind": "c"}},
                "sort": [{"conversation_id": "asc"}],
                "_source": ["conversation_id", "state"],
            });
            if let Some(after) = after {
                body["search_after"] = json!([after]);
            }
            let reply =
                self.expect_ok(Method::POST, "/_search", Body::Json(body), ADMIN_TIMEOUT)?;
            query::check_shards(&reply)?;
            let hits = reply["hits"]["hits"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for hit in &hits {
                let source = &hit["_source"];
                let conversation = number(source, "conversation_id")?;
                let through = number(&source["state"], "through")?;
                checkpoints.insert(conversation, through);
                after = Some(conversation);
            }
            if hits.len() < CHECKPOINT_PAGE {
                return Ok(checkpoints);
            }
        }
    }

    fn committed(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, u64>> {
        self.checkpoints.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn number(object: &Value, field: &str) -> Result<u64> {
    object[field]
        .as_u64()
        .ok_or_else(|| SearchError::Corrupt(format!("OpenSearch document without {field}")))
}

impl crate::SearchIndex for OpenSearchIndex {
    fn checkpoints(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self.committed().iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn checkpoint(&self, conversation_id: u64) -> Result<u64> {
        Ok(self.committed().get(&conversation_id).copied().unwrap_or(0))
    }

    fn apply(&self, updates: &[ConversationUpdate]) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let (documents, staged) = self.stage(updates)?;
        self.commit_staged(documents, staged)
    }

    fn search(&self, request: &crate::SearchRequest) -> Result<crate::SearchPage> {
        self.run_search(request)
    }

    fn reload(&self) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.expect_ok(Method::POST, "/_refresh", Body::Empty, ADMIN_TIMEOUT)?;
        let stored = self.load_checkpoints()?;
        let mut committed = self.checkpoints.write().unwrap_or_else(|e| e.into_inner());
        for (conv, through) in stored {
            let checkpoint = committed.entry(conv).or_default();
            *checkpoint = (*checkpoint).max(through);
        }
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // Deleting every document would leave the old mapping; a new index
        // also takes this version's.
        let path = format!("/{}", self.index);
        let (status, reply) = self.http.call(
            Method::GET,
            &format!("{path}/_settings"),
            Body::Empty,
            ADMIN_TIMEOUT,
        )?;
        if !status.is_success() {
            return Err(self.failed("read the settings", status, &reply));
        }
        let settings = reply
            .as_object()
            .and_then(|indices| indices.values().next())
            .map(|index| index["settings"]["index"].clone())
            .unwrap_or_default();
        let count = |key: &str, default: u32| {
            settings[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        let mut options = OpenSearchOptions::new(self.http.base(), self.index.clone());
        options.shards = count("number_of_shards", 1);
        options.replicas = count("number_of_replicas", 0);
        self.expect_ok(Method::DELETE, "", Body::Empty, ADMIN_TIMEOUT)?;
        self.checkpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.ensure_index(&options, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_are_checked() {
        for bad in ["", "Upper", "-x", "_x", "a b", "a/b", &"a".repeat(101)] {
            assert!(check_index_name(bad).is_err(), "{bad}");
        }
        check_index_name("timeline-search_2").unwrap();
    }
}
