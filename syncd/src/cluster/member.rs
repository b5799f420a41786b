//! The loop that reads, renews and claims the writer lease, and publishes
//! this node's [`Role`].

use super::Stopping;
use super::lease::{Role, Step, WriterLease};
use std::sync::Arc;
use timeline_store::scylla::{WriterClock, WriterLeaseTable};
use tokio::sync::watch;
use tokio::time::Instant;

/// Runs until `stopping` turns true; every change of role goes to `roles`.
/// Claims and renewals that apply set `clock`'s grant, under which the
/// writer generations take their write timestamps. Once the node drains
/// (`node` is no longer serving) it claims nothing: a lease won then would
/// seal and recover for a generation that ends at once, and make the other
/// nodes wait out one more lease after this one exits.
pub async fn run(
    table: WriterLeaseTable,
    clock: Arc<WriterClock>,
    mut lease: WriterLease,
    roles: watch::Sender<Role>,
    mut stopping: watch::Receiver<bool>,
    node: watch::Receiver<Stopping>,
) {
    let every = lease.timings().renew_every;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = super::stopped(&mut stopping) => return,
        }
        // Bounded: a store that hangs must not keep an expired Writer role
        // published (the router checks the deadline too).
        let draining = *node.borrow() != Stopping::Serving;
        let round = tokio::time::timeout(every * 2, round(&table, &clock, &mut lease, draining));
        if round.await.is_err() {
            tracing::warn!("the writer lease's store did not answer in time");
        }
        let role = lease.role(Instant::now());
        roles.send_if_modified(|current| {
            let changed = match (&*current, &role) {
                // A renewal only moves the deadline: not a change of role.
                (Role::Writer { epoch: a, .. }, Role::Writer { epoch: b, .. }) => a != b,
                (a, b) => a != b,
            };
            if changed {
                tracing::info!(?role, "cluster role");
            }
            *current = role.clone();
            changed
        });
    }
}

async fn round(
    table: &WriterLeaseTable,
    clock: &WriterClock,
    lease: &mut WriterLease,
    draining: bool,
) {
    let span = lease.timings().ceiling_span();
    let record = match table.read().await {
        Ok(record) => record,
        Err(error) => {
            metrics::counter!("syncd_cluster_lease_errors_total").increment(1);
            tracing::warn!(%error, "cannot read the writer lease");
            return;
        }
    };
    let seen_by = Instant::now();
    match lease.observe(record, seen_by) {
        // The role says so; the node stops on it.
        Step::Wait | Step::Refuse { .. } => {}
        Step::Renew { epoch, seen } => {
            let sent = Instant::now();
            match table
                .renew(lease_holder(lease), epoch, seen, clock, span)
                .await
            {
                Ok(true) => lease.renewed(epoch, seen + 1, sent),
                // The row is not as read (taken over, or an earlier renewal
                // that timed out applied late): the lease runs out when the
                // last applied renewal says, and the next read tells which.
                Ok(false) => tracing::warn!(epoch, "a renewal of the writer lease did not apply"),
                Err(error) => {
                    metrics::counter!("syncd_cluster_lease_errors_total").increment(1);
                    tracing::warn!(%error, "cannot renew the writer lease");
                }
            }
        }
        Step::Claim { .. } if draining => {}
        Step::Claim { seen } => {
            let sent = Instant::now();
            match table
                .claim(lease_holder(lease), seen.as_ref(), clock, span)
                .await
            {
                Ok(Some(epoch)) => {
                    metrics::counter!("syncd_cluster_lease_claims_total").increment(1);
                    tracing::info!(epoch, previous = ?seen, "claimed the writer lease");
                    lease.claimed(epoch, sent);
                }
                Ok(None) => {}
                Err(error) => {
                    metrics::counter!("syncd_cluster_lease_errors_total").increment(1);
                    tracing::warn!(%error, "cannot claim the writer lease");
                }
            }
        }
    }
}

fn lease_holder(lease: &WriterLease) -> &str {
    lease.me()
}
