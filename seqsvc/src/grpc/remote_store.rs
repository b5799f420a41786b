//! The shared store reached over gRPC: the client of [`super::StoreService`].

use super::{STORE_CALL_TIMEOUT, channel, with_timeout};
use crate::routing::RoutingTable;
use crate::store::{MaxSeqStore, RouteStore, RouteWrite, replaced_version};
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use proto::seqsvc::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// The shared store reached over gRPC (`--store http://host:port`).
#[derive(Clone)]
pub struct RemoteStore {
    client: pb::seq_store_client::SeqStoreClient<Channel>,
}

type StoreClient = pb::seq_store_client::SeqStoreClient<Channel>;

impl RemoteStore {
    pub fn connect_lazy(url: &str) -> Result<Self> {
        Ok(Self {
            client: StoreClient::new(channel(url)?),
        })
    }

    /// One call with the store timeout, its failure mapped by kind.
    async fn call<M, R, Fut>(
        &self,
        message: M,
        rpc: impl FnOnce(StoreClient, Request<M>) -> Fut,
    ) -> Result<R>
    where
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let reply = rpc(
            self.client.clone(),
            with_timeout(message, STORE_CALL_TIMEOUT),
        )
        .await;
        reply.map(Response::into_inner).map_err(store_error)
    }
}

fn store_error(status: Status) -> SeqError {
    let message = status.message();
    match status.code() {
        Code::InvalidArgument => SeqError::InvalidArgument(message.to_owned()),
        // The store's own failure, already worded as one.
        Code::Unavailable if message.starts_with(STORE_FAILED) => {
            SeqError::Store(message[STORE_FAILED.len()..].to_owned())
        }
        code => SeqError::Store(format!("{code:?}: {message}")),
    }
}

/// How a [`SeqError::Store`] reads on the wire.
const STORE_FAILED: &str = "shared store failed: ";

#[async_trait]
impl MaxSeqStore for RemoteStore {
    async fn load(&self, namespace: Namespace, section: u64) -> Result<u64> {
        let request = pb::LoadMaxSeqRequest {
            namespace_code: u32::from(namespace.code()),
            section,
        };
        let reply = self
            .call(request, async |mut c, r| c.load_max_seq(r).await)
            .await?;
        Ok(reply.max_seq)
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let request = pb::RaiseMaxSeqRequest {
            namespace_code: u32::from(namespace.code()),
            section,
            at_least,
        };
        let reply = self
            .call(request, async |mut c, r| c.raise_max_seq(r).await)
            .await?;
        let stored = reply.max_seq;
        if stored < at_least {
            return Err(SeqError::Store(format!(
                "store answered max_seq {stored} to a raise to {at_least}"
            )));
        }
        Ok(stored)
    }
}

#[async_trait]
impl RouteStore for RemoteStore {
    async fn read_routes(&self) -> Result<Option<RoutingTable>> {
        let reply = self
            .call(pb::ReadRoutesRequest {}, async |mut c, r| {
                c.read_routes(r).await
            })
            .await?;
        reply
            .table
            .map(|t| RoutingTable::from_proto(&t))
            .transpose()
    }

    async fn write_routes(&self, table: &RoutingTable) -> Result<RouteWrite> {
        let request = pb::WriteRoutesRequest {
            expected_version: replaced_version(table)?,
            table: Some(table.to_proto()),
        };
        let reply = self
            .call(request, async |mut c, r| c.write_routes(r).await)
            .await?;
        let current = reply
            .current
            .map(|t| RoutingTable::from_proto(&t))
            .transpose()?;
        Ok(RouteWrite {
            applied: reply.applied,
            current,
        })
    }
}
