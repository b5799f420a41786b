//! Token revocations: the values [`crate::Revocations`] stores.
//!
//! A revocation is a cutoff in time, not a list of tokens: the tokens of a
//! device (or of every device of a user) issued before the cutoff are
//! refused, so a later login with a fresh token works, and the store holds
//! one number per revoked device however many tokens it had.

/// How long the change feed keeps a revocation: far longer than any node
/// takes to read it (they poll every fraction of a second), short enough
/// that the feed stays small. The cutoffs themselves are kept forever.
pub const REVOCATION_FEED_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

/// The tokens of `user_id`'s device `device_id` (of every device of the
/// user when `None`) issued before `before_s` (unix seconds) are refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Revocation {
    pub user_id: u64,
    pub device_id: Option<String>,
    pub before_s: u64,
}

/// The cutoffs that apply to one device's tokens (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokedBefore {
    /// Every device of the user (logout everywhere).
    pub user: u64,
    /// This device alone.
    pub device: u64,
}

impl RevokedBefore {
    /// Tokens issued before this are refused.
    pub fn cutoff(&self) -> u64 {
        self.user.max(self.device)
    }
}

/// A revocation as the change feed lists it, with the time (milliseconds,
/// the recording node's clock) it was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRevocation {
    pub revocation: Revocation,
    pub recorded_at_ms: u64,
}
