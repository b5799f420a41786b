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
//! Bounds: at most [`MAX_CATCH_UPS`] streams open per node (more are
//! refused with RESOURCE_EXHAUSTED: the device pages with Sync), each
//! holding at most [`CATCH_UP_READ_AHEAD`] pages beyond the one being sent,
//! and at most [`MAX_CATCH_UP_REPLIES`] replies per call. A device that
//! stops reading for the node's subscriber stall limit is dropped, so a
//! stalled reader does not keep its pages or its slot.

use super::timeline_service::sync_reply;
use crate::auth::Principal;
use crate::engine::Engine;
use crate::limits::{CATCH_UP_READ_AHEAD, MAX_CATCH_UP_REPLIES, MAX_CATCH_UPS};
use proto::timeline::v1 as pb;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub(super) type Replies = ReceiverStream<Result<pb::SyncReply, Status>>;

/// The node's open catch-up streams.
pub(super) struct CatchUps {
    slots: Arc<Semaphore>,
}

impl CatchUps {
    pub(super) fn new() -> Self {
        Self::with_slots(MAX_CATCH_UPS)
    }

    fn with_slots(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
        }
    }

    /// Reads the first page before answering, so a bad request or an
    /// expired checkpoint is the call's status or first reply, then streams
    /// the rest from a task of the engine (shutdown waits for it).
    pub(super) async fn start(
        &self,
        engine: &Arc<Engine>,
        principal: Principal,
        request: pb::SyncRequest,
    ) -> Result<Replies, Status> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_CATCH_UPS} catch-ups are open on this node: page with Sync instead"
            ))
        })?;
        let first = sync_reply(engine, &principal, &request).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(CATCH_UP_READ_AHEAD);
        let task = stream_pages(Arc::clone(engine), principal, request, first, tx, slot);
        engine.spawn(task);
        Ok(ReceiverStream::new(rx))
    }
}

/// Whether the stream ends after this reply: it is complete, or it says the
/// checkpoint expired, or (defensively) it did not move the checkpoint on.
fn last_reply(reply: &pb::SyncReply, after: Option<u64>) -> bool {
    !reply.has_more || reply.checkpoint_expired || after.is_some_and(|a| reply.checkpoint <= a)
}

async fn stream_pages(
    engine: Arc<Engine>,
    principal: Principal,
    mut request: pb::SyncRequest,
    first: pb::SyncReply,
    tx: tokio::sync::mpsc::Sender<Result<pb::SyncReply, Status>>,
    _slot: OwnedSemaphorePermit,
) {
    let stall_limit = engine.config().subscriber_stall_limit;
    let mut stopping = engine.stopping();
    let mut reply = Ok(first);
    for sent in 1..=MAX_CATCH_UP_REPLIES {
        let next_after = match &reply {
            Ok(page) if !last_reply(page, request.after_seq) && sent < MAX_CATCH_UP_REPLIES => {
                Some(page.checkpoint)
            }
            _ => None,
        };
        match tokio::time::timeout(stall_limit, tx.send(reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return, // the device hung up
            Err(_) => {
                tracing::warn!(?stall_limit, "ending a catch-up that stopped reading");
                return;
            }
        }
        let Some(after) = next_after else { return };
        if *stopping.borrow_and_update() {
            let _ = tx.try_send(Err(Status::unavailable(
                "node shutting down: continue from the last checkpoint on another node",
            )));
            return;
        }
        request.after_seq = Some(after);
        reply = sync_reply(&engine, &principal, &request).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;
    use futures_util::StreamExt;
    use std::time::Duration;

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
            let page = sync_reply(engine, principal, &request(after, limit, true))
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
            catch_ups
                .start(&fx.engine, reader.clone(), request(Some(0), 100, true))
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
            catch_ups
                .start(&fx.engine, reader, request(None, 100, true))
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
            CatchUps::new()
                .start(&fx.engine, device(2, "phone"), request(Some(0), 10, false))
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
        let refused = CatchUps::new()
            .start(&fx.engine, service(), request(Some(0), 10, false))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_past_the_slots_are_refused_and_a_stalled_reader_gives_its_slot_back() {
        let stall_limit = Duration::from_secs(5);
        let (engine, _store) = memory_engine(crate::engine::EngineConfig {
            subscriber_stall_limit: stall_limit,
            ..crate::engine::EngineConfig::default()
        })
        .await;
        let conversation = group(&engine, 1, vec![1, 2]).await;
        send_numbered(&engine, 1, conversation, 100).await;
        let catch_ups = CatchUps::with_slots(1);
        let reader = device(2, "phone");
        let mut stalled = catch_ups
            .start(&engine, reader.clone(), request(Some(0), 10, false))
            .await
            .unwrap();
        let refused = catch_ups
            .start(&engine, reader.clone(), request(Some(0), 10, false))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("Sync"), "{refused:?}");
        // The reader takes nothing for longer than the stall limit: the
        // stream ends after what it had queued, and its slot is free.
        tokio::time::sleep(stall_limit * 2).await;
        let mut queued = Vec::new();
        while let Some(reply) = stalled.next().await {
            queued.push(reply.unwrap());
        }
        assert!(!queued.is_empty() && queued.len() <= 1 + CATCH_UP_READ_AHEAD);
        assert!(queued.last().unwrap().has_more, "ended before the end");
        let resumed = streamed(
            catch_ups
                .start(
                    &engine,
                    reader.clone(),
                    request(Some(queued.last().unwrap().checkpoint), 10, false),
                )
                .await
                .unwrap(),
        )
        .await;
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
                catch_ups
                    .start(&engine, reader.clone(), request(Some(checkpoint), 7, false))
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
}
