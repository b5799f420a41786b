//! History search across processes: `tl search` against a real syncd, and
//! the index after kill -9 while it indexes under load, compared with a
//! brute-force index built from the timelines the server kept.

use client::{Client, pb};
use search::memory::MemoryIndex;
use search::{ConversationUpdate, IndexOp, MessageDoc, SearchIndex, SearchRequest, Searcher};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tests::{Server, connect_retrying, json_lines, tl};

fn search_request(query: &str, limit: u32, cursor: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        query: query.into(),
        limit,
        cursor: cursor.into(),
        ..pb::SearchRequest::default()
    }
}

/// Waits until the server's index holds every event it can read.
async fn caught_up(client: &Client) {
    for _ in 0..3_000 {
        if let Ok(reply) = client.search(search_request("x", 1, "")).await
            && reply.lagging_events == 0
            && !reply.catching_up
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the search index never caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tl_search_finds_what_each_member_may_read() -> anyhow::Result<()> {
    tl_search_finds_what_each_member_may_read_on(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tl_search_finds_what_each_member_may_read_on_opensearch() -> anyhow::Result<()> {
    let index = tests::OpenSearchTestIndex::new("tl-search");
    let args = index.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tl_search_finds_what_each_member_may_read_on(&args).await
}

async fn tl_search_finds_what_each_member_may_read_on(server_args: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), server_args)?;
    let url = server.url();
    let (alice, bob) = (server.device_token(1, "a")?, server.device_token(2, "b")?);
    let ops = server.service_token("ops")?;
    let client = Client::connect(&url, &alice).await?;
    let conv = client
        .create_conversation(pb::ConversationKind::Group, vec![2], "")
        .await?
        .conversation_id;
    client.send(conv, "我们的数据库很快", None).await?;
    client.send(conv, "数据很多，库存不足", None).await?;
    let admin = Client::connect(&url, &ops).await?;
    admin.remove_members(conv, vec![2]).await?;
    client.send(conv, "新的数据库 after bob left", None).await?;
    caught_up(&admin).await;

    let conv_arg = conv.to_string();
    let found = |token: &str, query: &str| {
        let output = tl(
            &url,
            token,
            &["search", "--query", query, "--conversation", &conv_arg],
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut lines = json_lines(&output);
        let summary = lines.pop().expect("a summary line");
        assert_eq!(summary["lagging_events"], 0);
        assert_eq!(summary["next_cursor"], "");
        lines
    };
    let hits = found(&alice, "数据库");
    let texts: Vec<&str> = hits.iter().map(|h| h["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["新的数据库 after bob left", "我们的数据库很快"]);
    assert_eq!(hits[1]["highlights"], serde_json::json!([[9, 18]]));
    assert_eq!(hits[1]["conv_seq"], 2);
    assert_eq!(hits[1]["sender_id"], 1);
    assert!(hits[1]["msg_id"].as_u64().unwrap() > 0);
    assert!(hits[1]["sent_at_ms"].as_i64().unwrap() > 0);
    // Bob left before the last message: he finds what he could read.
    let texts: Vec<String> = found(&bob, "数据库")
        .iter()
        .map(|h| h["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["我们的数据库很快"]);

    // Paging with the printed cursor: full pages, then the rest.
    let first = tl(&url, &alice, &["search", "--query", "数据", "--limit", "2"]);
    let mut lines = json_lines(&first);
    let cursor = lines.pop().unwrap()["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(lines.len(), 2);
    assert!(!cursor.is_empty());
    let second = tl(
        &url,
        &alice,
        &[
            "search", "--query", "数据", "--limit", "2", "--cursor", &cursor,
        ],
    );
    let mut rest = json_lines(&second);
    assert_eq!(rest.pop().unwrap()["next_cursor"], "");
    assert_eq!(rest.len(), 1);

    // Bad input: a clear message and a failing exit, nothing changed.
    for (args, why) in [
        (vec!["search", "--query", "  ,,, "], "no words"),
        (vec!["search", "--query", "x", "--limit", "500"], "limit"),
        (vec!["search", "--query", "x", "--cursor", "nope"], "cursor"),
        (vec!["search", "--query", "\"open"], "quote"),
    ] {
        let output = tl(&url, &alice, &args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    Ok(())
}

const WORDS: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "数据库",
    "库存",
    "搜索",
    "引擎",
    "hello世界",
];
const USERS: u64 = 5;

/// The index operations of a conversation's timeline, as History returns
/// it: the rule the server's index follows, restated independently.
fn timeline_update(conversation_id: u64, entries: &[pb::Entry]) -> ConversationUpdate {
    let ops = entries
        .iter()
        .filter_map(|e| match pb::EntryKind::try_from(e.kind) {
            Ok(pb::EntryKind::Message) if !e.text.is_empty() && e.removed.is_none() => {
                Some(IndexOp::Upsert(MessageDoc {
                    conversation_id,
                    conv_seq: e.conv_seq,
                    msg_id: e.msg_id,
                    sender_id: e.sender_id,
                    text: e.text.clone(),
                    sent_at_ms: e.sent_at_ms,
                }))
            }
            Ok(pb::EntryKind::Edit) if !e.text.is_empty() => Some(IndexOp::ReplaceText {
                conv_seq: e.target.as_ref().map_or(0, |t| t.conv_seq),
                text: e.text.clone(),
            }),
            Ok(pb::EntryKind::Recall | pb::EntryKind::Delete) => Some(IndexOp::Remove {
                conv_seq: e.target.as_ref().map_or(0, |t| t.conv_seq),
            }),
            Ok(pb::EntryKind::ConversationCreated | pb::EntryKind::MembersAdded) => {
                Some(IndexOp::Joined {
                    users: e.members.clone(),
                    conv_seq: e.conv_seq,
                })
            }
            Ok(pb::EntryKind::MembersRemoved) => Some(IndexOp::Left {
                users: e.members.clone(),
                conv_seq: e.conv_seq,
            }),
            _ => None,
        })
        .collect();
    ConversationUpdate {
        conversation_id,
        ops,
        indexed_through: entries.last().map_or(0, |e| e.conv_seq),
    }
}

async fn whole_history(client: &Client, conversation: u64) -> anyhow::Result<Vec<pb::Entry>> {
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = client.history(conversation, 0, Some(after), 500).await?;
        let Some(last) = page.entries.last() else {
            return Ok(entries);
        };
        after = last.conv_seq;
        entries.extend(page.entries);
    }
}

/// Every page of `query` as `principal`'s token sees it from the server.
async fn server_pages(client: &Client, query: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut hits = Vec::new();
    let mut cursor = String::new();
    loop {
        let reply = client.search(search_request(query, 100, &cursor)).await?;
        assert!(!reply.timed_out);
        if !reply.next_cursor.is_empty() {
            assert_eq!(reply.hits.len(), 100, "a short page with more to come");
        }
        hits.extend(reply.hits.iter().map(|h| (h.conversation_id, h.conv_seq)));
        if reply.next_cursor.is_empty() {
            return Ok(hits);
        }
        cursor = reply.next_cursor;
    }
}

fn oracle_pages(oracle: &MemoryIndex, searcher: Searcher, query: &str) -> Vec<(u64, u64)> {
    let mut request = SearchRequest::new(searcher, query);
    request.limit = 100;
    let mut hits = Vec::new();
    loop {
        let page = oracle.search(&request).unwrap();
        hits.extend(page.hits.iter().map(|h| (h.conversation_id, h.conv_seq)));
        match page.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => return hits,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_while_indexing_on_the_embedded_store() -> anyhow::Result<()> {
    index_survives_kill9_exactly(&[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_while_indexing_on_the_scylla_store() -> anyhow::Result<()> {
    let keyspace = tests::CqlKeyspace::new("search");
    index_survives_kill9_exactly(&["--store", &keyspace.url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_while_indexing_into_opensearch() -> anyhow::Result<()> {
    let index = tests::OpenSearchTestIndex::new("kill9");
    let args = index.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    index_survives_kill9_exactly(&args).await
}

async fn index_survives_kill9_exactly(store_args: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with(dir.path(), store_args)?;
    let url = server.url();
    let ops = server.service_token("ops")?;
    let tokens: Vec<String> = (1..=USERS)
        .map(|u| server.device_token(u, "s"))
        .collect::<anyhow::Result<_>>()?;
    let setup = Client::connect(&url, &tokens[0]).await?;
    let mut conversations = Vec::new();
    for members in [vec![2, 3], vec![2, 4, 5], vec![3]] {
        let created = setup
            .create_conversation(pb::ConversationKind::Group, members, "")
            .await?;
        conversations.push(created.conversation_id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for (i, &conv) in conversations.iter().enumerate() {
        let (url, token) = (url.clone(), tokens[0].clone());
        let (stop, acknowledged) = (Arc::clone(&stop), Arc::clone(&acknowledged));
        senders.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let client = connect_retrying(&url, &token).await;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let text = format!(
                        "{} {} m{i}x{n}",
                        WORDS[n % WORDS.len()],
                        WORDS[(n / 3 + i) % WORDS.len()]
                    );
                    match client.send(conv, &text, None).await {
                        Ok(_) => acknowledged.fetch_add(1, Ordering::SeqCst),
                        Err(_) => break,
                    };
                }
            }
        }));
    }
    for round in 0..4u64 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        // Membership moves between kills: user 4 leaves and rejoins.
        let admin = connect_retrying(&url, &ops).await;
        let change = if round % 2 == 0 {
            admin.remove_members(conversations[1], vec![4]).await
        } else {
            admin.add_members(conversations[1], vec![4]).await
        };
        let _ = change;
        server.restart_after_kill9()?;
    }
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await?;
    }
    assert!(
        acknowledged.load(Ordering::SeqCst) > 50,
        "the load never ran"
    );
    // Once more with nothing in flight: the restart must find whatever the
    // index had not taken yet.
    server.restart_after_kill9()?;
    let admin = connect_retrying(&url, &ops).await;
    caught_up(&admin).await;

    let oracle = MemoryIndex::new();
    for &conv in &conversations {
        let entries = whole_history(&admin, conv).await?;
        oracle.apply(&[timeline_update(conv, &entries)])?;
    }
    let mut compared = 0;
    for word in WORDS.iter().copied().chain(["m0x1", "m1x2"]) {
        let got = server_pages(&admin, word).await?;
        let unique: BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{word}: a message found twice");
        assert_eq!(
            got,
            oracle_pages(&oracle, Searcher::Service, word),
            "service: {word}"
        );
        compared += got.len();
        for user in 1..=USERS {
            let client = connect_retrying(&url, &tokens[user as usize - 1]).await;
            assert_eq!(
                server_pages(&client, word).await?,
                oracle_pages(&oracle, Searcher::User(user), word),
                "user {user}: {word}"
            );
        }
    }
    assert!(compared > 50, "the queries found too little to compare");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncd_reindex_rebuilds_the_index_from_the_timelines() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path())?;
    let url = server.url();
    let user = server.device_token(1, "a")?;
    let client = Client::connect(&url, &user).await?;
    let conv = client
        .create_conversation(pb::ConversationKind::Group, vec![2], "")
        .await?
        .conversation_id;
    for i in 0..30 {
        client
            .send(conv, &format!("rebuild 数据库 {i}"), None)
            .await?;
    }
    caught_up(&client).await;
    let reindex = || {
        std::process::Command::new(tests::syncd_bin())
            .args(["reindex", "--data-dir"])
            .arg(dir.path())
            .output()
            .expect("running syncd reindex")
    };
    // The running node holds the data directory: refused, nothing changed.
    let busy = reindex();
    assert!(!busy.status.success(), "reindex ran beside a live node");
    assert!(!String::from_utf8_lossy(&busy.stderr).is_empty());
    server.terminate(Duration::from_secs(20))?;
    // Lose the index entirely: the rebuild has only the timelines.
    std::fs::remove_dir_all(dir.path().join("search"))?;
    let rebuilt = reindex();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rebuilt.stdout).starts_with("reindexed 1 conversations"),
        "{}",
        String::from_utf8_lossy(&rebuilt.stdout)
    );
    // What the rebuild wrote, before any node could add to it.
    {
        let index = search::TantivyIndex::open(&dir.path().join("search"))?;
        let mut request = SearchRequest::new(Searcher::User(2), "数据库");
        request.limit = 100;
        assert_eq!(index.search(&request)?.hits.len(), 30);
    }
    let server = Server::start(dir.path())?;
    let client = Client::connect(&server.url(), &user).await?;
    let mut total = 0;
    let mut cursor = String::new();
    loop {
        let reply = client.search(search_request("数据库", 7, &cursor)).await?;
        total += reply.hits.len();
        if reply.next_cursor.is_empty() {
            break;
        }
        cursor = reply.next_cursor;
    }
    assert_eq!(total, 30);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncd_reindex_rebuilds_an_opensearch_index() -> anyhow::Result<()> {
    let index = tests::OpenSearchTestIndex::new("reindex");
    let search_args = index.args();
    let args: Vec<&str> = search_args.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with(dir.path(), &args)?;
    let user = server.device_token(1, "a")?;
    let client = Client::connect(&server.url(), &user).await?;
    let conv = client
        .create_conversation(pb::ConversationKind::Group, vec![2], "")
        .await?
        .conversation_id;
    for i in 0..12 {
        client.send(conv, &format!("重建 数据库 {i}"), None).await?;
    }
    caught_up(&client).await;
    server.terminate(Duration::from_secs(20))?;
    let reindexed = std::process::Command::new(tests::syncd_bin())
        .args(["reindex", "--data-dir"])
        .arg(dir.path())
        .args(&search_args)
        .output()?;
    assert!(
        reindexed.status.success(),
        "{}",
        String::from_utf8_lossy(&reindexed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&reindexed.stdout).starts_with("reindexed 1 conversations"),
        "{}",
        String::from_utf8_lossy(&reindexed.stdout)
    );
    // The rebuilt index, read directly: every message once, for a member.
    let options = index.options.clone();
    let hits = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let rebuilt = search::OpenSearchIndex::open(&options)?;
        let mut request = SearchRequest::new(Searcher::User(2), "数据库");
        request.limit = 100;
        Ok(rebuilt.search(&request)?.hits.len())
    })
    .await??;
    assert_eq!(hits, 12);
    Ok(())
}

#[test]
fn syncd_refuses_an_unusable_opensearch_backend() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("http://127.0.0.1:{closed}");
    for (flags, why) in [
        (vec!["--search-backend", "opensearch"], "--opensearch-url"),
        (
            vec![
                "--search-backend",
                "opensearch",
                "--opensearch-url",
                &unreachable,
            ],
            "refused",
        ),
        (
            vec![
                "--search-backend",
                "opensearch",
                "--opensearch-url",
                "127.0.0.1:9200",
            ],
            "http://",
        ),
        (
            vec![
                "--search-backend",
                "opensearch",
                "--opensearch-url",
                "http://127.0.0.1:9200",
                "--opensearch-index",
                "Bad Name",
            ],
            "index name",
        ),
    ] {
        for command in ["serve", "reindex"] {
            let dir = tempfile::tempdir().unwrap();
            let mut run = std::process::Command::new(tests::syncd_bin());
            run.args([command, "--data-dir"]).arg(dir.path());
            if command == "serve" {
                run.args(["--listen", "127.0.0.1:0"]);
            }
            let output = run.args(&flags).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command} {flags:?} started");
            assert!(stderr.contains(why), "{command} {flags:?}: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_search_off_stores_messages_and_refuses_searches() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start_with(dir.path(), &["--search-backend", "none"])?;
    let client = Client::connect(&server.url(), &server.device_token(1, "a")?).await?;
    let conv = client
        .create_conversation(pb::ConversationKind::Group, vec![2], "")
        .await?
        .conversation_id;
    let sent = client.send(conv, "nobody will search this", None).await?;
    match client.search(search_request("search", 10, "")).await {
        Err(client::ClientError::Rpc(status)) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("search is off"), "{status:?}");
        }
        other => panic!("a search on a node without an index answered {other:?}"),
    }
    // The message is stored all the same, and nothing was indexed.
    let bob = Client::connect(&server.url(), &server.device_token(2, "b")?).await?;
    let inbox = tests::read_whole_inbox(&bob).await?;
    assert!(inbox.iter().any(|e| e.msg_id == sent.msg_id), "{inbox:?}");
    assert!(!dir.path().join("search").exists());
    server.terminate(Duration::from_secs(20))?;
    // Nothing to rebuild: refused, with the reason, and nothing created.
    let reindex = std::process::Command::new(tests::syncd_bin())
        .args(["reindex", "--search-backend", "none", "--data-dir"])
        .arg(dir.path())
        .output()?;
    assert!(!reindex.status.success());
    assert!(
        String::from_utf8_lossy(&reindex.stderr).contains("search is off"),
        "{}",
        String::from_utf8_lossy(&reindex.stderr)
    );
    assert!(!dir.path().join("search").exists());
    // Refused before anything is opened: an empty directory stays empty.
    let empty = tempfile::tempdir()?;
    let reindex = std::process::Command::new(tests::syncd_bin())
        .args(["reindex", "--search-backend", "none", "--data-dir"])
        .arg(empty.path())
        .output()?;
    assert!(!reindex.status.success());
    assert_eq!(std::fs::read_dir(empty.path())?.count(), 0);
    Ok(())
}
