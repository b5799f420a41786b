//! The engine's growth bounds: what a device can make a node hold (loaded
//! allocator sections, reads in flight) stays bounded however it asks.

use crate::limits::{MAX_MEMBERS_PER_CALL, MAX_USER_ID};
use crate::testkit::{allocator_on, device, test_store};
use seqsvc::allocator::MAX_LOADED_SECTIONS;
use seqsvc::{AllocatorConfig, MemoryMaxSeqStore};
use std::sync::Arc;

/// A device picks member ids freely; each id in a section of its own
/// used to keep a section and a page (about 8 KiB) loaded for good, so
/// every CreateConversation of 1,000 random ids grew the node by about
/// 8 MiB. The sections loaded must stay bounded however many are made.
#[tokio::test]
async fn conversations_of_random_member_ids_keep_bounded_allocator_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = test_store(dir.path(), false);
    let seq_store = Arc::new(MemoryMaxSeqStore::new());
    let (allocator, ids) = allocator_on(seq_store, AllocatorConfig::default()).await;
    let engine = crate::engine::Engine::new(store, allocator.clone(), ids, Default::default());
    let conversations = 2 * MAX_LOADED_SECTIONS / MAX_MEMBERS_PER_CALL + 2;
    let mut grown = Vec::new();
    for _ in 0..conversations {
        let before = allocator.loaded_bytes();
        let members: Vec<u64> = (1..MAX_MEMBERS_PER_CALL)
            .map(|_| {
                let random = uuid::Uuid::new_v4().as_u64_pair().0;
                (random & MAX_USER_ID).max(2)
            })
            .collect();
        crate::testkit::group(&engine, 1, members).await;
        grown.push(allocator.loaded_bytes() as i64 - before as i64);
    }
    eprintln!(
        "per CreateConversation of {MAX_MEMBERS_PER_CALL} random ids: \
         allocator bytes grown {grown:?}"
    );
    let loaded = allocator.loaded_sections();
    assert!(loaded <= MAX_LOADED_SECTIONS, "{loaded} sections loaded");
    let bytes = allocator.loaded_bytes();
    assert!(
        bytes <= MAX_LOADED_SECTIONS * 9 * 1024,
        "{bytes} bytes loaded"
    );
    engine.shutdown().await;
}

/// Delays conversation reads and records how many run at once.
struct SlowConversationReads {
    inner: Arc<crate::testkit::TestStore>,
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

const READ_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

mod probe {
    use super::SlowConversationReads;
    use std::sync::atomic::Ordering;
    use timeline_store::*;

    #[async_trait::async_trait]
    impl EventLog for SlowConversationReads {
        async fn commit_event(&self, commit: EventCommit) -> Result<()> {
            self.inner.commit_event(commit).await
        }
        async fn recover(&self) -> Result<usize> {
            self.inner.recover().await
        }
    }

    #[async_trait::async_trait]
    impl InboxReads for SlowConversationReads {
        async fn read_inbox(&self, user_id: u64, range: InboxRange) -> Result<Vec<Entry>> {
            self.inner.read_inbox(user_id, range).await
        }
        async fn last_inbox_seq(&self, user_id: u64) -> Result<u64> {
            self.inner.last_inbox_seq(user_id).await
        }
    }

    #[async_trait::async_trait]
    impl InboxRetention for SlowConversationReads {
        async fn trim_inbox(&self, user_id: u64, below: u64, max: usize) -> Result<usize> {
            self.inner.trim_inbox(user_id, below, max).await
        }
        async fn inbox_floor(&self, user_id: u64) -> Result<u64> {
            self.inner.inbox_floor(user_id).await
        }
        async fn inbox_times(&self, user_id: u64, range: InboxRange) -> Result<Vec<InboxTime>> {
            self.inner.inbox_times(user_id, range).await
        }
    }

    #[async_trait::async_trait]
    impl ConversationMembers for SlowConversationReads {
        async fn members_among(&self, id: u64, users: &[u64]) -> Result<Vec<u64>> {
            self.inner.members_among(id, users).await
        }
        async fn list_members(&self, id: u64, after: u64, limit: usize) -> Result<Vec<u64>> {
            self.inner.list_members(id, after, limit).await
        }
    }

    #[async_trait::async_trait]
    impl timeline_store::ConversationScan for SlowConversationReads {
        async fn conversation_ids(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>> {
            self.inner.conversation_ids(after, limit).await
        }
    }

    #[async_trait::async_trait]
    impl ConversationReads for SlowConversationReads {
        async fn conversation(&self, id: u64) -> Result<Option<Conversation>> {
            self.inner.conversation(id).await
        }
        async fn read_conversation(&self, id: u64, range: ConversationRange) -> Result<Vec<Entry>> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(super::READ_DELAY).await;
            let read = self.inner.read_conversation(id, range).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            read
        }
        async fn large_group_memberships(
            &self,
            user_id: u64,
        ) -> Result<Vec<timeline_store::LargeGroupMembership>> {
            self.inner.large_group_memberships(user_id).await
        }
        async fn inbox_copies(
            &self,
            id: u64,
            conv_seq: u64,
        ) -> Result<Vec<timeline_store::InboxWrite>> {
            self.inner.inbox_copies(id, conv_seq).await
        }
    }

    #[async_trait::async_trait]
    impl Checkpoints for SlowConversationReads {
        async fn save_checkpoint(&self, user_id: u64, device: &str, seq: u64) -> Result<u64> {
            self.inner.save_checkpoint(user_id, device, seq).await
        }
        async fn checkpoint(&self, user_id: u64, device: &str) -> Result<u64> {
            self.inner.checkpoint(user_id, device).await
        }
    }

    #[async_trait::async_trait]
    impl Receipts for SlowConversationReads {
        async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>> {
            self.inner.receipt(key).await
        }
    }

    #[async_trait::async_trait]
    impl Revocations for SlowConversationReads {
        async fn revoke(&self, revocation: &Revocation, at_ms: u64) -> Result<u64> {
            self.inner.revoke(revocation, at_ms).await
        }
        async fn revoked_before(&self, user_id: u64, device: &str) -> Result<RevokedBefore> {
            self.inner.revoked_before(user_id, device).await
        }
        async fn revocations_since(
            &self,
            since_ms: u64,
            limit: usize,
        ) -> Result<Vec<RecordedRevocation>> {
            self.inner.revocations_since(since_ms, limit).await
        }
    }

    #[async_trait::async_trait]
    impl ReadReceipts for SlowConversationReads {
        async fn reader_marks(
            &self,
            conversation_id: u64,
            users: &[u64],
        ) -> Result<Vec<ReaderMark>> {
            self.inner.reader_marks(conversation_id, users).await
        }
    }

    #[async_trait::async_trait]
    impl ReadStates for SlowConversationReads {
        async fn read_states(&self, user_id: u64) -> Result<ReadStateSnapshot> {
            self.inner.read_states(user_id).await
        }
        async fn save_read_states(
            &self,
            user_id: u64,
            applied_seq: u64,
            rows: Vec<ReadStateRow>,
        ) -> Result<()> {
            self.inner
                .save_read_states(user_id, applied_seq, rows)
                .await
        }
    }
}

/// Sync reports the newest conv_seq of every large group of the user;
/// read one group after another, a user in hundreds of them made every
/// Sync wait for hundreds of round trips in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_in_many_large_groups_syncs_with_bounded_parallel_reads() {
    use crate::limits::LARGE_GROUP_READS_IN_FLIGHT;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SlowConversationReads {
        inner: test_store(dir.path(), false),
        in_flight: Default::default(),
        most: Default::default(),
    });
    let (allocator, ids) = allocator_on(
        Arc::new(MemoryMaxSeqStore::new()),
        AllocatorConfig::default(),
    )
    .await;
    let config = crate::engine::EngineConfig {
        large_group_threshold: 1,
        ..Default::default()
    };
    let engine = crate::engine::Engine::new(store.clone(), allocator, ids, config);
    let groups = 3 * LARGE_GROUP_READS_IN_FLIGHT;
    let mut created = Vec::new();
    for other in 0..groups as u64 {
        created.push(crate::testkit::group(&engine, 1, vec![100 + other]).await);
    }
    store.most.store(0, std::sync::atomic::Ordering::SeqCst);
    let page = engine.sync(&device(1, "d"), None, 10).await.unwrap();
    let mut listed: Vec<u64> = page
        .large_groups
        .iter()
        .map(|g| g.conversation_id)
        .collect();
    listed.sort_unstable();
    created.sort_unstable();
    assert_eq!(listed, created, "every large group is listed");
    assert!(page.large_groups.iter().all(|g| g.conv_seq >= 1));
    let most = store.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most > 1 && most <= LARGE_GROUP_READS_IN_FLIGHT,
        "{most} conversation reads at once for {groups} large groups"
    );
    engine.shutdown().await;
}
