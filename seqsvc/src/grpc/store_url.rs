//! The shared store a `--store` URL names.

use super::RemoteStore;
use crate::store::SharedStore;
use crate::{Result, SeqError};
use std::sync::Arc;

/// The shared store named by a `--store` URL: `http://HOST:PORT` or
/// `https://HOST:PORT` (a `seqsvc store` process; TLS needs
/// [`super::use_client_tls`]) or `scylla://...` (the syncd URL form).
pub async fn open_store(url: &str) -> Result<Arc<dyn SharedStore>> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Arc::new(RemoteStore::connect_lazy(url)?));
    }
    if url.starts_with("scylla://") {
        let config = cql_kit::ScyllaConfig::parse(url)?;
        let session = config.connect().await?;
        let store = crate::CqlMaxSeqStore::open(session, &config.keyspace).await?;
        return Ok(Arc::new(store));
    }
    Err(SeqError::InvalidArgument(format!(
        "store {url:?}: expected http(s)://HOST:PORT or scylla://host:port/keyspace"
    )))
}
