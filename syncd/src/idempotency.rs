//! Idempotent requests: a client-chosen id per request (`client_msg_id` of
//! a send, `client_request_id` of a conversation creation), its lock, and
//! what its receipt remembers of the request.
//!
//! A request with a client id takes the key's lock, then looks for the
//! receipt of an earlier request under the key. The receipt commits with
//! the request's event and the lock is held until that event is complete,
//! so concurrent retries cannot both write. Sends and creations share one
//! key space and one set of locks: a UUID names one request of its caller.
//!
//! The receipt keeps a [`Fingerprint`] of what was asked for; a retry that
//! asks for something else under the same id is a client bug, refused with
//! INVALID_ARGUMENT rather than answered with the first request's result.

use crate::error::{Result, SyncdError};
use crate::keyed::{KeyGuard, KeyedLocks};
use crate::lifecycle::within_admission_wait;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use timeline_store::{IdempotencyKey, Receipt, TimelineStore};

pub struct Idempotency {
    store: Arc<dyn TimelineStore>,
    locks: Arc<KeyedLocks<IdempotencyKey>>,
}

/// A client id's lock, with the receipt of an earlier request under it.
pub struct Claim {
    pub key: IdempotencyKey,
    pub earlier: Option<Receipt>,
    guard: KeyGuard<IdempotencyKey>,
}

impl Claim {
    /// The lock, to be held until the request's event is complete.
    pub fn into_guard(self) -> KeyGuard<IdempotencyKey> {
        self.guard
    }
}

impl Idempotency {
    pub fn new(store: Arc<dyn TimelineStore>) -> Self {
        Self {
            store,
            locks: Arc::default(),
        }
    }

    /// Takes `key`'s lock and reads its receipt.
    /// Waits a bounded time for the lock ([`crate::limits::MAX_ADMISSION_WAIT`]):
    /// an earlier request under the key may be stuck being finished in the
    /// background, and a retry must not hold its slot meanwhile.
    pub async fn claim(&self, key: IdempotencyKey) -> Result<Claim> {
        let guard = within_admission_wait(self.locks.write(key.clone()), || {
            format!(
                "an earlier request with client id {} is still being stored; retry later",
                key.client_msg_id
            )
        })
        .await?;
        let earlier = self.store.receipt(&key).await?;
        Ok(Claim {
            key,
            earlier,
            guard,
        })
    }
}

/// How a receipt without a fingerprint (written before receipts kept one,
/// which only sends did) is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfingerprinted {
    /// A send's retry: such receipts answered any retry, and still do.
    Matches,
    /// Any other request: it cannot be the request such a receipt records.
    Differs,
}

/// Refuses a retry whose request differs from the one `receipt` records.
pub fn check_same_request(
    receipt: &Receipt,
    fingerprint: u64,
    unfingerprinted: Unfingerprinted,
    field: &str,
    id: uuid::Uuid,
) -> Result<()> {
    let same = match receipt.fingerprint {
        0 => unfingerprinted == Unfingerprinted::Matches,
        stored => stored == fingerprint,
    };
    if same {
        Ok(())
    } else {
        Err(SyncdError::InvalidArgument(format!(
            "{field} {id} was already used for another request: use a new id for a new request"
        )))
    }
}

/// 64 bits of SHA-256 over a request's fields, each length-prefixed, after
/// a label naming the kind of request. A stable hash because receipts
/// outlive the process and the build (std's `DefaultHasher` may change
/// between Rust releases); 64 bits because a false match needs the same
/// caller to reuse one UUID for two requests whose hashes collide.
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new(kind: &str) -> Self {
        Self(Sha256::new()).bytes(kind.as_bytes())
    }

    pub fn u64(mut self, value: u64) -> Self {
        self.0.update(value.to_be_bytes());
        self
    }

    pub fn bytes(self, bytes: &[u8]) -> Self {
        let mut this = self.u64(bytes.len() as u64);
        this.0.update(bytes);
        this
    }

    /// Never 0: 0 marks a receipt without a fingerprint.
    pub fn finish(self) -> u64 {
        let digest = self.0.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_fields_do_not_run_together() {
        let a = Fingerprint::new("send").bytes(b"ab").bytes(b"c").finish();
        let b = Fingerprint::new("send").bytes(b"a").bytes(b"bc").finish();
        assert_ne!(a, b);
        assert_ne!(
            a,
            Fingerprint::new("create").bytes(b"ab").bytes(b"c").finish()
        );
        // Pinned (SHA-256 of 00..01 "x" 00..01, first 8 bytes): a receipt
        // written by this build must match in the next.
        assert_eq!(Fingerprint::new("x").u64(1).finish(), 0x7a69_461e_841b_4fd4);
    }
}
