//! The arbiter's service: heartbeats in, the routing table out.

use crate::arbiter::Arbiter;
use proto::seqsvc::v1 as pb;
use tonic::{Request, Response, Status};

pub struct ArbiterService {
    arbiter: Arbiter,
}

impl ArbiterService {
    pub fn new(arbiter: Arbiter) -> Self {
        Self { arbiter }
    }

    pub fn into_routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(pb::arbiter_server::ArbiterServer::new(self))
    }
}

#[tonic::async_trait]
impl pb::arbiter_server::Arbiter for ArbiterService {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let table_version = self.arbiter.heartbeat(&request.into_inner().addr)?;
        Ok(Response::new(pb::HeartbeatReply { table_version }))
    }

    async fn get_routes(
        &self,
        _request: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesReply>, Status> {
        Ok(Response::new(pb::GetRoutesReply {
            table: Some(self.arbiter.table().to_proto()),
        }))
    }
}
