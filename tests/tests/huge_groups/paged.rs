//! A 100,000-member group, built a page of members at a time: each
//! membership event writes a bounded number of member rows, each message
//! one row, and 2,000 online members multiplexed over a few connections
//! hear of every message. Runs on the embedded and the CQL store.

use super::*;

/// Members of the largest group, added by a service a call at a time.
const HUGE_MEMBERS: u64 = 100_000;
/// Its members holding a Subscribe stream, multiplexed over a few
/// connections the way a gateway carries its devices.
const HUGE_ONLINE: u64 = 2_000;
const HUGE_CONNECTIONS: usize = 16;
const HUGE_MESSAGES: usize = 20;

/// Member-table rows one membership event may write: a call's worth
/// (1,000), or at the switch to read fanout every member once (at most the
/// default threshold of 500 plus one call).
const MAX_ROWS_PER_EVENT: f64 = 1_500.0;

/// Creates a group as a service: the first page creates it (400 members:
/// write fanout below the default threshold of 500), the others are added
/// 1,000 at a time, so the group crosses the threshold on the way. Each
/// call is one event, and the server's own counter says how many member
/// rows it wrote: never more than [`MAX_ROWS_PER_EVENT`].
async fn paged_group(ops: &Client, members: u64, metrics: &str) -> anyhow::Result<u64> {
    use tests::metrics::Scrape;
    let rows = || -> anyhow::Result<f64> {
        Ok(Scrape::take(metrics)?.value("syncd_member_rows_written_total", &[]))
    };
    let created = ops
        .create_conversation(pb::ConversationKind::Group, (1..=400).collect(), "")
        .await?;
    anyhow::ensure!(!created.read_fanout, "400 members: write fanout");
    let id = created.conversation_id;
    let rest: Vec<u64> = (401..=members).collect();
    let (mut most, mut total) = (0.0f64, rows()?);
    for page in rest.chunks(1_000) {
        ops.add_members(id, page.to_vec()).await?;
        let now = rows()?;
        most = most.max(now - total);
        total = now;
    }
    anyhow::ensure!(
        most <= MAX_ROWS_PER_EVENT,
        "one membership event wrote {most} member rows"
    );
    anyhow::ensure!(most >= 1_000.0, "the switch wrote every member's row");
    Ok(id)
}

/// Device tokens of users `1..=n`, minted by `syncd token` a few at a time.
async fn device_tokens(server: &Server, n: u64) -> anyhow::Result<Vec<String>> {
    let data_dir = server.data_dir.clone();
    let mut tokens = Vec::with_capacity(n as usize);
    for batch in (1..=n).collect::<Vec<_>>().chunks(8) {
        let mut minting = tokio::task::JoinSet::new();
        for &user in batch {
            let dir = data_dir.clone();
            minting.spawn_blocking(move || {
                let output = std::process::Command::new(tests::syncd_bin())
                    .args(["token", "--data-dir"])
                    .arg(&dir)
                    .args(["--user", &user.to_string(), "--device", "d"])
                    .output()?;
                anyhow::ensure!(output.status.success(), "syncd token failed: {output:?}");
                Ok((user, String::from_utf8(output.stdout)?.trim().to_owned()))
            });
        }
        let mut minted = minting
            .join_all()
            .await
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?;
        minted.sort();
        tokens.extend(minted.into_iter().map(|(_, token)| token));
    }
    Ok(tokens)
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// What one group costs and how fast its notices go out, on `store_args`:
/// a message writes one conversation entry and nothing per member (by the
/// server's own counters), every subscribed member hears of every
/// message, the member list pages through every member once, and the
/// group is the same after kill -9.
async fn huge_group_on(
    store_args: &[&str],
    members: u64,
    online: u64,
    messages: usize,
) -> anyhow::Result<()> {
    use tests::metrics::Scrape;
    let dir = tempfile::tempdir()?;
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(store_args);
    let mut server = Server::start_with(dir.path(), &args)?;
    let metrics = server
        .metrics_addr
        .clone()
        .expect("metrics address announced");
    let url = server.url();
    let ops = Client::connect(&url, &server.service_token("ops")?).await?;
    let started = Instant::now();
    let conversation = paged_group(&ops, members, &metrics).await?;
    eprintln!(
        "created a group of {members} members in {} calls in {:.1} s",
        members.div_ceil(1_000),
        started.elapsed().as_secs_f64()
    );
    let record = ops.conversation(conversation).await?;
    assert_eq!(record.member_count, members);
    assert!(
        record.read_fanout && record.members.is_empty(),
        "the record lists nobody"
    );

    // Every member, a page at a time, once each and in order.
    let (mut listed, mut after) = (Vec::with_capacity(members as usize), 0);
    loop {
        let page = ops.list_members(conversation, after, 1_000).await?;
        assert_eq!(page.member_count, members);
        listed.extend(page.members);
        if page.next_after == 0 {
            break;
        }
        after = page.next_after;
    }
    assert_eq!(listed, (1..=members).collect::<Vec<_>>());
    let cli = tests::tl(
        &url,
        &server.service_token("ops")?,
        &[
            "members",
            "--conversation",
            &conversation.to_string(),
            "--limit",
            "3",
            "--cursor",
            "41",
        ],
    );
    assert!(cli.status.success(), "{cli:?}");
    let page: serde_json::Value = serde_json::from_slice(&cli.stdout)?;
    assert_eq!(page["members"], serde_json::json!([42, 43, 44]));
    assert_eq!(
        (page["member_count"].as_u64(), page["next_cursor"].as_u64()),
        (Some(members), Some(44))
    );

    let tokens = device_tokens(&server, online).await?;
    let mut channels = Vec::with_capacity(HUGE_CONNECTIONS);
    for _ in 0..HUGE_CONNECTIONS {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    // Per stream, the highest conv_seq heard and when each was first heard.
    type Heard = Arc<Mutex<Vec<(u64, Instant)>>>;
    let mut heard: Vec<Heard> = Vec::with_capacity(online as usize);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut streams = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut timeline =
            pb::timeline_client::TimelineClient::new(channels[i % channels.len()].clone());
        let request = pb::SubscribeRequest {
            after_seq: 0,
            include_entries: false,
        };
        let mut notices = timeline
            .subscribe(authorized(request, token)?)
            .await?
            .into_inner();
        let log: Heard = Arc::default();
        heard.push(Arc::clone(&log));
        let ready = ready_tx.clone();
        streams.spawn(async move {
            let mut first = true;
            while let Some(notice) = notices.message().await? {
                if std::mem::take(&mut first) {
                    let _ = ready.send(());
                }
                let now = Instant::now();
                let mut log = log.lock().unwrap();
                for group in notice.groups {
                    anyhow::ensure!(group.conversation_id == conversation);
                    log.push((group.conv_seq, now));
                }
            }
            anyhow::Ok(())
        });
    }
    // The first notice (the member's inbox) says the stream is live.
    for _ in 0..online {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await?;
    }

    let before = Scrape::take(&metrics)?;
    let mut sent_at = Vec::with_capacity(messages);
    for i in 0..messages {
        let at = Instant::now();
        let reply = ops
            .append(conversation, 0, &format!("to all {i}"), None)
            .await?;
        sent_at.push((reply.conv_seq, at));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_sends = Scrape::take(&metrics)?;
    let delta = |name: &str| after_sends.value(name, &[]) - before.value(name, &[]);
    assert_eq!(
        after_sends.value("syncd_events_committed_total", &[("kind", "Message")])
            - before.value("syncd_events_committed_total", &[("kind", "Message")]),
        messages as f64
    );
    assert_eq!(
        delta("syncd_inbox_entries_written_total"),
        0.0,
        "no inbox copy: a system message names nobody"
    );
    assert_eq!(
        delta("syncd_member_rows_written_total"),
        0.0,
        "no member-table row"
    );

    let newest = sent_at.last().unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while heard
        .iter()
        .any(|log| log.lock().unwrap().iter().all(|&(seq, _)| seq < newest))
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every subscribed member heard of conv_seq {newest}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::with_capacity(heard.len() * messages);
    for log in &heard {
        let log = log.lock().unwrap();
        for &(seq, at) in &sent_at {
            let (_, when) = log
                .iter()
                .find(|n| n.0 >= seq)
                .expect("the newest was heard");
            latencies.push(when.saturating_duration_since(at).as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "huge group: {members} members, {online} subscribed over {HUGE_CONNECTIONS} connections, \
         {messages} messages: every one heard by all; delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50),
        percentile(&latencies, 99),
        latencies.last().copied().unwrap_or(0.0)
    );
    streams.abort_all();

    // kill -9: the member table and the count are what was committed.
    server.restart_after_kill9()?;
    let ops = tests::connect_retrying(&server.url(), &server.service_token("ops")?).await;
    assert_eq!(ops.conversation(conversation).await?.member_count, members);
    let last = ops.list_members(conversation, members - 2, 10).await?;
    assert_eq!(
        (last.members, last.next_after),
        (vec![members - 1, members], 0)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100000_member_group_costs_one_write_per_message_and_reaches_2000_online()
-> anyhow::Result<()> {
    huge_group_on(&[], HUGE_MEMBERS, HUGE_ONLINE, HUGE_MESSAGES).await
}

/// The same on the CQL store, at fewer pages (each page is 3,000 CQL
/// writes on a one-node test server).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paged_group_on_the_cql_store() -> anyhow::Result<()> {
    let keyspace = tests::CqlKeyspace::new("huge_group");
    huge_group_on(&["--store", &keyspace.url], 5_000, 200, 10).await
}
