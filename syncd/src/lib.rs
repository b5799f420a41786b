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
//!   lock, so concurrent retries cannot both write).
//! - Sync never exposes a seq while a lower one is still in flight
//!   ([`horizon`]), so a device that advances its checkpoint never skips one.
//! - Users read only their own inbox and conversations they belong to.
//!
//! # Layout
//! - [`engine`]: send/fanout/sync/history/membership logic, no gRPC.
//! - [`horizon`]: the safe sync horizon; [`hub`]: push notification state;
//!   [`keyed`]: per-key async locks; [`auth`]: tokens; [`limits`]: bounds.
//! - [`grpc`]: one file per gRPC service; [`error`]: the one mapping from
//!   domain errors to gRPC statuses; [`server`]: wiring, listener, shutdown.

pub mod auth;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod horizon;
pub mod hub;
pub mod keyed;
pub mod limits;
pub mod server;

pub use error::SyncdError;
