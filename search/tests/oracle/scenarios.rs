//! Named scenarios on both backends: a Chinese phrase, membership
//! intervals, what a user hid, a query out of time, a second writer.

use super::all_pages;
use super::backends::{Backend, Opened};
use search::{
    ConversationUpdate, IndexOp, MessageDoc, SearchIndex, SearchRequest, Searcher, TantivyIndex,
};
use std::time::Duration;

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

/// Two indexers on one OpenSearch index, as after a takeover: the old
/// writer's indexer, frozen between reading what it changes and writing
/// it, resumes after the new writer indexed further. Its late writes must
/// not set anything back: not a recalled message, not a membership that
/// ended since, not the checkpoint.
#[test]
fn a_stale_indexers_late_writes_never_set_the_index_back() {
    let backend = Backend::opensearch("stale");
    let first = ConversationUpdate {
        conversation_id: 5,
        ops: vec![message(5, 2, "apple")],
        indexed_through: 2,
    };
    let Opened::OpenSearch(old) = backend.open() else {
        unreachable!()
    };
    old.apply(std::slice::from_ref(&first)).unwrap();
    let Opened::OpenSearch(new) = backend.open() else {
        unreachable!()
    };
    // The old writer's stretch: user 7 joins, then a message.
    let stale = ConversationUpdate {
        conversation_id: 5,
        ops: vec![
            IndexOp::Joined {
                users: vec![7],
                conv_seq: 3,
            },
            message(5, 4, "banana"),
        ],
        indexed_through: 4,
    };
    // The new writer's: the same, then the message recalled, user 7
    // removed, and a message sent after.
    let newer = ConversationUpdate {
        conversation_id: 5,
        ops: vec![
            IndexOp::Joined {
                users: vec![7],
                conv_seq: 3,
            },
            message(5, 4, "banana"),
            IndexOp::Remove { conv_seq: 4 },
            IndexOp::Left {
                users: vec![7],
                conv_seq: 6,
            },
            message(5, 7, "cherry"),
        ],
        indexed_through: 7,
    };
    old.apply_after(std::slice::from_ref(&stale), || {
        new.apply(std::slice::from_ref(&newer)).unwrap();
    })
    .unwrap();
    let find = |searcher, text| keys(&new, SearchRequest::new(searcher, text));
    assert_eq!(
        find(Searcher::User(7), "banana"),
        Vec::<u64>::new(),
        "recalled"
    );
    assert_eq!(
        find(Searcher::Service, "banana"),
        Vec::<u64>::new(),
        "recalled"
    );
    assert_eq!(
        find(Searcher::User(7), "cherry"),
        Vec::<u64>::new(),
        "sent after user 7 left"
    );
    assert_eq!(find(Searcher::Service, "cherry"), [7]);
    assert_eq!(find(Searcher::Service, "apple"), [2]);
    // A node that opened the index before all this, then became the
    // writer, starts from the stored checkpoints once it reloads them.
    let Opened::OpenSearch(third) = backend.open() else {
        unreachable!()
    };
    assert_eq!(third.checkpoint(5).unwrap(), 7, "the checkpoint stays");
    assert_eq!(old.checkpoint(5).unwrap(), 4, "what the old writer knew");
    old.reload().unwrap();
    assert_eq!(old.checkpoint(5).unwrap(), 7, "read again");
    drop((old, new, third));
    backend.clean_up();
}

/// An index an earlier version wrote (another schema) stops a node's
/// start with the reason, and a rebuild replaces it.
#[test]
fn an_index_of_another_schema_is_refused_and_replaced_by_a_rebuild() {
    let backend = Backend::opensearch("schema");
    let Backend::OpenSearch(options) = &backend else {
        unreachable!()
    };
    // Not a search index at all (a name given by mistake), and a later
    // version's (a rollback): refused, and kept by a rebuild as well.
    for (schema, reason) in [
        (None, "not a Timeline search index"),
        (Some(3), "a later version"),
    ] {
        search::OpenSearchIndex::create_with_schema(options, schema).unwrap();
        for open in [
            search::OpenSearchIndex::open,
            search::OpenSearchIndex::open_to_rebuild,
        ] {
            let refused = open(options).err().expect("refused");
            assert!(
                matches!(&refused, search::SearchError::Corrupt(m) if m.contains(reason)),
                "{refused}"
            );
        }
        search::OpenSearchIndex::drop_index(options).unwrap();
    }
    // Schema 1: written before documents were versioned.
    search::OpenSearchIndex::create_with_schema(options, Some(1)).unwrap();
    let refused = search::OpenSearchIndex::open(options)
        .err()
        .expect("an index of another schema is refused");
    assert!(
        matches!(&refused, search::SearchError::Corrupt(m) if m.contains("syncd reindex")),
        "{refused}"
    );
    let rebuilt = search::OpenSearchIndex::open_to_rebuild(options).unwrap();
    rebuilt
        .apply(&[ConversationUpdate {
            conversation_id: 3,
            ops: vec![message(3, 1, "kept")],
            indexed_through: 1,
        }])
        .unwrap();
    drop(rebuilt);
    let Opened::OpenSearch(reopened) = backend.open() else {
        unreachable!()
    };
    assert_eq!(
        keys(&reopened, SearchRequest::new(Searcher::Service, "kept")),
        [1]
    );
    drop(reopened);
    backend.clean_up();
}
