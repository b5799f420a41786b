//! The AllocSvr's service over its core ([`AllocServer`]), and the
//! heartbeats that keep it listed by the arbiters.

use super::{STORE_CALL_TIMEOUT, channel, namespace_from_proto, with_timeout};
use crate::alloc_server::{AllocServer, Routed, SeqRequest};
use crate::routing::RoutingTable;
use crate::{Result, SeqError};
use proto::seqsvc::v1 as pb;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AllocService {
    server: AllocServer,
}

impl AllocService {
    pub fn new(server: AllocServer) -> Self {
        Self { server }
    }

    pub fn into_routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(pb::alloc_svr_server::AllocSvrServer::new(self))
    }
}

fn moved(table: &RoutingTable) -> Option<pb::RoutingTable> {
    Some(table.to_proto())
}

fn seq_request(namespace: i32, ids: &[u64], client_version: u64) -> Result<SeqRequest<'_>> {
    Ok(SeqRequest {
        namespace: namespace_from_proto(namespace)?,
        ids,
        client_version,
    })
}

/// A seqs reply's two fields: the seqs, or the table to route by instead.
fn seqs_or_moved(routed: Routed<Vec<u64>>) -> (Vec<u64>, Option<pb::RoutingTable>) {
    match routed {
        Routed::Served(seqs) => (seqs, None),
        Routed::Moved(table) => (Vec::new(), moved(&table)),
    }
}

#[tonic::async_trait]
impl pb::alloc_svr_server::AllocSvr for AllocService {
    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateReply>, Status> {
        let r = request.into_inner();
        let request = seq_request(r.namespace, &r.ids, r.table_version)?;
        let (seqs, moved) = seqs_or_moved(self.server.allocate(request).await?);
        Ok(Response::new(pb::AllocateReply { seqs, moved }))
    }

    async fn current(
        &self,
        request: Request<pb::CurrentRequest>,
    ) -> Result<Response<pb::CurrentReply>, Status> {
        let r = request.into_inner();
        let request = seq_request(r.namespace, &r.ids, r.table_version)?;
        let (seqs, moved) = seqs_or_moved(self.server.current(request).await?);
        Ok(Response::new(pb::CurrentReply { seqs, moved }))
    }

    async fn lease_node_id(
        &self,
        request: Request<pb::LeaseNodeIdRequest>,
    ) -> Result<Response<pb::LeaseNodeIdReply>, Status> {
        let r = request.into_inner();
        let preferred = if r.has_preferred {
            Some(u16::try_from(r.preferred).map_err(|_| {
                SeqError::InvalidArgument(format!("node id {} out of range", r.preferred))
            })?)
        } else {
            None
        };
        let reply = match self
            .server
            .lease_node_id(&r.holder, preferred, r.reserve_until_ms, r.table_version)
            .await?
        {
            Routed::Served(grant) => pb::LeaseNodeIdReply {
                node_id: u32::from(grant.node_id),
                floor_ms: grant.floor_ms,
                reserved_ms: grant.reserved_ms,
                lease_ms: grant.lease.as_millis() as u64,
                moved: None,
            },
            Routed::Moved(table) => pb::LeaseNodeIdReply {
                moved: moved(&table),
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_routes(
        &self,
        _request: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesReply>, Status> {
        Ok(Response::new(pb::GetRoutesReply {
            table: self.server.table().map(|t| t.to_proto()),
        }))
    }
}

/// Sends heartbeats to every arbiter until the process ends.
pub fn spawn_heartbeats(
    server: &AllocServer,
    arbiters: Vec<String>,
) -> Result<tokio::task::JoinHandle<()>> {
    let clients = arbiters
        .iter()
        .map(|url| {
            Ok((
                url.clone(),
                pb::arbiter_client::ArbiterClient::new(channel(url)?),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // One task per arbiter, so one that is down does not delay the others.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(url, mut client)| {
            let server = server.clone();
            tokio::spawn(async move {
                loop {
                    let request = with_timeout(
                        pb::HeartbeatRequest {
                            addr: server.addr().to_owned(),
                        },
                        STORE_CALL_TIMEOUT,
                    );
                    if let Err(status) = client.heartbeat(request).await {
                        tracing::debug!(arbiter = %url, %status, "heartbeat failed");
                    }
                    let interval = server
                        .table()
                        .map_or(Duration::from_millis(500), |t| t.lease.sync_interval);
                    tokio::time::sleep(interval).await;
                }
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
    }))
}
