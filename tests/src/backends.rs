//! The real servers the backend suites run against (the CQL server and
//! OpenSearch, both started by the README's test command): where they are,
//! a keyspace or an index of a test's own, dropped afterwards, and the
//! flags a cluster node takes. A test that needs one fails, never skips,
//! when it does not answer.

use std::time::Duration;

/// The CQL server the README's test command starts (`TIMELINE_CQL_NODES`,
/// default 127.0.0.1:9042).
pub fn cql_nodes() -> String {
    std::env::var("TIMELINE_CQL_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

/// The flags of a cluster node over `store` (it advertises the port it
/// binds), with its writer lease's timings.
pub fn cluster_node_args(store: &str, lease_ms: u64, renew_ms: u64) -> Vec<String> {
    [
        "--store",
        store,
        "--advertise",
        "127.0.0.1:0",
        "--cluster-lease-ms",
        &lease_ms.to_string(),
        "--cluster-renew-ms",
        &renew_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A keyspace of one test's own on the test CQL server, dropped when the
/// value is dropped.
pub struct CqlKeyspace {
    pub name: String,
    /// The `--store` URL for syncd.
    pub url: String,
}

impl CqlKeyspace {
    /// Panics (the test fails, it is never skipped) when no server answers.
    pub fn new(test_name: &str) -> Self {
        let url = cql_store_url(test_name);
        let name = url
            .rsplit('/')
            .next()
            .and_then(|rest| rest.split('?').next())
            .unwrap_or_default()
            .to_owned();
        Self { name, url }
    }
}

impl Drop for CqlKeyspace {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a test's runtime: use a thread of its own.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let session = scylla::client::session_builder::SessionBuilder::new()
                    .known_nodes(cql_nodes().split(','))
                    .build()
                    .await?;
                session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test keyspace {}: {dropped:?}", self.name);
        }
    }
}

/// The OpenSearch node the README's test command starts
/// (`TIMELINE_OPENSEARCH_URL`, default http://127.0.0.1:9200).
pub fn opensearch_url() -> String {
    std::env::var("TIMELINE_OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// A search index of one test's own on the test OpenSearch node, deleted
/// when the value is dropped.
pub struct OpenSearchTestIndex {
    pub options: search::OpenSearchOptions,
}

impl OpenSearchTestIndex {
    /// Panics (the test fails, it is never skipped) when no node answers.
    pub fn new(test_name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("test-{test_name}-{}-{nanos}", std::process::id());
        let options = search::OpenSearchOptions::new(opensearch_url(), name);
        let checked = options.clone();
        let reachable =
            std::thread::spawn(move || search::OpenSearchIndex::open(&checked)?.delete())
                .join()
                .expect("the OpenSearch check does not panic");
        if let Err(error) = reachable {
            panic!(
                "no OpenSearch node at {} ({error}): the OpenSearch tests need one. Start it with \
                 `scripts/opensearch-server start` (scripts/test does this) or point \
                 TIMELINE_OPENSEARCH_URL at one",
                options.url
            );
        }
        Self { options }
    }

    /// The `syncd serve` / `syncd reindex` flags that select this index.
    pub fn args(&self) -> Vec<String> {
        [
            "--search-backend",
            "opensearch",
            "--opensearch-url",
            &self.options.url,
            "--opensearch-index",
            &self.options.index,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for OpenSearchTestIndex {
    fn drop(&mut self) {
        let options = self.options.clone();
        // Drop may run inside a test's runtime, where the index's blocking
        // client may not wait: a thread of its own.
        let dropped =
            std::thread::spawn(move || search::OpenSearchIndex::open(&options)?.delete()).join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not delete test index {}: {dropped:?}",
                self.options.index
            );
        }
    }
}

/// A `--store` URL for a fresh keyspace of its own on the test CQL server.
/// Panics (the test fails, it is never skipped) when no server answers.
/// Prefer [`CqlKeyspace`], which also drops the keyspace afterwards.
pub fn cql_store_url(test_name: &str) -> String {
    let nodes = cql_nodes();
    let first = nodes.split(',').next().unwrap_or_default().to_owned();
    let reachable = first
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        });
    assert!(
        reachable,
        "no CQL server at {nodes}: the ScyllaDB tests need one. Start it with `scripts/cql-server start` \
         (scripts/test does this) or point TIMELINE_CQL_NODES at a ScyllaDB cluster"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "scylla://{nodes}/tl_{test_name}_{}_{nanos}?replication=1",
        std::process::id()
    )
}
