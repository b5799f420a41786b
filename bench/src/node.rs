//! A syncd node served in this process on 127.0.0.1:0, for benchmarks.

use anyhow::Context;
use std::time::Duration;
use syncd::auth::{Principal, TokenAuthority};
use syncd::server::{NodeConfig, StoreLocation};

pub struct LocalNode {
    pub url: String,
    pub location: StoreLocation,
    auth: TokenAuthority,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), syncd::server::StartupError>>>,
    _data_dir: tempfile::TempDir,
}

impl LocalNode {
    /// `store`: "embedded" (a fresh temporary directory) or a scylla:// URL.
    pub async fn start(store: &str, allocator: seqsvc::AllocatorConfig) -> anyhow::Result<Self> {
        let location = StoreLocation::parse(store)?;
        let data_dir = tempfile::tempdir()?;
        let node = syncd::server::open_node(&NodeConfig {
            data_dir: data_dir.path().to_path_buf(),
            store: location.clone(),
            node_id: 0,
            allocator,
            seqsvc: Vec::new(),
            engine: syncd::engine::EngineConfig::default(),
        })
        .await
        .context("opening the syncd node")?;
        let auth = node.auth.clone();
        let listener = syncd::server::bind("127.0.0.1:0".parse()?).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(syncd::server::serve(listener, node, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            location,
            auth,
            stop: Some(stop),
            server: Some(server),
            _data_dir: data_dir,
        })
    }

    pub fn token(&self, principal: &Principal) -> anyhow::Result<String> {
        Ok(self.auth.issue(principal, Duration::from_secs(86_400))?)
    }

    pub fn service_token(&self) -> anyhow::Result<String> {
        self.token(&Principal::Service {
            name: "bench".into(),
        })
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}
