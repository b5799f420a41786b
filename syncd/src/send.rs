//! Sending a message, idempotently.
//!
//! A send with a client message id takes that key's lock, then looks for the
//! receipt of an earlier send under the key: found, it is returned again
//! (`duplicate`) and nothing is written; not found, the message is written
//! with its receipt in the same durable event. Concurrent retries of one
//! send therefore store one message. The key's lock is held until the event
//! is complete, also when it is finished in the background; a retry that
//! arrives meanwhile waits a bounded time ([`MAX_ADMISSION_WAIT`]), then
//! answers UNAVAILABLE instead of holding its send slot.

use crate::access;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::event::Event;
use crate::keyed::KeyedLocks;
use crate::lifecycle::within_admission_wait;
#[cfg(doc)]
use crate::limits::MAX_ADMISSION_WAIT;
use crate::limits::{MAX_INFLIGHT_SENDS, MAX_TEXT_BYTES};
use crate::writer::{EventWriter, Held};
use std::sync::Arc;
use timeline_store::{IdempotencyKey, Receipt, TimelineStore};
use tokio::sync::Semaphore;
use uuid::Uuid;

pub struct SendCommand {
    pub conversation_id: u64,
    pub text: String,
    /// `None`: the server picks one and the send is not idempotent.
    pub client_msg_id: Option<Uuid>,
    /// Services name the sender (0 = system); devices send as themselves.
    pub sender_id: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct SendOutcome {
    pub receipt: Receipt,
    pub client_msg_id: Uuid,
    pub duplicate: bool,
}

pub struct Sender {
    store: Arc<dyn TimelineStore>,
    directory: Arc<Directory>,
    writer: Arc<EventWriter>,
    keys: Arc<KeyedLocks<IdempotencyKey>>,
    slots: Semaphore,
}

impl Sender {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        directory: Arc<Directory>,
        writer: Arc<EventWriter>,
    ) -> Self {
        Self {
            store,
            directory,
            writer,
            keys: Arc::default(),
            slots: Semaphore::new(MAX_INFLIGHT_SENDS),
        }
    }

    pub async fn send(&self, principal: Principal, command: SendCommand) -> Result<SendOutcome> {
        validate_text(&command.text)?;
        let sender_id = access::sender_of(&principal, command.sender_id)?;
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| SyncdError::Internal("the send slots were closed".into()))?;
        let (client_msg_id, key) = match command.client_msg_id {
            Some(id) => (
                id,
                Some(IdempotencyKey {
                    principal: principal.idempotency_principal(),
                    client_msg_id: id,
                }),
            ),
            None => (Uuid::new_v4(), None),
        };
        let same_key = match &key {
            Some(key) => Some(
                within_admission_wait(self.keys.write(key.clone()), || {
                    format!("an earlier send with client_msg_id {client_msg_id} is still being stored; retry later")
                })
                .await?,
            ),
            None => None,
        };
        if let Some(key) = &key
            && let Some(receipt) = self.store.receipt(key).await?
        {
            if receipt.conversation_id != command.conversation_id {
                return Err(SyncdError::InvalidArgument(format!(
                    "client_msg_id {client_msg_id} was already used for conversation {}",
                    receipt.conversation_id
                )));
            }
            return Ok(SendOutcome {
                receipt,
                client_msg_id,
                duplicate: true,
            });
        }
        let membership = self.directory.shared(command.conversation_id).await?;
        access::may_send(sender_id, &membership.record)?;
        let event = Event::message(
            &membership.record,
            sender_id,
            client_msg_id,
            command.text,
            key,
        );
        let held = Held {
            until_allocated: vec![Box::new(membership.into_guard())],
            until_complete: vec![Box::new(same_key)],
        };
        let receipt = self.writer.commit(event, held).await?;
        Ok(SendOutcome {
            receipt,
            client_msg_id,
            duplicate: false,
        })
    }
}

fn validate_text(text: &str) -> Result<()> {
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
}
