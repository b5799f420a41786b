//! CatchUp against a real server (docs/PROTOCOL.md, "Catching up in one
//! call"): one user's devices hold at most their share of the node's
//! catch-up slots; with every slot taken, the call is refused and the
//! client's full sync pages with Sync instead, reading everything; a
//! device that stops reading is cut off after the stall limit with
//! RESOURCE_EXHAUSTED, having lost nothing, and its slot comes back.

use client::{CheckpointFile, Client, ConnectOptions, pb};
use std::time::{Duration, Instant};
use tests::Server;

/// The node's `MAX_CATCH_UPS`.
const SLOTS: usize = 128;
/// `MAX_CATCH_UPS_PER_USER`.
const SLOTS_PER_USER: usize = 4;
/// The device whose full sync the test watches (users 2 and up, below it,
/// take the slots).
const READER: u64 = 2 + (SLOTS / SLOTS_PER_USER) as u64;

async fn backlog(server: &Server, messages: usize, text: &str) -> anyhow::Result<Client> {
    backlog_of(server, messages, text, 2, 2).await
}

/// `messages` into a conversation of user 1 (the sender) and users
/// `first..=last`; the device of user `last`.
async fn backlog_of(
    server: &Server,
    messages: usize,
    text: &str,
    first: u64,
    last: u64,
) -> anyhow::Result<Client> {
    let service = Client::connect(&server.url(), &server.service_token("setup")?).await?;
    let kind = if first == last {
        pb::ConversationKind::Direct
    } else {
        pb::ConversationKind::Group
    };
    let members = std::iter::once(1).chain(first..=last).collect();
    let conversation = service
        .create_conversation(kind, members, "")
        .await?
        .conversation_id;
    for _ in 0..messages {
        service.append(conversation, 1, text, None).await?;
    }
    Ok(Client::connect(&server.url(), &server.device_token(last, "laptop")?).await?)
}

/// Opens catch-ups until one is refused; returns those opened and the
/// refusal. `device` must read through a small receive window (its own
/// connection), so its unread pages make the server wait and the streams
/// stay open.
async fn open_until_refused(
    device: &Client,
) -> anyhow::Result<(Vec<tonic::Streaming<pb::SyncReply>>, tonic::Status)> {
    let mut held = Vec::new();
    loop {
        match device.catch_up(Some(0), 1).await {
            Ok(stream) => held.push(stream),
            Err(client::ClientError::Rpc(status))
                if status.code() == tonic::Code::ResourceExhausted =>
            {
                return Ok((held, status));
            }
            Err(error) => return Err(error.into()),
        }
        anyhow::ensure!(held.len() <= SLOTS, "more than {SLOTS} catch-ups open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_every_catch_up_taken_is_paged_with_sync() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path())?;
    // Pages of one 4 KB message, read by devices that never read them
    // through a 16 KiB window: every stream's task waits on them.
    let device = backlog_of(&server, 100, &"y".repeat(4_000), 2, READER).await?;
    let mut held = Vec::new();
    for user in 2..READER {
        let stuck = Client::connect_with(
            &server.url(),
            &server.device_token(user, "stuck")?,
            ConnectOptions {
                receive_window: Some(16 * 1024),
                ..ConnectOptions::default()
            },
        )
        .await?;
        let (streams, refused) = open_until_refused(&stuck).await?;
        assert_eq!(streams.len(), SLOTS_PER_USER, "user {user}'s share");
        held.extend(streams);
        // The node's slots are checked first: the last user's fifth finds
        // them all taken.
        let limit = if held.len() < SLOTS {
            "this user"
        } else {
            "on this node"
        };
        assert!(refused.message().contains(limit), "{refused:?}");
    }
    assert_eq!(held.len(), SLOTS, "the node's limit");
    let refused = device.catch_up(Some(0), 1).await.err();
    assert!(
        matches!(&refused, Some(client::ClientError::Rpc(s)) if s.message().contains("on this node")),
        "{refused:?}"
    );

    // The full sync still reads everything, by Sync pages.
    let inbox = tests::read_whole_inbox(&device).await?;
    let mut checkpoint = CheckpointFile::open(&dir.path().join("laptop.json"))?;
    let mut seqs = Vec::new();
    device
        .sync_all(&mut checkpoint, |e| {
            seqs.push(e.seq);
            Ok(())
        })
        .await?;
    assert_eq!(seqs, inbox.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(checkpoint.seq(), inbox.last().unwrap().seq);
    // The slots were taken all along: that sync was Sync pages.
    let still = device.catch_up(Some(0), 1).await;
    assert!(
        matches!(&still, Err(client::ClientError::Rpc(s)) if s.code() == tonic::Code::ResourceExhausted),
        "the slots were given back before the hang-up"
    );

    // Hung up, the streams give their slots back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match device.catch_up(Some(0), 1).await {
            Ok(_) => break,
            Err(error) if Instant::now() < deadline => {
                eprintln!("slots not back yet: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_that_stops_reading_is_cut_off_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), &["--subscriber-stall-secs", "1"])?;
    // Pages of one 60 KB message: the transport's windows fill after a few
    // dozen, then the server waits on the device.
    let device = backlog(&server, 200, &"x".repeat(60_000)).await?;
    let mut stream = device.catch_up(Some(0), 1).await?;
    let first = stream.message().await?.expect("a first page");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut checkpoint = first.checkpoint;
    let mut seen: Vec<u64> = first.entries.iter().map(|e| e.seq).collect();
    let mut pages = 1;
    let ended = loop {
        match stream.message().await {
            Ok(Some(page)) => {
                seen.extend(page.entries.iter().map(|e| e.seq));
                checkpoint = page.checkpoint;
                pages += 1;
                assert!(
                    page.has_more,
                    "the stall must cut the stream before its end"
                );
            }
            Ok(None) => panic!("ended after {pages} pages without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    assert!(pages < 200, "{pages} pages: nothing was cut off");
    // From its checkpoint it reads on to the end, nothing skipped.
    let mut rest = device.catch_up(Some(checkpoint), 1_000).await?;
    let mut last = None;
    while let Some(page) = rest.message().await? {
        seen.extend(page.entries.iter().map(|e| e.seq));
        last = Some(page);
    }
    assert!(last.is_some_and(|page| !page.has_more));
    // Every entry once, in order: nothing skipped around the cut.
    let inbox = tests::read_whole_inbox(&device).await?;
    assert_eq!(seen, inbox.iter().map(|e| e.seq).collect::<Vec<_>>());
    Ok(())
}

/// Shutdown does not wait on a device that stopped reading: its stream's
/// last bytes cannot reach it (its window is full), so the node closes
/// its connection after the drain deadline and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_does_not_wait_on_a_device_that_stopped_reading() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path())?;
    backlog(&server, 40, &"z".repeat(60_000)).await?;
    let stuck = Client::connect_with(
        &server.url(),
        &server.device_token(2, "stuck")?,
        ConnectOptions {
            receive_window: Some(16 * 1024),
            ..ConnectOptions::default()
        },
    )
    .await?;
    let mut stream = stuck.catch_up(Some(0), 1).await?;
    stream.message().await?.expect("a first page");
    // The rest stays unread: the windows fill and the server waits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    let status = server.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", asked.elapsed());
    drop(stream);
    Ok(())
}
