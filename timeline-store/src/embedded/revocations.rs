//! Revocations on the embedded store: cutoffs in `revocations`, the feed in
//! `revocation_feed`, both written by the writer thread (durable, in order
//! with everything else). One process serves an embedded store, so the
//! feed has no reader on another node; it is kept so that the store passes
//! the same contract, and pruned past the feed's retention on each write.

use super::{EmbeddedStore, Keyspaces, WriteOp, WriteOutcome, corrupt, decode_u64, io};
use crate::{
    REVOCATION_FEED_RETENTION, RecordedRevocation, Result, Revocation, Revocations, RevokedBefore,
};
use async_trait::async_trait;
use std::collections::HashMap;

/// Feed rows one revocation prunes at most (old rows go a few at a time).
const FEED_PRUNE_BATCH: usize = 1_000;

/// `user_id | device_id`; an empty device id (never a valid one) stands
/// for every device of the user.
fn cutoff_key(user_id: u64, device_id: Option<&str>) -> Vec<u8> {
    let device = device_id.unwrap_or("");
    let mut key = Vec::with_capacity(8 + device.len());
    key.extend_from_slice(&user_id.to_be_bytes());
    key.extend_from_slice(device.as_bytes());
    key
}

fn feed_key(recorded_at_ms: u64, user_id: u64, device_id: Option<&str>) -> Vec<u8> {
    let mut key = recorded_at_ms.to_be_bytes().to_vec();
    key.extend_from_slice(&cutoff_key(user_id, device_id));
    key
}

fn stored_cutoff(ks: &Keyspaces, key: &[u8]) -> Result<u64> {
    match ks.revocations.get(key).map_err(io)? {
        Some(value) => decode_u64(&value),
        None => Ok(0),
    }
}

/// The writer thread's part: raise the cutoff (seeing cutoffs raised earlier
/// in the same group through `raised`), list it in the feed, prune the feed.
pub(super) fn apply(
    ks: &Keyspaces,
    batch: &mut fjall::OwnedWriteBatch,
    raised: &mut HashMap<Vec<u8>, u64>,
    revocation: &Revocation,
    recorded_at_ms: u64,
) -> Result<u64> {
    let device = revocation.device_id.as_deref();
    let key = cutoff_key(revocation.user_id, device);
    let stored = match raised.get(&key) {
        Some(&value) => value,
        None => stored_cutoff(ks, &key)?,
    };
    let value = stored.max(revocation.before_s);
    if value > stored {
        batch.insert(&ks.revocations, key.clone(), value.to_be_bytes());
        raised.insert(key, value);
    }
    batch.insert(
        &ks.revocation_feed,
        feed_key(recorded_at_ms, revocation.user_id, device),
        revocation.before_s.to_be_bytes(),
    );
    let horizon = recorded_at_ms.saturating_sub(REVOCATION_FEED_RETENTION.as_millis() as u64);
    for guard in ks
        .revocation_feed
        .range(..horizon.to_be_bytes().to_vec())
        .take(FEED_PRUNE_BATCH)
    {
        batch.remove(&ks.revocation_feed, guard.key().map_err(io)?.to_vec());
    }
    Ok(value)
}

fn decode_feed_row(key: &[u8], value: &[u8]) -> Result<RecordedRevocation> {
    if key.len() < 16 {
        return Err(corrupt("revocation feed key length"));
    }
    let (at, rest) = key.split_at(8);
    let (user, device) = rest.split_at(8);
    let device = std::str::from_utf8(device).map_err(|_| corrupt("revocation device id"))?;
    Ok(RecordedRevocation {
        revocation: Revocation {
            user_id: decode_u64(user)?,
            device_id: (!device.is_empty()).then(|| device.to_owned()),
            before_s: decode_u64(value)?,
        },
        recorded_at_ms: decode_u64(at)?,
    })
}

#[async_trait]
impl Revocations for EmbeddedStore {
    async fn revoke(&self, revocation: &Revocation, recorded_at_ms: u64) -> Result<u64> {
        let op = WriteOp::Revoke {
            revocation: revocation.clone(),
            recorded_at_ms,
        };
        match self.write(op).await? {
            WriteOutcome::Revoked(stored) => Ok(stored),
            _ => Err(super::wrong_outcome()),
        }
    }

    async fn revoked_before(&self, user_id: u64, device_id: &str) -> Result<RevokedBefore> {
        let device_id = device_id.to_owned();
        self.read(move |ks| {
            Ok(RevokedBefore {
                user: stored_cutoff(ks, &cutoff_key(user_id, None))?,
                device: stored_cutoff(ks, &cutoff_key(user_id, Some(&device_id)))?,
            })
        })
        .await
    }

    async fn revocations_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<RecordedRevocation>> {
        self.read(move |ks| {
            ks.revocation_feed
                .range(since_ms.to_be_bytes().to_vec()..)
                .take(limit)
                .map(|guard| {
                    let (key, value) = guard.into_inner().map_err(io)?;
                    decode_feed_row(&key, &value)
                })
                .collect()
        })
        .await
    }
}
