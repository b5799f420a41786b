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
        match self {
            SeqSource::Local(a) => a.next(namespace, id).await,
            SeqSource::Remote(c) => c.next(namespace, id).await,
        }
    }

    pub async fn next_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
        match self {
            SeqSource::Local(a) => a.next_batch(namespace, ids).await,
            SeqSource::Remote(c) => c.next_batch(namespace, ids).await,
        }
    }

    /// The highest seq handed out for `id` so far (see
    /// [`crate::Allocator::current`]).
    pub async fn current(&self, namespace: Namespace, id: u64) -> Result<u64> {
        match self {
            SeqSource::Local(a) => a.current(namespace, id).await,
            SeqSource::Remote(c) => c.current(namespace, id).await,
        }
    }

    /// [`current`](Self::current) of several ids, `result[i]` for `ids[i]`.
    pub async fn current_batch(&self, namespace: Namespace, ids: &[u64]) -> Result<Vec<u64>> {
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
    }
}
