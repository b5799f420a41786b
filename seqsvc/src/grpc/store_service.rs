//! The `seqsvc store` process: the shared store (`max_seq` per section and
//! the routing table) served over gRPC.

use crate::routing::RoutingTable;
use crate::store::SharedStore;
use crate::{Namespace, Result, SeqError};
use proto::seqsvc::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Serves a [`SharedStore`] (the embedded one in `seqsvc store`).
pub struct StoreService {
    store: Arc<dyn SharedStore>,
}

impl StoreService {
    pub fn new(store: Arc<dyn SharedStore>) -> Self {
        Self { store }
    }

    pub fn into_server(self) -> pb::seq_store_server::SeqStoreServer<Self> {
        pb::seq_store_server::SeqStoreServer::new(self)
    }
}

fn namespace_from_code(code: u32) -> Result<Namespace> {
    u8::try_from(code)
        .ok()
        .and_then(Namespace::from_code)
        .ok_or_else(|| SeqError::InvalidArgument(format!("unknown namespace code {code}")))
}

#[tonic::async_trait]
impl pb::seq_store_server::SeqStore for StoreService {
    async fn load_max_seq(
        &self,
        request: Request<pb::LoadMaxSeqRequest>,
    ) -> Result<Response<pb::MaxSeqReply>, Status> {
        let r = request.into_inner();
        let max_seq = self
            .store
            .load(namespace_from_code(r.namespace_code)?, r.section)
            .await?;
        Ok(Response::new(pb::MaxSeqReply { max_seq }))
    }

    async fn raise_max_seq(
        &self,
        request: Request<pb::RaiseMaxSeqRequest>,
    ) -> Result<Response<pb::MaxSeqReply>, Status> {
        let r = request.into_inner();
        let namespace = namespace_from_code(r.namespace_code)?;
        let max_seq = self.store.raise(namespace, r.section, r.at_least).await?;
        Ok(Response::new(pb::MaxSeqReply { max_seq }))
    }

    async fn read_routes(
        &self,
        _request: Request<pb::ReadRoutesRequest>,
    ) -> Result<Response<pb::ReadRoutesReply>, Status> {
        let table = self.store.read_routes().await?;
        Ok(Response::new(pb::ReadRoutesReply {
            table: table.map(|t| t.to_proto()),
        }))
    }

    async fn write_routes(
        &self,
        request: Request<pb::WriteRoutesRequest>,
    ) -> Result<Response<pb::WriteRoutesReply>, Status> {
        let r = request.into_inner();
        let table = r
            .table
            .ok_or_else(|| SeqError::InvalidArgument("no table given".into()))?;
        let table = RoutingTable::from_proto(&table)?;
        let (applied, current) = self.store.write_routes(r.expected_version, &table).await?;
        Ok(Response::new(pb::WriteRoutesReply {
            applied,
            current: current.map(|t| t.to_proto()),
        }))
    }
}
