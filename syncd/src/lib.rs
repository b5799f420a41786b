//! syncd: Timeline's gRPC front. It authenticates callers, sends messages
//! (idempotently, with write fanout to every member's inbox), serves sync by
//! checkpoint, pushes "new entries" notices, pages history and runs the admin
//! calls backend services use.
//!
//! # Invariants
//! - An acknowledged send is durable: the conversation entry and every inbox
//!   copy are committed in one durable event before the reply.
//! - Every member's inbox gets each message once: a retry with the same
//!   client message id returns the stored receipt (checked under a per-key
//!   lock, so concurrent retries cannot both write), and a request that
//!   differs from the one the receipt records is refused; conversation
//!   creation is idempotent the same way ([`idempotency`]).
//! - Per conversation, a lower `conv_seq` gets the lower inbox seq in every
//!   member's inbox (seqs of one conversation's events are allocated in
//!   order).
//! - Sync never exposes a seq while a lower one is still in flight
//!   ([`horizon`]), so a device that advances its checkpoint never skips one.
//! - Users read only their own inbox and conversations they belong to
//!   ([`access`]).
//! - Every call is authenticated in one place ([`auth::Authenticator`]): a
//!   revoked device token is refused on every call, and its open push
//!   streams end, within a second on every node sharing the store.
//! - Everything that follows a commit (cache, push, retention) happens on
//!   one path ([`observer`]), whether the event committed at once or was
//!   finished in the background.
//! - Every task the engine spawns is tracked; shutdown waits for them
//!   ([`lifecycle`]).
//!
//! # The data path
//! ```text
//! Send ─▶ send (validate, idempotency key lock, receipt?)
//!          └▶ directory.shared (membership lock, record) ─▶ access::may_send
//!              └▶ Event::message ─ fanout (who gets a copy)
//!                  └▶ writer.commit: horizon.reserve ─▶ allocate conv_seq +
//!                     inbox seqs (in conversation order) ─▶ store.commit_event
//!                      └▶ observers: directory cache, push hub, retention queue,
//!                         search feed (─▶ indexer reads the timeline ─▶ index)
//! Sync ─▶ inbox.sync: visibility (allocator, then horizon) ─▶ store.read_inbox
//! Subscribe ─▶ push: hub.subscribe ─▶ feed.next (entries or a bare notice)
//! ```
//!
//! # Modules
//! - [`engine`]: the facade the gRPC layer calls; owns one value per concept.
//! - [`send`]: sending a message. [`idempotency`]: client ids, their
//!   locks and receipts (sends and creations).
//! - [`membership`]: creating conversations, adding and removing members.
//! - [`inbox`]: sync and ack. [`history`]: conversation paging and records.
//! - [`push`]: the hub of subscribed users and each subscriber's feed.
//! - [`retention`]: the policy, its candidates and the trimming loop.
//! - [`search_index`]: feeding the search index from the timelines (a
//!   commit observer hints, the indexer reads the store from the index's
//!   checkpoint) and authorised searches.
//! - [`directory`]: conversation records, their cache and membership locks
//!   (and who may fill the cache).
//! - [`access`]: who may do what. [`fanout`]: who gets a copy of an event.
//! - [`event`]: events as values. [`writer`]: reserve, allocate, commit,
//!   announce. [`observer`]: the one path after a commit.
//! - [`horizon`]: in-flight seqs; [`visibility`]: what is safe to read now.
//! - [`telemetry`]: the descriptions of syncd's metrics (recorded where
//!   the work happens, through the `metrics` facade).
//! - [`health`]: whether the node can serve now (gRPC health, `syncd_ready`).
//! - [`lifecycle`]: shutdown and tracked tasks; [`keyed`]: per-key async
//!   locks; [`limits`]: named bounds.
//! - [`config`]: the config file of `syncd serve`, whose keys are its
//!   flags. [`auth`]: tokens (`tl1` and JWTs) and their revocation.
//!   [`grpc`]: one file per gRPC service; [`error`]: the
//!   one mapping from domain errors to gRPC statuses; [`server`]: wiring,
//!   listener, shutdown; [`web`]: gRPC-Web, CORS and the web app's files.

pub mod access;
pub mod amend;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod engine;
pub mod error;
pub mod event;
pub mod fanout;
pub mod grpc;
pub mod health;
pub mod history;
pub mod horizon;
pub mod idempotency;
pub mod inbox;
pub mod keyed;
pub mod lifecycle;
pub mod limits;
pub mod membership;
pub mod observer;
pub mod paging;
pub mod push;
pub mod read_state;
pub mod retention;
pub mod search_index;
pub mod send;
pub mod server;
pub mod shares;
pub mod telemetry;
pub mod visibility;
pub mod web;
pub mod writer;

#[cfg(test)]
mod growth_tests;
#[cfg(test)]
mod large_group_tests;
#[cfg(test)]
mod testkit;

pub use error::SyncdError;
