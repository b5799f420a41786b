//! Changing a sent message: edit, recall, delete for everyone, and hiding
//! for oneself (delete for me, clear history).
//!
//! Each operation is an event with its own `conv_seq`, through the event
//! writer like a send (idempotency under a client operation id, the
//! horizon, fanout, push, background finishing and recovery). The target
//! is named by `conv_seq` (and optionally `msg_id`, checked).
//!
//! - An **edit** stores a new `Edit` event (the new text, its `conv_seq` as
//!   the version) and, in the same commit, rewrites the message's
//!   conversation entry with the new text and the replaced one as history.
//! - A **recall** (the sender, within a window) or a **delete** (a service)
//!   stores a `Recall`/`Delete` event and rewrites the message and every
//!   edit of it, in the conversation timeline and in every inbox copy (the
//!   positions the message's commit kept), as entries without text: the
//!   text is gone from the stored timelines, not hidden. Never a delete of
//!   a row: the new state is a value.
//! - **Delete for me** and **clear history** are events of the user's inbox
//!   only; the read state folds them (History hides them for that user).
//!
//! Operations on one message run one at a time (a per-message lock, taken
//! before the membership lock and held from reading the target until the
//! event is complete, in the background too), so two edits racing are ordered by their `conv_seq` and a recall
//! never misses an edit. Devices apply an edit only if its version is
//! above the one they hold.

pub mod rules;

use crate::access;
use crate::auth::Principal;
use crate::directory::Directory;
use crate::error::{Result, SyncdError};
use crate::event::{Event, now_ms, target_of};
use crate::horizon::Scope;
use crate::idempotency::{Fingerprint, Idempotency, Unfingerprinted, check_same_request};
use crate::keyed::KeyedLocks;
use crate::lifecycle::within_admission_wait;
use crate::visibility::Visibility;
use crate::writer::{EventWriter, Guard, Held};
pub use rules::{Amendment, Operation, Windows};
use std::sync::Arc;
use timeline_store::{
    ConversationRange, Entry, EntryKind, IdempotencyKey, Receipt, RemovalKind, TimelineStore,
};
use uuid::Uuid;

/// A request to change one message.
#[derive(Clone, Debug)]
pub struct AmendCommand {
    pub conversation_id: u64,
    pub conv_seq: u64,
    /// 0: not checked; else must be the message's id.
    pub msg_id: u64,
    /// An edit's new text.
    pub text: String,
    pub client_op_id: Option<Uuid>,
}

/// A request to hide messages from the caller's own devices.
#[derive(Clone, Debug)]
pub struct HideCommand {
    pub conversation_id: u64,
    /// Delete for me: the message; clear: how far (`None`: the newest
    /// entry).
    pub conv_seq: Option<u64>,
    pub msg_id: u64,
    pub client_op_id: Option<Uuid>,
}

/// The event an operation stored (or, for a retry, had stored).
#[derive(Clone, Debug)]
pub struct AmendOutcome {
    pub receipt: Receipt,
    pub duplicate: bool,
    /// The `conv_seq` the event acted on (0 for a retry answered from its
    /// receipt).
    pub target_conv_seq: u64,
}

pub struct Amender {
    store: Arc<dyn TimelineStore>,
    directory: Arc<Directory>,
    writer: Arc<EventWriter>,
    idempotency: Arc<Idempotency>,
    visibility: Arc<Visibility>,
    /// `(conversation_id, conv_seq)` of a message being changed.
    targets: Arc<KeyedLocks<(u64, u64)>>,
    windows: Windows,
}

impl Amender {
    pub fn new(
        store: Arc<dyn TimelineStore>,
        directory: Arc<Directory>,
        writer: Arc<EventWriter>,
        idempotency: Arc<Idempotency>,
        visibility: Arc<Visibility>,
        windows: Windows,
    ) -> Self {
        Self {
            store,
            directory,
            writer,
            idempotency,
            visibility,
            targets: Arc::default(),
            windows,
        }
    }

    /// Edits, recalls or deletes (for everyone) one message.
    pub async fn amend(
        &self,
        principal: Principal,
        operation: Operation,
        command: AmendCommand,
    ) -> Result<AmendOutcome> {
        if operation == Operation::Edit {
            crate::send::validate_text(&command.text)?;
        } else if !command.text.is_empty() {
            return Err(SyncdError::InvalidArgument(
                "only an edit carries text".into(),
            ));
        }
        let actor = match &principal {
            Principal::Device { user_id, .. } => *user_id,
            Principal::Service { .. } => 0,
        };
        let fingerprint = Fingerprint::new(match operation {
            Operation::Edit => "edit",
            Operation::Recall => "recall",
            Operation::Delete => "delete",
        })
        .u64(command.conversation_id)
        .u64(command.conv_seq)
        .u64(command.msg_id)
        .bytes(command.text.as_bytes())
        .finish();
        let (claim, earlier) = self
            .claim(
                &principal,
                command.client_op_id,
                command.conversation_id,
                fingerprint,
            )
            .await?;
        if let Some(outcome) = earlier {
            return Ok(outcome);
        }
        let id = command.conversation_id;
        // The message's lock first, waited for a bounded time and without
        // the membership lock: a change stuck behind a failing store must
        // not hold up the conversation's membership changes (and the sends
        // queued behind them).
        let target_lock = within_admission_wait(self.targets.write((id, command.conv_seq)), || {
            format!(
                "another change of conv_seq {} of conversation {id} is still being stored; \
                 retry later",
                command.conv_seq
            )
        })
        .await?;
        let membership = self
            .directory
            .shared(id)
            .await
            .map_err(|e| access::conceal_missing(&principal, id, e))?;
        access::may_send(&self.directory, actor, &membership.record).await?;
        let target = self.target(id, command.conv_seq).await?;
        rules::check(
            operation,
            &principal,
            &target,
            command.msg_id,
            &self.windows,
            now_ms(),
        )?;
        let amendment = match operation {
            Operation::Edit => Amendment::Edit {
                target: target.clone(),
            },
            Operation::Recall | Operation::Delete => {
                let target_copies = self.store.inbox_copies(id, target.conv_seq).await?;
                if target_copies.is_empty() && !target.read_fanout {
                    // Stored before commits kept their copies' positions:
                    // its inbox copies cannot be found to rewrite.
                    return Err(SyncdError::FailedPrecondition(format!(
                        "message {} was stored before this server kept where its copies went; \
                         it cannot be withdrawn from every inbox",
                        target.msg_id
                    )));
                }
                Amendment::Remove {
                    kind: if operation == Operation::Recall {
                        RemovalKind::Recalled
                    } else {
                        RemovalKind::Deleted
                    },
                    by: actor,
                    target_copies,
                    edits: self.edits_of(&target).await?,
                    target: target.clone(),
                }
            }
        };
        let copy_holders = if membership.record.read_fanout {
            let candidates = Event::copy_candidates(&target, actor);
            self.directory
                .members_among(&membership.record, &candidates)
                .await?
        } else {
            Vec::new()
        };
        let mut event = Event::amending(
            &membership.record,
            operation.kind(),
            actor,
            &target,
            command.text,
            amendment,
            copy_holders,
        );
        if let Some(key) = command.client_op_id {
            event.entry.client_msg_id = key.to_string();
        }
        let mut until_complete: Vec<Guard> = vec![Box::new(target_lock)];
        if let Some(claim) = claim {
            event = event.with_receipt(claim.key.clone(), fingerprint);
            until_complete.push(Box::new(claim.into_guard()));
        }
        let held = Held {
            until_allocated: vec![Box::new(membership.into_guard())],
            until_complete,
        };
        let target_conv_seq = target.conv_seq;
        let receipt = self.writer.commit(event, held).await?;
        metrics::counter!("syncd_message_changes_total", "operation" => operation_label(operation))
            .increment(1);
        Ok(AmendOutcome {
            receipt,
            duplicate: false,
            target_conv_seq,
        })
    }

    /// Hides one message ([`EntryKind::DeleteForMe`]) from the caller's
    /// own devices. Other members are not affected. (Clearing the history
    /// through a point is a read marker: [`crate::read_state::ReadState::clear`].)
    pub async fn hide(
        &self,
        principal: Principal,
        kind: EntryKind,
        command: HideCommand,
    ) -> Result<AmendOutcome> {
        let (user_id, _) = access::device_user(&principal)?;
        let id = command.conversation_id;
        let fingerprint = Fingerprint::new("delete-for-me")
            .u64(id)
            .u64(command.conv_seq.unwrap_or(0))
            .u64(command.msg_id)
            .finish();
        let (claim, earlier) = self
            .claim(&principal, command.client_op_id, id, fingerprint)
            .await?;
        if let Some(outcome) = earlier {
            return Ok(outcome);
        }
        let membership = self
            .directory
            .shared(id)
            .await
            .map_err(|e| access::conceal_missing(&principal, id, e))?;
        access::may_read(&self.directory, &principal, &membership.record).await?;
        if kind != EntryKind::DeleteForMe {
            return Err(SyncdError::Internal(format!(
                "{kind:?} is not a delete for me"
            )));
        }
        let conv_seq = command
            .conv_seq
            .ok_or_else(|| SyncdError::InvalidArgument("delete for me needs a conv_seq".into()))?;
        let message = self.target(id, conv_seq).await?;
        if command.msg_id != 0 && message.msg_id != command.msg_id {
            return Err(SyncdError::InvalidArgument(format!(
                "conv_seq {conv_seq} of conversation {id} is message {}, not {}",
                message.msg_id, command.msg_id
            )));
        }
        if message.kind != EntryKind::Message {
            return Err(SyncdError::InvalidArgument(format!(
                "conv_seq {conv_seq} of conversation {id} is not a message"
            )));
        }
        let target = target_of(&message);
        let target_conv_seq = target.conv_seq;
        let mut event = Event::hiding(id, user_id, kind, target);
        let mut until_complete: Vec<Guard> = Vec::new();
        if let Some(claim) = claim {
            event = event.with_receipt(claim.key.clone(), fingerprint);
            until_complete.push(Box::new(claim.into_guard()));
        }
        let held = Held {
            until_allocated: vec![Box::new(membership.into_guard())],
            until_complete,
        };
        let receipt = self.writer.commit(event, held).await?;
        Ok(AmendOutcome {
            receipt,
            duplicate: false,
            target_conv_seq,
        })
    }

    /// Takes the operation id's lock and answers a retry from its receipt.
    async fn claim(
        &self,
        principal: &Principal,
        client_op_id: Option<Uuid>,
        conversation_id: u64,
        fingerprint: u64,
    ) -> Result<(Option<crate::idempotency::Claim>, Option<AmendOutcome>)> {
        let Some(id) = client_op_id else {
            return Ok((None, None));
        };
        let key = IdempotencyKey {
            principal: principal.idempotency_principal(),
            client_msg_id: id,
        };
        let claim = self.idempotency.claim(key).await?;
        let Some(receipt) = claim.earlier.clone() else {
            return Ok((Some(claim), None));
        };
        if receipt.conversation_id != conversation_id {
            return Err(SyncdError::InvalidArgument(format!(
                "client_op_id {id} was already used for conversation {}",
                receipt.conversation_id
            )));
        }
        check_same_request(
            &receipt,
            fingerprint,
            Unfingerprinted::Differs,
            "client_op_id",
            id,
        )?;
        Ok((
            None,
            Some(AmendOutcome {
                receipt,
                duplicate: true,
                target_conv_seq: 0,
            }),
        ))
    }

    /// The stored conversation entry at `conv_seq`, once readable.
    async fn target(&self, conversation_id: u64, conv_seq: u64) -> Result<Entry> {
        let readable = self
            .visibility
            .readable_through(Scope::Conversation, conversation_id)
            .await?;
        let not_found = || {
            SyncdError::NotFound(format!(
                "conversation {conversation_id} has no message at conv_seq {conv_seq}"
            ))
        };
        if conv_seq == 0 || conv_seq > readable {
            return Err(not_found());
        }
        let range = ConversationRange::oldest_first(conv_seq - 1, conv_seq + 1, 1);
        let mut entries = self.store.read_conversation(conversation_id, range).await?;
        entries.pop().ok_or_else(not_found)
    }

    /// Every edit event of `message`, with where its copies went.
    async fn edits_of(
        &self,
        message: &Entry,
    ) -> Result<Vec<(Entry, Vec<timeline_store::InboxWrite>)>> {
        let mut edits = Vec::with_capacity(message.state.edits.len());
        for &conv_seq in &message.state.edits {
            let range = ConversationRange::oldest_first(conv_seq - 1, conv_seq + 1, 1);
            let entry = self
                .store
                .read_conversation(message.conversation_id, range)
                .await?
                .pop()
                .ok_or_else(|| {
                    SyncdError::Internal(format!(
                        "edit {conv_seq} of message {} is missing",
                        message.msg_id
                    ))
                })?;
            let copies = self
                .store
                .inbox_copies(message.conversation_id, conv_seq)
                .await?;
            edits.push((entry, copies));
        }
        Ok(edits)
    }
}

fn operation_label(operation: Operation) -> &'static str {
    match operation {
        Operation::Edit => "edit",
        Operation::Recall => "recall",
        Operation::Delete => "delete",
    }
}

#[cfg(test)]
mod hide_tests;
#[cfg(test)]
mod tests;
