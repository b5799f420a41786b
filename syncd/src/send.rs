//! Sending a message, idempotently.
//!
//! A send with a client message id claims that key ([`crate::idempotency`]):
//! an earlier receipt under the key is returned again (`duplicate`) and
//! nothing is written, provided it records the same conversation, sender
//! and text; no receipt, the message is written with its receipt in the
//! same durable event. Concurrent retries of one send therefore store one
//! message. The key's lock is held until the event is complete, also when
//! it is finished in the background.
//! A retry that arrives while the first is still being stored waits a
//! bounded time ([`MAX_ADMISSION_WAIT`]), then answers UNAVAILABLE instead
//! of holding its send slot.

use crate::access;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::event::Event;
use crate::idempotency::{Fingerprint, Idempotency, Unfingerprinted, check_same_request};
use crate::lifecycle::within_admission_wait;
#[cfg(doc)]
use crate::limits::MAX_ADMISSION_WAIT;
use crate::limits::{MAX_INFLIGHT_SENDS, MAX_MENTIONS, MAX_TEXT_BYTES};
use crate::writer::{EventWriter, Held};
use std::sync::Arc;
use timeline_store::{Conversation, ConversationKind, IdempotencyKey, Receipt};
use tokio::sync::Semaphore;
use uuid::Uuid;

pub struct SendCommand {
    pub conversation_id: u64,
    pub text: String,
    /// `None`: the server picks one and the send is not idempotent.
    pub client_msg_id: Option<Uuid>,
    /// Services name the sender (0 = system); devices send as themselves.
    pub sender_id: Option<u64>,
    pub mentions: Mentions,
    /// High priority: pushed ahead of ordinary messages to a large group's
    /// subscribers, never coalesced away. Services only.
    pub priority: bool,
}

/// Whom a message mentions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mentions {
    /// Members mentioned by name (at most [`MAX_MENTIONS`]).
    pub users: Vec<u64>,
    /// Every member (groups only). Counted as a mention by read state; in a
    /// large group it is pushed as an ordinary notice, not on the priority
    /// lane, since any member may send it (see `push::groups`).
    pub everyone: bool,
}

impl Mentions {
    /// The mentions a message into `conversation` from `sender_id` keeps:
    /// sorted, without duplicates or the sender. A non-member, too many
    /// names, or "everyone" in a direct conversation is refused.
    /// Sorted, without duplicates or the sender: a retry naming the same
    /// members in another order is the same request.
    fn normalized(mut self, sender_id: u64) -> Self {
        self.users.sort_unstable();
        self.users.dedup();
        self.users.retain(|&user| user != sender_id);
        self
    }

    async fn checked(
        self,
        directory: &Directory,
        conversation: &Conversation,
        sender_id: u64,
    ) -> Result<Self> {
        let mut checked = self.normalized(sender_id);
        if checked.users.len() > MAX_MENTIONS {
            return Err(too_many_mentions(checked.users.len()));
        }
        if checked.everyone && conversation.kind == ConversationKind::Direct {
            return Err(SyncdError::InvalidArgument(
                "mention_all is for groups; a direct conversation has one other member".into(),
            ));
        }
        let members = directory
            .members_among(conversation, &checked.users)
            .await?;
        if let Some(stranger) = checked.users.iter().find(|u| !members.contains(u)) {
            return Err(SyncdError::InvalidArgument(format!(
                "user {stranger} is not a member of conversation {}: only members can be mentioned",
                conversation.conversation_id
            )));
        }
        checked.users.shrink_to_fit();
        Ok(checked)
    }
}

fn too_many_mentions(count: usize) -> SyncdError {
    SyncdError::InvalidArgument(format!("{count} mentions, at most {MAX_MENTIONS}"))
}

#[derive(Clone, Debug)]
pub struct SendOutcome {
    pub receipt: Receipt,
    pub client_msg_id: Uuid,
    pub duplicate: bool,
}

pub struct Sender {
    directory: Arc<Directory>,
    writer: Arc<EventWriter>,
    idempotency: Arc<Idempotency>,
    slots: Semaphore,
}

impl Sender {
    pub fn new(
        directory: Arc<Directory>,
        writer: Arc<EventWriter>,
        idempotency: Arc<Idempotency>,
    ) -> Self {
        Self {
            directory,
            writer,
            idempotency,
            slots: Semaphore::new(MAX_INFLIGHT_SENDS),
        }
    }

    pub async fn send(&self, principal: Principal, command: SendCommand) -> Result<SendOutcome> {
        validate_text(&command.text)?;
        let sender_id = access::sender_of(&principal, command.sender_id)?;
        if command.priority && !matches!(principal, Principal::Service { .. }) {
            // A device could otherwise jump every large group's queue.
            return Err(SyncdError::PermissionDenied(
                "only services may send high-priority messages".into(),
            ));
        }
        // Checked before the send waits for anything: a list of a million
        // repeated names must not be held (or sorted) while it waits.
        let mut command = command;
        if command.mentions.users.len() > 2 * MAX_MENTIONS {
            return Err(too_many_mentions(command.mentions.users.len()));
        }
        command.mentions = command.mentions.normalized(sender_id);
        if command.mentions.users.len() > MAX_MENTIONS {
            return Err(too_many_mentions(command.mentions.users.len()));
        }
        let _slot = within_admission_wait(self.slots.acquire(), || {
            format!("{MAX_INFLIGHT_SENDS} sends are in progress on this node; retry shortly")
        })
        .await?
        .map_err(|_| SyncdError::Internal("the send slots were closed".into()))?;
        let mut fingerprint = Fingerprint::new("send")
            .u64(command.conversation_id)
            .u64(sender_id)
            .bytes(command.text.as_bytes());
        // Only when there are mentions: a receipt written before they
        // existed still matches a retry without them.
        if !command.mentions.users.is_empty() || command.mentions.everyone {
            fingerprint = fingerprint.u64(u64::from(command.mentions.everyone));
            for &user in &command.mentions.users {
                fingerprint = fingerprint.u64(user);
            }
        }
        // Likewise only when set: older receipts match a plain retry.
        if command.priority {
            fingerprint = fingerprint.bytes(b"priority");
        }
        let fingerprint = fingerprint.finish();
        let (client_msg_id, claim) = match command.client_msg_id {
            Some(id) => {
                let key = IdempotencyKey {
                    principal: principal.idempotency_principal(),
                    client_msg_id: id,
                };
                (id, Some(self.idempotency.claim(key).await?))
            }
            None => (Uuid::new_v4(), None),
        };
        if let Some(receipt) = claim.as_ref().and_then(|c| c.earlier.clone()) {
            if receipt.conversation_id != command.conversation_id {
                return Err(SyncdError::InvalidArgument(format!(
                    "client_msg_id {client_msg_id} was already used for conversation {}",
                    receipt.conversation_id
                )));
            }
            check_same_request(
                &receipt,
                fingerprint,
                Unfingerprinted::Matches,
                "client_msg_id",
                client_msg_id,
            )?;
            metrics::counter!("syncd_sends_total", "outcome" => "duplicate").increment(1);
            return Ok(SendOutcome {
                receipt,
                client_msg_id,
                duplicate: true,
            });
        }
        let membership = self
            .directory
            .shared(command.conversation_id)
            .await
            .map_err(|e| access::conceal_missing(&principal, command.conversation_id, e))?;
        access::may_send(&self.directory, sender_id, &membership.record).await?;
        let mentions = command
            .mentions
            .checked(&self.directory, &membership.record, sender_id)
            .await?;
        let mut event = Event::message(
            &membership.record,
            sender_id,
            client_msg_id,
            command.text,
            mentions,
        )
        .with_priority(command.priority);
        let mut until_complete: Vec<crate::writer::Guard> = Vec::with_capacity(1);
        if let Some(claim) = claim {
            event = event.with_receipt(claim.key.clone(), fingerprint);
            until_complete.push(Box::new(claim.into_guard()));
        }
        let held = Held {
            until_allocated: vec![Box::new(membership.into_guard())],
            until_complete,
        };
        let receipt = self.writer.commit(event, held).await?;
        metrics::counter!("syncd_sends_total", "outcome" => "stored").increment(1);
        Ok(SendOutcome {
            receipt,
            client_msg_id,
            duplicate: false,
        })
    }
}

pub(crate) fn validate_text(text: &str) -> Result<()> {
    if text.is_empty() {
        return Err(SyncdError::InvalidArgument("text must not be empty".into()));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(SyncdError::InvalidArgument(format!(
            "text is {} bytes, at most {MAX_TEXT_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;
    use std::collections::HashSet;
    use timeline_store::EventLog;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_retries_of_one_send_store_one_message() {
        let fx = fixture().small_sections().jitter().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![1, 2]).await;
        let id = Uuid::new_v4();
        let mut retries = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let engine = Arc::clone(&engine);
            retries.spawn(async move {
                engine
                    .send(device(1, "phone"), message(conversation, "once", Some(id)))
                    .await
            });
        }
        let mut msg_ids = HashSet::new();
        let mut firsts = 0;
        while let Some(outcome) = retries.join_next().await {
            let outcome = outcome.unwrap().unwrap();
            msg_ids.insert(outcome.receipt.msg_id);
            firsts += usize::from(!outcome.duplicate);
        }
        assert_eq!((msg_ids.len(), firsts), (1, 1));
        let inbox = engine
            .sync(&device(2, "tablet"), Some(0), 100)
            .await
            .unwrap();
        assert_eq!(inbox.entries.iter().filter(|e| e.text == "once").count(), 1);
        // The same id for another conversation is a client bug: refused.
        let other = group(&engine, 1, vec![1, 3]).await;
        let reused = engine
            .send(device(1, "phone"), message(other, "x", Some(id)))
            .await;
        assert!(matches!(reused, Err(SyncdError::InvalidArgument(_))));
        // Another user may use the same UUID independently.
        let theirs = engine
            .send(device(2, "phone"), message(conversation, "mine", Some(id)))
            .await
            .unwrap();
        assert!(!theirs.duplicate);
    }

    #[tokio::test]
    async fn a_reused_client_msg_id_must_resend_the_same_message() {
        let fx = fixture().build().await;
        let engine = Arc::clone(&fx.engine);
        let conversation = group(&engine, 1, vec![2, 3]).await;
        let id = Uuid::new_v4();
        let first = engine
            .send(device(1, "phone"), message(conversation, "hello", Some(id)))
            .await
            .unwrap();
        let same = engine
            .send(
                device(1, "tablet"),
                message(conversation, "hello", Some(id)),
            )
            .await
            .unwrap();
        assert!(same.duplicate, "another device of the same user retries");
        assert_eq!(same.receipt.msg_id, first.receipt.msg_id);
        let other_text = engine
            .send(device(1, "phone"), message(conversation, "hullo", Some(id)))
            .await;
        assert!(
            matches!(&other_text, Err(SyncdError::InvalidArgument(m)) if m.contains("another request")),
            "{other_text:?}"
        );

        // A service names the sender: another sender is another message.
        let ops = Principal::Service { name: "ops".into() };
        let as_user = |sender_id| SendCommand {
            mentions: Mentions::default(),
            sender_id: Some(sender_id),
            ..message(conversation, "from ops", Some(id))
        };
        assert!(
            !engine
                .send(ops.clone(), as_user(2))
                .await
                .unwrap()
                .duplicate
        );
        assert!(
            engine
                .send(ops.clone(), as_user(2))
                .await
                .unwrap()
                .duplicate
        );
        assert!(matches!(
            engine.send(ops, as_user(3)).await,
            Err(SyncdError::InvalidArgument(_))
        ));

        // A receipt stored before receipts remembered the request is
        // returned to any retry, as it always was.
        let old_key = IdempotencyKey {
            principal: device(1, "phone").idempotency_principal(),
            client_msg_id: Uuid::new_v4(),
        };
        let old = Receipt {
            conversation_id: conversation,
            conv_seq: 1,
            msg_id: 4242,
            sent_at_ms: 1,
            ..Default::default()
        };
        fx.store
            .commit_event(timeline_store::EventCommit {
                keep_copies: false,
                rewrites: Vec::new(),
                entry: timeline_store::Entry {
                    conv_seq: 1_000,
                    ..timeline_store::Entry::new(timeline_store::EntryKind::Message, conversation)
                },
                inbox: Vec::new(),
                receipt: Some((old_key.clone(), old)),
                conversation: None,
                large_group_index: Vec::new(),
                members: Vec::new(),
                readers: Vec::new(),
            })
            .await
            .unwrap();
        let retried = engine
            .send(
                device(1, "phone"),
                message(conversation, "anything", Some(old_key.client_msg_id)),
            )
            .await
            .unwrap();
        assert!(retried.duplicate);
        assert_eq!(retried.receipt.msg_id, 4242);
    }
}
