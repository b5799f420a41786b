//! A cluster writer's intents of one partition, stored together: one
//! conditional batch (one Paxos round) for every intent of the partition
//! that is waiting, instead of one lightweight transaction each.
//!
//! Each intent is stored conditionally on the partition's fence
//! (`fencing`). Lightweight transactions on one partition are serialised
//! by Paxos anyway: issued concurrently, they contend (a ballot lost is a
//! round again), so several events in flight on one partition cost more
//! than one transaction each. Here one task per partition issues one
//! transaction at a time, carrying every intent queued while the previous
//! one was in flight: under load a batch grows to match, and an idle
//! partition stores an intent alone at once.
//!
//! A conditional batch on one partition is atomic and its condition is one
//! read of the partition's fence, so every intent of a batch is stored, or
//! none (the fence was raised: all of them are refused as fenced, which
//! each would have been alone). An error (a timeout: the batch may or may
//! not have applied) is every intent's error; a retry stores the same
//! intent row again, as a retry of a lone one does.
//!
//! Bounds: at most [`MAX_BATCH_INTENTS`] intents and [`MAX_BATCH_BYTES`]
//! bytes of intents per batch (an intent larger than that goes alone), and
//! [`QUEUED_INTENTS`] queued per partition, after which callers wait.

use super::cql;
use crate::{Result, StoreError};
use scylla::client::session::Session;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Intents per conditional batch.
pub(super) const MAX_BATCH_INTENTS: usize = 32;
/// Bytes of intents per conditional batch. Cassandra does not apply its
/// `batch_size_fail_threshold` to conditional batches, so this is what
/// bounds a Paxos proposal (and the memory a batch pins) here.
pub(super) const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Intents waiting per partition; more callers wait for room.
const QUEUED_INTENTS: usize = 256;

/// The bind values of the intent statement:
/// `(event, shard, epoch, intent, fence)`.
type IntentValues = (Vec<u8>, i32, i64, i64, i64);

struct Queued {
    values: IntentValues,
    stored: oneshot::Sender<Result<()>>,
}

/// What one batch's condition found.
enum Outcome {
    Stored,
    Fenced,
}

/// One queue and one task per partition.
pub(super) struct IntentBatches {
    partitions: Vec<mpsc::Sender<Queued>>,
    /// Transactions issued, over all partitions (read by the tests: the
    /// batches' size is a metric).
    #[cfg_attr(not(test), allow(dead_code))]
    transactions: Arc<AtomicU64>,
}

impl IntentBatches {
    /// Starts one task per partition, `0..partitions`; they end when this
    /// is dropped. `statement` stores one intent, conditionally on the fence.
    pub(super) fn start(
        session: Arc<Session>,
        statement: PreparedStatement,
        partitions: i32,
    ) -> Self {
        let transactions = Arc::new(AtomicU64::new(0));
        let partitions = (0..partitions)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUED_INTENTS);
                tokio::spawn(store_batches(
                    session.clone(),
                    statement.clone(),
                    receiver,
                    transactions.clone(),
                ));
                sender
            })
            .collect();
        Self {
            partitions,
            transactions,
        }
    }

    /// Transactions issued so far (a batch is one).
    #[cfg(test)]
    pub(super) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Stores one intent with the next batch of its partition. `Ok(true)`
    /// when stored, `Ok(false)` when the partition's fence refused it.
    pub(super) async fn store(&self, values: IntentValues) -> Result<bool> {
        let values_partition = values.1;
        let partition = self.partitions.get(values.1 as usize).ok_or_else(|| {
            StoreError::InvalidArgument(format!("no intent partition {}", values.1))
        })?;
        let (stored, outcome) = oneshot::channel();
        // The task ends only when this is dropped, so a task gone while a
        // caller holds this panicked: nothing of that partition can be
        // stored by this writer again. Fatal, so the writer stops and the
        // next one recovers, instead of answering a retry that never works.
        let stopped = || {
            StoreError::Poisoned(format!(
                "the intent writer of partition {values_partition} stopped"
            ))
        };
        partition
            .send(Queued { values, stored })
            .await
            .map_err(|_| stopped())?;
        match outcome.await.map_err(|_| stopped())? {
            Ok(()) => Ok(true),
            Err(StoreError::Fenced(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// One partition's task: takes what is queued, up to a batch's bounds,
/// stores it, answers every caller, and again.
async fn store_batches(
    session: Arc<Session>,
    statement: PreparedStatement,
    mut queue: mpsc::Receiver<Queued>,
    transactions: Arc<AtomicU64>,
) {
    let mut carried: Option<Queued> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match queue.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = first.values.0.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_INTENTS {
            let Ok(next) = queue.try_recv() else { break };
            if bytes + next.values.0.len() > MAX_BATCH_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.values.0.len();
            batch.push(next);
        }
        let outcome = store_batch(&session, &statement, &batch).await;
        transactions.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("timeline_store_scylla_intent_batch_size").record(batch.len() as f64);
        for queued in batch {
            let answer = match &outcome {
                Ok(Outcome::Stored) => Ok(()),
                Ok(Outcome::Fenced) => Err(StoreError::Fenced(String::new())),
                Err(error) => Err(error.clone()),
            };
            // A caller that went away needs no answer.
            let _ = queued.stored.send(answer);
        }
    }
}

async fn store_batch(
    session: &Session,
    statement: &PreparedStatement,
    batch: &[Queued],
) -> Result<Outcome> {
    let result = if let [alone] = batch {
        session.execute_unpaged(statement, &alone.values).await
    } else {
        let mut statements = Batch::new(BatchType::Unlogged);
        // The same intent rows under the same fence condition: a retry
        // after a timeout stores the same rows, or is fenced, as the first
        // attempt was.
        statements.set_is_idempotent(true);
        for _ in batch {
            statements.append_statement(statement.clone());
        }
        let values: Vec<&IntentValues> = batch.iter().map(|queued| &queued.values).collect();
        session.batch(&statements, values).await
    };
    let applied = cql_kit::lwt::applied(result.map_err(cql)?).map_err(StoreError::from)?;
    Ok(if applied {
        Outcome::Stored
    } else {
        Outcome::Fenced
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_partition_whose_task_is_gone_fails_the_writer_instead_of_asking_for_retries() {
        // A task that panicked: its queue's receiver is gone.
        let (sender, receiver) = mpsc::channel(QUEUED_INTENTS);
        drop(receiver);
        let batches = IntentBatches {
            partitions: vec![sender],
            transactions: Arc::default(),
        };
        let error = batches
            .store((vec![1], 0, 1, 1, 1))
            .await
            .expect_err("nothing can be stored on that partition");
        assert!(error.is_fatal(), "{error:?}");
        assert!(!error.is_retryable(), "{error:?}");
    }

    #[tokio::test]
    async fn a_partition_task_that_drops_a_queued_intent_fails_the_writer() {
        // A task that took the intent and panicked before answering.
        let (sender, mut receiver) = mpsc::channel::<Queued>(QUEUED_INTENTS);
        let task = tokio::spawn(async move {
            let queued = receiver.recv().await;
            drop(queued);
        });
        let batches = IntentBatches {
            partitions: vec![sender],
            transactions: Arc::default(),
        };
        let error = batches.store((vec![1], 0, 1, 1, 1)).await.unwrap_err();
        task.await.unwrap();
        assert!(error.is_fatal(), "{error:?}");
    }
}
