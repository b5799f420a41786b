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

use search::memory::MemoryIndex;
use search::{
    ConversationUpdate, IndexOp, MessageDoc, OpenSearchIndex, OpenSearchOptions, SearchIndex,
    SearchRequest, Searcher, SortOrder, TantivyIndex,
};
use std::collections::BTreeSet;
use std::time::Duration;

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

fn opensearch_url() -> String {
    std::env::var("TIMELINE_OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// Where a backend under test keeps its index between opens.
enum Backend {
    Embedded(tempfile::TempDir),
    OpenSearch(OpenSearchOptions),
}

enum Opened {
    Embedded(TantivyIndex),
    OpenSearch(OpenSearchIndex),
}

impl Opened {
    fn index(&self) -> &dyn SearchIndex {
        match self {
            Opened::Embedded(index) => index,
            Opened::OpenSearch(index) => index,
        }
    }
}

impl Backend {
    fn embedded() -> Self {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }

    /// A fresh index of its own on the test node (two shards, so that
    /// routing by conversation matters).
    fn opensearch(name: &str) -> Self {
        let mut options = OpenSearchOptions::new(
            opensearch_url(),
            format!("test-{name}-{}", std::process::id()),
        );
        options.shards = 2;
        let backend = Backend::OpenSearch(options);
        if let Opened::OpenSearch(index) = backend.open() {
            index.delete().unwrap();
        }
        backend
    }

    fn open(&self) -> Opened {
        match self {
            Backend::Embedded(dir) => Opened::Embedded(TantivyIndex::open(dir.path()).unwrap()),
            Backend::OpenSearch(options) => {
                Opened::OpenSearch(OpenSearchIndex::open(options).unwrap_or_else(|e| {
                    panic!(
                        "no OpenSearch node at {} ({e}): start one with \
                         scripts/opensearch-server start, or set TIMELINE_OPENSEARCH_URL",
                        options.url
                    )
                }))
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::OpenSearch(_) => "opensearch",
        }
    }

    /// Drops what the backend keeps outside the test's directories.
    fn clean_up(self) {
        if let Backend::OpenSearch(_) = &self
            && let Opened::OpenSearch(index) = self.open()
        {
            index.delete().unwrap();
        }
    }
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

fn message(conversation_id: u64, conv_seq: u64, text: &str) -> IndexOp {
    IndexOp::Upsert(MessageDoc {
        conversation_id,
        conv_seq,
        msg_id: conv_seq,
        sender_id: 1,
        text: text.into(),
        sent_at_ms: conv_seq as i64,
    })
}

fn keys(index: &dyn SearchIndex, request: SearchRequest) -> Vec<u64> {
    index
        .search(&request)
        .unwrap()
        .hits
        .iter()
        .map(|h| h.conv_seq)
        .collect()
}

fn a_chinese_phrase_finds_the_messages_that_contain_it(index: &dyn SearchIndex) {
    index
        .apply(&[ConversationUpdate {
            conversation_id: 1,
            ops: vec![
                message(1, 1, "我们的数据库很快"),
                message(1, 2, "数据很多，库存不足"),
                message(1, 3, "数据库备份"),
                message(1, 4, "Database 数据 库"),
            ],
            indexed_through: 4,
        }])
        .unwrap();
    let page = index
        .search(&SearchRequest::new(Searcher::Service, "数据库"))
        .unwrap();
    let found: Vec<(u64, Vec<(usize, usize)>)> = page
        .hits
        .iter()
        .map(|h| (h.conv_seq, h.highlights.clone()))
        .collect();
    assert_eq!(found, [(3, vec![(0, 9)]), (1, vec![(9, 18)])]);
    assert_eq!(
        keys(index, SearchRequest::new(Searcher::Service, "库")),
        [4, 3, 2, 1]
    );
    assert_eq!(
        keys(index, SearchRequest::new(Searcher::Service, "database")),
        [4]
    );
}

fn a_member_finds_only_what_was_sent_while_a_member(index: &dyn SearchIndex) {
    let ops = vec![
        IndexOp::Joined {
            users: vec![1, 2],
            conv_seq: 1,
        },
        message(9, 2, "hello one"),
        IndexOp::Left {
            users: vec![2],
            conv_seq: 3,
        },
        message(9, 4, "hello two"),
        IndexOp::Joined {
            users: vec![2],
            conv_seq: 5,
        },
        message(9, 6, "hello three"),
    ];
    index
        .apply(&[ConversationUpdate {
            conversation_id: 9,
            ops,
            indexed_through: 6,
        }])
        .unwrap();
    let hello = |searcher| SearchRequest::new(searcher, "hello");
    assert_eq!(keys(index, hello(Searcher::User(1))), [6, 4, 2]);
    assert_eq!(keys(index, hello(Searcher::User(2))), [6, 2]);
    assert_eq!(keys(index, hello(Searcher::User(3))), Vec::<u64>::new());
    assert_eq!(keys(index, hello(Searcher::Service)), [6, 4, 2]);
}

fn what_a_user_hid_is_not_found_by_them(index: &dyn SearchIndex) {
    let mut ops = vec![IndexOp::Joined {
        users: vec![1, 2],
        conv_seq: 1,
    }];
    ops.extend((2..=7).map(|seq| message(9, seq, "hello")));
    index
        .apply(&[ConversationUpdate {
            conversation_id: 9,
            ops,
            indexed_through: 7,
        }])
        .unwrap();
    let mut hidden = search::Hidden::default();
    hidden.cleared_through.insert(9, 3);
    hidden.messages.insert((9, 5));
    let hello = |searcher| SearchRequest {
        hidden: hidden.clone(),
        limit: 2,
        ..SearchRequest::new(searcher, "hello")
    };
    // Every page, each checked full: hiding is part of the query.
    let seqs = |request: SearchRequest| -> Vec<u64> {
        all_pages(index, &request, 0)
            .into_iter()
            .flatten()
            .map(|((_, seq), _)| seq)
            .collect()
    };
    assert_eq!(seqs(hello(Searcher::User(1))), [7, 6, 4]);
    let mut one = hello(Searcher::User(1));
    one.conversation_id = Some(9);
    assert_eq!(seqs(one), [7, 6, 4]);
    // The other member has hidden nothing; a service hides nothing.
    let mut other = hello(Searcher::User(2));
    other.hidden = search::Hidden::default();
    assert_eq!(seqs(other), [7, 6, 5, 4, 3, 2]);
    assert_eq!(seqs(hello(Searcher::Service)), [7, 6, 5, 4, 3, 2]);
    let mut too_many = hello(Searcher::User(1));
    too_many.hidden.messages = (0..=search::model::MAX_HIDDEN_MESSAGES as u64)
        .map(|seq| (9, seq))
        .collect();
    assert!(matches!(
        index.search(&too_many),
        Err(search::SearchError::TooManyHidden { .. })
    ));
}

#[test]
fn what_a_user_hid_is_not_found_by_them_on_both_backends() {
    on_both_backends("hidden", what_a_user_hid_is_not_found_by_them);
}

/// The same checks on both backends.
fn on_both_backends(name: &str, check: fn(&dyn SearchIndex)) {
    for backend in [Backend::embedded(), Backend::opensearch(name)] {
        check(backend.open().index());
        backend.clean_up();
    }
}

#[test]
fn a_chinese_phrase_finds_the_messages_that_contain_it_on_both_backends() {
    on_both_backends(
        "chinese",
        a_chinese_phrase_finds_the_messages_that_contain_it,
    );
}

#[test]
fn a_member_finds_only_what_was_sent_while_a_member_on_both_backends() {
    on_both_backends("members", a_member_finds_only_what_was_sent_while_a_member);
}

#[test]
fn a_query_out_of_time_answers_with_what_it_has_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let index = TantivyIndex::open(dir.path()).unwrap();
    let ops = (1..=600).map(|seq| message(1, seq, "same words")).collect();
    index
        .apply(&[ConversationUpdate {
            conversation_id: 1,
            ops,
            indexed_through: 600,
        }])
        .unwrap();
    let mut request = SearchRequest::new(Searcher::Service, "words");
    request.timeout = Duration::ZERO;
    let page = index.search(&request).unwrap();
    assert!(page.timed_out);
    assert!(page.hits.len() <= 20);
    request.timeout = Duration::from_secs(5);
    assert!(!index.search(&request).unwrap().timed_out);
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = TantivyIndex::open(dir.path()).unwrap();
    let error = TantivyIndex::open(dir.path())
        .err()
        .expect("a second open fails");
    assert!(matches!(error, search::SearchError::Engine(_)), "{error}");
}
