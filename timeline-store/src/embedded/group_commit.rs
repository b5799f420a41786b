//! The writer thread's group commit: every write request waiting when the
//! thread wakes (up to the group limit) goes into one fjall batch, applied
//! in request order (rules that compare with stored values, such as floors,
//! checkpoints and read-state seqs, see what earlier requests of the same
//! group left), then one fsync makes the whole group durable before any
//! request is answered. A failed fsync poisons the store: nothing after it
//! may be acknowledged.

use super::*;

/// Group commits whose apply or fsync takes longer than this are logged.
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(50);

pub(super) fn writer_loop(
    keyspaces: Keyspaces,
    mut queue: mpsc::Receiver<WriteRequest>,
    poisoned: Arc<AtomicBool>,
    max_group: usize,
) {
    let mut group = Vec::with_capacity(max_group);
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < max_group {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        metrics::histogram!("timeline_store_group_commit_batches").record(group.len() as f64);
        let outcomes = apply_group(&keyspaces, &group, &poisoned);
        match outcomes {
            Ok(outcomes) => {
                for (request, outcome) in group.drain(..).zip(outcomes) {
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                let message = error.to_string();
                tracing::error!(%message, "group commit failed");
                let fatal = error.is_fatal();
                let kind = if fatal { "fatal" } else { "io" };
                metrics::counter!("timeline_store_errors_total", "backend" => "embedded", "kind" => kind)
                    .increment(1);
                for request in group.drain(..) {
                    let error = if fatal {
                        StoreError::Poisoned(message.clone())
                    } else {
                        StoreError::Io(message.clone())
                    };
                    let _ = request.reply.send(Err(error));
                }
            }
        }
    }
}

fn apply_group(
    ks: &Keyspaces,
    group: &[WriteRequest],
    poisoned: &AtomicBool,
) -> Result<Vec<WriteOutcome>> {
    if poisoned.load(Ordering::Acquire) {
        return Err(poisoned_error());
    }
    let mut batch = ks.db.batch();
    let mut outcomes = Vec::with_capacity(group.len());
    // Inbox rows of the whole group, inserted in key order: consecutive
    // memtable inserts then walk neighbouring skiplist paths that are still
    // in cache, instead of a cold path per row (the memtable insert was most
    // of the writer thread's time).
    let mut inbox_rows: Vec<([u8; 16], Vec<u8>)> = Vec::new();
    // Checkpoints raised earlier in this same group, not yet in the store.
    let mut checkpoints: HashMap<Vec<u8>, u64> = HashMap::new();
    // Receipts written earlier in this group: a sweep in the same group
    // reads the store without them and must not delete them.
    let mut receipts_written: std::collections::HashSet<Vec<u8>> = Default::default();
    // Revocation cutoffs raised earlier in this group.
    let mut revoked: HashMap<Vec<u8>, u64> = HashMap::new();
    // Reader marks raised earlier in this group, not yet in the store.
    let mut readers: HashMap<[u8; 16], ReaderMark> = HashMap::new();
    // Inbox floors as this group leaves them (read for rewrites, raised
    // by trims).
    let mut floors: HashMap<u64, u64> = HashMap::new();
    // Read-state saves earlier in this group, not yet in the store.
    let mut read_states_applied: HashMap<u64, u64> = HashMap::new();
    for request in group {
        match &request.op {
            WriteOp::Event(commit) => {
                let conversation_id = commit.entry.conversation_id;
                let mut encoder = EntryEncoder::new(&commit.entry);
                if commit.entry.kind.in_conversation_timeline() {
                    batch.insert(
                        &ks.conv,
                        key2(conversation_id, commit.entry.conv_seq),
                        encoder.conversation(),
                    );
                }
                for write in &commit.inbox {
                    inbox_rows.push((key2(write.user_id, write.seq), encoder.inbox(write.seq)));
                }
                if commit.keep_copies {
                    batch.insert(
                        &ks.copies,
                        key2(conversation_id, commit.entry.conv_seq),
                        codec::encode_inbox_copies(&commit.inbox),
                    );
                }
                for rewrite in &commit.rewrites {
                    let target = &rewrite.entry;
                    let mut encoder = EntryEncoder::new(target);
                    if target.kind.in_conversation_timeline() {
                        batch.insert(
                            &ks.conv,
                            key2(target.conversation_id, target.conv_seq),
                            encoder.conversation(),
                        );
                    }
                    for write in &rewrite.inbox {
                        // A copy retention trimmed stays trimmed.
                        let floor = match floors.get(&write.user_id) {
                            Some(&floor) => floor,
                            None => {
                                let floor = ks
                                    .inbox_floors
                                    .get(write.user_id.to_be_bytes())
                                    .map_err(io)?
                                    .map_or(Ok(0), |v| decode_u64(v.as_ref()))?;
                                floors.insert(write.user_id, floor);
                                floor
                            }
                        };
                        if write.seq >= floor {
                            inbox_rows
                                .push((key2(write.user_id, write.seq), encoder.inbox(write.seq)));
                        }
                    }
                }
                for mark in &commit.readers {
                    let key = key2(conversation_id, mark.user_id);
                    let stored = match readers.get(&key) {
                        Some(&v) => v,
                        None => match ks.readers.get(key).map_err(io)? {
                            Some(v) => decode_reader(mark.user_id, &v)?,
                            None => ReaderMark {
                                user_id: mark.user_id,
                                ..ReaderMark::default()
                            },
                        },
                    };
                    let raised = stored.raised(mark);
                    if raised != stored {
                        batch.insert(&ks.readers, key, encode_reader(&raised));
                        readers.insert(key, raised);
                    }
                }
                if let Some((key, receipt)) = &commit.receipt {
                    let key = key.to_bytes();
                    let value = codec::encode_stored_receipt(receipt, now_ms());
                    batch.insert(&ks.receipts, key.clone(), value);
                    receipts_written.insert(key);
                }
                for change in &commit.large_group_index {
                    let key = key2(change.user_id, change.conversation_id);
                    // A removal keeps when the member joined. No event of
                    // this batch changed the same membership: the two are
                    // ordered by the conversation's membership lock, held
                    // until the first has committed.
                    let previous = match ks.large_groups.get(key).map_err(io)? {
                        Some(bytes) => Some(codec::decode_membership(
                            change.conversation_id,
                            bytes.as_ref(),
                        )?),
                        None => None,
                    };
                    let position = commit.position_of(change.user_id);
                    let membership = LargeGroupMembership::changed(previous, change, position);
                    batch.insert(&ks.large_groups, key, codec::encode_membership(&membership));
                }
                for change in &commit.members {
                    let key = key2(conversation_id, change.user_id);
                    if change.member {
                        batch.insert(&ks.members, key, []);
                    } else {
                        batch.remove(&ks.members, key);
                    }
                }
                if let Some(conversation) = &commit.conversation {
                    batch.insert(
                        &ks.conversations,
                        conversation.conversation_id.to_be_bytes(),
                        codec::encode_conversation(conversation),
                    );
                }
                outcomes.push(WriteOutcome::Done);
            }
            WriteOp::Trim {
                user_id,
                below_seq,
                keys,
            } => {
                // The floor as this group left it so far: two trims of one
                // inbox in one group must keep the higher floor, and a
                // rewrite later in the group must see it.
                let stored = match floors.get(user_id) {
                    Some(&floor) => floor,
                    None => match ks.inbox_floors.get(user_id.to_be_bytes()).map_err(io)? {
                        Some(v) => decode_u64(&v)?,
                        None => 0,
                    },
                };
                floors.insert(*user_id, stored.max(*below_seq));
                if *below_seq > stored {
                    batch.insert(
                        &ks.inbox_floors,
                        user_id.to_be_bytes(),
                        below_seq.to_be_bytes(),
                    );
                }
                for key in keys {
                    batch.remove(&ks.inbox, key.clone());
                }
                outcomes.push(WriteOutcome::Done);
            }
            WriteOp::Checkpoint {
                user_id,
                device_id,
                seq,
            } => {
                let key = checkpoint_key(*user_id, device_id);
                let stored = match checkpoints.get(&key) {
                    Some(&v) => v,
                    None => match ks.checkpoints.get(&key).map_err(io)? {
                        Some(v) => decode_u64(&v)?,
                        None => 0,
                    },
                };
                let value = stored.max(*seq);
                if value > stored {
                    batch.insert(&ks.checkpoints, key.clone(), value.to_be_bytes());
                    checkpoints.insert(key, value);
                }
                outcomes.push(WriteOutcome::Checkpoint(value));
            }
            WriteOp::ReadStates {
                user_id,
                applied_seq,
                rows,
            } => {
                let stored = match read_states_applied.get(user_id) {
                    Some(&seq) => seq,
                    None => match ks
                        .read_state_applied
                        .get(user_id.to_be_bytes())
                        .map_err(io)?
                    {
                        Some(v) => decode_u64(&v)?,
                        None => 0,
                    },
                };
                if *applied_seq >= stored {
                    batch.insert(
                        &ks.read_state_applied,
                        user_id.to_be_bytes(),
                        applied_seq.to_be_bytes(),
                    );
                    for row in rows {
                        batch.insert(
                            &ks.read_states,
                            key2(*user_id, row.conversation_id),
                            codec::encode_read_state(row),
                        );
                    }
                    read_states_applied.insert(*user_id, *applied_seq);
                }
                outcomes.push(WriteOutcome::Done);
            }
            WriteOp::ExpireReceipts { rows } => {
                for (key, expired) in rows {
                    if receipts_written.contains(key) {
                        continue;
                    }
                    let current = ks.receipts.get(key).map_err(io)?;
                    if current.as_deref() == Some(expired.as_slice()) {
                        batch.remove(&ks.receipts, key.clone());
                    }
                }
                outcomes.push(WriteOutcome::Done);
            }
            WriteOp::Revoke {
                revocation,
                recorded_at_ms,
            } => {
                let stored =
                    revocations::apply(ks, &mut batch, &mut revoked, revocation, *recorded_at_ms)?;
                outcomes.push(WriteOutcome::Revoked(stored));
            }
        }
    }
    // Stable: a row written twice in one group (a rewrite after its
    // original) keeps the later value.
    inbox_rows.sort_by_key(|(key, _)| *key);
    for (key, row) in inbox_rows {
        batch.insert(&ks.inbox, key, row);
    }
    let apply_started = std::time::Instant::now();
    batch.commit().map_err(io)?;
    let apply = apply_started.elapsed();
    metrics::histogram!("timeline_store_group_apply_duration_seconds").record(apply.as_secs_f64());
    if apply > SLOW_FSYNC {
        // The journal append and memtable inserts, and the storage
        // engine's own halts: it stops writes (100 ms at a time) while
        // four sealed memtables wait to be flushed.
        tracing::warn!(?apply, requests = group.len(), "slow apply in group commit");
    }
    let fsync_started = std::time::Instant::now();
    let persisted = ks.db.persist(fjall::PersistMode::SyncAll);
    let fsync = fsync_started.elapsed();
    metrics::histogram!("timeline_store_fsync_duration_seconds").record(fsync.as_secs_f64());
    if fsync > SLOW_FSYNC {
        // Every write in the group waited this long: the usual cause of a
        // latency tail, and a disk problem worth seeing in the logs.
        tracing::warn!(?fsync, requests = group.len(), "slow fsync in group commit");
    }
    if let Err(error) = persisted {
        poisoned.store(true, Ordering::Release);
        return Err(StoreError::Poisoned(format!("fsync: {error}")));
    }
    Ok(outcomes)
}
