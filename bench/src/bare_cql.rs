//! The ScyllaDB path's peer: the same inbox rows (same sizes, same
//! partitioning, as many as Timeline wrote) inserted by a bare
//! prepared-statement loop at the same concurrency, the way the issue's
//! goal defines it (one row per statement), and then once more in unlogged
//! batches of at most [`BATCH_ROWS`] rows and [`BATCH_BYTES`], the cheapest way a client can hand the
//! node the same rows (so a ratio against it shows what Timeline's own
//! statements cost, apart from the batching both can use).

use crate::workload::Rng;
use futures_util::future::try_join_all;
use scylla::statement::batch::{Batch, BatchType};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows per batch in the batched pass at most (Timeline's own bound, under
/// Cassandra's warning for unlogged batches across partitions).
pub const BATCH_ROWS: usize = 10;
/// Entry bytes per batch at most (Timeline's own bound, under Cassandra's
/// 5 KiB warning): larger messages give smaller batches.
pub const BATCH_BYTES: usize = 4 * 1024;

/// One pass of the loop.
pub struct Pass {
    pub rows: u64,
    pub elapsed: Duration,
}

impl Pass {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// Both passes.
pub struct Bare {
    pub single: Pass,
    pub batched: Pass,
    /// Rows per batch in the batched pass.
    pub batch_rows: usize,
}

pub async fn run(
    config: &timeline_store::ScyllaConfig,
    concurrency: usize,
    message_bytes: usize,
    rows: u64,
    conversations: &[(u64, Vec<u64>)],
) -> anyhow::Result<Bare> {
    let session = config.connect().await?;
    let keyspace = &config.keyspace;
    session
        .query_unpaged(
            format!("CREATE TABLE IF NOT EXISTS {keyspace}.bare_inbox (user_id bigint, bucket bigint, seq bigint, entry blob, PRIMARY KEY ((user_id, bucket), seq))"),
            (),
        )
        .await?;
    session.await_schema_agreement().await?;
    let mut insert = session
        .prepare(format!(
            "INSERT INTO {keyspace}.bare_inbox (user_id, bucket, seq, entry) VALUES (?, ?, ?, ?)"
        ))
        .await?;
    insert.set_is_idempotent(true);
    // An encoded inbox entry of the same message size, as Timeline stores it.
    let entry = vec![7u8; message_bytes + 60];
    let batch_rows = (BATCH_BYTES / entry.len()).clamp(1, BATCH_ROWS);
    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..batch_rows {
        batch.append_statement(insert.clone());
    }
    batch.set_is_idempotent(true);
    let users: Arc<Vec<u64>> = Arc::new(
        conversations
            .iter()
            .flat_map(|(_, m)| m.iter().copied())
            .collect(),
    );
    let per_worker = rows.div_ceil(concurrency as u64);
    eprintln!(
        "peer: {rows} rows through a bare prepared-statement loop at concurrency {concurrency}, one row per statement, then in batches of {batch_rows}"
    );
    let mut passes = Vec::new();
    for batched in [false, true] {
        let started = Instant::now();
        let workers = (0..concurrency as u64).map(|worker| {
            let (session, insert, batch) = (Arc::clone(&session), insert.clone(), batch.clone());
            let (entry, users) = (entry.clone(), Arc::clone(&users));
            tokio::spawn(async move {
                let mut rng = Rng::new(worker + 99 + u64::from(batched) * 1_000);
                let mut row = |i: u64| {
                    let user = users[rng.below(users.len() as u64) as usize] as i64;
                    let seq = (worker << 32 | i) as i64;
                    (user, seq >> 16, seq, entry.clone())
                };
                let mut i = 0;
                while i < per_worker {
                    if batched && batch_rows > 1 && per_worker - i >= batch_rows as u64 {
                        let values: Vec<_> = (i..i + batch_rows as u64).map(&mut row).collect();
                        session.batch(&batch, values).await?;
                        i += batch_rows as u64;
                    } else {
                        session.execute_unpaged(&insert, row(i)).await?;
                        i += 1;
                    }
                }
                anyhow::Ok(())
            })
        });
        for worker in try_join_all(workers).await? {
            worker?;
        }
        passes.push(Pass {
            rows: per_worker * concurrency as u64,
            elapsed: started.elapsed(),
        });
    }
    let batched = passes.pop().expect("two passes");
    let single = passes.pop().expect("two passes");
    Ok(Bare {
        single,
        batched,
        batch_rows,
    })
}
