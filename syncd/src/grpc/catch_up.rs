//! `CatchUp`: Sync's pages as one stream, the next page read while the
//! previous one travels and is applied by the device.
//!
//! A device back from a long absence pulling page by page waits a round
//! trip, the server's read and its own decode for each page, one after
//! another. Streamed, the server's reads overlap the device's work and the
//! network: one round trip in all. Each reply is exactly what Sync would
//! answer from the previous reply's checkpoint, so never-skip, the page
//! bounds and retention's `checkpoint_expired` carry over unchanged.
//!
//! Bounds: at most [`MAX_CATCH_UPS`] streams open per node and
//! [`MAX_CATCH_UPS_PER_USER`] per user (more are refused with
//! RESOURCE_EXHAUSTED: the device pages with Sync; one user's devices
//! cannot take every slot), each
//! holding at most [`CATCH_UP_READ_AHEAD`] pages beyond the one being sent,
//! and at most [`MAX_CATCH_UP_REPLIES`] replies per call. A device that
//! stops reading for the node's subscriber stall limit is dropped
//! (RESOURCE_EXHAUSTED after its queued replies), so a stalled reader does
//! not keep its slot (the pages already queued stay with the connection
//! until it reads them or goes).
//!
//! Between pages a stream also ends at once, with the status the device
//! needs, when shutdown begins (UNAVAILABLE: shutdown never waits on a
//! device), when its token is revoked (as a call with it would be), and
//! when this node no longer answers as the writer (`Tenure`, checked after
//! every page's reads: in a cluster a node that lost its lease reads from
//! a horizon that no longer knows every write).

use super::Tenure;
use super::timeline_service::sync_reply;
use crate::auth::Principal;
use crate::auth::Verified;
use crate::auth::revocation::RevocationGuard;
use crate::engine::Engine;
use crate::lifecycle::stopped;
use crate::limits::{
    CATCH_UP_READ_AHEAD, MAX_CATCH_UP_REPLIES, MAX_CATCH_UPS, MAX_CATCH_UPS_PER_USER,
};
use futures_util::StreamExt;
use proto::timeline::v1 as pb;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub(super) type Replies =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncReply, Status>> + Send>>;

/// The node's open catch-up streams.
pub(super) struct CatchUps {
    slots: Arc<Semaphore>,
    per_user: Arc<UserSlots>,
}

/// Open catch-ups per user. Only users holding a node slot are in it, so
/// it has at most [`MAX_CATCH_UPS`] keys.
#[derive(Default)]
struct UserSlots {
    open: Mutex<HashMap<u64, usize>>,
}

/// One of a user's catch-up slots, given back when the stream's task ends.
struct UserSlot {
    slots: Arc<UserSlots>,
    user: u64,
}

impl UserSlots {
    fn take(self: &Arc<Self>, user: u64) -> Option<UserSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(user).or_default();
        if *count >= MAX_CATCH_UPS_PER_USER {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            slots: Arc::clone(self),
            user,
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// What a catch-up checks between its pages besides the device: the token
/// (revoked mid-stream ends it as a call with the token would) and whether
/// this node still answers as the writer.
pub(super) struct Guards {
    pub(super) revocations: Arc<RevocationGuard>,
    pub(super) tenure: Tenure,
}

impl CatchUps {
    pub(super) fn new() -> Self {
        Self::with_slots(MAX_CATCH_UPS)
    }

    fn with_slots(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            per_user: Arc::default(),
        }
    }

    /// Reads the first page before answering, so a bad request or an
    /// expired checkpoint is the call's status or first reply, then streams
    /// the rest from a task of the engine (shutdown waits for it, and it
    /// ends at once when shutdown begins).
    pub(super) async fn start(
        &self,
        engine: &Arc<Engine>,
        verified: Verified,
        guards: Guards,
        request: pb::SyncRequest,
    ) -> Result<Replies, Status> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_CATCH_UPS} catch-ups are open on this node: page with Sync instead"
            ))
        })?;
        // A service has no inbox to catch up on: Sync refuses it below.
        let user_slot = match &verified.principal {
            Principal::Device { user_id, .. } => {
                Some(self.per_user.take(*user_id).ok_or_else(|| {
                    Status::resource_exhausted(format!(
                        "{MAX_CATCH_UPS_PER_USER} catch-ups of this user are open: \
                         page with Sync instead"
                    ))
                })?)
            }
            Principal::Service { .. } => None,
        };
        let first = sync_reply(engine, &verified.principal, &request, &guards.tenure).await?;
        let (tx, rx) = mpsc::channel(CATCH_UP_READ_AHEAD);
        // The status a stream ends with, after the replies queued before it.
        let (ended_tx, ended_rx) = oneshot::channel::<Status>();
        let task = stream_pages(
            Pages {
                engine: Arc::clone(engine),
                verified,
                guards,
                request,
                tx,
                ended: ended_tx,
                _slot: slot,
                _user_slot: user_slot,
            },
            first,
        );
        engine.spawn(task);
        let ended = futures_util::stream::once(ended_rx)
            .filter_map(|status| std::future::ready(status.ok().map(Err)));
        Ok(Box::pin(ReceiverStream::new(rx).chain(ended)))
    }
}

/// Whether the stream ends after this reply: it is complete, or it says the
/// checkpoint expired, or (defensively) it did not move the checkpoint on.
fn last_reply(reply: &pb::SyncReply, after: Option<u64>) -> bool {
    !reply.has_more || reply.checkpoint_expired || after.is_some_and(|a| reply.checkpoint <= a)
}

/// One catch-up stream's task and what it holds.
struct Pages {
    engine: Arc<Engine>,
    verified: Verified,
    guards: Guards,
    request: pb::SyncRequest,
    tx: mpsc::Sender<Result<pb::SyncReply, Status>>,
    ended: oneshot::Sender<Status>,
    _user_slot: Option<UserSlot>,
    _slot: OwnedSemaphorePermit,
}

/// Why a stream stopped before its last reply, as the device hears it.
enum Cut {
    HungUp,
    Stalled,
    ShuttingDown,
    Revoked(Status),
}

async fn stream_pages(pages: Pages, first: pb::SyncReply) {
    let Pages {
        engine,
        verified,
        guards,
        mut request,
        tx,
        ended,
        _slot,
        _user_slot,
    } = pages;
    let stall_limit = engine.config().subscriber_stall_limit;
    let mut stopping = engine.stopping();
    let revoked = guards.revocations.until_revoked(&verified);
    tokio::pin!(revoked);
    let mut reply = Ok(first);
    let cut = 'pages: {
        for sent in 1..=MAX_CATCH_UP_REPLIES {
            let next_after = match &reply {
                Ok(page) if !last_reply(page, request.after_seq) && sent < MAX_CATCH_UP_REPLIES => {
                    Some(page.checkpoint)
                }
                _ => None,
            };
            // A refusal first; then a reply read is queued rather than
            // thrown away, even when shutdown began meanwhile.
            let queued = tokio::select! {
                biased;
                refusal = &mut revoked => break 'pages Cut::Revoked(Status::from(refusal)),
                queued = tx.send(reply) => queued.is_ok(),
                () = stopped(&mut stopping) => break 'pages Cut::ShuttingDown,
                () = tokio::time::sleep(stall_limit) => break 'pages Cut::Stalled,
            };
            if !queued {
                break 'pages Cut::HungUp;
            }
            let Some(after) = next_after else { return };
            request.after_seq = Some(after);
            reply = tokio::select! {
                biased;
                refusal = &mut revoked => break 'pages Cut::Revoked(Status::from(refusal)),
                () = stopped(&mut stopping) => break 'pages Cut::ShuttingDown,
                page = sync_reply(&engine, &verified.principal, &request, &guards.tenure) => page,
            };
        }
        return;
    };
    let status = match cut {
        Cut::HungUp => return,
        Cut::Stalled => {
            tracing::warn!(?stall_limit, "ending a catch-up that stopped reading");
            Status::resource_exhausted(format!(
                "catch-up read nothing for {} s: ended; continue from the last checkpoint",
                stall_limit.as_secs_f32()
            ))
        }
        Cut::ShuttingDown => Status::unavailable(
            "node shutting down: continue from the last checkpoint on another node",
        ),
        Cut::Revoked(status) => status,
    };
    let _ = ended.send(status);
}

#[cfg(test)]
mod tests {
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
}
