//! Searching the embedded index: the authorisation filter, the text
//! clauses and the filters form one query, and a bounded collector keeps
//! the best matches after the cursor, so authorisation and paging happen
//! before anything is cut.

use super::{Fields, TantivyIndex, pair_key, stored_intervals, stored_u64};
use crate::error::{Result, SearchError};
use crate::model::{
    Intervals, MAX_FILTER_INTERVALS, ParsedQuery, Rank, SearchPage, SearchRequest, Searcher,
    SortOrder,
};
use crate::page;
use std::collections::BinaryHeap;
use std::ops::Bound;
use std::time::Instant;
use tantivy::collector::{Collector, DocSetCollector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::index::SegmentReader;
use tantivy::query::{BooleanQuery, Occur, PhraseQuery, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, TantivyDocument, Term};

/// How many documents a collector takes between looks at the clock.
const CLOCK_EVERY: u32 = 256;

impl TantivyIndex {
    pub(super) fn run_search(&self, request: &SearchRequest) -> Result<SearchPage> {
        let parsed = request.parse()?;
        let deadline = Instant::now() + parsed.timeout;
        let searcher = self.reader.searcher();
        let f = self.fields;
        let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for clause in &parsed.clauses {
            must.push((Occur::Must, text_clause(f, clause)));
        }
        if let Searcher::User(user) = request.searcher {
            match self.authorisation(&searcher, user, request)? {
                Some(filter) => must.push((Occur::Must, filter)),
                None => return Ok(SearchPage::default()),
            }
            for &(conversation, conv_seq) in &request.hidden.messages {
                must.push((
                    Occur::MustNot,
                    term(Term::from_field_bytes(
                        f.key,
                        &pair_key(conversation, conv_seq),
                    )),
                ));
            }
        }
        if let Some(conversation) = request.conversation_id {
            must.push((
                Occur::Must,
                term(Term::from_field_u64(f.conversation_id, conversation)),
            ));
        }
        if let Some(sender) = request.sender_id {
            must.push((Occur::Must, term(Term::from_field_u64(f.sender_id, sender))));
        }
        if request.sent_from_ms.is_some() || request.sent_before_ms.is_some() {
            let at = |t| Term::from_field_i64(f.sent_at_ms, t);
            must.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Included(at(request.sent_from_ms.unwrap_or(i64::MIN))),
                    request
                        .sent_before_ms
                        .map_or(Bound::Unbounded, |t| Bound::Excluded(at(t))),
                )),
            ));
        }
        let query = BooleanQuery::new(must);
        let collector = PageCollector {
            order: request.order,
            parsed: &parsed,
            deadline,
        };
        let (ranked, timed_out) = searcher.search(&query, &collector)?;
        page::cut(ranked, &parsed, timed_out, |rank, address| {
            let doc: TantivyDocument = searcher.doc(address)?;
            Ok(page::hit(
                self.decode_message(&doc)?,
                &parsed.clauses,
                rank.score,
            ))
        })
    }

    /// The user's readable stretches as one filter on message keys (one
    /// key range per membership interval, above what they cleared), or
    /// `None` when there are none.
    fn authorisation(
        &self,
        searcher: &tantivy::Searcher,
        user: u64,
        request: &SearchRequest,
    ) -> Result<Option<Box<dyn Query>>> {
        let f = self.fields;
        let conversation = request.conversation_id;
        let mut query: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, term(Term::from_field_u64(f.member_user, user)))];
        if let Some(conversation) = conversation {
            query.push((
                Occur::Must,
                term(Term::from_field_u64(f.member_conversation, conversation)),
            ));
        }
        let memberships = searcher.search(&BooleanQuery::new(query), &DocSetCollector)?;
        if memberships.len() > MAX_FILTER_INTERVALS {
            return Err(SearchError::TooManyMemberships {
                limit: MAX_FILTER_INTERVALS,
            });
        }
        let mut ranges: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for address in memberships {
            let doc: TantivyDocument = searcher.doc(address)?;
            let conversation = stored_u64(&doc, f.member_conversation)?;
            let Intervals(intervals) = stored_intervals(&doc, f.intervals)?;
            let floor = request.hidden.floor(conversation);
            let visible = intervals
                .into_iter()
                .map(|(from, to)| (from.max(floor), to))
                .filter(|(from, to)| from < to);
            for (from, to) in visible {
                let key = |seq| Term::from_field_bytes(f.key, &pair_key(conversation, seq));
                ranges.push((
                    Occur::Should,
                    Box::new(RangeQuery::new(
                        Bound::Included(key(from)),
                        Bound::Excluded(key(to)),
                    )),
                ));
            }
        }
        if ranges.len() > MAX_FILTER_INTERVALS {
            return Err(SearchError::TooManyMemberships {
                limit: MAX_FILTER_INTERVALS,
            });
        }
        Ok((!ranges.is_empty()).then(|| Box::new(BooleanQuery::new(ranges)) as Box<dyn Query>))
    }
}

fn term(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// A word is a term; a phrase (or a CJK run, as bigrams) is a phrase
/// query at the tokens' relative positions.
fn text_clause(f: Fields, clause: &[crate::tokens::Token]) -> Box<dyn Query> {
    let base = clause[0].position;
    if clause.len() == 1 {
        return Box::new(TermQuery::new(
            Term::from_field_text(f.tokens, &clause[0].text),
            IndexRecordOption::WithFreqs,
        ));
    }
    Box::new(PhraseQuery::new_with_offset(
        clause
            .iter()
            .map(|t| (t.position - base, Term::from_field_text(f.tokens, &t.text)))
            .collect(),
    ))
}

struct PageCollector<'a> {
    order: SortOrder,
    parsed: &'a ParsedQuery,
    deadline: Instant,
}

/// A rank with its document; the heap's top is the worst kept.
struct Kept(Rank, DocAddress);

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp_order(&other.0)
    }
}

struct SegmentPage {
    order: SortOrder,
    after: Option<Rank>,
    limit: usize,
    deadline: Instant,
    segment: SegmentOrdinal,
    conversation_id: Column<u64>,
    conv_seq: Column<u64>,
    sent_at_ms: Column<i64>,
    kept: BinaryHeap<Kept>,
    seen: u32,
    timed_out: bool,
}

impl<'a> Collector for PageCollector<'a> {
    type Fruit = (Vec<(Rank, DocAddress)>, bool);
    type Child = SegmentPage;

    fn for_segment(
        &self,
        segment: SegmentOrdinal,
        reader: &SegmentReader,
    ) -> tantivy::Result<Self::Child> {
        let fast = reader.fast_fields();
        Ok(SegmentPage {
            order: self.order,
            after: self.parsed.after,
            limit: self.parsed.limit,
            deadline: self.deadline,
            segment,
            conversation_id: fast.u64("conversation_id")?,
            conv_seq: fast.u64("conv_seq")?,
            sent_at_ms: fast.i64("sent_at_ms")?,
            kept: BinaryHeap::new(),
            seen: 0,
            timed_out: false,
        })
    }

    fn requires_scoring(&self) -> bool {
        self.order == SortOrder::Relevance
    }

    fn merge_fruits(
        &self,
        fruits: Vec<(Vec<(Rank, DocAddress)>, bool)>,
    ) -> tantivy::Result<Self::Fruit> {
        let timed_out = fruits.iter().any(|(_, t)| *t);
        let mut all: Vec<(Rank, DocAddress)> = fruits.into_iter().flat_map(|(k, _)| k).collect();
        all.sort_by(|a, b| a.0.cmp_order(&b.0));
        all.truncate(self.parsed.limit + 1);
        Ok((all, timed_out))
    }
}

impl SegmentCollector for SegmentPage {
    type Fruit = (Vec<(Rank, DocAddress)>, bool);

    fn collect(&mut self, doc: DocId, score: Score) {
        if self.timed_out {
            return;
        }
        self.seen += 1;
        if self.seen.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline {
            self.timed_out = true;
            return;
        }
        let (Some(conversation_id), Some(conv_seq), Some(sent_at_ms)) = (
            self.conversation_id.first(doc),
            self.conv_seq.first(doc),
            self.sent_at_ms.first(doc),
        ) else {
            return;
        };
        let rank = Rank {
            order: self.order,
            score: if self.order == SortOrder::Relevance {
                score
            } else {
                0.0
            },
            sent_at_ms,
            conversation_id,
            conv_seq,
        };
        if !page::after_cursor(&rank, self.after) {
            return;
        }
        let keep = self.limit + 1;
        if self.kept.len() < keep {
            self.kept
                .push(Kept(rank, DocAddress::new(self.segment, doc)));
        } else if self
            .kept
            .peek()
            .is_some_and(|worst| rank.cmp_order(&worst.0).is_lt())
        {
            self.kept.pop();
            self.kept
                .push(Kept(rank, DocAddress::new(self.segment, doc)));
        }
    }

    fn harvest(self) -> Self::Fruit {
        (
            self.kept.into_iter().map(|Kept(r, a)| (r, a)).collect(),
            self.timed_out,
        )
    }
}
