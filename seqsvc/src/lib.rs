//! seqsvc: WeChat-style sequence allocation.
//!
//! Every id (a user's inbox, a conversation) owns a 64-bit sequence that only
//! ever increases. The allocator keeps `cur_seq` per id in memory and a
//! persisted `max_seq` per **section** (a block of adjacent ids sharing one
//! value). Handing out a seq above `max_seq` first raises `max_seq` by whole
//! **steps** and waits until the store reports it durable, so persistence I/O
//! happens once per step, not once per seq.
//!
//! # Invariants
//! - Per id, seqs strictly increase across calls, restarts and store reloads;
//!   a restart resumes at the section's persisted `max_seq` (a jump of at most
//!   one step) and never reissues a seq.
//! - Every returned seq is `<=` the durably stored `max_seq` of its section.
//!   A store error becomes an error reply; nothing above the stored value is
//!   handed out.
//! - The store only ever raises `max_seq`.
//! - Message ids ([`snowflake`]) never repeat within a node id, also when the
//!   wall clock steps back, within a run or across a restart.
//!
//! # Layout
//! - [`allocator`]: sections, steps, batch allocation, prefetch.
//! - [`store`]: the [`MaxSeqStore`] and [`RouteStore`] traits, the
//!   embedded (fjall) implementation and [`claim_layout`] (a store's
//!   `max_seq` values are kept only under the layout that wrote them); [`cql`]: the ScyllaDB/CQL
//!   implementation (raised only by lightweight transactions; URL, connect
//!   and the `[applied]` reader come from `cql-kit`, shared with
//!   timeline-store).
//! - [`snowflake`]: 64-bit time-ordered message ids with a persisted clock
//!   reservation.
//!
//! - [`routing`]: the routing table (slots of sections to AllocSvrs, lease
//!   timings) and deterministic rebalancing; [`lease`]: lease fencing of
//!   one AllocSvr (`activation > lease + sync interval`).
//! - [`alloc_server`] and [`arbiter`]: the two roles' cores, no sockets.
//! - [`grpc`]: the one mapping of [`SeqError`] to `tonic::Status`, channels
//!   and serving; one file per service (`store_service`, `arbiter_service`,
//!   `alloc_service` with the heartbeats), the store client
//!   (`remote_store`) and the `--store` URL opener (`store_url`).
//! - [`incoming`]: accepted connections, bounded and with TCP_NODELAY;
//!   [`logging`]: the log setup of every server binary (syncd uses both);
//!   [`telemetry`]: their Prometheus metrics (the recorder, the `/metrics`
//!   listener, the per-RPC layer, process metrics).
//! - [`client`]: the routing client (batches split per owner, "moved"
//!   followed, retries); `client/node_id.rs`: snowflake node-id leases
//!   ([`client::NodeIdLease`]); `client/seq_source.rs`:
//!   [`client::SeqSource`] (in-process allocator or cluster) for syncd.
//! - `testsuite` (this crate's tests and the `testsuite` feature only): the
//!   in-memory store with fault injection, and `FaultyStore`, which fails
//!   raises of any store while a file exists (the `seqsvc store` process
//!   wraps its store in it for `--fail-raises-while`). Nothing test-only is
//!   in a build without the feature.
//!
//! The allocator, routing, lease and role cores are plain library code,
//! tested without sockets (lease logic with a paused clock); the `seqsvc`
//! binary runs the store, arbiter and AllocSvr processes. A seeded,
//! model-checked simulation (`simulation/`, tests only) runs the AllocSvr
//! cores, the arbiter and the fence through freezes, partitions, slow
//! replies, version gaps and restarts, a few hundred seeds per `cargo test`.
//!
//! Distributed invariants, on top of the ones above: at most one AllocSvr
//! serves a section at any moment (a new owner waits out the old one's
//! lease); routing table versions strictly increase and are never reused
//! (compare-and-set); no two running processes hold one snowflake node id.
//!
//! An AllocSvr's ownership of a slot lasts only while it sees **every**
//! table version and its lease never lapses. A read after a lapse, or one
//! that skips a version, drops every slot's state (allocators, cached
//! `cur_seq`/`max_seq`, node-id holders) and treats each slot it lists as
//! newly gained: `max_seq` reloaded, a full activation delay waited out.
//! The unseen versions may have let another AllocSvr serve and raise a slot
//! that then came back; keeping the old cache there reissued its seqs. The
//! version rule needs no clock; the lapse rule keeps "a lapsed AllocSvr has
//! stopped" true without asking what happened meanwhile. Cost: a lapse or a
//! gap makes that AllocSvr's sections unavailable for one activation.
//!
//! A node-id grant's floor (the previous holder's clock reservation) is
//! recorded with the grant and returned on every renewal or retry, so a
//! holder whose first reply was lost still learns it; a holder whose lapsed
//! node id comes back with a higher floor (another holder used it
//! meanwhile) raises its own floor and issues above it.

pub mod alloc_server;
pub mod allocator;
pub mod arbiter;
pub mod client;
pub mod cql;
pub mod grpc;
pub mod incoming;
pub mod lease;
pub mod logging;
pub mod routing;
#[cfg(test)]
mod simulation;
pub mod snowflake;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

pub use allocator::{Allocator, AllocatorConfig};
pub use cql::CqlMaxSeqStore;
pub use snowflake::{MsgIdGenerator, SnowflakeId};
pub use store::{FjallMaxSeqStore, MaxSeqStore, RouteStore, SeqLayout, SharedStore, claim_layout};
#[cfg(any(test, feature = "testsuite"))]
pub use testsuite::MemoryMaxSeqStore;

/// Which family of sequences an id belongs to. Each namespace has its own
/// sections and its own persisted `max_seq` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// A user's inbox seq.
    Inbox,
    /// A conversation's `conv_seq`.
    Conversation,
    /// Process-wide counters, such as the next conversation id (id 0).
    Counter,
    /// Reserved wall-clock milliseconds per snowflake node id.
    SnowflakeClock,
}

impl Namespace {
    /// Stable one-byte code used in persisted keys. Never renumber.
    pub fn code(self) -> u8 {
        match self {
            Namespace::Inbox => 1,
            Namespace::Conversation => 2,
            Namespace::Counter => 3,
            Namespace::SnowflakeClock => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Namespace::Inbox,
            2 => Namespace::Conversation,
            3 => Namespace::Counter,
            4 => Namespace::SnowflakeClock,
            _ => return None,
        })
    }
}

/// Errors of this crate, by kind, so callers can decide on retries.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    /// The `max_seq` store failed or is unreachable; nothing was handed out.
    #[error("shared store failed: {0}")]
    Store(String),
    /// The request itself is malformed (for example too many ids at once).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// A sequence space is used up (a u64 would overflow).
    #[error("sequence space exhausted for {namespace:?} id {id}")]
    Exhausted { namespace: Namespace, id: u64 },
    /// This AllocSvr may not serve the ids now (activating, lease expired,
    /// slot lost mid-call); nothing was handed out. Retry, maybe elsewhere.
    #[error("not serving: {0}")]
    NotServing(String),
    /// A remote seqsvc process could not be reached or answered in time.
    #[error("seqsvc unavailable: {0}")]
    Unavailable(String),
}

impl SeqError {
    /// The variant's name, for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SeqError::Store(_) => "store",
            SeqError::InvalidArgument(_) => "invalid_argument",
            SeqError::Exhausted { .. } => "exhausted",
            SeqError::NotServing(_) => "not_serving",
            SeqError::Unavailable(_) => "unavailable",
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SeqError::Store(_) | SeqError::NotServing(_) | SeqError::Unavailable(_)
        )
    }
}

pub type Result<T, E = SeqError> = std::result::Result<T, E>;

/// Runs `round` every `interval()` until the process ends (the lease
/// renewals, the arbiter's rounds), a failed one logged with `failed` and
/// retried on the same schedule.
pub(crate) fn spawn_rounds<F, Fut>(
    failed: &'static str,
    round: F,
    interval: impl Fn() -> std::time::Duration + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    tokio::spawn(async move {
        loop {
            if let Err(error) = round().await {
                tracing::warn!(%error, "{failed}");
            }
            tokio::time::sleep(interval()).await;
        }
    })
}
