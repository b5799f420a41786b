//! cql-kit: the CQL pieces `timeline-store` and `seqsvc` share, so both talk
//! to one ScyllaDB (or Cassandra) cluster the same way.
//!
//! # Invariants
//! - One URL form for every process:
//!   `scylla://host:port[,host:port...]/keyspace[?replication=N&dc=NAME&consistency=LEVEL&timeout_ms=N]`,
//!   parsed in one place ([`ScyllaConfig::parse`]); the keyspace and data
//!   center names are checked there because they end up inside CQL text.
//! - Public config types hold no driver types: [`Consistency`] is ours and
//!   maps to the driver's in exactly one function, so a driver upgrade or a
//!   new level touches one match.
//! - Every session runs under one execution profile (consistency, LOCAL_SERIAL
//!   for lightweight transactions, request timeout) set at connect time, not
//!   per statement.
//! - An LWT result is judged by its `[applied]` column alone ([`applied`]):
//!   Cassandra returns it alone on success, ScyllaDB always adds the old row.
//! - Scans never trust one query to return everything: [`read_pages`] bounds
//!   every query by a page size and moves a cursor.
//!
//! # Layout
//! - [`config`]: [`ScyllaConfig`] (the parsed URL), [`Consistency`], connect.
//! - [`lwt`]: the `[applied]` reader.
//! - [`paging`]: the one paging loop over partitions and pages.

pub mod config;
pub mod lwt;
pub mod paging;

pub use config::{Consistency, ScyllaConfig};
pub use lwt::applied;
pub use paging::{read_pages, read_pages_until};

/// Errors by kind; each using crate maps them onto its own error kinds.
#[derive(Debug, thiserror::Error)]
pub enum CqlError {
    /// The store URL does not parse; `why` names the bad part.
    #[error("store url {url:?}: {why}")]
    InvalidUrl { url: String, why: String },
    /// No node of the cluster could be reached.
    #[error("connecting to {nodes}: {reason}")]
    Unavailable { nodes: String, reason: String },
    /// A statement failed or its result could not be read; it may or may
    /// not have been applied.
    #[error("cql: {0}")]
    Query(String),
    /// An LWT result without its `[applied]` column.
    #[error("LWT result without [applied]: {0}")]
    MissingApplied(String),
}

impl CqlError {
    /// Wraps a driver error of a statement or its result.
    pub fn query(error: impl std::fmt::Display) -> Self {
        CqlError::Query(error.to_string())
    }
}

pub type Result<T, E = CqlError> = std::result::Result<T, E>;
