//! The query time bound against a fake OpenSearch node (a plain HTTP/1.1
//! server on loopback that answers what a node would, slowly or out of
//! time where a test wants it): a search answers with what it has and says
//! so, and never waits past its limit and the reply slack.

use super::{OpenSearchIndex, OpenSearchOptions, REPLY_SLACK};
use crate::SearchIndex;
use crate::model::{SearchRequest, Searcher};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the fake answers a search with.
#[derive(Clone, Copy)]
enum Searches {
    /// `timed_out: true` with one message found.
    OutOfTime,
    /// The memberships' search out of time (one found), the messages' in
    /// time.
    MembershipsOutOfTime,
    /// No reply for this long.
    Silent(Duration),
}

const INDEX: &str = "fake";

fn message_hit() -> Value {
    json!({
        "_source": {
            "conversation_id": 1, "conv_seq": 2, "sender_id": 3, "sent_at_ms": 5,
            "text": "hello words", "state": {"msg_id": 9},
        },
        "sort": [5, 1, 2],
    })
}

/// The reply to one request (method, path, JSON body).
fn answer(searches: Searches, method: &str, path: &str, body: &Value) -> Option<Value> {
    let shards = json!({"total": 1, "successful": 1, "failed": 0});
    Some(match (method, path) {
        ("GET", "/") => json!({"version": {"number": "2.19.6"}}),
        ("GET", p) if p == format!("/{INDEX}/_mapping") => {
            json!({INDEX: {"mappings": {"_meta": {"schema": super::SCHEMA_VERSION}}}})
        }
        ("POST", p) if p == format!("/{INDEX}/_refresh") => json!({"_shards": shards}),
        ("POST", p) if p.starts_with(&format!("/{INDEX}/_search")) => {
            let filters = body["query"]["bool"]["filter"].to_string();
            let kind = if body["query"]["term"]["kind"] == "c" {
                "c"
            } else if filters.contains(r#"{"term":{"kind":"u"}}"#) {
                "u"
            } else {
                "m"
            };
            // Every search asks OpenSearch to stop in time.
            if kind != "c" {
                assert!(
                    body["timeout"].as_str().is_some_and(|t| t.ends_with("ms")),
                    "{body}"
                );
            }
            match (kind, searches) {
                ("c", _) => json!({"_shards": shards, "hits": {"hits": []}}),
                (_, Searches::Silent(delay)) => {
                    std::thread::sleep(delay);
                    return None;
                }
                ("u", Searches::MembershipsOutOfTime) => json!({
                    "timed_out": true, "_shards": shards,
                    "hits": {"hits": [{"_source": {
                        "conversation_id": 1,
                        "state": {"intervals": [1, u64::MAX], "applied_through": 1},
                    }}]},
                }),
                ("u", _) => json!({
                    "timed_out": false, "_shards": shards,
                    "hits": {"hits": [{"_source": {
                        "conversation_id": 1,
                        "state": {"intervals": [1, u64::MAX], "applied_through": 1},
                    }}]},
                }),
                (_, Searches::OutOfTime) => json!({
                    "timed_out": true, "_shards": shards, "hits": {"hits": [message_hit()]},
                }),
                (_, Searches::MembershipsOutOfTime) => json!({
                    "timed_out": false, "_shards": shards, "hits": {"hits": [message_hit()]},
                }),
            }
        }
        _ => panic!("the fake OpenSearch was not asked for {method} {path}"),
    })
}

/// Serves one connection's requests (the client keeps connections).
fn serve(stream: TcpStream, searches: Searches) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("a content length");
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).expect("a JSON request body")
        };
        let Some(reply) = answer(searches, &method, &path, &body) else {
            return;
        };
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(reply.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// A fake node on 127.0.0.1:0; its URL. Its threads end with the test
/// process.
fn fake_node(searches: Searches) -> String {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").expect("bind the fake node"));
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || serve(stream, searches));
        }
    });
    url
}

fn open(searches: Searches) -> OpenSearchIndex {
    OpenSearchIndex::open(&OpenSearchOptions::new(fake_node(searches), INDEX))
        .expect("the fake node opens as an index")
}

#[test]
fn a_search_out_of_time_answers_with_what_it_found_and_says_so() {
    let index = open(Searches::OutOfTime);
    for searcher in [Searcher::Service, Searcher::User(7)] {
        let page = index
            .search(&SearchRequest::new(searcher, "hello"))
            .unwrap();
        assert!(page.timed_out, "{searcher:?}");
        assert_eq!(page.hits.len(), 1, "{searcher:?}");
        assert_eq!(page.hits[0].msg_id, 9);
        assert_eq!(page.hits[0].highlights, [(0, 5)]);
    }
}

#[test]
fn memberships_read_out_of_time_make_the_page_say_so() {
    let index = open(Searches::MembershipsOutOfTime);
    let page = index
        .search(&SearchRequest::new(Searcher::User(7), "hello"))
        .unwrap();
    assert!(page.timed_out);
    assert_eq!(page.hits.len(), 1);
    // A service reads no memberships: its page is whole.
    let page = index
        .search(&SearchRequest::new(Searcher::Service, "hello"))
        .unwrap();
    assert!(!page.timed_out);
}

#[test]
fn a_node_that_does_not_answer_in_time_gives_an_empty_page_out_of_time() {
    let index = open(Searches::Silent(Duration::from_secs(60)));
    let limit = Duration::from_millis(300);
    for searcher in [Searcher::Service, Searcher::User(7)] {
        let mut request = SearchRequest::new(searcher, "hello");
        request.timeout = limit;
        let started = Instant::now();
        let page = index.search(&request).unwrap();
        let waited = started.elapsed();
        assert!(page.timed_out, "{searcher:?}");
        assert!(page.hits.is_empty() && page.next_cursor.is_none());
        // The bound, not a speed: a silent node must not hold the search
        // longer (a user's search is two requests under one deadline).
        assert!(
            waited < limit + REPLY_SLACK + Duration::from_secs(2),
            "{searcher:?} waited {waited:?}"
        );
        assert!(waited >= limit, "{searcher:?} gave up early: {waited:?}");
    }
}
