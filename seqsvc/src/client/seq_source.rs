//! [`SeqSource`]: where syncd gets its seqs.

use super::RoutingClient;
use crate::{Namespace, Result};

/// Where syncd gets its seqs: the in-process allocator (one machine) or a
/// seqsvc cluster.
#[derive(Clone)]
pub enum SeqSource {
    Local(crate::Allocator),
    Remote(RoutingClient),
}

impl From<crate::Allocator> for SeqSource {
    fn from(allocator: crate::Allocator) -> Self {
        SeqSource::Local(allocator)
    }
}

impl SeqSource {
    pub async fn next(&self, namespace: Namespace, id: u64) -> Result<u64> {
        self.timed("next", async {
            match self {
                SeqSource::Local(a) => a.next(namespace, id).await,
                SeqSource::Remote(c) => c.next(namespace, id).await,
            }
        })
        .await
    }

    pub async fn next_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
        self.timed("next_batch", async {
            match self {
                SeqSource::Local(a) => a.next_batch(namespace, ids).await,
                SeqSource::Remote(c) => c.next_batch(namespace, ids).await,
            }
        })
        .await
    }

    /// The highest seq handed out for `id` so far (see
    /// [`crate::Allocator::current`]).
    pub async fn current(&self, namespace: Namespace, id: u64) -> Result<u64> {
        self.timed("current", async {
            match self {
                SeqSource::Local(a) => a.current(namespace, id).await,
                SeqSource::Remote(c) => c.current(namespace, id).await,
            }
        })
        .await
    }

    /// [`current`](Self::current) of several ids, `result[i]` for `ids[i]`.
    pub async fn current_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
        self.timed("current_batch", async {
            match self {
                SeqSource::Local(a) => {
                    let mut seqs = Vec::with_capacity(ids.len());
                    for &id in ids {
                        seqs.push(a.current(namespace, id).await?);
                    }
                    Ok(seqs)
                }
                SeqSource::Remote(c) => c.current_batch(namespace, ids).await,
            }
        })
        .await
    }

    /// Why seqs can no longer be allocated in this process, if that is
    /// known without a call (the in-process allocator's store is poisoned).
    pub fn poisoned(&self) -> Option<String> {
        match self {
            SeqSource::Local(a) => a.store_poisoned(),
            SeqSource::Remote(_) => None,
        }
    }

    /// Times a call and counts its failures by kind: the allocator's share
    /// of a send's latency, and its refusals, as the caller sees them
    /// (retries and failovers of the routing client included).
    async fn timed<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let source = match self {
            SeqSource::Local(_) => "local",
            SeqSource::Remote(_) => "remote",
        };
        let started = std::time::Instant::now();
        let result = call.await;
        metrics::histogram!("seqsvc_client_call_duration_seconds", "op" => op, "source" => source)
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!(
                "seqsvc_client_errors_total",
                "op" => op,
                "source" => source,
                "kind" => error.kind(),
            )
            .increment(1);
        }
        result
    }
}
