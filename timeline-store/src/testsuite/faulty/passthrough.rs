//! Every store capability of [`FaultyStore`], passed through to the inner
//! store under the fault plan: each call draws its delay and its failure
//! (by [`Op`]) before it reaches the store, commits are counted, and the
//! inbox-copy bytes in flight are tracked.

use super::*;

#[async_trait]
impl<S: EventLog> EventLog for FaultyStore<S> {
    async fn commit_event(&self, commit: EventCommit) -> Result<()> {
        let copy_bytes =
            (crate::inbox_copy_payload_bytes(&commit.entry) * commit.inbox.len()) as u64;
        let inflight = self
            .inflight_copy_bytes
            .fetch_add(copy_bytes, Ordering::SeqCst)
            + copy_bytes;
        self.peak_inflight_copy_bytes
            .fetch_max(inflight, Ordering::SeqCst);
        let _in_flight = InFlight::enter(&self.commits_in_flight);
        let result = self.commit_counted(commit).await;
        self.inflight_copy_bytes
            .fetch_sub(copy_bytes, Ordering::SeqCst);
        result
    }

    async fn recover(&self) -> Result<usize> {
        self.run(Op::Read, self.inner.recover()).await
    }
}

impl<S: EventLog> FaultyStore<S> {
    async fn commit_counted(&self, commit: EventCommit) -> Result<()> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan(Op::Commit);
        sleep(plan.delay).await;
        if plan.hold {
            self.hold(ticket).await;
        }
        let aimed = self.state().rule.clone().and_then(|rule| rule(&commit));
        let failure = match aimed {
            Some(_) => None,
            None => self.failure(Op::Commit, plan.random_failure),
        };
        let result = if let Some(error) = aimed {
            self.injected_failures.fetch_add(1, Ordering::SeqCst);
            Err(error)
        } else if failure == Some(Failure::Lost) {
            Err(injected(Op::Commit))
        } else {
            self.commits.fetch_add(1, Ordering::SeqCst);
            self.inbox_copies
                .fetch_add(commit.inbox.len() as u64, Ordering::SeqCst);
            let applied = self.inner.commit_event(commit).await;
            match failure {
                Some(_) => Err(injected(Op::Commit)),
                None => applied,
            }
        };
        self.completed.send_if_modified(|highest| {
            let later = ticket > *highest;
            if later {
                *highest = ticket;
            }
            later
        });
        result
    }
}

#[async_trait]
impl<S: crate::ConversationMembers> crate::ConversationMembers for FaultyStore<S> {
    async fn members_among(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<u64>> {
        self.run(Op::Read, self.inner.members_among(conversation_id, users))
            .await
    }

    async fn list_members(
        &self,
        conversation_id: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>> {
        self.run(
            Op::Read,
            self.inner.list_members(conversation_id, after, limit),
        )
        .await
    }
}

#[async_trait]
impl<S: InboxReads> InboxReads for FaultyStore<S> {
    async fn read_inbox(&self, user_id: u64, range: InboxRange) -> Result<Vec<Entry>> {
        self.sleep_inbox_read().await;
        self.run(Op::Read, self.inner.read_inbox(user_id, range))
            .await
    }

    async fn last_inbox_seq(&self, user_id: u64) -> Result<u64> {
        self.run(Op::Read, self.inner.last_inbox_seq(user_id)).await
    }
}

#[async_trait]
impl<S: InboxRetention> InboxRetention for FaultyStore<S> {
    async fn trim_inbox(&self, user_id: u64, below_seq: u64, max_entries: usize) -> Result<usize> {
        let trim = self.inner.trim_inbox(user_id, below_seq, max_entries);
        self.run(Op::Write, trim).await
    }

    async fn inbox_floor(&self, user_id: u64) -> Result<u64> {
        self.run(Op::Read, self.inner.inbox_floor(user_id)).await
    }

    async fn inbox_times(&self, user_id: u64, range: InboxRange) -> Result<Vec<InboxTime>> {
        self.run(Op::Read, self.inner.inbox_times(user_id, range))
            .await
    }
}

#[async_trait]
impl<S: crate::ConversationScan> crate::ConversationScan for FaultyStore<S> {
    async fn conversation_ids(&self, after: Option<u64>, limit: usize) -> Result<Vec<u64>> {
        let scan = self.inner.conversation_ids(after, limit);
        self.run(Op::Read, scan).await
    }
}

#[async_trait]
impl<S: ConversationReads> ConversationReads for FaultyStore<S> {
    async fn conversation(&self, conversation_id: u64) -> Result<Option<Conversation>> {
        self.run(Op::Read, self.inner.conversation(conversation_id))
            .await
    }

    async fn read_conversation(&self, id: u64, range: ConversationRange) -> Result<Vec<Entry>> {
        let read = self.inner.read_conversation(id, range);
        self.run(Op::Read, read).await
    }

    async fn inbox_copies(
        &self,
        conversation_id: u64,
        conv_seq: u64,
    ) -> Result<Vec<crate::InboxWrite>> {
        self.run(Op::Read, self.inner.inbox_copies(conversation_id, conv_seq))
            .await
    }

    async fn large_group_memberships(&self, user_id: u64) -> Result<Vec<LargeGroupMembership>> {
        self.run(Op::Read, self.inner.large_group_memberships(user_id))
            .await
    }
}

#[async_trait]
impl<S: Checkpoints> Checkpoints for FaultyStore<S> {
    async fn save_checkpoint(&self, user_id: u64, device_id: &str, seq: u64) -> Result<u64> {
        let save = self.inner.save_checkpoint(user_id, device_id, seq);
        self.run(Op::Write, save).await
    }

    async fn checkpoint(&self, user_id: u64, device_id: &str) -> Result<u64> {
        self.run(Op::Read, self.inner.checkpoint(user_id, device_id))
            .await
    }
}

/// Revocations pass through without faults: they are no part of the
/// engine's write path, and drawing for them would change what a seed
/// replays in the engine's randomized tests.
#[async_trait]
impl<S: Revocations> Revocations for FaultyStore<S> {
    async fn revoke(&self, revocation: &Revocation, recorded_at_ms: u64) -> Result<u64> {
        self.inner.revoke(revocation, recorded_at_ms).await
    }

    async fn revoked_before(&self, user_id: u64, device_id: &str) -> Result<RevokedBefore> {
        self.inner.revoked_before(user_id, device_id).await
    }

    async fn revocations_since(
        &self,
        since_ms: u64,
        limit: usize,
    ) -> Result<Vec<RecordedRevocation>> {
        self.inner.revocations_since(since_ms, limit).await
    }
}

#[async_trait]
impl<S: Receipts> Receipts for FaultyStore<S> {
    async fn receipt(&self, key: &IdempotencyKey) -> Result<Option<Receipt>> {
        self.run(Op::Read, self.inner.receipt(key)).await
    }

    async fn expire_receipts(&self) -> Result<usize> {
        self.run(Op::Write, self.inner.expire_receipts()).await
    }
}

#[async_trait]
impl<S: ReadReceipts> ReadReceipts for FaultyStore<S> {
    async fn reader_marks(&self, conversation_id: u64, users: &[u64]) -> Result<Vec<ReaderMark>> {
        self.run(Op::Read, self.inner.reader_marks(conversation_id, users))
            .await
    }
}

#[async_trait]
impl<S: ReadStates> ReadStates for FaultyStore<S> {
    async fn read_states(&self, user_id: u64) -> Result<ReadStateSnapshot> {
        self.run(Op::Read, self.inner.read_states(user_id)).await
    }

    async fn save_read_states(
        &self,
        user_id: u64,
        applied_seq: u64,
        rows: Vec<ReadStateRow>,
    ) -> Result<()> {
        let save = self.inner.save_read_states(user_id, applied_seq, rows);
        self.run(Op::Write, save).await
    }
}
