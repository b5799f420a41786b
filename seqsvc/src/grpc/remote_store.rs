//! The shared store reached over gRPC: the client of [`super::StoreService`].

use super::{STORE_CALL_TIMEOUT, channel, with_timeout};
use crate::routing::RoutingTable;
use crate::store::{MaxSeqStore, RouteStore, RouteWrite, replaced_version};
use crate::{Namespace, Result, SeqError};
use async_trait::async_trait;
use proto::seqsvc::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The shared store reached over gRPC (`--store http://host:port`).
#[derive(Clone)]
pub struct RemoteStore {
    client: pb::seq_store_client::SeqStoreClient<Channel>,
}

impl RemoteStore {
    pub fn connect_lazy(url: &str) -> Result<Self> {
        Ok(Self {
            client: pb::seq_store_client::SeqStoreClient::new(channel(url)?),
        })
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
            .client
            .clone()
            .load_max_seq(with_timeout(request, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?;
        Ok(reply.into_inner().max_seq)
    }

    async fn raise(&self, namespace: Namespace, section: u64, at_least: u64) -> Result<u64> {
        let request = pb::RaiseMaxSeqRequest {
            namespace_code: u32::from(namespace.code()),
            section,
            at_least,
        };
        let reply = self
            .client
            .clone()
            .raise_max_seq(with_timeout(request, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?;
        let stored = reply.into_inner().max_seq;
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
            .client
            .clone()
            .read_routes(with_timeout(pb::ReadRoutesRequest {}, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?;
        reply
            .into_inner()
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
            .client
            .clone()
            .write_routes(with_timeout(request, STORE_CALL_TIMEOUT))
            .await
            .map_err(store_error)?
            .into_inner();
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
