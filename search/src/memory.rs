//! The brute-force index: every message scanned, matched with the shared
//! tokeniser and membership rules. The oracle that tests hold the real
//! backends to; never for production.

use crate::model::{
    ConversationUpdate, IndexOp, Intervals, MAX_FILTER_INTERVALS, MessageDoc, Rank, SearchPage,
    SearchRequest, Searcher,
};
use crate::tokens;
use crate::{Result, SearchError, SearchIndex, page};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
struct State {
    messages: BTreeMap<(u64, u64), MessageDoc>,
    members: BTreeMap<(u64, u64), Intervals>,
    checkpoints: BTreeMap<u64, u64>,
}

#[derive(Default)]
pub struct MemoryIndex {
    state: Mutex<State>,
}

impl MemoryIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every indexed message, by (conversation, `conv_seq`).
    pub fn messages(&self) -> Vec<MessageDoc> {
        self.state().messages.values().cloned().collect()
    }

    /// Every membership, by (conversation, user).
    pub fn memberships(&self) -> Vec<((u64, u64), Intervals)> {
        self.state()
            .members
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

impl SearchIndex for MemoryIndex {
    fn checkpoints(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .state()
            .checkpoints
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn checkpoint(&self, conversation_id: u64) -> Result<u64> {
        Ok(self
            .state()
            .checkpoints
            .get(&conversation_id)
            .copied()
            .unwrap_or(0))
    }

    fn apply(&self, updates: &[ConversationUpdate]) -> Result<()> {
        let mut state = self.state();
        for update in updates {
            let conv = update.conversation_id;
            if update.indexed_through <= state.checkpoints.get(&conv).copied().unwrap_or(0) {
                continue;
            }
            for op in &update.ops {
                match op {
                    IndexOp::Upsert(doc) => {
                        state.messages.insert((conv, doc.conv_seq), doc.clone());
                    }
                    IndexOp::ReplaceText { conv_seq, text } => {
                        if let Some(doc) = state.messages.get_mut(&(conv, *conv_seq)) {
                            doc.text = text.clone();
                        }
                    }
                    IndexOp::Remove { conv_seq } => {
                        state.messages.remove(&(conv, *conv_seq));
                    }
                    IndexOp::Joined { users, conv_seq } => {
                        for &user in users {
                            state
                                .members
                                .entry((conv, user))
                                .or_default()
                                .join(*conv_seq);
                        }
                    }
                    IndexOp::Left { users, conv_seq } => {
                        for &user in users {
                            state
                                .members
                                .entry((conv, user))
                                .or_default()
                                .leave(*conv_seq);
                        }
                    }
                }
            }
            state.checkpoints.insert(conv, update.indexed_through);
        }
        Ok(())
    }

    fn search(&self, request: &SearchRequest) -> Result<SearchPage> {
        let query = request.parse()?;
        let state = self.state();
        let allowed: Option<BTreeMap<u64, &Intervals>> = match request.searcher {
            Searcher::Service => None,
            Searcher::User(user) => {
                let mine: BTreeMap<u64, &Intervals> = state
                    .members
                    .iter()
                    .filter(|((conv, u), _)| {
                        *u == user && request.conversation_id.is_none_or(|c| c == *conv)
                    })
                    .map(|((conv, _), intervals)| (*conv, intervals))
                    .collect();
                let count: usize = mine.values().map(|i| i.0.len()).sum();
                if count > MAX_FILTER_INTERVALS {
                    return Err(SearchError::TooManyMemberships {
                        limit: MAX_FILTER_INTERVALS,
                    });
                }
                Some(mine)
            }
        };
        let mut ranked = Vec::new();
        for doc in state.messages.values() {
            let readable = allowed.as_ref().is_none_or(|allowed| {
                allowed
                    .get(&doc.conversation_id)
                    .is_some_and(|i| i.contains(doc.conv_seq))
            });
            let filtered = request
                .conversation_id
                .is_none_or(|c| c == doc.conversation_id)
                && request.sender_id.is_none_or(|s| s == doc.sender_id)
                && request.sent_from_ms.is_none_or(|t| doc.sent_at_ms >= t)
                && request.sent_before_ms.is_none_or(|t| doc.sent_at_ms < t);
            let hidden = matches!(request.searcher, Searcher::User(_))
                && request.hidden.hides(doc.conversation_id, doc.conv_seq);
            if !readable || !filtered || hidden {
                continue;
            }
            let text_tokens = tokens::index_tokens(&doc.text);
            if !query
                .clauses
                .iter()
                .all(|clause| !tokens::phrase_spans(&text_tokens, clause).is_empty())
            {
                continue;
            }
            let rank = Rank {
                order: request.order,
                score: 0.0,
                sent_at_ms: doc.sent_at_ms,
                conversation_id: doc.conversation_id,
                conv_seq: doc.conv_seq,
            };
            if page::after_cursor(&rank, query.after) {
                ranked.push((rank, doc.clone()));
            }
        }
        // Everything ranked, then cut: the oracle needs no bounded heap.
        ranked.sort_by(|a, b| a.0.cmp_order(&b.0));
        ranked.truncate(query.limit + 1);
        page::cut(ranked, &query, false, |_, doc| {
            Ok(page::hit(doc, &query.clauses, 0.0))
        })
    }

    fn clear(&self) -> Result<()> {
        *self.state() = State::default();
        Ok(())
    }
}
