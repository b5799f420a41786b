//! The embedded backend: one fjall database, one writer thread, group commit.
//!
//! Writers hand their batches to a dedicated thread over a bounded queue. The
//! thread drains up to [`EmbeddedStoreConfig::max_group`] requests, applies
//! them as one atomic fjall batch, fsyncs the journal once, then answers all
//! of them. Under load many sends share one fsync; alone, a send pays one.
//! Reads run on tokio's blocking pool (they may touch disk).
//!
//! Key layout (all integers big-endian so byte order is numeric order):
//! - `inbox`:        user_id | seq           -> Entry
//! - `conv`:         conversation_id | conv_seq -> Entry
//! - `conversations`: conversation_id         -> Conversation
//! - `receipts`:     IdempotencyKey::to_bytes -> Receipt (with the time it
//!   was written: past [`crate::RECEIPT_RETENTION`] reads ignore it and
//!   [`Receipts::expire_receipts`] deletes it)
//! - `checkpoints`:  user_id | device_id      -> u64
//! - `large_groups`: user_id | conversation_id -> membership (joined and
//!   left positions; empty in indexes written before positions were kept)
//! - `inbox_floors`: user_id                 -> u64
//! - `revocations`:  user_id | device_id (empty: every device) -> u64
//! - `revocation_feed`: recorded_at_ms | user_id | device_id -> u64
//!   (see `revocations`)
//! - `read_states`:  user_id | conversation_id -> ReadStateRow
//! - `readers`:      conversation_id | user_id -> highest marker | latest join
//! - `read_state_applied`: user_id           -> u64 (the seq the rows were
//!   folded through; saved in the same batch as the rows)
//! - `copies`:       conversation_id | conv_seq -> where the event's inbox
//!   copies went (messages and edits: a recall rewrites them)
//! - `members`:      conversation_id | user_id -> empty (the member table
//!   of large groups: a row per current member, removed when they leave)
//!
//! If an fsync fails the store is poisoned: data that reached the page cache
//! may not be durable and a later fsync may falsely succeed, so every later
//! write fails with [`StoreError::Poisoned`] until the process restarts and
//! recovers from the journal.
//!
//! Layout: keyspaces, the store handle, the event log, read states,
//! retention and checkpoints here; the writer thread's group commit in
//! `group_commit`; freeing flushed memtables off fjall's locks in
//! `reaper`; timeline reads in `timeline_reads`; idempotency
//! receipts in `receipts`; token cutoffs in `revocations`.

use crate::codec::{self, EntryEncoder};
use crate::{
    Checkpoints, Conversation, ConversationRange, ConversationReads, ConversationScan, Entry,
    EventCommit, EventLog, IdempotencyKey, InboxRange, InboxReads, InboxRetention, InboxTime,
    InboxWrite, LargeGroupMembership, Order, ReadReceipts, ReadStateRow, ReadStateSnapshot,
    ReadStates, ReaderMark, Receipt, Receipts, Result, StoreError,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Debug)]
pub struct EmbeddedStoreConfig {
    /// Pending write requests queued for the writer thread; senders wait
    /// (backpressure) when it is full.
    pub queue_capacity: usize,
    /// Most requests applied under one fsync.
    pub max_group: usize,
    /// Most inbox copies one event may carry.
    pub max_inbox_writes: usize,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    /// fjall's background threads (memtable flushes and compactions).
    pub worker_threads: usize,
}

/// fjall 3.1's worker 0 hands every compaction request back to the queue
/// (to stay free for flushes) and takes the next message at once: while the
/// other workers are all busy compacting, it spins on the queue. With the
/// default of one worker per core (two here) that spin took about a fifth
/// of the server's CPU under a sustained write load; with more workers an
/// idle one takes the request and the spin ends. One worker alone avoids
/// the spin but can deadlock fjall's own queue under heavy writes.
pub const DEFAULT_WORKER_THREADS: usize = 4;

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_group: 1024,
            max_inbox_writes: 100_000,
            cache_bytes: 64 << 20,
            worker_threads: DEFAULT_WORKER_THREADS,
        }
    }
}

enum WriteOp {
    Event(Box<EventCommit>),
    Trim {
        user_id: u64,
        below_seq: u64,
        keys: Vec<Vec<u8>>,
    },
    Checkpoint {
        user_id: u64,
        device_id: String,
        seq: u64,
    },
    /// Deletes each receipt that still holds the expired value read by the
    /// sweep (a send may have written a new one under the key since).
    ExpireReceipts {
        rows: Vec<(Vec<u8>, Vec<u8>)>,
    },
    Revoke {
        revocation: crate::Revocation,
        recorded_at_ms: u64,
    },
    ReadStates {
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    },
}

/// Receipts one sweep step deletes in one write.
const RECEIPT_SWEEP_BATCH: usize = 10_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

enum WriteOutcome {
    Done,
    Checkpoint(u64),
    Revoked(u64),
}

struct WriteRequest {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome>>,
}

#[derive(Clone)]
struct Keyspaces {
    db: fjall::Database,
    inbox: fjall::Keyspace,
    conv: fjall::Keyspace,
    conversations: fjall::Keyspace,
    receipts: fjall::Keyspace,
    checkpoints: fjall::Keyspace,
    large_groups: fjall::Keyspace,
    inbox_floors: fjall::Keyspace,
    revocations: fjall::Keyspace,
    revocation_feed: fjall::Keyspace,
    read_states: fjall::Keyspace,
    read_state_applied: fjall::Keyspace,
    readers: fjall::Keyspace,
    copies: fjall::Keyspace,
    members: fjall::Keyspace,
}

impl Keyspaces {
    /// Every keyspace the database holds, asked of the database itself, so
    /// none is left out as keyspaces are added.
    fn all(&self) -> Result<Vec<fjall::Keyspace>> {
        self.db
            .list_keyspace_names()
            .iter()
            .map(|name| {
                self.db
                    .keyspace(name, fjall::KeyspaceCreateOptions::default)
                    .map_err(io)
            })
            .collect()
    }
}

/// A cheap-to-clone handle; the writer thread stops when the last handle is
/// dropped (after finishing queued writes).
#[derive(Clone)]
pub struct EmbeddedStore {
    keyspaces: Keyspaces,
    writes: mpsc::Sender<WriteRequest>,
    poisoned: Arc<AtomicBool>,
    config: EmbeddedStoreConfig,
    _writer: Arc<WriterThread>,
    _reaper: Arc<reaper::Reaper>,
}

struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        // Runs when the last store handle (and so the last queue sender) is
        // gone: the thread drains what is queued and exits.
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn key2(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

fn checkpoint_key(user_id: u64, device_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + device_id.len());
    key.extend_from_slice(&user_id.to_be_bytes());
    key.extend_from_slice(device_id.as_bytes());
    key
}

/// A reader index value: the marker then the join, big-endian.
fn encode_reader(mark: &ReaderMark) -> [u8; 16] {
    key2(mark.read_through, mark.joined)
}

fn decode_reader(user_id: u64, bytes: &[u8]) -> Result<ReaderMark> {
    if bytes.len() != 16 {
        return Err(corrupt("reader index value is not 16 bytes"));
    }
    Ok(ReaderMark {
        user_id,
        read_through: decode_u64(&bytes[..8])?,
        joined: decode_u64(&bytes[8..])?,
    })
}

fn decode_u64(bytes: &[u8]) -> Result<u64> {
    let raw: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("checkpoint is not 8 bytes"))?;
    Ok(u64::from_be_bytes(raw))
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    /// Blocking; fails if another process has the directory open.
    pub fn open(dir: &Path, config: EmbeddedStoreConfig) -> Result<Self> {
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(config.cache_bytes)
            .worker_threads(config.worker_threads.max(1))
            .open()
            .map_err(|e| StoreError::Unavailable(format!("open {}: {e}", dir.display())))?;
        let open = |name: &str| {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)
                .map_err(io)
        };
        let keyspaces = Keyspaces {
            inbox: open("inbox")?,
            conv: open("conv")?,
            conversations: open("conversations")?,
            receipts: open("receipts")?,
            checkpoints: open("checkpoints")?,
            large_groups: open("large_groups")?,
            inbox_floors: open("inbox_floors")?,
            revocations: open("revocations")?,
            revocation_feed: open("revocation_feed")?,
            read_states: open("read_states")?,
            read_state_applied: open("read_state_applied")?,
            readers: open("readers")?,
            copies: open("copies")?,
            members: open("members")?,
            db,
        };
        let (writes, queue) = mpsc::channel(config.queue_capacity.max(1));
        let poisoned = Arc::new(AtomicBool::new(false));
        // Before the writer: a writer thread dropped unjoined (had the
        // reaper failed to start) would hold the database open past this
        // call's error.
        let reaper = reaper::Reaper::start(keyspaces.all()?).map_err(io)?;
        let writer = {
            let keyspaces = keyspaces.clone();
            let poisoned = Arc::clone(&poisoned);
            let max_group = config.max_group.max(1);
            std::thread::Builder::new()
                .name("timeline-writer".into())
                .spawn(move || group_commit::writer_loop(keyspaces, queue, poisoned, max_group))
                .map_err(io)?
        };
        Ok(Self {
            keyspaces,
            writes,
            poisoned,
            config,
            _writer: Arc::new(WriterThread(Some(writer))),
            _reaper: Arc::new(reaper),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(poisoned_error());
        }
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("writer thread stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("writer thread stopped".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Keyspaces) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let keyspaces = self.keyspaces.clone();
        tokio::task::spawn_blocking(move || f(&keyspaces))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

fn wrong_outcome() -> StoreError {
    StoreError::Io("writer answered the wrong request".into())
}

fn poisoned_error() -> StoreError {
    StoreError::Poisoned("an earlier fsync failed; restart to recover from the journal".into())
}

#[async_trait]
impl EventLog for EmbeddedStore {
    async fn commit_event(&self, commit: EventCommit) -> Result<()> {
        if commit.inbox.len() > self.config.max_inbox_writes {
            return Err(StoreError::InvalidArgument(format!(
                "{} inbox copies in one event, at most {}",
                commit.inbox.len(),
                self.config.max_inbox_writes
            )));
        }
        self.write(WriteOp::Event(Box::new(commit)))
            .await
            .map(|_| ())
    }

    /// Nothing to do: an event is one atomic batch, so a crash leaves it
    /// whole or absent.
    async fn recover(&self) -> Result<usize> {
        Ok(0)
    }
}

#[async_trait]
impl ReadReceipts for EmbeddedStore {
    async fn reader_marks(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<ReaderMark>> {
        let mut users = users.to_vec();
        users.sort_unstable();
        users.dedup();
        self.read(move |ks| {
            let mut marks = Vec::new();
            for user_id in users {
                if let Some(value) = ks.readers.get(key2(conversation_id, user_id)).map_err(io)? {
                    marks.push(decode_reader(user_id, &value)?);
                }
            }
            Ok(marks)
        })
        .await
    }
}

#[async_trait]
impl ReadStates for EmbeddedStore {
    async fn read_states(&self, user_id: u64) -> Result<ReadStateSnapshot> {
        self.read(move |ks| {
            let applied_seq = match ks
                .read_state_applied
                .get(user_id.to_be_bytes())
                .map_err(io)?
            {
                Some(v) => decode_u64(&v)?,
                None => 0,
            };
            let mut rows = Vec::new();
            for guard in ks.read_states.prefix(user_id.to_be_bytes()) {
                let value = guard.value().map_err(io)?;
                rows.push(codec::decode_read_state(value.as_ref())?);
            }
            Ok(ReadStateSnapshot { applied_seq, rows })
        })
        .await
    }

    async fn save_read_states(
        &self,
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    ) -> Result<()> {
        self.write(WriteOp::ReadStates {
            user_id,
            applied_seq,
            rows,
        })
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl InboxRetention for EmbeddedStore {
    async fn trim_inbox(&self, user_id: u64, below_seq: u64, max_entries: usize) -> Result<usize> {
        // Find the keys on the blocking pool, delete them (and raise the
        // floor) through the writer, so the trim is one durable batch.
        let keys = self
            .read(move |ks| {
                let range = key2(user_id, 0)..key2(user_id, below_seq);
                ks.inbox
                    .range(range)
                    .take(max_entries)
                    .map(|guard| guard.key().map(|k| k.to_vec()).map_err(io))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        let trimmed = keys.len();
        self.write(WriteOp::Trim {
            user_id,
            below_seq,
            keys,
        })
        .await?;
        Ok(trimmed)
    }

    async fn inbox_floor(&self, user_id: u64) -> Result<u64> {
        self.read(
            move |ks| match ks.inbox_floors.get(user_id.to_be_bytes()).map_err(io)? {
                Some(v) => decode_u64(&v),
                None => Ok(0),
            },
        )
        .await
    }

    async fn inbox_times(&self, user_id: u64, range: InboxRange) -> Result<Vec<InboxTime>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |ks| {
            let keys = key2(user_id, range.after + 1)..=key2(user_id, range.through);
            ks.inbox
                .range(keys)
                .take(range.limit)
                .map(|guard| codec::decode_inbox_time(guard.value().map_err(io)?.as_ref()))
                .collect()
        })
        .await
    }
}

#[async_trait]
impl Checkpoints for EmbeddedStore {
    async fn save_checkpoint(&self, user_id: u64, device_id: &str, seq: u64) -> Result<u64> {
        match self
            .write(WriteOp::Checkpoint {
                user_id,
                device_id: device_id.to_owned(),
                seq,
            })
            .await?
        {
            WriteOutcome::Checkpoint(stored) => Ok(stored),
            _ => Err(wrong_outcome()),
        }
    }

    async fn checkpoint(&self, user_id: u64, device_id: &str) -> Result<u64> {
        let key = checkpoint_key(user_id, device_id);
        self.read(move |ks| match ks.checkpoints.get(key).map_err(io)? {
            Some(v) => decode_u64(&v),
            None => Ok(0),
        })
        .await
    }
}

mod group_commit;
mod reaper;
mod receipts;
mod revocations;
#[cfg(test)]
mod tests;
mod timeline_reads;
