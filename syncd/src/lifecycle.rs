//! Shutdown, and every task the engine spawns.
//!
//! Work that must not be cut short by a caller going away (a send, a
//! membership change, an event finished in the background) and the
//! engine's own loops (retention) run as tasks tracked here, so that
//! shutdown can wait for all of them instead of leaving them detached: a
//! process that exits while a tracked task still writes would cut that write
//! at an arbitrary point. Shutdown has two halves: [`Lifecycle::begin_shutdown`]
//! tells every loop and push feed to stop (feeds never end by themselves),
//! [`Lifecycle::wait_for_tasks`] waits until every tracked task has.
//!
//! A node can also fail for good ([`Lifecycle::fail`]: its store is
//! poisoned): it then refuses new work, and the server reports NOT_SERVING
//! and exits non-zero, so that a supervisor restarts it and the store
//! recovers from its journal. Piling up retries that cannot succeed in this
//! process would only hide the failure.

use crate::error::{Result, SyncdError};
use crate::limits::MAX_ADMISSION_WAIT;
use std::future::Future;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub struct Lifecycle {
    stopping: watch::Sender<bool>,
    /// Why the node failed for good, once it has.
    failure: watch::Sender<Option<String>>,
    tasks: TaskTracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            stopping: watch::channel(false).0,
            failure: watch::channel(None).0,
            tasks: TaskTracker::new(),
        }
    }
}

impl Lifecycle {
    /// Runs `task` as a tracked task, detached from the caller.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Runs `work` in a tracked task of its own and waits for it, so that a
    /// caller going away (a client disconnecting cancels its handler)
    /// cannot stop a write halfway: that could release an idempotency lock
    /// while the write is still in flight, and admit a duplicate.
    pub async fn to_completion<T: Send + 'static>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        if let Some(reason) = self.failure() {
            return Err(SyncdError::Unavailable(format!(
                "the node is stopping: {reason}"
            )));
        }
        self.spawn(work)
            .await
            .map_err(|e| SyncdError::Internal(format!("{what} task failed: {e}")))?
    }

    /// A receiver that turns `true` once shutdown begins.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Ends push feeds and loops; tracked tasks finish what they are doing.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Begins shutdown (if not yet begun) and waits for every tracked task.
    pub async fn wait_for_tasks(&self) {
        self.begin_shutdown();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Marks the node failed for good (the first reason is kept): new work
    /// is refused, and [`Lifecycle::failed`] resolves.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let first = self.failure.send_if_modified(|failure| {
            let first = failure.is_none();
            if first {
                *failure = Some(reason.clone());
            }
            first
        });
        if first {
            tracing::error!(%reason, "the node failed; refusing work until it is restarted");
        }
    }

    /// Why the node failed, if it has.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Resolves with the reason once the node has failed.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        // The guard is dropped before any further await (the future stays
        // Send).
        let reason = match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }

    /// Tracked tasks still running.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }
}

/// Waits for `wait` at most [`MAX_ADMISSION_WAIT`]; past it, UNAVAILABLE
/// with the message `busy` makes.
pub async fn within_admission_wait<T>(
    wait: impl Future<Output = T>,
    busy: impl FnOnce() -> String,
) -> Result<T> {
    tokio::time::timeout(MAX_ADMISSION_WAIT, wait)
        .await
        .map_err(|_| SyncdError::Unavailable(busy()))
}

/// Resolves once `stopping` turns true (at once if it already has).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the engine itself was dropped.
    let _ = stopping.wait_for(|&stopping| stopping).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_every_tracked_task() {
        let lifecycle = Arc::new(Lifecycle::default());
        let finished = Arc::new(AtomicBool::new(false));
        let mut stopping = lifecycle.stopping();
        let flag = Arc::clone(&finished);
        lifecycle.spawn(async move {
            stopped(&mut stopping).await;
            // Work that still takes a while after shutdown began.
            tokio::time::sleep(Duration::from_secs(1)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(lifecycle.running_tasks(), 1);
        lifecycle.wait_for_tasks().await;
        assert!(finished.load(Ordering::SeqCst), "shutdown returned early");
        assert_eq!(lifecycle.running_tasks(), 0);
    }

    #[tokio::test]
    async fn to_completion_survives_the_caller_going_away() {
        let lifecycle = Arc::new(Lifecycle::default());
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let caller = {
            let lifecycle = Arc::clone(&lifecycle);
            tokio::spawn(async move {
                lifecycle
                    .to_completion("work", async move {
                        let _ = started_tx.send(());
                        tokio::task::yield_now().await;
                        let _ = done_tx.send(());
                        Ok(())
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        caller.abort();
        done_rx
            .await
            .expect("the work finished although its caller left");
    }
}
