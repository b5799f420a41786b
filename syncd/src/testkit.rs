//! The one engine fixture the unit tests of every module build on: an
//! engine over the embedded store in a temporary directory, wrapped in a
//! store with the faults a real deployment sees, and the in-memory
//! `max_seq` store.

use crate::auth::Principal;
use crate::engine::{Engine, EngineConfig, NewConversation, Retention, SendCommand};
use seqsvc::{Allocator, AllocatorConfig, MemoryMaxSeqStore, MsgIdGenerator};
use std::sync::Arc;
use std::time::Duration;
use timeline_store::testsuite::{Faults, FaultyStore, MemoryStore};
use timeline_store::{Conversation, ConversationKind, EmbeddedStore, EmbeddedStoreConfig, Entry};
use uuid::Uuid;

/// The embedded store with faults a real deployment sees (see
/// `FaultyStore`): with `jitter`, every commit is delayed by a random 0-2 ms,
/// so writes become durable in a different order than their seqs were
/// allocated (the situation the sync horizon exists for), and every inbox
/// read by up to 0.5 ms, so writes start between a reader's limit and its
/// read. `fail_next_commits` makes commits fail with an I/O error, writing
/// nothing, like a store that times out.
pub type TestStore = FaultyStore<EmbeddedStore>;

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

/// The in-memory store with the same faults: no disk and no blocking
/// thread, so a test may pause the clock and let timeouts and background
/// retries run in virtual time.
pub type MemoryTestStore = FaultyStore<MemoryStore>;

/// An engine over a new [`MemoryTestStore`] (for tests on a paused clock).
pub async fn memory_engine(config: EngineConfig) -> (Arc<Engine>, Arc<MemoryTestStore>) {
    let store = Arc::new(FaultyStore::new(MemoryStore::new(), 1));
    let (allocator, ids) = allocator(AllocatorConfig::default()).await;
    (Engine::new(store.clone(), allocator, ids, config), store)
}

/// A [`TestStore`] over a new embedded store in `dir`, with a random seed
/// (printed, so a failure can be replayed with `FaultyStore::new`).
pub fn test_store(dir: &std::path::Path, jitter: bool) -> Arc<TestStore> {
    let inner = EmbeddedStore::open(dir, EmbeddedStoreConfig::default()).unwrap();
    let seed = u64::from_le_bytes(Uuid::new_v4().as_bytes()[..8].try_into().unwrap());
    let faults = if jitter {
        Faults {
            commit_delay: Duration::from_millis(2),
            inbox_read_delay: Duration::from_micros(500),
            ..Faults::default()
        }
    } else {
        Faults::default()
    };
    eprintln!("test store seed {seed}");
    Arc::new(FaultyStore::new(inner, seed).with_faults(faults))
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

/// A conversation record (for tests of rules that take one).
pub fn record(conversation_id: u64, members: &[u64], read_fanout: bool) -> Conversation {
    Conversation {
        conversation_id,
        kind: ConversationKind::Group,
        members: members.to_vec(),
        member_count: members.len() as u64,
        title: String::new(),
        created_at_ms: 0,
        read_fanout,
    }
}

pub fn service() -> Principal {
    Principal::Service { name: "ops".into() }
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

/// Holds back the inbox horizons of `conversation`'s members: a send of
/// `sender` there fails at the fence after its seqs were allocated, so
/// what is stored for them later lies past what a fold reads.
pub async fn hold_back(fx: &Fixture, sender: u64, conversation: u64) {
    fx.store.fail_commits_where(
        |commit| commit.entry.text == "held",
        || timeline_store::StoreError::Fenced("a newer writer sealed the store".into()),
    );
    let held = fx
        .engine
        .send(device(sender, "d"), message(conversation, "held", None))
        .await;
    assert!(held.is_err());
    fx.store.clear_aimed_fault();
}

pub fn message(conversation_id: u64, text: &str, id: Option<Uuid>) -> SendCommand {
    SendCommand {
        conversation_id,
        text: text.into(),
        client_msg_id: id,
        sender_id: None,
        mentions: Default::default(),
        priority: false,
    }
}

/// An engine config that keeps the newest `max_entries` inbox entries.
pub fn keeping(max_entries: u64) -> EngineConfig {
    EngineConfig {
        retention: Retention {
            max_entries,
            ..Retention::default()
        },
        ..EngineConfig::default()
    }
}

/// Sends `count` messages ("0", "1", ...) from user `from`'s device.
pub async fn send_numbered(engine: &Arc<Engine>, from: u64, conversation_id: u64, count: usize) {
    for i in 0..count {
        engine
            .send(
                device(from, "d"),
                message(conversation_id, &i.to_string(), None),
            )
            .await
            .unwrap();
    }
}

/// The texts of entries, in order.
pub fn texts(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.text.as_str()).collect()
}
