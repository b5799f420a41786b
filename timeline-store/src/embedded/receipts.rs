//! Idempotency receipts on the embedded store: point reads that ignore an
//! expired receipt, and the sweep that deletes expired ones in batches
//! through the writer thread.

use super::*;

#[async_trait]
impl Receipts for EmbeddedStore {
    async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>> {
        self.receipt_at(key, now_ms()).await
    }

    async fn expire_receipts(&self) -> Result<usize> {
        self.expire_receipts_at(now_ms()).await
    }
}

impl EmbeddedStore {
    pub(super) async fn receipt_at(
        &self,
        key: &IdempotencyKey,
        now_ms: u64,
    ) -> Result<Option<Receipt>> {
        let key = key.to_bytes();
        self.read(move |ks| {
            let Some(value) = ks.receipts.get(key).map_err(io)? else {
                return Ok(None);
            };
            let (receipt, expired) = codec::decode_stored_receipt(value.as_ref(), now_ms)?;
            Ok((!expired).then_some(receipt))
        })
        .await
    }

    /// Scans every receipt (they are keyed by client, not by time) and
    /// deletes the expired ones in batches through the writer thread.
    pub(super) async fn expire_receipts_at(&self, now_ms: u64) -> Result<usize> {
        let mut deleted = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let start = after.clone();
            let (rows, next) = self
                .read(move |ks| {
                    let range = match start {
                        Some(key) => ks
                            .receipts
                            .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)),
                        None => ks.receipts.range::<Vec<u8>, _>(..),
                    };
                    let mut rows = Vec::new();
                    let mut last = None;
                    for (scanned, guard) in range.enumerate() {
                        if scanned >= RECEIPT_SWEEP_BATCH {
                            break;
                        }
                        let (key, value) = guard.into_inner().map_err(io)?;
                        let (_, expired) = codec::decode_stored_receipt(value.as_ref(), now_ms)?;
                        if expired {
                            rows.push((key.to_vec(), value.to_vec()));
                        }
                        last = Some(key.to_vec());
                    }
                    Ok((rows, last))
                })
                .await?;
            if !rows.is_empty() {
                deleted += rows.len();
                self.write(WriteOp::ExpireReceipts { rows }).await?;
            }
            match next {
                Some(key) => after = Some(key),
                None => return Ok(deleted),
            }
        }
    }
}
