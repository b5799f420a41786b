//! Changing sent messages: edit, recall, delete (for everyone or for me),
//! clear history. Each call gets a client operation id (the caller's or a
//! new one) and is retried on transient failures with that same id, so a
//! retry never applies an operation twice.

use crate::{Client, Result, pb, with_deadline, with_retries};

impl Client {
    /// Replaces the text of the message at `conv_seq` (its sender, within
    /// the server's edit window; a service, any message).
    pub async fn edit_message(
        &self,
        conversation_id: u64,
        conv_seq: u64,
        text: &str,
        client_op_id: Option<uuid::Uuid>,
    ) -> Result<pb::MessageChangeReply> {
        let request = pb::EditMessageRequest {
            conversation_id,
            conv_seq,
            msg_id: 0,
            text: text.to_owned(),
            client_op_id: op_id(client_op_id),
        };
        with_retries("edit", || {
            let (mut timeline, request) = (self.timeline(), request.clone());
            async move { timeline.edit_message(with_deadline(request)).await }
        })
        .await
    }

    /// Withdraws the message at `conv_seq` for everyone (its sender, within
    /// the recall window; a service, any message).
    pub async fn recall_message(
        &self,
        conversation_id: u64,
        conv_seq: u64,
        client_op_id: Option<uuid::Uuid>,
    ) -> Result<pb::MessageChangeReply> {
        let request = pb::MessageChangeRequest {
            conversation_id,
            conv_seq,
            msg_id: 0,
            client_op_id: op_id(client_op_id),
        };
        with_retries("recall", || {
            let (mut timeline, request) = (self.timeline(), request.clone());
            async move { timeline.recall_message(with_deadline(request)).await }
        })
        .await
    }

    /// Deletes the message at `conv_seq`: for the caller's own devices
    /// (`for_me`), or for everyone (a service).
    pub async fn delete_message(
        &self,
        conversation_id: u64,
        conv_seq: u64,
        for_me: bool,
        client_op_id: Option<uuid::Uuid>,
    ) -> Result<pb::MessageChangeReply> {
        let request = pb::DeleteMessageRequest {
            conversation_id,
            conv_seq,
            msg_id: 0,
            for_me,
            client_op_id: op_id(client_op_id),
        };
        with_retries("delete", || {
            let (mut timeline, request) = (self.timeline(), request.clone());
            async move { timeline.delete_message(with_deadline(request)).await }
        })
        .await
    }

    /// Hides everything through `through` (`None`: all of it) from the
    /// caller's own devices and marks it read.
    pub async fn clear_history(
        &self,
        conversation_id: u64,
        through: Option<u64>,
        client_op_id: Option<uuid::Uuid>,
    ) -> Result<pb::MessageChangeReply> {
        let request = pb::ClearHistoryRequest {
            conversation_id,
            through,
            client_op_id: op_id(client_op_id),
        };
        with_retries("clear", || {
            let (mut timeline, request) = (self.timeline(), request.clone());
            async move { timeline.clear_history(with_deadline(request)).await }
        })
        .await
    }
}

fn op_id(chosen: Option<uuid::Uuid>) -> String {
    chosen.unwrap_or_else(uuid::Uuid::new_v4).to_string()
}
