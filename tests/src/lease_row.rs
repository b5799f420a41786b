//! The cluster's writer lease row, read and written the way another
//! version of syncd would: the tests that play such a version (or watch
//! who holds the keyspace) share these.

use anyhow::{Result, ensure};
use scylla::client::session::Session;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The address the other version's writer claims under: nothing listens
/// there, so a node that passed a call on to it would fail the call.
pub const FOREIGN_HOLDER: &str = "127.0.0.1:1";

/// A session to the test CQL server.
pub async fn session() -> Result<Session> {
    Ok(scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(crate::cql_nodes().split(','))
        .build()
        .await?)
}

/// The lease row's holder and epoch, once a node created it.
pub async fn lease(session: &Session, keyspace: &str) -> Result<Option<(String, i64)>> {
    let result = session
        .query_unpaged(
            format!("SELECT holder, epoch FROM {keyspace}.writer_lease WHERE name = 'writer'"),
            (),
        )
        .await;
    let Ok(result) = result else {
        return Ok(None);
    };
    Ok(result
        .into_rows_result()?
        .maybe_first_row::<(String, i64)>()?)
}

/// Waits (at most 30 s) until `holder` holds the lease; answers its epoch.
pub async fn wait_for_holder(session: &Session, keyspace: &str, holder: &str) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((now, epoch)) = lease(session, keyspace).await?
            && now == holder
        {
            return Ok(epoch);
        }
        ensure!(Instant::now() < deadline, "{holder} never held the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the lease over the way a version that records no protocol does,
/// then renews it every `renew_every` until `stop` turns true.
pub async fn foreign_writer(
    session: Arc<Session>,
    keyspace: String,
    after_epoch: i64,
    renew_every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    session
        .query_unpaged(
            format!(
                "UPDATE {keyspace}.writer_lease SET holder = '{FOREIGN_HOLDER}', epoch = ?, renewals = 0 \
                 WHERE name = 'writer' IF epoch = ?"
            ),
            (after_epoch + 1, after_epoch),
        )
        .await?;
    let claimed = lease(&session, &keyspace).await?;
    ensure!(
        claimed == Some((FOREIGN_HOLDER.into(), after_epoch + 1)),
        "the foreign claim did not apply: {claimed:?}"
    );
    let mut renewals = 0i64;
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(renew_every).await;
        renewals += 1;
        session
            .query_unpaged(
                format!("UPDATE {keyspace}.writer_lease SET renewals = ? WHERE name = 'writer'"),
                (renewals,),
            )
            .await?;
    }
    Ok(())
}
