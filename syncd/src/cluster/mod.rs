//! Several syncd nodes over one ScyllaDB keyspace: one writer at a time,
//! any node for any call.
//!
//! Nodes started with the same `--store scylla://...` and each its own
//! `--advertise HOST:PORT` form a cluster. The keyspace's **writer lease**
//! (`lease`, the rules; `member`, the loop) names one node; that node runs a
//! *writer generation*: a fresh engine over the store fenced with the
//! lease's epoch, which first finishes whatever intents earlier writers
//! left (`node`). Every other node passes each call of the public services
//! on to the writer unchanged, push streams included (`route`), so a device
//! may use any node, and reconnect to any other, without stickiness.
//!
//! # Invariants
//! - At most one node serves calls at a time: a node serves only while its
//!   lease holds, and a challenger claims only after the holder's lease ran
//!   out by the holder's own clock (see `lease`).
//! - A superseded writer stores nothing: its intents are conditional on its
//!   epoch, and the next writer seals every intent partition before it
//!   recovers and serves (`timeline_store::scylla` fencing). Everything it
//!   stored before is finished by the next writer.
//! - A newer writer's rows supersede an older writer's late ones whatever
//!   the clocks say: each claim and renewal records a write timestamp
//!   ceiling, which bounds the holder's timestamps and is the floor of the
//!   next holder's (`timeline_store::scylla::WriterClock`).
//! - Never skip, exactly-once sends and the per-conversation order hold as
//!   on one node: they are the writer's, and each generation starts with
//!   empty caches and a horizon primed from the allocator.
//! - Each gain of the lease is a new generation: nothing cached under an
//!   earlier ownership (directory, read state, allocator steps) is used.
//!
//! # Layout
//! - `lease`: the timing rules, pure. `member`: reads, renews, claims.
//! - `route`: a service that serves here, passes on, or refuses.
//! - `node`: opening the shared parts, the generations, serving.

mod lease;
mod member;
mod node;
mod route;

pub use lease::{LeaseTimings, Role};
pub use node::{ClusterNode, Stopping, serve};
pub use route::FORWARDED_HEADER;

/// Resolves once `stopping` turns true (or its sender is gone).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` answers is dropped here, not held across awaits.
    let _ = stopping.wait_for(|stop| *stop).await.is_ok();
}
