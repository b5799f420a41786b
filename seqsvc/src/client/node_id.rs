//! Snowflake node ids leased from a seqsvc cluster: the grant call of the
//! routing client and [`NodeIdLease`], the holder side that renews it and
//! tells the id generator what it may use.

use super::{FIRST_BACKOFF, MAX_BACKOFF, RoutingClient, lock};
use crate::alloc_server::{NODE_ID_SLOT, NodeIdGrant};
use crate::grpc::{CALL_TIMEOUT, error_from_status};
use crate::snowflake::{IdReservations, NodeReservation, RESERVE_AHEAD_MS};
use crate::{Result, SeqError};
use proto::seqsvc::v1 as pb;
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl RoutingClient {
    /// Grants or renews a snowflake node id at the owner of the node-id
    /// registry. Returns the grant and when the successful attempt was
    /// sent: the holder's lease runs from then.
    pub async fn lease_node_id(
        &self,
        holder: &str,
        preferred: Option<u16>,
        reserve_until_ms: u64,
    ) -> Result<(NodeIdGrant, tokio::time::Instant)> {
        let deadline = tokio::time::Instant::now() + self.inner.retry_for;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = async {
                let table = self.table().await?;
                let owner = table.owner_of_slot(NODE_ID_SLOT).ok_or_else(|| {
                    SeqError::Unavailable("no AllocSvr serves the node-id registry".into())
                })?;
                let mut request = tonic::Request::new(pb::LeaseNodeIdRequest {
                    holder: holder.to_owned(),
                    preferred: u32::from(preferred.unwrap_or(0)),
                    has_preferred: preferred.is_some(),
                    reserve_until_ms,
                    table_version: table.version,
                });
                request.set_timeout(CALL_TIMEOUT);
                let sent = tokio::time::Instant::now();
                let reply = self
                    .alloc_client(owner)?
                    .lease_node_id(request)
                    .await
                    .map_err(error_from_status)?
                    .into_inner();
                Ok::<_, SeqError>((reply, sent))
            };
            match attempt.await {
                Ok((reply, _)) if reply.moved.is_some() => {
                    let table = reply.moved.as_ref().expect("checked");
                    if !self.adopt(table)? {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(Self::stale_move(table));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                Ok((reply, sent)) => {
                    let node_id = u16::try_from(reply.node_id).map_err(|_| {
                        SeqError::Unavailable(format!("node id {} out of range", reply.node_id))
                    })?;
                    let grant = NodeIdGrant {
                        node_id,
                        floor_ms: reply.floor_ms,
                        reserved_ms: reply.reserved_ms,
                        lease: Duration::from_millis(reply.lease_ms),
                    };
                    return Ok((grant, sent));
                }
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let _ = self.refresh().await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// A snowflake node id held under lease from a seqsvc cluster, so no two
/// running processes ever share one. The holder renews it every sync
/// interval; ids may be issued only while the last successful renewal was
/// sent less than a lease ago (the registry's owner keeps it a read
/// interval longer before granting it to anyone else). A lapsed lease stops
/// id issue until a renewal succeeds; if the node id was lost meanwhile, a
/// new one is granted with the previous holder's clock reservation as floor.
pub struct NodeIdLease {
    client: RoutingClient,
    holder: String,
    state: Mutex<LeaseState>,
    renewing: tokio::sync::Mutex<()>,
}

struct LeaseState {
    node: NodeReservation,
    valid_until: tokio::time::Instant,
}

/// What a holder may use after `grant` answered it, given what it held.
/// The same node id keeps its floor unless the grant's is higher: the id
/// lapsed and came back after another holder used it (its clock possibly
/// ahead of ours), so ids must start above that holder's reservation.
pub(crate) fn granted(held: Option<NodeReservation>, grant: &NodeIdGrant) -> NodeReservation {
    match held {
        Some(held) if held.node_id == grant.node_id => NodeReservation {
            node_id: held.node_id,
            floor_ms: held.floor_ms.max(grant.floor_ms),
            reserved_ms: held.reserved_ms.max(grant.reserved_ms),
        },
        _ => NodeReservation {
            node_id: grant.node_id,
            floor_ms: grant.floor_ms,
            reserved_ms: grant.reserved_ms,
        },
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl NodeIdLease {
    /// Leases a node id (`preferred` if free), retrying for the client's
    /// retry period. `holder` must be unique per process start.
    pub async fn acquire(
        client: RoutingClient,
        holder: String,
        preferred: Option<u16>,
    ) -> Result<Arc<Self>> {
        let until = unix_ms() + RESERVE_AHEAD_MS;
        let (grant, sent) = client.lease_node_id(&holder, preferred, until).await?;
        Ok(Arc::new(Self {
            client,
            holder,
            state: Mutex::new(LeaseState {
                node: granted(None, &grant),
                valid_until: sent + grant.lease,
            }),
            renewing: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn node_id(&self) -> u16 {
        lock(&self.state).node.node_id
    }

    /// Renews the lease, reserving the clock up to `until_ms` (0: renew
    /// only). Returns the reserved value.
    async fn renew(&self, until_ms: u64) -> Result<u64> {
        let _one = self.renewing.lock().await;
        let current = lock(&self.state).node.node_id;
        let (grant, sent) = self
            .client
            .lease_node_id(&self.holder, Some(current), until_ms)
            .await?;
        let mut state = lock(&self.state);
        if grant.node_id != state.node.node_id {
            tracing::warn!(
                old = state.node.node_id,
                new = grant.node_id,
                "node id lease lapsed and was lost; continuing with a new node id"
            );
        }
        state.node = granted(Some(state.node), &grant);
        state.valid_until = sent + grant.lease;
        Ok(state.node.reserved_ms)
    }

    /// Renews every sync interval until the process ends.
    pub fn spawn_renewals(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let interval = lock(&this.client.inner.table)
                    .as_ref()
                    .map_or(Duration::from_secs(1), |t| t.lease.sync_interval);
                tokio::time::sleep(interval).await;
                if let Err(error) = this.renew(0).await {
                    tracing::warn!(%error, "node id lease renewal failed");
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl IdReservations for NodeIdLease {
    fn node(&self) -> Result<NodeReservation> {
        let state = lock(&self.state);
        if tokio::time::Instant::now() >= state.valid_until {
            return Err(SeqError::NotServing(format!(
                "node id {} lease lapsed (seqsvc unreachable); ids resume after a renewal",
                state.node.node_id
            )));
        }
        Ok(state.node)
    }

    async fn reserve(&self, node_id: u16, until_ms: u64) -> Result<u64> {
        let reserved = self.renew(until_ms).await?;
        if self.node_id() != node_id {
            return Err(SeqError::NotServing("node id changed; retry".into()));
        }
        Ok(reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(node_id: u16, floor_ms: u64, reserved_ms: u64) -> NodeIdGrant {
        NodeIdGrant {
            node_id,
            floor_ms,
            reserved_ms,
            lease: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_grant_back_of_the_same_node_id_raises_the_floor() {
        let first = granted(None, &grant(7, 100, 200));
        assert_eq!((first.floor_ms, first.reserved_ms), (100, 200));
        // A renewal: the floor the first grant carried, a later reservation.
        let renewed = granted(Some(first), &grant(7, 100, 300));
        assert_eq!((renewed.floor_ms, renewed.reserved_ms), (100, 300));
        // Lapsed, another holder used node id 7 up to 900, then it came
        // back: ids must start above 900.
        let back = granted(Some(renewed), &grant(7, 900, 950));
        assert_eq!(
            (back.node_id, back.floor_ms, back.reserved_ms),
            (7, 900, 950)
        );
        let other = granted(Some(back), &grant(8, 40, 60));
        assert_eq!(
            (other.node_id, other.floor_ms, other.reserved_ms),
            (8, 40, 60)
        );
    }
}
