//! What the lifecycle run expects (the model of every conversation's
//! messages, read marks and hidden messages), the calls it makes, retried
//! through restarts, and the devices applying what they sync.

use super::*;

#[derive(Clone, Debug, Default)]
pub(crate) struct Message {
    pub(crate) sender: u64,
    pub(crate) text: String,
    pub(crate) version: u64,
    pub(crate) removed: bool,
}

/// Members, read fanout, messages by conv_seq.
pub(crate) type ConversationModel = (Vec<u64>, bool, BTreeMap<u64, Message>);

#[derive(Default)]
pub(crate) struct Model {
    pub(crate) conversations: BTreeMap<u64, ConversationModel>,
    pub(crate) read_through: BTreeMap<(u64, u64), u64>,
    pub(crate) hidden: BTreeMap<(u64, u64), BTreeSet<u64>>,
    pub(crate) cleared: BTreeMap<(u64, u64), u64>,
    /// Every text a withdrawn message ever had (the original and edits).
    pub(crate) withdrawn_texts: BTreeSet<String>,
    /// Every text each message had, to know what a recall withdraws.
    pub(crate) texts: BTreeMap<(u64, u64), Vec<String>>,
}

impl Model {
    pub(crate) fn visible(&self, user: u64, conversation: u64) -> BTreeMap<u64, ShownMessage> {
        let hidden = self.hidden.get(&(user, conversation));
        let cleared = self
            .cleared
            .get(&(user, conversation))
            .copied()
            .unwrap_or(0);
        self.conversations[&conversation]
            .2
            .iter()
            .filter(|(seq, _)| **seq > cleared && !hidden.is_some_and(|h| h.contains(seq)))
            .map(|(&seq, m)| {
                (
                    seq,
                    ShownMessage {
                        sender_id: m.sender,
                        text: m.text.clone(),
                        version: m.version,
                        removed: m.removed,
                    },
                )
            })
            .collect()
    }

    pub(crate) fn unread(&self, user: u64, conversation: u64) -> u64 {
        let from = self.read_through[&(user, conversation)];
        self.conversations[&conversation]
            .2
            .iter()
            .filter(|(seq, m)| **seq > from && m.sender != user && !m.removed)
            .count() as u64
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Call {
    Send(u64, String, uuid::Uuid),
    Edit(u64, u64, String, uuid::Uuid),
    Recall(u64, u64, uuid::Uuid),
    Delete(u64, u64, bool, uuid::Uuid),
    Clear(u64, u64, uuid::Uuid),
}

/// One call, retried until it is answered (the server may be down): the
/// event's conv_seq.
pub(crate) async fn complete(url: String, token: String, call: Call) -> u64 {
    loop {
        let client = connect_retrying(&url, &token).await;
        let outcome = match &call {
            Call::Send(conversation, text, id) => client
                .send(*conversation, text, Some(*id))
                .await
                .map(|r| r.conv_seq),
            Call::Edit(conversation, target, text, id) => client
                .edit_message(*conversation, *target, text, Some(*id))
                .await
                .map(|r| r.conv_seq),
            Call::Recall(conversation, target, id) => client
                .recall_message(*conversation, *target, Some(*id))
                .await
                .map(|r| r.conv_seq),
            Call::Delete(conversation, target, for_me, id) => client
                .delete_message(*conversation, *target, *for_me, Some(*id))
                .await
                .map(|r| r.conv_seq),
            Call::Clear(conversation, through, id) => client
                .clear_history(*conversation, Some(*through), Some(*id))
                .await
                .map(|r| r.conv_seq),
        };
        match outcome {
            Ok(conv_seq) => return conv_seq,
            Err(error) => {
                let text = error.to_string();
                assert!(
                    text.contains("unavailable")
                        || text.contains("transport")
                        || text.contains("connect"),
                    "only the server's absence may fail {call:?}: {text}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A device: its view, its inbox checkpoint and how far it read each
/// large group's History.
#[derive(Default)]
pub(crate) struct Device {
    pub(crate) view: DeviceView,
    pub(crate) checkpoint: u64,
    pub(crate) large_read: BTreeMap<u64, u64>,
}

impl Device {
    pub(crate) async fn catch_up(
        &mut self,
        client: &Client,
        large_groups: &[u64],
    ) -> anyhow::Result<()> {
        loop {
            let page = client.sync_page(Some(self.checkpoint), 200).await?;
            for entry in &page.entries {
                self.view.apply(entry);
            }
            self.checkpoint = page.checkpoint;
            if !page.has_more {
                break;
            }
        }
        for &id in large_groups {
            let after = self.large_read.entry(id).or_default();
            loop {
                let page = client.history(id, 0, Some(*after), 100).await?;
                for entry in &page.entries {
                    self.view.apply(entry);
                    *after = (*after).max(entry.conv_seq);
                }
                if !page.has_more {
                    break;
                }
            }
        }
        Ok(())
    }
}

pub(crate) async fn history_view(
    client: &Client,
    conversation: u64,
) -> anyhow::Result<ConversationView> {
    let mut view = ConversationView::default();
    let mut after = 0;
    loop {
        let page = client.history(conversation, 0, Some(after), 100).await?;
        for entry in &page.entries {
            view.apply(entry);
            after = entry.conv_seq;
        }
        if !page.has_more {
            return Ok(view);
        }
    }
}
