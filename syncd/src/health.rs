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
//! - the store answers no read (one cheap read per check, at most
//!   [`STORE_PROBE_TIMEOUT`]: a store that is down fails every call before
//!   any commit, so no failed event shows it);
//! - the last allocator call failed (seqsvc unreachable, a section not
//!   served, the `max_seq` store down): cleared by the next successful
//!   call, or, at least [`ALLOCATOR_ERROR_HOLD`] after the failure, by a
//!   probe ([`ALLOCATOR_PROBE_TIMEOUT`]), since a load balancer that
//!   stopped sending traffic leaves no call to succeed. The probe reads a
//!   current seq: it proves the allocator answers, not that its store takes
//!   raises, so a store that fails only raises shows as NOT_SERVING for the
//!   hold after each failed allocation, not continuously.
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
/// How long an allocator failure keeps the node NOT_SERVING before a probe
/// may clear it: long enough for a health checker polling every few
/// seconds to see it.
pub const ALLOCATOR_ERROR_HOLD: Duration = Duration::from_secs(10);

/// How long the store may take to answer the health probe's read.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    if let Some((error, at)) = writer.allocator_error() {
        if at.elapsed() < ALLOCATOR_ERROR_HOLD {
            return Health::NotServing(format!("the allocator cannot serve: {error}"));
        }
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
    // A store that answers no read fails every call before any commit, so
    // nothing above notices it: ask it.
    if let Err(error) = writer.probe_store(STORE_PROBE_TIMEOUT).await {
        return Health::NotServing(format!("the store cannot serve: {error}"));
    }
    Health::Serving
}

/// Shows `health` on the metrics listener: the `syncd_ready` gauge and
/// `/readyz`. The gRPC health service is set with it (`server`); the binary
/// also calls it before announcing its port, so a scrape right after the
/// announcement already sees the node's state.
pub fn mark(health: &Health) {
    let ready = *health == Health::Serving;
    metrics::gauge!("syncd_ready").set(if ready { 1.0 } else { 0.0 });
    seqsvc::telemetry::set_ready(ready);
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
    use crate::engine::EngineConfig;
    use crate::testkit::*;
    use seqsvc::{AllocatorConfig, MemoryMaxSeqStore};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use timeline_store::StoreError;
    use timeline_store::testsuite::MemoryStore;

    fn not_serving(health: &Health, why: &str) -> bool {
        matches!(health, Health::NotServing(reason) if reason.contains(why))
    }

    /// Waits (in virtual time) until the engine reports `Serving`.
    async fn until_serving(engine: &crate::engine::Engine) {
        for _ in 0..600 {
            if engine.health().await == Health::Serving {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("still {:?}", engine.health().await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_failing_writes_is_not_serving_until_its_events_land() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        let conversation = group(&engine, 1, vec![2]).await;
        assert_eq!(engine.health().await, Health::Serving);
        store.fail_commits_where(
            |_| true,
            || StoreError::Io("injected: the store times out".into()),
        );
        let sent = engine
            .send(device(1, "d"), message(conversation, "x", None))
            .await;
        assert!(sent.is_err());
        let health = engine.health().await;
        assert!(not_serving(&health, "being retried"), "{health:?}");
        store.clear_aimed_fault();
        until_serving(&engine).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_failing_reads_is_not_serving_while_it_fails() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        assert_eq!(engine.health().await, Health::Serving);
        store.fail_next(
            timeline_store::testsuite::Op::Read,
            1,
            timeline_store::testsuite::Failure::Lost,
        );
        let health = engine.health().await;
        assert!(not_serving(&health, "the store cannot serve"), "{health:?}");
        until_serving(&engine).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_poisoned_store_is_not_serving_for_good() {
        let (engine, store) = memory_engine(EngineConfig::default()).await;
        let conversation = group(&engine, 1, vec![2]).await;
        store.fail_commits_where(
            |_| true,
            || StoreError::Poisoned("injected: an fsync failed".into()),
        );
        let _ = engine
            .send(device(1, "d"), message(conversation, "x", None))
            .await;
        store.clear_aimed_fault();
        tokio::time::sleep(ALLOCATOR_ERROR_HOLD * 2).await;
        let health = engine.health().await;
        assert!(not_serving(&health, "the node failed"), "{health:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_allocator_that_fails_is_not_serving_until_it_answers() {
        let seq_store = Arc::new(MemoryMaxSeqStore::new());
        let config = AllocatorConfig {
            step: 1,
            section_size: 1,
        };
        let (allocator, ids) = allocator_on(seq_store.clone(), config).await;
        let store = Arc::new(MemoryStore::new());
        let engine = crate::engine::Engine::new(store, allocator, ids, EngineConfig::default());
        let conversation = group(&engine, 1, vec![2]).await;
        // Every allocation needs a raise (step 1); the next ones fail.
        seq_store.fail_next_raises(1_000);
        let sent = engine
            .send(device(1, "d"), message(conversation, "x", None))
            .await;
        assert!(sent.is_err());
        let health = engine.health().await;
        assert!(not_serving(&health, "allocator"), "{health:?}");
        // Held for a while, then a probe that answers clears it (a read of
        // a loaded section needs no raise).
        tokio::time::sleep(ALLOCATOR_ERROR_HOLD / 2).await;
        assert!(not_serving(&engine.health().await, "allocator"));
        tokio::time::sleep(ALLOCATOR_ERROR_HOLD).await;
        assert_eq!(engine.health().await, Health::Serving);
    }

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
