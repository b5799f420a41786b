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
use crate::shares::{Share, Shares};
use futures_util::StreamExt;
use proto::timeline::v1 as pb;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub(super) type Replies =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SyncReply, Status>> + Send>>;

/// The node's open catch-up streams.
pub(super) struct CatchUps {
    slots: Arc<Semaphore>,
    /// Only users holding a node slot are in it.
    per_user: Arc<Shares<u64>>,
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
            per_user: Shares::new(MAX_CATCH_UPS_PER_USER),
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
                Some(self.per_user.take(*user_id, 1).map_err(|_| {
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
    _user_slot: Option<Share<u64>>,
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
mod tests;
