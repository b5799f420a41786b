//! The one engine fixture the unit tests of every module build on: an
//! engine over the embedded store in a temporary directory, wrapped in a
//! store with the faults a real deployment sees, and the in-memory
//! `max_seq` store.

use crate::auth::Principal;
use crate::engine::{Engine, EngineConfig, NewConversation, SendCommand};
use seqsvc::{Allocator, AllocatorConfig, MemoryMaxSeqStore, MsgIdGenerator};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use timeline_store::{
    Conversation, ConversationKind, EmbeddedStore, EmbeddedStoreConfig, Entry, EventCommit,
    IdempotencyKey, Receipt, TimelineStore,
};
use tonic::async_trait;
use uuid::Uuid;

/// The embedded store with faults a real deployment sees. With `jitter`,
/// every commit is delayed by a random 0-2 ms, so writes become durable in a
/// different order than their seqs were allocated (the situation the sync
/// horizon exists for), and every inbox read by up to 0.5 ms, so writes
/// start between a reader's limit and its read. The next `failures` commits
/// fail with an I/O error, writing nothing, like a store that times out.
pub struct TestStore {
    inner: EmbeddedStore,
    jitter: bool,
    pub failures: AtomicU32,
    /// Inbox copies written so far (to check the cost of a send).
    pub inbox_writes: AtomicUsize,
}

async fn jitter(max_micros: u128) {
    let micros = (Uuid::new_v4().as_u128() % max_micros) as u64;
    tokio::time::sleep(Duration::from_micros(micros)).await;
}

#[async_trait]
impl TimelineStore for TestStore {
    async fn commit_event(&self, commit: EventCommit) -> timeline_store::Result<()> {
        if self.jitter {
            jitter(2_000).await;
        }
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(timeline_store::StoreError::Io("injected timeout".into()));
        }
        self.inbox_writes
            .fetch_add(commit.inbox.len(), Ordering::SeqCst);
        self.inner.commit_event(commit).await
    }
    async fn conversation(&self, id: u64) -> timeline_store::Result<Option<Conversation>> {
        self.inner.conversation(id).await
    }
    async fn receipt(&self, key: &IdempotencyKey) -> timeline_store::Result<Option<Receipt>> {
        self.inner.receipt(key).await
    }
    async fn read_inbox(
        &self,
        user: u64,
        after: u64,
        through: u64,
        limit: usize,
    ) -> timeline_store::Result<Vec<Entry>> {
        if self.jitter {
            jitter(500).await;
        }
        self.inner.read_inbox(user, after, through, limit).await
    }
    async fn large_groups(&self, user: u64) -> timeline_store::Result<Vec<u64>> {
        self.inner.large_groups(user).await
    }
    async fn trim_inbox(&self, user: u64, below: u64, max: usize) -> timeline_store::Result<usize> {
        self.inner.trim_inbox(user, below, max).await
    }
    async fn inbox_floor(&self, user: u64) -> timeline_store::Result<u64> {
        self.inner.inbox_floor(user).await
    }
    async fn last_inbox_seq(&self, user: u64) -> timeline_store::Result<u64> {
        self.inner.last_inbox_seq(user).await
    }
    async fn read_conversation(
        &self,
        id: u64,
        after: u64,
        before: u64,
        newest_first: bool,
        limit: usize,
    ) -> timeline_store::Result<Vec<Entry>> {
        self.inner
            .read_conversation(id, after, before, newest_first, limit)
            .await
    }
    async fn save_checkpoint(
        &self,
        user: u64,
        device: &str,
        seq: u64,
    ) -> timeline_store::Result<u64> {
        self.inner.save_checkpoint(user, device, seq).await
    }
    async fn checkpoint(&self, user: u64, device: &str) -> timeline_store::Result<u64> {
        self.inner.checkpoint(user, device).await
    }
    async fn recover(&self) -> timeline_store::Result<usize> {
        self.inner.recover().await
    }
}

/// An engine and the store under it (kept alive with its directory).
pub struct Fixture {
    pub engine: Arc<Engine>,
    pub store: Arc<TestStore>,
    _dir: tempfile::TempDir,
}

pub struct FixtureBuilder {
    jitter: bool,
    allocator: AllocatorConfig,
    config: EngineConfig,
}

/// The default fixture: no jitter, the default allocator and engine config.
pub fn fixture() -> FixtureBuilder {
    FixtureBuilder {
        jitter: false,
        allocator: AllocatorConfig::default(),
        config: EngineConfig::default(),
    }
}

impl FixtureBuilder {
    /// Random delays on commits and inbox reads (see [`TestStore`]).
    pub fn jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// Tiny allocator sections and steps, so sections are shared and steps
    /// run out constantly.
    pub fn small_sections(mut self) -> Self {
        self.allocator = AllocatorConfig {
            step: 16,
            section_size: 4,
        };
        self
    }

    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    pub async fn build(self) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path(), self.jitter);
        let (allocator, ids) = allocator(self.allocator).await;
        let engine = Engine::new(store.clone(), allocator, ids, self.config);
        Fixture {
            engine,
            store,
            _dir: dir,
        }
    }
}

/// A [`TestStore`] over a new embedded store in `dir`.
pub fn test_store(dir: &std::path::Path, jitter: bool) -> Arc<TestStore> {
    Arc::new(TestStore {
        inner: EmbeddedStore::open(dir, EmbeddedStoreConfig::default()).unwrap(),
        jitter,
        failures: AtomicU32::new(0),
        inbox_writes: AtomicUsize::new(0),
    })
}

/// An allocator and an id generator over one in-memory `max_seq` store.
pub async fn allocator(config: AllocatorConfig) -> (Allocator, MsgIdGenerator) {
    allocator_on(Arc::new(MemoryMaxSeqStore::new()), config).await
}

/// An allocator and an id generator over `seq_store` (reopened on the same
/// store: a restart, with the seq jump a restart makes).
pub async fn allocator_on(
    seq_store: Arc<dyn seqsvc::MaxSeqStore>,
    config: AllocatorConfig,
) -> (Allocator, MsgIdGenerator) {
    let allocator = Allocator::new(config, Arc::clone(&seq_store)).unwrap();
    let ids = MsgIdGenerator::open(1, seqsvc::snowflake::system_clock(), seq_store)
        .await
        .unwrap();
    (allocator, ids)
}

/// An engine on existing stores: call again on the same stores to restart.
pub async fn engine_on(
    store: &Arc<TestStore>,
    seq_store: Arc<dyn seqsvc::MaxSeqStore>,
    config: EngineConfig,
) -> Arc<Engine> {
    let (allocator, ids) = allocator_on(seq_store, AllocatorConfig::default()).await;
    Engine::new(store.clone(), allocator, ids, config)
}

pub fn device(user_id: u64, device_id: &str) -> Principal {
    Principal::Device {
        user_id,
        device_id: device_id.into(),
    }
}

/// A group created by the device of `creator`, with `members` besides it.
pub async fn group(engine: &Arc<Engine>, creator: u64, members: Vec<u64>) -> u64 {
    engine
        .create_conversation(
            device(creator, "d"),
            NewConversation {
                kind: ConversationKind::Group,
                members,
                title: String::new(),
                client_request_id: None,
            },
        )
        .await
        .unwrap()
        .conversation_id
}

pub fn message(conversation_id: u64, text: &str, id: Option<Uuid>) -> SendCommand {
    SendCommand {
        conversation_id,
        text: text.into(),
        client_msg_id: id,
        sender_id: None,
    }
}
