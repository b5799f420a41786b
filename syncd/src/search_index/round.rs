//! One indexing round: one index commit over many conversations, sized by
//! what it carries (timeline entries and text bytes) rather than by how
//! many conversations it touches, so that a commit's fixed cost (a tantivy
//! commit and reader reload, an OpenSearch refresh) is shared by as much
//! as the bounds allow, and the lag under load stays about one commit (or
//! one `SEARCH_COMMIT_INTERVAL`, when that is longer).
//!
//! The candidates come in turn order (the one waiting longest first).
//! Each is read from the index's checkpoint a bounded stretch at a time,
//! a few reads in flight at once (a store read is a round trip on CQL);
//! a conversation whose stretch filled a read is read again behind the
//! other candidates while the budget lasts. Candidates past the budget
//! are not touched and keep their turn.

use super::{SearchIndexing, apply};
use crate::error::{Result, SyncdError};
use crate::limits::{
    SEARCH_BATCH_BYTES, SEARCH_BATCH_ENTRIES, SEARCH_READ_CONCURRENCY, SEARCH_READ_ENTRIES,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use search::ConversationUpdate;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use timeline_store::{ConversationRange, Entry};

/// What a round did to one conversation it reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stretch {
    pub conversation: u64,
    /// The checkpoint before the round.
    pub from: u64,
    /// Indexed through this `conv_seq` (committed).
    pub through: u64,
    /// `through` reaches what was readable when the round began with it.
    pub done: bool,
}

impl Stretch {
    /// Whether the checkpoint moved.
    pub fn moved(&self) -> bool {
        self.through > self.from
    }
}

/// Where a conversation's next read starts, and how far it may go.
#[derive(Clone, Copy)]
struct Cursor {
    conversation: u64,
    /// Known after its first read: (indexed through, readable through).
    span: Option<(u64, u64)>,
}

struct Read {
    conversation: u64,
    from: u64,
    readable: u64,
    entries: Vec<Entry>,
}

impl SearchIndexing {
    /// Indexes stretches of the candidates (turn order) in one commit and
    /// says how far each one it reached got. Nothing is committed on an
    /// error: the checkpoints say where to begin again.
    pub(super) async fn round(&self, candidates: &[u64]) -> Result<Vec<Stretch>> {
        let mut waiting: VecDeque<Cursor> = candidates
            .iter()
            .map(|&conversation| Cursor {
                conversation,
                span: None,
            })
            .collect();
        let mut reads = FuturesUnordered::new();
        let mut updates: Vec<ConversationUpdate> = Vec::new();
        // Conversation → its place in `updates` and in `reached`.
        let mut in_updates: HashMap<u64, usize> = HashMap::new();
        let mut in_reached: HashMap<u64, usize> = HashMap::new();
        let mut reached: Vec<Stretch> = Vec::new();
        let (mut entries, mut bytes) = (0usize, 0usize);
        loop {
            // The budget is checked before each read: the reads in flight
            // may carry it over by at most SEARCH_READ_CONCURRENCY reads.
            while reads.len() < SEARCH_READ_CONCURRENCY
                && entries < SEARCH_BATCH_ENTRIES
                && bytes < SEARCH_BATCH_BYTES
            {
                let Some(cursor) = waiting.pop_front() else {
                    break;
                };
                reads.push(self.read(cursor));
            }
            let Some(read) = reads.next().await else {
                break;
            };
            let read = read?;
            let conversation = read.conversation;
            let full = read.entries.len() == SEARCH_READ_ENTRIES;
            let through = match read.entries.last() {
                Some(last) if full => last.conv_seq.min(read.readable),
                _ => read.readable.max(read.from),
            };
            let done = through >= read.readable;
            match in_reached.get(&conversation) {
                Some(&i) => {
                    reached[i].through = through;
                    reached[i].done = done;
                }
                None => {
                    in_reached.insert(conversation, reached.len());
                    reached.push(Stretch {
                        conversation,
                        from: read.from,
                        through,
                        done,
                    });
                }
            }
            if through > read.from {
                entries += read.entries.len();
                bytes += read.entries.iter().map(|e| e.text.len()).sum::<usize>();
                let update = apply::update(conversation, &read.entries, through);
                match in_updates.get(&conversation) {
                    // A further stretch of one already in this commit: one
                    // update, in conv_seq order.
                    Some(&i) => {
                        updates[i].ops.extend(update.ops);
                        updates[i].indexed_through = through;
                    }
                    None => {
                        in_updates.insert(conversation, updates.len());
                        updates.push(update);
                    }
                }
            }
            if !done {
                waiting.push_back(Cursor {
                    conversation,
                    span: Some((through, read.readable)),
                });
            }
        }
        if !updates.is_empty() {
            let count: usize = updates.iter().map(|u| u.ops.len()).sum();
            let index = Arc::clone(&self.index);
            tokio::task::spawn_blocking(move || index.apply(&updates))
                .await
                .map_err(|e| SyncdError::Internal(format!("indexing task failed: {e}")))??;
            metrics::counter!("syncd_search_indexed_ops_total").increment(count as u64);
            metrics::counter!("syncd_search_commits_total").increment(1);
            metrics::counter!("syncd_search_indexed_entries_total").increment(entries as u64);
        }
        Ok(reached)
    }

    /// The next stretch of one conversation (its first: from the index's
    /// checkpoint up to what is readable now).
    async fn read(&self, cursor: Cursor) -> Result<Read> {
        let conversation = cursor.conversation;
        let (from, readable) = match cursor.span {
            Some(span) => span,
            None => (
                self.index.checkpoint(conversation)?,
                self.readable(conversation).await?,
            ),
        };
        let entries = if readable > from {
            let range = ConversationRange::oldest_first(
                from,
                readable.saturating_add(1),
                SEARCH_READ_ENTRIES,
            );
            self.store.read_conversation(conversation, range).await?
        } else {
            Vec::new()
        };
        Ok(Read {
            conversation,
            from,
            readable,
            entries,
        })
    }
}
