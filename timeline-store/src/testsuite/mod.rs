//! For tests of the store and of code built on it; compiled only for this
//! crate's tests or with the `testsuite` feature, never into a release
//! build.
//!
//! - [`conformance`]: the checks every backend must pass.
//! - [`MemoryStore`]: every capability in process memory, passing the
//!   conformance suite; a clone is the same store (a "reopen").
//! - [`FaultyStore`]: a wrapper over any store that injects seeded errors,
//!   delays and out-of-order completion, and counts what reaches the store.

pub mod conformance;
mod faulty;
mod memory;

pub use faulty::{Counters, Failure, Faults, FaultyStore, Op, SplitMix64};
pub use memory::MemoryStore;
