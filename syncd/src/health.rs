//! Health that tells the truth: whether this node can take a send now.
//!
//! The gRPC health service (`grpc.health.v1`) reports SERVING for the
//! overall name `""`, `timeline.v1.Timeline` and `timeline.v1.Admin` only
//! while [`check`] finds nothing wrong, re-checked every
//! [`HEALTH_CHECK_INTERVAL`]; the gauge `syncd_ready` says the same on the
//! metrics endpoint (0 also while the node is still opening its store and
//! recovering interrupted events, before the API port is open). It turns
//! NOT_SERVING when
//! - the node failed for good (its store is poisoned: it is about to exit
//!   so that a restart recovers from the journal);
//! - the in-process allocator's store is poisoned (an fsync of `max_seq`
//!   failed: no section can be raised until a restart);
//! - events the store failed are still being retried in the background
//!   (the store is failing writes now; cleared once they land);
//! - the last allocator call failed (seqsvc unreachable, a section not
//!   served, the `max_seq` store down): cleared by the next successful
//!   call, or by a probe ([`ALLOCATOR_PROBE_TIMEOUT`]) when no traffic
//!   comes, as a load balancer that stopped sending any would arrange.
//!
//! Reads may still work while writes fail; health answers for writes,
//! because an acknowledged send is what the node promises.

use crate::lifecycle::{Lifecycle, stopped};
use crate::writer::EventWriter;
use seqsvc::Namespace;
use seqsvc::client::SeqSource;
use std::time::Duration;
use tokio::sync::watch;

/// How often the health service re-checks the node.
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe of an allocator that failed may take (the routing
/// client would otherwise retry for its full 20 s).
pub const ALLOCATOR_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Serving,
    NotServing(String),
}

/// Whether the node can serve now (see the module doc for what is checked).
pub async fn check(lifecycle: &Lifecycle, writer: &EventWriter, seqs: &SeqSource) -> Health {
    if let Some(reason) = lifecycle.failure() {
        return Health::NotServing(format!("the node failed: {reason}"));
    }
    if let Some(reason) = seqs.poisoned() {
        return Health::NotServing(reason);
    }
    let unfinished = writer.unfinished_events();
    if unfinished > 0 {
        return Health::NotServing(format!(
            "the store failed {unfinished} events that are still being retried"
        ));
    }
    if let Some(error) = writer.allocator_error() {
        // The counter namespace's id 0 (conversation ids) is read by
        // every node anyway; a read allocates nothing.
        let probe =
            tokio::time::timeout(ALLOCATOR_PROBE_TIMEOUT, seqs.current(Namespace::Counter, 0))
                .await
                .unwrap_or_else(|_| {
                    Err(seqsvc::SeqError::Unavailable(
                        "the allocator did not answer a probe".into(),
                    ))
                });
        if writer.note_allocation(probe).is_err() {
            return Health::NotServing(format!("the allocator cannot serve: {error}"));
        }
    }
    Health::Serving
}

/// Publishes every change of `health()` into `status` until shutdown.
pub async fn watch_health<F, Fut>(
    health: F,
    status: watch::Sender<Health>,
    mut stopping: watch::Receiver<bool>,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Health>,
{
    loop {
        let now = health().await;
        status.send_if_modified(|current| {
            let changed = *current != now;
            if changed {
                match &now {
                    Health::Serving => tracing::info!("health: SERVING"),
                    Health::NotServing(reason) => {
                        tracing::warn!(%reason, "health: NOT_SERVING")
                    }
                }
                *current = now;
            }
            changed
        });
        tokio::select! {
            () = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
            () = stopped(&mut stopping) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A change is published once per change, in order, and the loop ends
    /// with shutdown.
    #[tokio::test(start_paused = true)]
    async fn changes_are_published_and_the_loop_stops_on_shutdown() {
        let broken = Arc::new(AtomicBool::new(false));
        let (status, mut seen) = watch::channel(Health::NotServing("starting".into()));
        let (stop, stopping) = watch::channel(false);
        let probe = Arc::clone(&broken);
        let task = tokio::spawn(watch_health(
            move || {
                let broken = probe.load(Ordering::SeqCst);
                async move {
                    if broken {
                        Health::NotServing("store down".into())
                    } else {
                        Health::Serving
                    }
                }
            },
            status,
            stopping,
        ));
        seen.changed().await.unwrap();
        assert_eq!(*seen.borrow_and_update(), Health::Serving);
        broken.store(true, Ordering::SeqCst);
        seen.changed().await.unwrap();
        assert_eq!(
            *seen.borrow_and_update(),
            Health::NotServing("store down".into())
        );
        stop.send_replace(true);
        task.await.unwrap();
    }
}
