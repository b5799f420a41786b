use crate::engine::{Engine, EngineConfig, MembershipChange, SearchQuery};
use crate::error::SyncdError;
use crate::testkit::{self, device, group, message, service};
use seqsvc::{AllocatorConfig, MemoryMaxSeqStore};
use std::sync::Arc;
use std::time::Duration;

fn query(text: &str) -> SearchQuery {
    SearchQuery {
        query: text.into(),
        ..SearchQuery::default()
    }
}

/// Waits until the index holds every readable event.
async fn caught_up(engine: &Engine) {
    for _ in 0..1_000 {
        let result = engine.search(&service(), query("x")).await.unwrap();
        if result.lagging_events == 0 && !result.catching_up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the search index never caught up");
}

async fn found(engine: &Engine, principal: crate::auth::Principal, text: &str) -> Vec<String> {
    let result = engine.search(&principal, query(text)).await.unwrap();
    result.page.hits.into_iter().map(|h| h.text).collect()
}

fn index(dir: &std::path::Path) -> Arc<dyn search::SearchIndex> {
    Arc::new(search::TantivyIndex::open(&dir.join("search")).unwrap())
}

#[tokio::test]
async fn members_find_what_they_could_read_while_members() {
    let dir = tempfile::tempdir().unwrap();
    let store = testkit::test_store(&dir.path().join("store"), true);
    let (allocator, ids) = testkit::allocator(AllocatorConfig::default()).await;
    let engine = Engine::with_search(
        store,
        allocator,
        ids,
        EngineConfig::default(),
        index(dir.path()),
    );
    engine.start();
    let conv = group(&engine, 1, vec![2]).await;
    let say = |text: &'static str| engine.send(device(1, "d"), message(conv, text, None));
    say("hello 数据库").await.unwrap();
    say("数据很多，库存不足").await.unwrap();
    engine
        .change_members(service(), conv, vec![2], MembershipChange::Remove)
        .await
        .unwrap();
    say("hello after 2 left").await.unwrap();
    engine
        .change_members(service(), conv, vec![3], MembershipChange::Add)
        .await
        .unwrap();
    say("hello with 3").await.unwrap();
    caught_up(&engine).await;

    assert_eq!(
        found(&engine, device(1, "d"), "hello").await,
        ["hello with 3", "hello after 2 left", "hello 数据库"]
    );
    assert_eq!(
        found(&engine, device(2, "d"), "hello").await,
        ["hello 数据库"]
    );
    assert_eq!(
        found(&engine, device(3, "d"), "hello").await,
        ["hello with 3"]
    );
    assert_eq!(
        found(&engine, device(4, "d"), "hello").await,
        Vec::<String>::new()
    );
    assert_eq!(found(&engine, service(), "数据库").await, ["hello 数据库"]);
    engine.begin_shutdown();
    engine.shutdown().await;
}

#[tokio::test]
async fn a_node_that_missed_events_finds_them_in_the_timelines() {
    let dir = tempfile::tempdir().unwrap();
    let store = testkit::test_store(&dir.path().join("store"), false);
    let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
    // An engine without an index: its events never reach one (as if the
    // node crashed before indexing them).
    let blind = testkit::engine_on(&store, Arc::clone(&seq_store), EngineConfig::default()).await;
    let conv = group(&blind, 1, vec![2]).await;
    for i in 0..300 {
        blind
            .send(device(2, "d"), message(conv, &format!("note {i}"), None))
            .await
            .unwrap();
    }
    drop(blind);
    let (allocator, ids) = testkit::allocator_on(seq_store, AllocatorConfig::default()).await;
    let engine = Engine::with_search(
        store,
        allocator,
        ids,
        EngineConfig::default(),
        index(dir.path()),
    );
    engine.start();
    caught_up(&engine).await;
    let mut request = query("note");
    request.limit = 100;
    let mut total = 0;
    loop {
        let page = engine
            .search(&device(1, "d"), request.clone())
            .await
            .unwrap()
            .page;
        total += page.hits.len();
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(total, 300);
    engine.begin_shutdown();
    engine.shutdown().await;
}

#[tokio::test]
async fn bad_searches_are_refused_and_a_node_without_an_index_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let store = testkit::test_store(&dir.path().join("store"), false);
    let (allocator, ids) = testkit::allocator(AllocatorConfig::default()).await;
    let engine = Engine::with_search(
        store.clone(),
        allocator,
        ids,
        EngineConfig::default(),
        index(dir.path()),
    );
    for (bad, why) in [
        (query(" ,, "), "no words"),
        (query(&"x".repeat(600)), "600 bytes"),
        (
            SearchQuery {
                limit: 101,
                ..query("x")
            },
            "limit 101",
        ),
        (
            SearchQuery {
                cursor: Some("garbage".into()),
                ..query("x")
            },
            "cursor",
        ),
    ] {
        match engine.search(&service(), bad).await {
            Err(SyncdError::InvalidArgument(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    let plain = testkit::engine_on(
        &store,
        Arc::new(MemoryMaxSeqStore::new()),
        EngineConfig::default(),
    )
    .await;
    assert!(matches!(
        plain.search(&service(), query("x")).await,
        Err(SyncdError::FailedPrecondition(_))
    ));
}

/// An index, counting its commits (each `apply` is one).
struct Counted<I> {
    inner: I,
    commits: std::sync::atomic::AtomicUsize,
}

impl<I: search::SearchIndex> search::SearchIndex for Counted<I> {
    fn checkpoints(&self) -> search::Result<Vec<(u64, u64)>> {
        self.inner.checkpoints()
    }
    fn checkpoint(&self, conversation_id: u64) -> search::Result<u64> {
        self.inner.checkpoint(conversation_id)
    }
    fn apply(&self, updates: &[search::ConversationUpdate]) -> search::Result<()> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(updates)
    }
    fn search(&self, request: &search::SearchRequest) -> search::Result<search::SearchPage> {
        self.inner.search(request)
    }
    fn clear(&self) -> search::Result<()> {
        self.inner.clear()
    }
}

#[tokio::test]
async fn a_backlog_of_many_conversations_is_one_commit_sized_by_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = testkit::test_store(&dir.path().join("store"), false);
    let seq_store: Arc<dyn seqsvc::MaxSeqStore> = Arc::new(MemoryMaxSeqStore::new());
    // A node without an index leaves a backlog: one conversation far
    // behind (more than one read of it) and a hundred a little behind
    // (more than a commit took when commits were counted in
    // conversations).
    let blind = testkit::engine_on(&store, Arc::clone(&seq_store), EngineConfig::default()).await;
    let busy = group(&blind, 1, vec![2]).await;
    for i in 0..600 {
        blind
            .send(device(2, "d"), message(busy, &format!("busy {i}"), None))
            .await
            .unwrap();
    }
    let mut quiet = Vec::new();
    for _ in 0..100 {
        let conv = group(&blind, 1, vec![3]).await;
        blind
            .send(device(3, "d"), message(conv, "quiet word", None))
            .await
            .unwrap();
        quiet.push(conv);
    }
    drop(blind);
    let (allocator, ids) = testkit::allocator_on(seq_store, AllocatorConfig::default()).await;
    let index = Arc::new(Counted {
        inner: search::TantivyIndex::open(&dir.path().join("search")).unwrap(),
        commits: Default::default(),
    });
    let engine = Engine::with_search(
        store,
        allocator,
        ids,
        EngineConfig::default(),
        Arc::clone(&index) as Arc<dyn search::SearchIndex>,
    );
    engine.start();
    caught_up(&engine).await;
    assert_eq!(
        index.commits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "701 messages of 101 conversations fit one commit"
    );
    let mut request = query("quiet");
    request.limit = 100;
    let page = engine.search(&device(3, "d"), request).await.unwrap().page;
    assert_eq!(page.hits.len(), 100);
    for conv in [busy].into_iter().chain(quiet) {
        let through = search::SearchIndex::checkpoint(&index.inner, conv).unwrap();
        assert!(through > 1, "conversation {conv} indexed through {through}");
    }
    let mut request = query("busy");
    request.limit = 100;
    request.conversation_id = Some(busy);
    let mut total = 0;
    loop {
        let page = engine
            .search(&device(1, "d"), request.clone())
            .await
            .unwrap()
            .page;
        total += page.hits.len();
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(total, 600);
    engine.begin_shutdown();
    engine.shutdown().await;
}

#[tokio::test]
async fn messages_deleted_for_a_user_or_cleared_are_not_found_by_them() {
    use crate::engine::HideCommand;
    use timeline_store::EntryKind;
    let dir = tempfile::tempdir().unwrap();
    let store = testkit::test_store(&dir.path().join("store"), false);
    let (allocator, ids) = testkit::allocator(AllocatorConfig::default()).await;
    let engine = Engine::with_search(
        store,
        allocator,
        ids,
        EngineConfig::default(),
        index(dir.path()),
    );
    engine.start();
    let conv = group(&engine, 1, vec![2]).await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        let sent = engine
            .send(device(2, "d"), message(conv, &format!("note {i}"), None))
            .await
            .unwrap();
        seqs.push(sent.receipt.conv_seq);
    }
    let hide = |kind, conv_seq| {
        engine.hide(
            device(1, "d"),
            kind,
            HideCommand {
                conversation_id: conv,
                conv_seq: Some(conv_seq),
                msg_id: 0,
                client_op_id: None,
            },
        )
    };
    hide(EntryKind::DeleteForMe, seqs[4]).await.unwrap();
    hide(EntryKind::ClearHistory, seqs[1]).await.unwrap();
    caught_up(&engine).await;
    let mut request = query("note");
    request.limit = 2;
    for conversation in [None, Some(conv)] {
        request.conversation_id = conversation;
        request.cursor = None;
        let mut texts = Vec::new();
        loop {
            let page = engine
                .search(&device(1, "d"), request.clone())
                .await
                .unwrap()
                .page;
            // Full pages: hiding is part of the query.
            assert!(page.next_cursor.is_none() || page.hits.len() == 2);
            texts.extend(page.hits.into_iter().map(|h| h.text));
            match page.next_cursor {
                Some(cursor) => request.cursor = Some(cursor),
                None => break,
            }
        }
        assert_eq!(texts, ["note 5", "note 3", "note 2"], "{conversation:?}");
    }
    // The other member and a service still find all six.
    assert_eq!(found(&engine, device(2, "d"), "note").await.len(), 6);
    assert_eq!(found(&engine, service(), "note").await.len(), 6);
    engine.begin_shutdown();
    engine.shutdown().await;
}

#[tokio::test]
async fn sends_in_a_stream_share_index_commits() {
    use crate::limits::SEARCH_COMMIT_INTERVAL;
    let dir = tempfile::tempdir().unwrap();
    let store = testkit::test_store(&dir.path().join("store"), false);
    let (allocator, ids) = testkit::allocator(AllocatorConfig::default()).await;
    let index = Arc::new(Counted {
        inner: search::memory::MemoryIndex::new(),
        commits: Default::default(),
    });
    let engine = Engine::with_search(
        store,
        allocator,
        ids,
        EngineConfig::default(),
        Arc::clone(&index) as Arc<dyn search::SearchIndex>,
    );
    engine.start();
    let conv = group(&engine, 1, vec![2]).await;
    caught_up(&engine).await;
    let before = index.commits.load(std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    // One message every few milliseconds: each would have its own commit
    // if rounds ran back to back.
    for i in 0..40 {
        engine
            .send(device(1, "d"), message(conv, &format!("note{i}"), None))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    caught_up(&engine).await;
    let commits = index.commits.load(std::sync::atomic::Ordering::SeqCst) - before;
    let allowed = (started.elapsed().as_millis() / SEARCH_COMMIT_INTERVAL.as_millis()) as usize + 2;
    assert!(
        commits <= allowed,
        "{commits} index commits in {:?}: at most one per {SEARCH_COMMIT_INTERVAL:?} ({allowed})",
        started.elapsed()
    );
    assert_eq!(found(&engine, service(), "note39").await, ["note39"]);
    engine.begin_shutdown();
    engine.shutdown().await;
}

/// An index whose searches wait until the test lets them go.
struct HeldIndex {
    inner: search::memory::MemoryIndex,
    released: Arc<std::sync::atomic::AtomicBool>,
    entered: Arc<std::sync::atomic::AtomicUsize>,
}

impl search::SearchIndex for HeldIndex {
    fn checkpoints(&self) -> search::Result<Vec<(u64, u64)>> {
        self.inner.checkpoints()
    }
    fn checkpoint(&self, conversation_id: u64) -> search::Result<u64> {
        self.inner.checkpoint(conversation_id)
    }
    fn apply(&self, updates: &[search::ConversationUpdate]) -> search::Result<()> {
        self.inner.apply(updates)
    }
    fn search(&self, request: &search::SearchRequest) -> search::Result<search::SearchPage> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        while !self.released.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.search(request)
    }
    fn clear(&self) -> search::Result<()> {
        self.inner.clear()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_past_the_node_bound_are_refused_not_queued() {
    use crate::limits::MAX_CONCURRENT_SEARCHES;
    use std::sync::atomic::Ordering;
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let index = Arc::new(HeldIndex {
        inner: search::memory::MemoryIndex::default(),
        released: Arc::clone(&released),
        entered: Arc::clone(&entered),
    });
    let store: Arc<dyn timeline_store::TimelineStore> =
        Arc::new(timeline_store::testsuite::MemoryStore::new());
    let indexing = super::SearchIndexing::new(store, None, index);
    let running: Vec<_> = (0..MAX_CONCURRENT_SEARCHES)
        .map(|_| {
            let indexing = Arc::clone(&indexing);
            tokio::spawn(async move {
                let admitted = indexing.admit(&service(), query("x")).unwrap();
                indexing.search(admitted, search::Hidden::default()).await
            })
        })
        .collect();
    for _ in 0..1_000 {
        if entered.load(Ordering::SeqCst) == MAX_CONCURRENT_SEARCHES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(entered.load(Ordering::SeqCst), MAX_CONCURRENT_SEARCHES);
    // Refused when admitted, before anything is done for it.
    let refused = indexing
        .admit(&service(), query("x"))
        .expect_err("a search past the bound");
    assert!(
        matches!(&refused, SyncdError::ResourceExhausted(m) if m.contains("searches are running")),
        "{refused:?}"
    );
    released.store(true, Ordering::SeqCst);
    for search in running {
        search.await.unwrap().unwrap();
    }
    let admitted = indexing.admit(&service(), query("x")).unwrap();
    indexing
        .search(admitted, search::Hidden::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_empty_query_is_refused_when_it_is_admitted() {
    let store: Arc<dyn timeline_store::TimelineStore> =
        Arc::new(timeline_store::testsuite::MemoryStore::new());
    let indexing = super::SearchIndexing::new(
        store,
        None,
        Arc::new(search::memory::MemoryIndex::default()),
    );
    let refused = indexing
        .admit(&device(1, "phone"), query(""))
        .expect_err("an empty query");
    assert!(
        matches!(refused, SyncdError::InvalidArgument(_)),
        "{refused:?}"
    );
}

#[tokio::test]
async fn one_user_runs_at_most_their_share_of_searches() {
    use crate::limits::MAX_SEARCHES_PER_USER;
    let store: Arc<dyn timeline_store::TimelineStore> =
        Arc::new(timeline_store::testsuite::MemoryStore::new());
    let indexing = super::SearchIndexing::new(
        store,
        None,
        Arc::new(search::memory::MemoryIndex::default()),
    );
    let held: Vec<_> = (0..MAX_SEARCHES_PER_USER)
        .map(|_| indexing.admit(&device(1, "phone"), query("x")).unwrap())
        .collect();
    let refused = indexing
        .admit(&device(1, "laptop"), query("x"))
        .expect_err("past the user's share");
    assert!(
        matches!(&refused, SyncdError::ResourceExhausted(m) if m.contains("this user")),
        "{refused:?}"
    );
    // Others keep theirs; a service has no share to run out of.
    let other = indexing.admit(&device(2, "phone"), query("x")).unwrap();
    let by_service = indexing.admit(&service(), query("x")).unwrap();
    drop((held, other, by_service));
    indexing.admit(&device(1, "phone"), query("x")).unwrap();
}

/// An index that logs which calls the indexer makes, and whose reload
/// waits until the test lets it go.
struct Reloading {
    inner: search::memory::MemoryIndex,
    calls: std::sync::Mutex<Vec<&'static str>>,
    released: std::sync::atomic::AtomicBool,
}

impl Reloading {
    fn log(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }
}

impl search::SearchIndex for Reloading {
    fn checkpoints(&self) -> search::Result<Vec<(u64, u64)>> {
        self.log("checkpoints");
        self.inner.checkpoints()
    }
    fn checkpoint(&self, conversation_id: u64) -> search::Result<u64> {
        self.log("checkpoint");
        self.inner.checkpoint(conversation_id)
    }
    fn apply(&self, updates: &[search::ConversationUpdate]) -> search::Result<()> {
        self.log("apply");
        self.inner.apply(updates)
    }
    fn search(&self, request: &search::SearchRequest) -> search::Result<search::SearchPage> {
        self.inner.search(request)
    }
    fn clear(&self) -> search::Result<()> {
        self.inner.clear()
    }
    fn reload(&self) -> search::Result<()> {
        self.log("reload");
        while !self.released.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// The indexer reads a shared index's checkpoints again before anything
/// else (a cluster node that becomes the writer goes on from where the
/// earlier writers got), and a stop while that read waits still stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_reloads_before_it_reads_a_checkpoint_and_stops_meanwhile() {
    let new_index = || {
        Arc::new(Reloading {
            inner: search::memory::MemoryIndex::default(),
            calls: Default::default(),
            released: Default::default(),
        })
    };
    let engine_with = |index: &Arc<Reloading>| {
        let index = Arc::clone(index);
        async move {
            let store: Arc<dyn timeline_store::TimelineStore> =
                Arc::new(timeline_store::testsuite::MemoryStore::new());
            let (allocator, ids) = testkit::allocator(AllocatorConfig::default()).await;
            Engine::with_search(
                store,
                allocator,
                ids,
                EngineConfig::default(),
                index as Arc<dyn search::SearchIndex>,
            )
        }
    };
    // Stopped while the reload waits: the indexer returns, and shutdown
    // does not wait for the reload.
    let held = new_index();
    let engine = engine_with(&held).await;
    engine.start();
    for _ in 0..2_500 {
        if !held.calls.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    engine.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), engine.shutdown())
        .await
        .expect("shutdown while the reload waits");
    assert_eq!(*held.calls.lock().unwrap(), ["reload"], "nothing after it");
    held.released
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Released: the reload comes first, then the scan reads checkpoints.
    let index = new_index();
    index
        .released
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let engine = engine_with(&index).await;
    engine.start();
    let conversation = group(&engine, 1, vec![2]).await;
    engine
        .send(device(2, "d"), message(conversation, "after reload", None))
        .await
        .unwrap();
    caught_up(&engine).await;
    let calls = index.calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&"reload"), "{calls:?}");
    assert_eq!(
        calls.iter().filter(|&&c| c == "reload").count(),
        1,
        "{calls:?}"
    );
    assert!(calls.contains(&"apply"), "{calls:?}");
    engine.begin_shutdown();
    engine.shutdown().await;
}
