//! Both index backends against the brute-force one: seeded random
//! conversations (English, Chinese, mixed text; joins, leaves, rejoins;
//! edits and removals), every query's pages compared, the backend reopened
//! now and then (and, for OpenSearch, a batch cut short by a "crash" before
//! it is applied again). A failure prints the seed; `SEARCH_ORACLE_SEED=N`
//! replays it.
//!
//! The OpenSearch tests need a node: `TIMELINE_OPENSEARCH_URL` (default
//! http://127.0.0.1:9200; `scripts/opensearch-server start` runs one, and
//! scripts/test does). Without one they fail.

#[path = "oracle/backends.rs"]
mod backends;
#[path = "oracle/scenarios.rs"]
mod scenarios;

use backends::{Backend, Opened};
use search::memory::MemoryIndex;
use search::{
    ConversationUpdate, IndexOp, MessageDoc, SearchIndex, SearchRequest, Searcher, SortOrder,
};
use std::collections::BTreeSet;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: enough for test data, and reproducible from a seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "hello",
    "world",
    "Database",
    "rust",
    "search",
    "index",
    "meeting",
    "tomorrow",
    "SQL",
    "数据库",
    "数据",
    "很多",
    "库存",
    "不足",
    "搜索",
    "引擎",
    "你好",
    "世界",
    "明天",
    "开会",
    "数据很多",
    "库存不足",
    "hello世界",
    "rust数据库",
];
const PUNCT: &[&str] = &[" ", " ", " ", ", ", "，", "。", "! ", ""];

fn message_text(rng: &mut Rng) -> String {
    let n = 1 + rng.below(6);
    let mut text = String::new();
    for _ in 0..n {
        text.push_str(rng.pick::<&str>(WORDS));
        text.push_str(rng.pick::<&str>(PUNCT));
    }
    text
}

fn query_text(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => format!("\"{} {}\"", rng.pick(WORDS), rng.pick(WORDS)),
        1 => format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)),
        2 => {
            // One CJK character, or a substring of a word.
            let word: Vec<char> = rng.pick(WORDS).chars().collect();
            let start = rng.below(word.len() as u64) as usize;
            let len = 1 + rng.below((word.len() - start) as u64) as usize;
            word[start..start + len].iter().collect()
        }
        _ => rng.pick(WORDS).to_string(),
    }
}

struct Conversation {
    id: u64,
    next_seq: u64,
    members: BTreeSet<u64>,
    messages: Vec<u64>,
}

const USERS: u64 = 6;

/// One stretch of a conversation's timeline as index updates.
fn timeline_stretch(
    rng: &mut Rng,
    conv: &mut Conversation,
    sent_at: &mut i64,
) -> ConversationUpdate {
    let mut ops = Vec::new();
    if conv.next_seq == 1 {
        let members: Vec<u64> = (1..=USERS).filter(|_| rng.below(2) == 0).collect();
        conv.members.extend(&members);
        ops.push(IndexOp::Joined {
            users: members,
            conv_seq: 1,
        });
        conv.next_seq = 2;
    }
    for _ in 0..1 + rng.below(8) {
        let seq = conv.next_seq;
        conv.next_seq += 1;
        match rng.below(12) {
            0 => {
                let user = 1 + rng.below(USERS);
                if conv.members.insert(user) {
                    ops.push(IndexOp::Joined {
                        users: vec![user],
                        conv_seq: seq,
                    });
                }
            }
            1 => {
                let user = 1 + rng.below(USERS);
                if conv.members.remove(&user) {
                    ops.push(IndexOp::Left {
                        users: vec![user],
                        conv_seq: seq,
                    });
                }
            }
            2 if !conv.messages.is_empty() => {
                let target = *rng.pick(&conv.messages);
                ops.push(IndexOp::ReplaceText {
                    conv_seq: target,
                    text: message_text(rng),
                });
            }
            3 if !conv.messages.is_empty() => {
                let target = *rng.pick(&conv.messages);
                ops.push(IndexOp::Remove { conv_seq: target });
            }
            _ => {
                *sent_at += rng.below(3) as i64; // equal times happen: ties
                conv.messages.push(seq);
                ops.push(IndexOp::Upsert(MessageDoc {
                    conversation_id: conv.id,
                    conv_seq: seq,
                    msg_id: conv.id * 1000 + seq,
                    sender_id: 1 + rng.below(USERS),
                    text: message_text(rng),
                    sent_at_ms: *sent_at,
                }));
            }
        }
    }
    ConversationUpdate {
        conversation_id: conv.id,
        ops,
        indexed_through: conv.next_seq - 1,
    }
}

fn random_request(rng: &mut Rng, conversations: &[Conversation]) -> SearchRequest {
    let searcher = if rng.below(4) == 0 {
        Searcher::Service
    } else {
        Searcher::User(1 + rng.below(USERS + 1))
    };
    let mut request = SearchRequest::new(searcher, query_text(rng));
    if rng.below(3) == 0 {
        request.conversation_id = Some(rng.pick(conversations).id);
    }
    if rng.below(4) == 0 {
        request.sender_id = Some(1 + rng.below(USERS));
    }
    if rng.below(4) == 0 {
        request.sent_from_ms = Some(rng.below(200) as i64);
        request.sent_before_ms = Some(200 + rng.below(400) as i64);
    }
    if rng.below(3) == 0 {
        request.order = SortOrder::Relevance;
    }
    if rng.below(3) == 0 {
        // What the searcher hid (a service ignores it).
        for _ in 0..1 + rng.below(3) {
            let conv = rng.pick(conversations);
            let seq = rng.below(conv.next_seq.max(1) + 1);
            if rng.below(2) == 0 {
                request.hidden.cleared_through.insert(conv.id, seq);
            } else {
                request.hidden.messages.insert((conv.id, seq));
            }
        }
    }
    request.limit = 1 + rng.below(7) as usize;
    request
}

type Key = (u64, u64);
/// Each page's hits: their keys and highlights.
type Pages = Vec<Vec<(Key, Vec<(usize, usize)>)>>;

/// Every page of the request, checked for fullness; the hits' keys.
fn all_pages(index: &dyn SearchIndex, request: &SearchRequest, seed: u64) -> Pages {
    let mut request = request.clone();
    let mut pages = Vec::new();
    loop {
        let page = index
            .search(&request)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(!page.timed_out, "seed {seed}: timed out");
        if page.next_cursor.is_some() {
            assert_eq!(
                page.hits.len(),
                request.limit,
                "seed {seed}: a short page with more to come"
            );
        }
        pages.push(
            page.hits
                .iter()
                .map(|h| ((h.conversation_id, h.conv_seq), h.highlights.clone()))
                .collect(),
        );
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => return pages,
        }
        assert!(pages.len() < 10_000, "seed {seed}: pages never end");
    }
}

/// Compares every page; returns how many hits the oracle found.
fn compare(
    real: &dyn SearchIndex,
    oracle: &MemoryIndex,
    request: &SearchRequest,
    seed: u64,
) -> usize {
    let got = all_pages(real, request, seed);
    let want = all_pages(oracle, request, seed);
    let found = want.iter().map(Vec::len).sum();
    match request.order {
        SortOrder::NewestFirst => assert_eq!(got, want, "seed {seed}: {request:?}"),
        SortOrder::Relevance => {
            // Scores differ from the oracle's; the set, each hit once, and
            // the highlights must not.
            let flat = |pages: Pages| {
                let all: Vec<_> = pages.into_iter().flatten().collect();
                let set: BTreeSet<_> = all.iter().cloned().collect();
                assert_eq!(
                    set.len(),
                    all.len(),
                    "seed {seed}: a hit twice: {request:?}"
                );
                set
            };
            assert_eq!(flat(got), flat(want), "seed {seed}: {request:?}");
        }
    }
    found
}

fn run(seed: u64, backend: &Backend) {
    let name = backend.name();
    eprintln!("search oracle ({name}) seed {seed} (SEARCH_ORACLE_SEED={seed} replays it)");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut real = backend.open();
    let oracle = MemoryIndex::new();
    let mut conversations: Vec<Conversation> = (1..=5)
        .map(|id| Conversation {
            id: id * 7,
            next_seq: 1,
            members: BTreeSet::new(),
            messages: Vec::new(),
        })
        .collect();
    let mut sent_at = 0;
    let mut found = 0;
    // Each conversation's stretch applied last.
    let mut applied: std::collections::HashMap<usize, ConversationUpdate> = Default::default();
    for round in 0..12 {
        let mut batch = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(conversations.len() as u64) as usize;
            let mut update = timeline_stretch(&mut rng, &mut conversations[i], &mut sent_at);
            // Now and then a stretch that starts again below the
            // checkpoint (a feeder that read from an older one): what the
            // index holds already is replaced, not doubled.
            if let Some(previous) = applied.get(&i)
                && rng.below(4) == 0
            {
                let mut ops = previous.ops.clone();
                ops.extend(update.ops);
                update.ops = ops;
            }
            applied.insert(i, update.clone());
            batch.push(update);
        }
        // Now and then a stale update again: applied already, skipped.
        if rng.below(3) == 0 {
            batch.push(batch[0].clone());
        }
        if let Opened::OpenSearch(index) = &real
            && rng.below(3) == 0
        {
            // A crash while applying: some of the batch's documents are
            // in, no checkpoint moved; the restarted feeder sends it again.
            let cut = rng.next();
            index
                .apply_interrupted(&batch, |total| (cut % (total as u64 + 1)) as usize)
                .unwrap();
            drop(real);
            real = backend.open();
        }
        real.index().apply(&batch).unwrap();
        oracle.apply(&batch).unwrap();
        if round % 5 == 4 {
            drop(real);
            real = backend.open();
        }
        assert_eq!(
            real.index().checkpoints().unwrap(),
            oracle.checkpoints().unwrap(),
            "{name} seed {seed}"
        );
        for _ in 0..25 {
            let request = random_request(&mut rng, &conversations);
            found += compare(real.index(), &oracle, &request, seed);
        }
    }
    // The queries must find things for the comparison to mean anything.
    assert!(found > 50, "seed {seed}: only {found} hits in all");
}

/// Runs the seeds (`SEARCH_ORACLE_SEED`, or `runs` from the clock), each
/// on a fresh backend.
fn run_seeds(runs: u64, backend: impl Fn() -> Backend) {
    let seeds: Vec<u64> = match std::env::var("SEARCH_ORACLE_SEED") {
        Ok(seed) => vec![seed.parse().expect("SEARCH_ORACLE_SEED is a number")],
        Err(_) => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..runs).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        let backend = backend();
        run(seed, &backend);
        backend.clean_up();
    }
}

#[test]
fn the_embedded_index_answers_as_the_brute_force_one() {
    run_seeds(4, Backend::embedded);
}

#[test]
fn the_opensearch_index_answers_as_the_brute_force_one_across_crashes() {
    run_seeds(2, || Backend::opensearch("oracle"));
}
