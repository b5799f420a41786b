use super::*;
use crate::auth::Principal;
use crate::testkit::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use timeline_store::TimelineStore;

/// Opens a catch-up as the gRPC service does, with a revocation guard
/// over `store` and the given tenure.
async fn open(
    catch_ups: &CatchUps,
    engine: &Arc<Engine>,
    store: Arc<dyn TimelineStore>,
    who: &Principal,
    request: pb::SyncRequest,
    tenure: Tenure,
) -> Result<Replies, Status> {
    let verified = Verified {
        principal: who.clone(),
        issued_at_s: Some(1),
    };
    let guards = Guards {
        revocations: RevocationGuard::new(store),
        tenure,
    };
    catch_ups.start(engine, verified, guards, request).await
}

fn reply(checkpoint: u64, has_more: bool, expired: bool) -> pb::SyncReply {
    pb::SyncReply {
        checkpoint,
        has_more,
        checkpoint_expired: expired,
        ..Default::default()
    }
}

#[test]
fn a_stream_ends_at_a_complete_or_expired_reply_or_one_that_does_not_move_on() {
    assert!(!last_reply(&reply(10, true, false), Some(5)));
    assert!(!last_reply(&reply(10, true, false), None));
    assert!(last_reply(&reply(10, false, false), Some(5)));
    assert!(last_reply(&reply(5, false, true), Some(5)));
    assert!(last_reply(&reply(5, true, false), Some(5)));
}

fn request(after_seq: Option<u64>, limit: u32, include_read_state: bool) -> pb::SyncRequest {
    pb::SyncRequest {
        after_seq,
        limit,
        include_read_state,
    }
}

/// What a device paging with Sync gets, page by page.
async fn paged(engine: &Engine, principal: &Principal, limit: u32) -> Vec<pb::SyncReply> {
    let mut replies = Vec::new();
    let mut after = Some(0);
    loop {
        let page = sync_reply(
            engine,
            principal,
            &request(after, limit, true),
            &Tenure::always(),
        )
        .await
        .unwrap();
        after = Some(page.checkpoint);
        let done = !page.has_more;
        replies.push(page);
        if done {
            return replies;
        }
    }
}

/// The replies up to the first error, and that error.
async fn until_error(replies: &mut Replies) -> (Vec<pb::SyncReply>, Option<Status>) {
    let mut got = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply {
            Ok(reply) => got.push(reply),
            Err(status) => {
                assert!(replies.next().await.is_none(), "a reply after {status:?}");
                return (got, Some(status));
            }
        }
    }
    (got, None)
}

async fn streamed(mut replies: Replies) -> Vec<pb::SyncReply> {
    let mut got = Vec::new();
    while let Some(reply) = replies.next().await {
        got.push(reply.unwrap());
    }
    got
}

#[tokio::test]
async fn streams_the_replies_sync_would_give_and_ends_at_the_complete_one() {
    let fx = fixture().build().await;
    let conversation = group(&fx.engine, 1, vec![1, 2]).await;
    send_numbered(&fx.engine, 1, conversation, 250).await;
    let reader = device(2, "phone");
    let expected = paged(&fx.engine, &reader, 100).await;
    assert_eq!(expected.len(), 3, "251 entries in pages of 100");
    let catch_ups = CatchUps::new();
    let got = streamed(
        open(
            &catch_ups,
            &fx.engine,
            fx.store.clone(),
            &reader,
            request(Some(0), 100, true),
            Tenure::always(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(got, expected);
    assert!(got.last().unwrap().read_state.is_some());
    assert!(
        got[..2]
            .iter()
            .all(|r| r.read_state.is_none() && r.has_more)
    );
    // From the device's stored checkpoint when none is given.
    fx.engine
        .ack(&reader, expected[0].checkpoint)
        .await
        .unwrap();
    let from_stored = streamed(
        open(
            &catch_ups,
            &fx.engine,
            fx.store.clone(),
            &reader,
            request(None, 100, true),
            Tenure::always(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(from_stored, expected[1..]);
}

#[tokio::test]
async fn an_expired_checkpoint_is_one_reply_saying_so() {
    let fx = fixture().config(keeping(50)).build().await;
    let conversation = group(&fx.engine, 1, vec![1, 2]).await;
    send_numbered(&fx.engine, 1, conversation, 120).await;
    assert!(fx.engine.trim_user(2).await.unwrap() > 0);
    let got = streamed(
        open(
            &CatchUps::new(),
            &fx.engine,
            fx.store.clone(),
            &device(2, "phone"),
            request(Some(0), 10, false),
            Tenure::always(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert!(got[0].checkpoint_expired && got[0].entries.is_empty());
    assert!(got[0].oldest_seq > 1);
}

#[tokio::test]
async fn a_bad_request_is_the_calls_status() {
    let fx = fixture().build().await;
    let refused = open(
        &CatchUps::new(),
        &fx.engine,
        fx.store.clone(),
        &service(),
        request(Some(0), 10, false),
        Tenure::always(),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

#[tokio::test(start_paused = true)]
async fn streams_past_the_slots_are_refused_and_a_stalled_reader_gives_its_slot_back() {
    let stall_limit = Duration::from_secs(5);
    let (engine, store) = memory_engine(crate::engine::EngineConfig {
        subscriber_stall_limit: stall_limit,
        ..crate::engine::EngineConfig::default()
    })
    .await;
    let conversation = group(&engine, 1, vec![1, 2]).await;
    send_numbered(&engine, 1, conversation, 100).await;
    let catch_ups = CatchUps::with_slots(1);
    let reader = device(2, "phone");
    let start = |after| {
        open(
            &catch_ups,
            &engine,
            store.clone(),
            &reader,
            request(Some(after), 10, false),
            Tenure::always(),
        )
    };
    let mut stalled = start(0).await.unwrap();
    let Err(refused) = start(0).await else {
        panic!("a second catch-up past the slots");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("Sync"), "{refused:?}");
    // The reader takes nothing for longer than the stall limit: the
    // stream ends after what it had queued, saying why, and its slot is
    // free.
    tokio::time::sleep(stall_limit * 2).await;
    let (queued, ended) = until_error(&mut stalled).await;
    assert_eq!(
        ended.map(|s| s.code()),
        Some(tonic::Code::ResourceExhausted)
    );
    assert!(!queued.is_empty() && queued.len() <= 1 + CATCH_UP_READ_AHEAD);
    assert!(queued.last().unwrap().has_more, "ended before the end");
    let resumed = streamed(start(queued.last().unwrap().checkpoint).await.unwrap()).await;
    assert!(!resumed.last().unwrap().has_more);
    let seqs: Vec<u64> = queued
        .iter()
        .chain(&resumed)
        .flat_map(|r| r.entries.iter().map(|e| e.seq))
        .collect();
    let all: Vec<u64> = paged(&engine, &reader, 1_000)
        .await
        .iter()
        .flat_map(|r| r.entries.iter().map(|e| e.seq))
        .collect();
    assert_eq!(seqs, all);
}

#[tokio::test(start_paused = true)]
async fn one_user_cannot_take_every_catch_up_slot() {
    let (engine, store) = memory_engine(crate::engine::EngineConfig::default()).await;
    let conversation = group(&engine, 1, vec![1, 2, 3]).await;
    send_numbered(&engine, 1, conversation, 100).await;
    let catch_ups = CatchUps::with_slots(MAX_CATCH_UPS_PER_USER + 1);
    let devices = [device(2, "phone"), device(3, "phone")];
    let start = |user: u64| {
        open(
            &catch_ups,
            &engine,
            store.clone(),
            &devices[user as usize - 2],
            // Pages of 10 out of 100: every stream stays open.
            request(Some(0), 10, false),
            Tenure::always(),
        )
    };
    let mut open_streams = Vec::new();
    for _ in 0..MAX_CATCH_UPS_PER_USER {
        open_streams.push(start(2).await.unwrap());
    }
    let Err(refused) = start(2).await else {
        panic!("a catch-up past the user's share");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("this user"), "{refused:?}");
    // Another user still finds the node's last slot.
    let other = start(3).await.unwrap();
    drop(other);
    // A stream that goes gives its user's slot back.
    drop(open_streams.pop());
    let mut again = None;
    for _ in 0..100 {
        if let Ok(stream) = start(2).await {
            again = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some(), "the user's slot never came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catching_up_while_others_send_never_skips() {
    let fx = fixture().jitter().build().await;
    let engine = Arc::clone(&fx.engine);
    let conversations = [
        group(&engine, 1, vec![1, 2, 3]).await,
        group(&engine, 3, vec![1, 3]).await,
    ];
    let senders: Vec<_> = [
        (1, conversations[0]),
        (3, conversations[1]),
        (2, conversations[0]),
    ]
    .into_iter()
    .map(|(from, conversation)| {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move { send_numbered(&engine, from, conversation, 150).await })
    })
    .collect();
    let catch_ups = CatchUps::new();
    let reader = device(1, "laptop");
    let mut seen = Vec::new();
    let mut checkpoint = 0;
    let mut multi_page_streams = 0;
    let finished =
        |senders: &[tokio::task::JoinHandle<()>]| senders.iter().all(|s| s.is_finished());
    loop {
        let done = finished(&senders);
        let replies = streamed(
            open(
                &catch_ups,
                &engine,
                fx.store.clone(),
                &reader,
                request(Some(checkpoint), 7, false),
                Tenure::always(),
            )
            .await
            .unwrap(),
        )
        .await;
        multi_page_streams += usize::from(replies.len() > 1);
        for reply in replies {
            seen.extend(reply.entries.iter().map(|e| e.seq));
            checkpoint = reply.checkpoint;
        }
        if done {
            break;
        }
        // A backlog builds up between catch-ups, so they span pages.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(
        multi_page_streams > 2,
        "{multi_page_streams} streams of many pages"
    );
    for sender in senders {
        sender.await.unwrap();
    }
    let all: Vec<u64> = paged(&engine, &reader, 1_000)
        .await
        .iter()
        .flat_map(|r| r.entries.iter().map(|e| e.seq))
        .collect();
    assert_eq!(seen, all, "the catch-ups skipped or repeated a seq");
}

/// The pages of a catch-up that blocks on a reader that has not read yet.
async fn backlog() -> (Fixture, Principal) {
    let fx = fixture().build().await;
    let conversation = group(&fx.engine, 1, vec![1, 2]).await;
    send_numbered(&fx.engine, 1, conversation, 60).await;
    (fx, device(2, "phone"))
}

#[tokio::test]
async fn a_node_that_stops_being_the_writer_ends_its_catch_ups_unavailable() {
    let (fx, reader) = backlog().await;
    let holds = Arc::new(AtomicBool::new(true));
    let tenure = {
        let holds = Arc::clone(&holds);
        Tenure::while_holding(move || holds.load(Ordering::Acquire))
    };
    let catch_ups = CatchUps::new();
    let mut replies = open(
        &catch_ups,
        &fx.engine,
        fx.store.clone(),
        &reader,
        request(Some(0), 10, false),
        tenure.clone(),
    )
    .await
    .unwrap();
    let first = replies.next().await.unwrap().unwrap();
    assert!(first.has_more);
    // The lease ends mid-stream: no page read after it is shown.
    holds.store(false, Ordering::Release);
    let (more, ended) = until_error(&mut replies).await;
    assert!(
        more.len() <= 1 + CATCH_UP_READ_AHEAD,
        "{} pages after the lease",
        more.len()
    );
    let ended = ended.expect("the stream says why it ended");
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    // Nor is a new one (or a Sync) answered.
    let refused = open(
        &catch_ups,
        &fx.engine,
        fx.store.clone(),
        &reader,
        request(Some(0), 10, false),
        tenure,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn shutdown_ends_a_catch_up_at_once_unavailable() {
    let (fx, reader) = backlog().await;
    let mut replies = open(
        &CatchUps::new(),
        &fx.engine,
        fx.store.clone(),
        &reader,
        request(Some(0), 10, false),
        Tenure::always(),
    )
    .await
    .unwrap();
    // The reader has not read; the task waits on it, not the stall limit.
    fx.engine.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), fx.engine.shutdown())
        .await
        .expect("shutdown waited for a catch-up nobody reads");
    let (queued, ended) = until_error(&mut replies).await;
    assert!(queued.last().is_some_and(|r| r.has_more));
    assert_eq!(ended.map(|s| s.code()), Some(tonic::Code::Unavailable));
}

#[tokio::test]
async fn a_revoked_token_ends_its_catch_up() {
    let (fx, reader) = backlog().await;
    let store: Arc<dyn TimelineStore> = fx.store.clone();
    let revocations = RevocationGuard::new(Arc::clone(&store));
    let verified = Verified {
        principal: reader.clone(),
        issued_at_s: Some(1),
    };
    let guards = Guards {
        revocations: Arc::clone(&revocations),
        tenure: Tenure::always(),
    };
    let mut replies = CatchUps::new()
        .start(&fx.engine, verified, guards, request(Some(0), 10, false))
        .await
        .unwrap();
    revocations.revoke(2, None).await.unwrap();
    let (_, ended) = until_error(&mut replies).await;
    let ended = ended.expect("the stream ends with the refusal");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
}
