//! The server as an operator's monitoring sees it: `/metrics` on its own
//! listener counts what the traffic did (every call by method and status
//! code, sends, inbox entries, fanout, commits), the seqsvc roles serve
//! their own, and health says SERVING only while the node can serve.

use client::Client;
use client::pb::ConversationKind;
use std::time::{Duration, Instant};
use tests::metrics::{Scrape, http_get};
use tests::{Process, Server, seq_cluster, seqsvc_bin};

const TIMELINE: &str = "timeline.v1.Timeline";

fn handled(scrape: &Scrape, method: &str, code: &str) -> f64 {
    scrape.value(
        "grpc_server_handled_total",
        &[
            ("grpc_service", TIMELINE),
            ("grpc_method", method),
            ("grpc_code", code),
        ],
    )
}

#[tokio::test]
async fn metrics_count_the_traffic_by_method_and_code() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), &["--metrics-listen", "127.0.0.1:0"])?;
    let metrics = server
        .metrics_addr
        .clone()
        .expect("syncd announces its metrics address");
    let before = Scrape::take(&metrics)?;
    assert_eq!(handled(&before, "Send", "OK"), 0.0);
    assert_eq!(before.value("syncd_ready", &[]), 1.0, "{}", before.text);

    let alice = Client::connect(&server.url(), &server.device_token(1, "phone")?).await?;
    let carol = Client::connect(&server.url(), &server.device_token(3, "phone")?).await?;
    let forged = Client::connect(&server.url(), "tl1.forged.token").await?;
    let bob = Client::connect(&server.url(), &server.device_token(2, "phone")?).await?;
    let conversation = alice
        .create_conversation(ConversationKind::Group, vec![1, 2], "ops")
        .await?
        .conversation_id;
    let mut notices = bob.subscribe(0, true).await?;
    const SENDS: u64 = 5;
    let retried = uuid::Uuid::new_v4();
    for i in 0..SENDS {
        let id = (i == 0).then_some(retried);
        alice.send(conversation, &format!("m{i}"), id).await?;
    }
    let again = alice.send(conversation, "m0", Some(retried)).await?;
    assert!(again.duplicate);
    assert!(
        carol
            .send(conversation, "not a member", None)
            .await
            .is_err(),
        "a non-member may not send"
    );
    assert!(forged.sync_page(Some(0), 10).await.is_err());

    let after = Scrape::take(&metrics)?;
    // Every call, answered by the handler or refused before it.
    assert_eq!(handled(&after, "Send", "OK"), (SENDS + 1) as f64);
    assert_eq!(handled(&after, "Send", "PERMISSION_DENIED"), 1.0);
    assert_eq!(handled(&after, "Sync", "UNAUTHENTICATED"), 1.0);
    assert_eq!(handled(&after, "CreateConversation", "OK"), 1.0);
    let send_latency = [("grpc_service", TIMELINE), ("grpc_method", "Send")];
    assert_eq!(
        after.value("grpc_server_handling_seconds_count", &send_latency),
        (SENDS + 2) as f64
    );
    assert!(
        after.has("grpc_server_handling_seconds_bucket"),
        "latency is a histogram: {}",
        after.text
    );
    // What the engine did: one stored send each, the retry answered from
    // its receipt; two inbox copies per event (the creation and each
    // message, members 1 and 2).
    assert_eq!(
        after.value("syncd_sends_total", &[("outcome", "stored")]),
        SENDS as f64
    );
    assert_eq!(
        after.value("syncd_sends_total", &[("outcome", "duplicate")]),
        1.0
    );
    assert_eq!(
        after.value("syncd_events_committed_total", &[("kind", "Message")]),
        SENDS as f64
    );
    assert_eq!(
        after.value("syncd_inbox_entries_written_total", &[]),
        ((SENDS + 1) * 2) as f64
    );
    assert_eq!(
        after.value("syncd_fanout_recipients_count", &[]),
        (SENDS + 1) as f64
    );
    assert_eq!(
        after.value("syncd_fanout_recipients_sum", &[]),
        ((SENDS + 1) * 2) as f64
    );
    // The embedded store's group commit and its fsync.
    assert!(after.value("timeline_store_fsync_duration_seconds_count", &[]) >= 1.0);
    assert!(after.value("timeline_store_group_commit_batches_count", &[]) >= 1.0);
    assert!(
        after.has("syncd_horizon_lag_seconds_bucket"),
        "{}",
        after.text
    );
    assert!(
        after.value(
            "seqsvc_client_call_duration_seconds_count",
            &[("source", "local")]
        ) >= 1.0
    );
    assert!(after.value("grpc_server_connections_open", &[]) >= 1.0);
    // The process itself.
    assert!(after.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(after.value("process_open_fds", &[]) > 0.0);
    assert!(after.value("process_start_time_seconds", &[]) > 1.6e9);

    // Push: bob's stream took notices with the entries inline, and ends
    // counted by why once he goes away.
    let first = tokio::time::timeout(Duration::from_secs(10), notices.message())
        .await??
        .expect("a notice");
    assert!(!first.entries.is_empty());
    assert_eq!(after.value("syncd_push_subscribers", &[]), 1.0);
    assert!(after.value("syncd_push_notices_total", &[("entries", "inline")]) >= 1.0);
    drop(notices);
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = loop {
        let scrape = Scrape::take(&metrics)?;
        let gone = scrape.value("syncd_push_disconnects_total", &[("reason", "client_gone")]);
        if gone >= 1.0 || Instant::now() > deadline {
            assert_eq!(
                scrape.value("syncd_push_subscribers", &[]),
                0.0,
                "{}",
                scrape.text
            );
            break gone;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        gone, 1.0,
        "the stream's end is counted once, as client_gone"
    );

    assert_eq!(http_get(&metrics, "/readyz")?.0, 200);
    assert_eq!(http_get(&metrics, "/livez")?.0, 200);
    let (status, _) = http_get(&metrics, "/other")?;
    assert_eq!(status, 404);
    Ok(())
}

/// Each seqsvc role serves its own endpoint: the AllocSvr counts its
/// calls and `max_seq` raises, the store its fsyncs.
#[tokio::test]
async fn seqsvc_roles_serve_their_own_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let data = dir.path().join("store");
    let mut store_args = vec!["store", "--data-dir", data.to_str().unwrap()];
    store_args.extend(metrics);
    let store = Process::start(&seqsvc_bin(), &store_args)?;
    let store_url = format!("http://{}", store.addr);
    let timings = [
        ("--section-size", seq_cluster::SECTION_SIZE),
        ("--lease-ms", seq_cluster::LEASE_MS),
        ("--sync-interval-ms", seq_cluster::SYNC_MS),
        ("--activation-ms", seq_cluster::ACTIVATION_MS),
        ("--dead-after-ms", seq_cluster::DEAD_AFTER_MS),
    ]
    .map(|(flag, value)| [flag.to_owned(), value.to_string()]);
    let mut arbiter_args: Vec<String> = vec!["arbiter".into(), "--store".into(), store_url.clone()];
    arbiter_args.extend(timings.into_iter().flatten());
    arbiter_args.extend(metrics.map(String::from));
    let arbiter_args: Vec<&str> = arbiter_args.iter().map(String::as_str).collect();
    let arbiter = Process::start(&seqsvc_bin(), &arbiter_args)?;
    let mut alloc_args = vec!["alloc", "--store", &store_url, "--arbiter", &arbiter.addr];
    alloc_args.extend(["--step", "100"]);
    alloc_args.extend(metrics);
    let alloc = Process::start(&seqsvc_bin(), &alloc_args)?;

    let client = seqsvc::client::RoutingClient::new(
        std::slice::from_ref(&arbiter.addr),
        std::time::Duration::from_secs(30),
    )?;
    const CALLS: usize = 3;
    for _ in 0..CALLS {
        client.next(seqsvc::Namespace::Inbox, 7).await?;
    }

    let scrape = Scrape::take(alloc.metrics_addr.as_deref().expect("alloc metrics"))?;
    let allocated = scrape.value(
        "grpc_server_handled_total",
        &[
            ("grpc_service", "seqsvc.v1.AllocSvr"),
            ("grpc_method", "Allocate"),
            ("grpc_code", "OK"),
        ],
    );
    assert!(allocated >= CALLS as f64, "{}", scrape.text);
    assert!(scrape.value("seqsvc_max_seq_raises_total", &[("result", "ok")]) >= 1.0);
    assert!(scrape.has("seqsvc_max_seq_raise_duration_seconds_bucket"));
    let scrape = Scrape::take(store.metrics_addr.as_deref().expect("store metrics"))?;
    assert!(scrape.value("seqsvc_store_fsync_duration_seconds_count", &[]) >= 1.0);
    let scrape = Scrape::take(arbiter.metrics_addr.as_deref().expect("arbiter metrics"))?;
    assert_eq!(scrape.value("seqsvc_arbiter_live_alloc_servers", &[]), 1.0);
    assert!(scrape.value("seqsvc_routing_table_version", &[]) >= 2.0);
    Ok(())
}
