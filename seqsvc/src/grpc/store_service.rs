//! The `seqsvc store` process: the shared store (`max_seq` per section and
//! the routing table) served over gRPC.

use crate::routing::RoutingTable;
use crate::store::{RouteWrite, SharedStore};
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

    pub fn into_routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(pb::seq_store_server::SeqStoreServer::new(self))
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
        // The wire names the version it expects replaced; it must be the
        // one before the table's, as the store's contract says.
        if r.expected_version.checked_add(1) != Some(table.version) {
            return Err(SeqError::InvalidArgument(format!(
                "routing table version {} does not follow {}",
                table.version, r.expected_version
            ))
            .into());
        }
        let RouteWrite { applied, current } = self.store.write_routes(&table).await?;
        Ok(Response::new(pb::WriteRoutesReply {
            applied,
            current: current.map(|t| t.to_proto()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::LeaseConfig;
    use crate::store::RouteStore;
    use crate::testsuite::MemoryMaxSeqStore;
    use pb::seq_store_server::SeqStore;

    #[tokio::test]
    async fn a_write_whose_version_does_not_follow_is_refused() {
        let store = Arc::new(MemoryMaxSeqStore::new());
        let service = StoreService::new(store.clone());
        let first = RoutingTable::initial(10, LeaseConfig::default()).unwrap();
        let write = |expected_version| {
            Request::new(pb::WriteRoutesRequest {
                expected_version,
                table: Some(first.to_proto()),
            })
        };
        let refused = service.write_routes(write(1)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(store.read_routes().await.unwrap().is_none());
        assert!(
            service
                .write_routes(write(0))
                .await
                .unwrap()
                .into_inner()
                .applied
        );
    }
}
