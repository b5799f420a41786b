//! The values the index speaks in: what it stores (messages, memberships,
//! checkpoints), how it is changed (an update per conversation) and how it
//! is asked (a request, a page of hits, a cursor).

use crate::error::{Result, SearchError};
use crate::tokens::{self, Token};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 512;
/// Most words and phrases one query may combine.
pub const MAX_QUERY_CLAUSES: usize = 16;
/// Most hits one page may hold.
pub const MAX_PAGE_SIZE: usize = 100;
/// A page's size when the request names none.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Highlighted spans one hit carries at most, the first in the text: a
/// long text of one repeated word would otherwise carry one per word.
pub const MAX_HIGHLIGHTS_PER_HIT: usize = 64;
/// Longest time one query may take; a slower one answers with what it has.
pub const MAX_QUERY_TIME: Duration = Duration::from_secs(5);
/// Most membership intervals a device's authorisation filter may hold.
pub const MAX_FILTER_INTERVALS: usize = 4096;
/// Longest cursor accepted, in bytes.
pub const MAX_CURSOR_BYTES: usize = 128;
/// Most messages a user's search may exclude one by one (deleted for
/// them); past it the search must name a conversation.
pub const MAX_HIDDEN_MESSAGES: usize = 4096;

/// One indexed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageDoc {
    pub conversation_id: u64,
    pub conv_seq: u64,
    pub msg_id: u64,
    pub sender_id: u64,
    pub text: String,
    pub sent_at_ms: i64,
}

/// One change a conversation-timeline entry makes to the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexOp {
    /// Index (or index again) the message at its `conv_seq`.
    Upsert(MessageDoc),
    /// The message at `conv_seq` now reads `text` (an edit); nothing if it
    /// is not indexed.
    ReplaceText { conv_seq: u64, text: String },
    /// The message at `conv_seq` is gone (recalled, deleted).
    Remove { conv_seq: u64 },
    /// The users became members with the entry at `conv_seq`: they may find
    /// what is sent after it.
    Joined { users: Vec<u64>, conv_seq: u64 },
    /// The users stopped being members with the entry at `conv_seq`: they
    /// keep finding what was sent before it, and nothing after.
    Left { users: Vec<u64>, conv_seq: u64 },
}

impl IndexOp {
    /// The timeline entry the operation comes from or is about.
    pub fn conv_seq(&self) -> u64 {
        match self {
            IndexOp::Upsert(doc) => doc.conv_seq,
            IndexOp::ReplaceText { conv_seq, .. }
            | IndexOp::Remove { conv_seq }
            | IndexOp::Joined { conv_seq, .. }
            | IndexOp::Left { conv_seq, .. } => *conv_seq,
        }
    }
}

/// Everything the index learns from one stretch of a conversation's
/// timeline, applied atomically with the new checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationUpdate {
    pub conversation_id: u64,
    /// In `conv_seq` order, none past `indexed_through` (the embedded
    /// index refuses such an update: it relies on every document being at
    /// or below its conversation's checkpoint).
    pub ops: Vec<IndexOp>,
    /// The timeline is indexed through this `conv_seq` once applied.
    pub indexed_through: u64,
}

/// A member's readable stretches of one conversation: `[from, to)` by
/// `conv_seq`, ascending, disjoint; the last one open (`to == u64::MAX`)
/// while a member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intervals(pub Vec<(u64, u64)>);

impl Intervals {
    pub fn contains(&self, conv_seq: u64) -> bool {
        self.0
            .iter()
            .any(|&(from, to)| from <= conv_seq && conv_seq < to)
    }

    /// A join at `conv_seq` opens a stretch (nothing if one is open: a
    /// join applied again).
    pub fn join(&mut self, conv_seq: u64) {
        if self.0.last().is_none_or(|&(_, to)| to != u64::MAX) {
            self.0.push((conv_seq, u64::MAX));
        }
    }

    /// A leave at `conv_seq` closes the open stretch (nothing if none is).
    pub fn leave(&mut self, conv_seq: u64) {
        if let Some(last) = self.0.last_mut().filter(|(_, to)| *to == u64::MAX) {
            last.1 = conv_seq.max(last.0);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.0
            .iter()
            .flat_map(|&(from, to)| from.to_be_bytes().into_iter().chain(to.to_be_bytes()))
            .collect()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if !bytes.len().is_multiple_of(16) {
            return Err(SearchError::Corrupt("membership intervals length".into()));
        }
        let word = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        Ok(Self(
            bytes
                .chunks_exact(16)
                .map(|c| (word(&c[..8]), word(&c[8..])))
                .collect(),
        ))
    }
}

/// What a user hid for themselves (deleted for them, their history
/// cleared): never found by their searches. Applied inside the query, like
/// the membership intervals, so pages stay full.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hidden {
    /// Conversation → every `conv_seq` at or below this is cleared.
    pub cleared_through: BTreeMap<u64, u64>,
    /// Single messages, by (conversation, `conv_seq`).
    pub messages: BTreeSet<(u64, u64)>,
}

impl Hidden {
    pub fn hides(&self, conversation_id: u64, conv_seq: u64) -> bool {
        self.cleared_through
            .get(&conversation_id)
            .is_some_and(|&through| conv_seq <= through)
            || self.messages.contains(&(conversation_id, conv_seq))
    }

    /// The first `conv_seq` of the conversation not cleared.
    pub fn floor(&self, conversation_id: u64) -> u64 {
        self.cleared_through
            .get(&conversation_id)
            .map_or(0, |&through| through.saturating_add(1))
    }
}

/// Who searches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Searcher {
    /// A device's user: only what they could read while a member.
    User(u64),
    /// A backend service: everything.
    Service,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// By send time, newest first (ties: conversation, then `conv_seq`,
    /// descending). Cursors are stable while the index changes.
    #[default]
    NewestFirst,
    /// By score, best first (ties as newest-first). Scores move as the
    /// index grows, so a cursor is stable only while it does not.
    Relevance,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchRequest {
    pub searcher: Searcher,
    /// Words and `"quoted phrases"`, all required.
    pub query: String,
    pub conversation_id: Option<u64>,
    pub sender_id: Option<u64>,
    /// Sent at or after this time.
    pub sent_from_ms: Option<i64>,
    /// Sent before this time.
    pub sent_before_ms: Option<i64>,
    pub order: SortOrder,
    /// 0 for [`DEFAULT_PAGE_SIZE`]; at most [`MAX_PAGE_SIZE`].
    pub limit: usize,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// At most [`MAX_QUERY_TIME`] (longer is cut to it).
    pub timeout: Duration,
    /// What a user searcher hid for themselves (ignored for a service).
    pub hidden: Hidden,
}

impl SearchRequest {
    /// A request with no filters, default order, size and timeout.
    pub fn new(searcher: Searcher, query: impl Into<String>) -> Self {
        Self {
            searcher,
            query: query.into(),
            conversation_id: None,
            sender_id: None,
            sent_from_ms: None,
            sent_before_ms: None,
            order: SortOrder::NewestFirst,
            limit: 0,
            cursor: None,
            timeout: MAX_QUERY_TIME,
            hidden: Hidden::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct SearchHit {
    pub conversation_id: u64,
    pub conv_seq: u64,
    pub msg_id: u64,
    pub sender_id: u64,
    pub text: String,
    pub sent_at_ms: i64,
    /// Matched spans, byte offsets `[start, end)` into `text` (UTF-8),
    /// ascending and disjoint.
    pub highlights: Vec<(usize, usize)>,
    /// The relevance score (0 in newest-first order).
    pub score: f32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// Present exactly when more hits follow.
    pub next_cursor: Option<String>,
    /// The query ran out of time: the hits are matches, but the page may
    /// miss better ones and the cursor may skip some.
    pub timed_out: bool,
}

/// A request checked and parsed: what a backend runs.
#[derive(Clone, Debug)]
pub struct ParsedQuery {
    /// Each clause a phrase of query tokens (at least one token).
    pub clauses: Vec<Vec<Token>>,
    pub limit: usize,
    pub after: Option<Rank>,
    pub timeout: Duration,
}

impl SearchRequest {
    /// Checks the bounds and parses the query and cursor; every backend
    /// starts here, so bad input is refused the same way by all.
    pub fn parse(&self) -> Result<ParsedQuery> {
        if self.query.len() > MAX_QUERY_BYTES {
            return Err(SearchError::invalid(format!(
                "query is {} bytes; at most {MAX_QUERY_BYTES}",
                self.query.len()
            )));
        }
        if self.limit > MAX_PAGE_SIZE {
            return Err(SearchError::invalid(format!(
                "limit {} is above {MAX_PAGE_SIZE}",
                self.limit
            )));
        }
        if let (Some(from), Some(before)) = (self.sent_from_ms, self.sent_before_ms)
            && from >= before
        {
            return Err(SearchError::invalid(
                "the time range is empty (sent_from_ms must be below sent_before_ms)",
            ));
        }
        if self.hidden.messages.len() > MAX_HIDDEN_MESSAGES {
            return Err(SearchError::TooManyHidden {
                limit: MAX_HIDDEN_MESSAGES,
            });
        }
        let clauses = parse_clauses(&self.query)?;
        let after = self
            .cursor
            .as_deref()
            .map(|c| Rank::decode(c, self.order))
            .transpose()?;
        Ok(ParsedQuery {
            clauses,
            limit: if self.limit == 0 {
                DEFAULT_PAGE_SIZE
            } else {
                self.limit
            },
            after,
            timeout: self.timeout.min(MAX_QUERY_TIME),
        })
    }
}

/// Words and quoted phrases, each a clause of query tokens.
pub fn parse_clauses(query: &str) -> Result<Vec<Vec<Token>>> {
    let mut pieces = Vec::new();
    let mut rest = query;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| SearchError::invalid("the query has an unterminated quote"))?;
            pieces.push(&quoted[..end]);
            rest = &quoted[end + 1..];
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            pieces.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    let clauses: Vec<Vec<Token>> = pieces
        .into_iter()
        .map(tokens::query_tokens)
        .filter(|tokens| !tokens.is_empty())
        .collect();
    if clauses.is_empty() {
        return Err(SearchError::invalid("the query has no words to search for"));
    }
    if clauses.len() > MAX_QUERY_CLAUSES {
        return Err(SearchError::invalid(format!(
            "the query has {} words and phrases; at most {MAX_QUERY_CLAUSES}",
            clauses.len()
        )));
    }
    Ok(clauses)
}

/// Where a hit stands in a page's order. "Better" sorts first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rank {
    pub order: SortOrder,
    pub score: f32,
    pub sent_at_ms: i64,
    pub conversation_id: u64,
    pub conv_seq: u64,
}

impl Rank {
    /// `Less` when `self` comes first in the page order.
    pub fn cmp_order(&self, other: &Self) -> Ordering {
        let tail = || {
            (other.sent_at_ms, other.conversation_id, other.conv_seq).cmp(&(
                self.sent_at_ms,
                self.conversation_id,
                self.conv_seq,
            ))
        };
        match self.order {
            SortOrder::NewestFirst => tail(),
            SortOrder::Relevance => other.score.total_cmp(&self.score).then_with(tail),
        }
    }

    pub fn encode(&self) -> String {
        match self.order {
            SortOrder::NewestFirst => format!(
                "n.{}.{}.{}",
                self.sent_at_ms, self.conversation_id, self.conv_seq
            ),
            SortOrder::Relevance => format!(
                "r.{:08x}.{}.{}.{}",
                self.score.to_bits(),
                self.sent_at_ms,
                self.conversation_id,
                self.conv_seq
            ),
        }
    }

    pub fn decode(cursor: &str, order: SortOrder) -> Result<Self> {
        let bad = || SearchError::invalid("the cursor is not one a search returned for this order");
        if cursor.len() > MAX_CURSOR_BYTES {
            return Err(bad());
        }
        let parts: Vec<&str> = cursor.split('.').collect();
        let (score, rest) = match (order, parts.as_slice()) {
            (SortOrder::NewestFirst, ["n", rest @ ..]) => (0.0, rest),
            (SortOrder::Relevance, ["r", bits, rest @ ..]) => (
                f32::from_bits(u32::from_str_radix(bits, 16).map_err(|_| bad())?),
                rest,
            ),
            _ => return Err(bad()),
        };
        let [sent, conversation, seq] = rest else {
            return Err(bad());
        };
        Ok(Self {
            order,
            score,
            sent_at_ms: sent.parse().map_err(|_| bad())?,
            conversation_id: conversation.parse().map_err(|_| bad())?,
            conv_seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_phrases_and_words_are_clauses() {
        let clauses = parse_clauses(r#"hello "big world"  数据库"#).unwrap();
        let texts: Vec<Vec<&str>> = clauses
            .iter()
            .map(|c| c.iter().map(|t| t.text.as_str()).collect())
            .collect();
        assert_eq!(
            texts,
            [vec!["hello"], vec!["big", "world"], vec!["数据", "据库"]]
        );
    }

    #[test]
    fn bad_queries_are_refused() {
        assert!(parse_clauses("  ,,, ").is_err());
        assert!(parse_clauses(r#"a "b"#).is_err());
        let many = vec!["w"; MAX_QUERY_CLAUSES + 1].join(" ");
        assert!(parse_clauses(&many).is_err());
        let mut request = SearchRequest::new(Searcher::Service, "x".repeat(MAX_QUERY_BYTES + 1));
        assert!(request.parse().is_err());
        request.query = "x".into();
        request.limit = MAX_PAGE_SIZE + 1;
        assert!(request.parse().is_err());
        request.limit = 1;
        request.cursor = Some("n.1.2".into());
        assert!(request.parse().is_err());
    }

    #[test]
    fn cursors_round_trip_in_their_own_order_only() {
        let rank = Rank {
            order: SortOrder::Relevance,
            score: 1.5,
            sent_at_ms: -3,
            conversation_id: 7,
            conv_seq: 9,
        };
        assert_eq!(
            Rank::decode(&rank.encode(), SortOrder::Relevance).unwrap(),
            rank
        );
        assert!(Rank::decode(&rank.encode(), SortOrder::NewestFirst).is_err());
    }

    #[test]
    fn intervals_open_close_and_reopen() {
        let mut m = Intervals::default();
        m.join(1);
        m.join(1);
        m.leave(5);
        m.leave(6);
        m.join(9);
        assert_eq!(m.0, [(1, 5), (9, u64::MAX)]);
        assert!(m.contains(4) && !m.contains(5) && !m.contains(8) && m.contains(100));
        assert_eq!(Intervals::decode(&m.encode()).unwrap(), m);
    }
}
