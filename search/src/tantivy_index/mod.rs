//! The embedded backend: one tantivy index in a directory of its own.
//!
//! Three kinds of document share the index, each with its own key field
//! (so an upsert is "delete the key, add the document" in one commit):
//! messages (key: conversation id and `conv_seq`, big-endian, so a
//! conversation's stretch of `conv_seq`s is one range of keys), memberships
//! (key: conversation and user; the intervals stored) and checkpoints (key:
//! the conversation). One commit carries a batch of them, which is what
//! makes a checkpoint exact: it is durable exactly when the documents it
//! covers are.

mod query;

use crate::error::{Result, SearchError};
use crate::model::{ConversationUpdate, IndexOp, Intervals, MessageDoc};
use crate::tokens;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use tantivy::collector::DocSetCollector;
use tantivy::directory::MmapDirectory;
use tantivy::query::TermQuery;
use tantivy::schema::{
    BytesOptions, Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing,
    TextOptions, Value,
};
use tantivy::tokenizer::{PreTokenizedString, Token as TantivyToken};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

/// The writer's indexing memory: what it buffers before it writes a
/// segment (tantivy's floor is 15 MB).
pub const WRITER_MEMORY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Clone, Copy)]
pub(crate) struct Fields {
    /// The message text's tokens (not stored).
    tokens: Field,
    /// The message text (stored, not indexed).
    text: Field,
    key: Field,
    conversation_id: Field,
    conv_seq: Field,
    msg_id: Field,
    sender_id: Field,
    sent_at_ms: Field,
    member_key: Field,
    member_user: Field,
    member_conversation: Field,
    intervals: Field,
    checkpoint_conversation: Field,
    checkpoint_through: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    // Pre-tokenised with the shared tokeniser, so the field's own
    // tokenizer is never run.
    let tokens = builder.add_text_field(
        "tokens",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("raw")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    let fast_u64 = || {
        tantivy::schema::NumericOptions::default()
            .set_fast()
            .set_stored()
    };
    let fields = Fields {
        tokens,
        text: builder.add_text_field("text", STORED),
        key: builder.add_bytes_field("key", BytesOptions::default().set_indexed()),
        conversation_id: builder.add_u64_field("conversation_id", fast_u64().set_indexed()),
        conv_seq: builder.add_u64_field("conv_seq", fast_u64()),
        msg_id: builder.add_u64_field("msg_id", STORED),
        sender_id: builder.add_u64_field("sender_id", INDEXED | STORED),
        sent_at_ms: builder.add_i64_field("sent_at_ms", fast_u64().set_indexed()),
        member_key: builder.add_bytes_field("member_key", BytesOptions::default().set_indexed()),
        member_user: builder.add_u64_field("member_user", INDEXED),
        member_conversation: builder.add_u64_field("member_conversation", INDEXED | STORED),
        intervals: builder.add_bytes_field("intervals", STORED),
        checkpoint_conversation: builder.add_u64_field("checkpoint_conversation", INDEXED | STORED),
        checkpoint_through: builder.add_u64_field("checkpoint_through", STORED),
    };
    (builder.build(), fields)
}

fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

pub struct TantivyIndex {
    fields: Fields,
    reader: IndexReader,
    /// The one writer.
    writer: Mutex<IndexWriter<TantivyDocument>>,
    /// The checkpoints as last committed (loaded at open: one number per
    /// conversation), apart from the writer so that reading them never
    /// waits for a commit.
    checkpoints: RwLock<BTreeMap<u64, u64>>,
    /// The checkpoints above may be behind what is committed (a commit
    /// that failed after it was durable, a writer that panicked): until
    /// they are read again, every document is deleted before it is added,
    /// since one above a checkpoint may already be in the index.
    stale: AtomicBool,
    /// Fails the next commit after it is durable (tests of that path).
    #[cfg(test)]
    fail_after_commit: AtomicBool,
    /// Fails this many re-reads of the checkpoints (tests of that path).
    #[cfg(test)]
    failing_resyncs: std::sync::atomic::AtomicUsize,
}

impl TantivyIndex {
    /// Opens the index in `dir` (created if missing). Fails if another
    /// process has it open for writing.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SearchError::Engine(format!("create {}: {e}", dir.display())))?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(|e| SearchError::Engine(e.to_string()))?;
        let index = Index::builder()
            .schema(schema)
            .open_or_create(directory)
            .map_err(|e| match e {
                tantivy::TantivyError::SchemaError(message) => SearchError::Corrupt(format!(
                    "{}: not this version's search index ({message})",
                    dir.display()
                )),
                other => other.into(),
            })?;
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let this = Self {
            fields,
            reader,
            writer: Mutex::new(writer),
            checkpoints: RwLock::default(),
            stale: AtomicBool::new(false),
            #[cfg(test)]
            fail_after_commit: AtomicBool::new(false),
            #[cfg(test)]
            failing_resyncs: Default::default(),
        };
        let checkpoints = this.load_checkpoints()?;
        *this.checkpoints.write().unwrap_or_else(|e| e.into_inner()) = checkpoints;
        Ok(this)
    }

    fn lock(&self) -> MutexGuard<'_, IndexWriter<TantivyDocument>> {
        self.writer.lock().unwrap_or_else(|poisoned| {
            // A writer that panicked mid-batch: what it staged must not
            // reach the next commit, and what it committed may be past the
            // checkpoints held here.
            let mut writer = poisoned.into_inner();
            let _ = writer.rollback();
            self.stale.store(true, Ordering::SeqCst);
            writer
        })
    }

    /// Reads the checkpoints again from what is committed; while that
    /// fails, the index stays stale (every upsert deletes first).
    fn resync(&self) {
        #[cfg(test)]
        if self
            .failing_resyncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.stale.store(true, Ordering::SeqCst);
            return;
        }
        let reloaded = self.reader.reload().map_err(SearchError::from);
        match reloaded.and_then(|()| self.load_checkpoints()) {
            Ok(checkpoints) => {
                *self.checkpoints.write().unwrap_or_else(|e| e.into_inner()) = checkpoints;
                self.stale.store(false, Ordering::SeqCst);
            }
            Err(error) => {
                self.stale.store(true, Ordering::SeqCst);
                tracing::warn!(%error, "search index: cannot read the checkpoints again; every upsert deletes first until it can");
            }
        }
    }

    fn committed_checkpoints(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, u64>> {
        self.checkpoints.read().unwrap_or_else(|e| e.into_inner())
    }

    fn load_checkpoints(&self) -> Result<BTreeMap<u64, u64>> {
        let searcher = self.reader.searcher();
        let all = tantivy::query::RangeQuery::new(
            Bound::Included(Term::from_field_u64(self.fields.checkpoint_conversation, 0)),
            Bound::Unbounded,
        );
        let mut checkpoints = BTreeMap::new();
        for address in searcher.search(&all, &DocSetCollector)? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let conversation = stored_u64(&doc, self.fields.checkpoint_conversation)?;
            let through = stored_u64(&doc, self.fields.checkpoint_through)?;
            checkpoints.insert(conversation, through);
        }
        Ok(checkpoints)
    }

    /// The one stored document under `term`, if any.
    fn lookup(&self, searcher: &Searcher, term: Term) -> Result<Option<TantivyDocument>> {
        let query = TermQuery::new(term, IndexRecordOption::Basic);
        match searcher
            .search(&query, &DocSetCollector)?
            .into_iter()
            .next()
        {
            Some(address) => Ok(Some(searcher.doc(address)?)),
            None => Ok(None),
        }
    }

    fn message_doc(&self, doc: &MessageDoc) -> TantivyDocument {
        let f = &self.fields;
        let tokens = tokens::index_tokens(&doc.text)
            .into_iter()
            .map(|t| TantivyToken {
                offset_from: t.start,
                offset_to: t.end,
                position: t.position,
                text: t.text,
                position_length: 1,
            })
            .collect();
        let mut out = TantivyDocument::default();
        out.add_pre_tokenized_text(
            f.tokens,
            PreTokenizedString {
                text: String::new(),
                tokens,
            },
        );
        out.add_text(f.text, &doc.text);
        out.add_bytes(f.key, &pair_key(doc.conversation_id, doc.conv_seq));
        out.add_u64(f.conversation_id, doc.conversation_id);
        out.add_u64(f.conv_seq, doc.conv_seq);
        out.add_u64(f.msg_id, doc.msg_id);
        out.add_u64(f.sender_id, doc.sender_id);
        out.add_i64(f.sent_at_ms, doc.sent_at_ms);
        out
    }

    pub(crate) fn decode_message(&self, doc: &TantivyDocument) -> Result<MessageDoc> {
        let f = &self.fields;
        Ok(MessageDoc {
            conversation_id: stored_u64(doc, f.conversation_id)?,
            conv_seq: stored_u64(doc, f.conv_seq)?,
            msg_id: stored_u64(doc, f.msg_id)?,
            sender_id: stored_u64(doc, f.sender_id)?,
            text: doc
                .get_first(f.text)
                .and_then(|v| v.as_str())
                .ok_or_else(|| SearchError::Corrupt("message without text".into()))?
                .to_owned(),
            sent_at_ms: doc
                .get_first(f.sent_at_ms)
                .and_then(|v| v.as_i64())
                .ok_or_else(|| SearchError::Corrupt("message without sent_at_ms".into()))?,
        })
    }

    fn membership_doc(
        &self,
        conversation: u64,
        user: u64,
        intervals: &Intervals,
    ) -> TantivyDocument {
        let f = &self.fields;
        let mut out = TantivyDocument::default();
        out.add_bytes(f.member_key, &pair_key(conversation, user));
        out.add_u64(f.member_user, user);
        out.add_u64(f.member_conversation, conversation);
        out.add_bytes(f.intervals, &intervals.encode());
        out
    }

    /// Adds one batch's documents to the writer (not yet committed).
    fn stage(
        &self,
        writer: &mut IndexWriter<TantivyDocument>,
        updates: &[ConversationUpdate],
    ) -> Result<BTreeMap<u64, u64>> {
        let f = self.fields;
        let searcher = self.reader.searcher();
        let stale = self.stale.load(Ordering::SeqCst);
        let mut staged_checkpoints = BTreeMap::new();
        // What this batch wrote so far: the searcher shows only what was
        // committed before it.
        let mut messages: HashMap<(u64, u64), Option<MessageDoc>> = HashMap::new();
        let mut members: HashMap<(u64, u64), Intervals> = HashMap::new();
        for update in updates {
            let conv = update.conversation_id;
            let checkpoint = match staged_checkpoints.get(&conv) {
                Some(&staged) => staged,
                None => self
                    .committed_checkpoints()
                    .get(&conv)
                    .copied()
                    .unwrap_or(0),
            };
            if update.indexed_through <= checkpoint {
                continue;
            }
            if let Some(op) = update
                .ops
                .iter()
                .find(|op| op.conv_seq() > update.indexed_through)
            {
                return Err(SearchError::InvalidUpdate(format!(
                    "conversation {conv}: an operation at conv_seq {} is past indexed_through {}",
                    op.conv_seq(),
                    update.indexed_through
                )));
            }
            for op in &update.ops {
                match op {
                    IndexOp::Upsert(doc) => {
                        let key = pair_key(conv, doc.conv_seq);
                        // Every committed document is at or below its
                        // conversation's committed checkpoint (both land in
                        // one commit), so a message above it can only be in
                        // this batch. Deletes are what a commit pays for
                        // per segment: a new message, nearly every upsert,
                        // adds none.
                        if stale
                            || doc.conv_seq <= checkpoint
                            || messages.contains_key(&(conv, doc.conv_seq))
                        {
                            writer.delete_term(Term::from_field_bytes(f.key, &key));
                        }
                        writer.add_document(self.message_doc(doc))?;
                        messages.insert((conv, doc.conv_seq), Some(doc.clone()));
                    }
                    IndexOp::ReplaceText { conv_seq, text } => {
                        let key = pair_key(conv, *conv_seq);
                        let current = match messages.get(&(conv, *conv_seq)) {
                            Some(staged) => staged.clone(),
                            None => self
                                .lookup(&searcher, Term::from_field_bytes(f.key, &key))?
                                .map(|d| self.decode_message(&d))
                                .transpose()?,
                        };
                        if let Some(mut doc) = current {
                            doc.text = text.clone();
                            writer.delete_term(Term::from_field_bytes(f.key, &key));
                            writer.add_document(self.message_doc(&doc))?;
                            messages.insert((conv, *conv_seq), Some(doc));
                        }
                    }
                    IndexOp::Remove { conv_seq } => {
                        let key = pair_key(conv, *conv_seq);
                        writer.delete_term(Term::from_field_bytes(f.key, &key));
                        messages.insert((conv, *conv_seq), None);
                    }
                    IndexOp::Joined { users, conv_seq } | IndexOp::Left { users, conv_seq } => {
                        let joined = matches!(op, IndexOp::Joined { .. });
                        for &user in users {
                            let key = pair_key(conv, user);
                            let mut intervals = match members.remove(&(conv, user)) {
                                Some(staged) => staged,
                                None => self
                                    .lookup(&searcher, Term::from_field_bytes(f.member_key, &key))?
                                    .map(|d| stored_intervals(&d, f.intervals))
                                    .transpose()?
                                    .unwrap_or_default(),
                            };
                            if joined {
                                intervals.join(*conv_seq);
                            } else {
                                intervals.leave(*conv_seq);
                            }
                            writer.delete_term(Term::from_field_bytes(f.member_key, &key));
                            writer.add_document(self.membership_doc(conv, user, &intervals))?;
                            members.insert((conv, user), intervals);
                        }
                    }
                }
            }
            // A conversation without a checkpoint has no checkpoint document.
            if stale || checkpoint > 0 {
                writer.delete_term(Term::from_field_u64(f.checkpoint_conversation, conv));
            }
            let mut doc = TantivyDocument::default();
            doc.add_u64(f.checkpoint_conversation, conv);
            doc.add_u64(f.checkpoint_through, update.indexed_through);
            writer.add_document(doc)?;
            staged_checkpoints.insert(conv, update.indexed_through);
        }
        Ok(staged_checkpoints)
    }

    fn commit(&self, writer: &mut IndexWriter<TantivyDocument>) -> Result<()> {
        writer.prepare_commit()?.commit()?;
        #[cfg(test)]
        if self.fail_after_commit.swap(false, Ordering::SeqCst) {
            return Err(SearchError::Engine("failed after the commit".into()));
        }
        self.reader.reload()?;
        Ok(())
    }
}

fn stored_u64(doc: &TantivyDocument, field: Field) -> Result<u64> {
    doc.get_first(field)
        .and_then(|v| v.as_u64())
        .ok_or_else(|| SearchError::Corrupt("a stored number is missing".into()))
}

fn stored_intervals(doc: &TantivyDocument, field: Field) -> Result<Intervals> {
    let bytes = doc
        .get_first(field)
        .and_then(|v| v.as_bytes())
        .ok_or_else(|| SearchError::Corrupt("membership without intervals".into()))?;
    Intervals::decode(bytes)
}

impl crate::SearchIndex for TantivyIndex {
    fn checkpoints(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .committed_checkpoints()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect())
    }

    fn checkpoint(&self, conversation_id: u64) -> Result<u64> {
        Ok(self
            .committed_checkpoints()
            .get(&conversation_id)
            .copied()
            .unwrap_or(0))
    }

    fn apply(&self, updates: &[ConversationUpdate]) -> Result<()> {
        let mut writer = self.lock();
        if self.stale.load(Ordering::SeqCst) {
            self.resync();
        }
        let staged = self
            .stage(&mut writer, updates)
            .and_then(|staged| self.commit(&mut writer).map(|()| staged));
        match staged {
            Ok(staged) => {
                self.checkpoints
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(staged);
                Ok(())
            }
            Err(error) => {
                // Nothing of the batch may linger into the next commit.
                writer.rollback()?;
                // The commit may have been durable before it failed: the
                // checkpoints held here would then be behind the index.
                self.resync();
                Err(error)
            }
        }
    }

    fn search(&self, request: &crate::SearchRequest) -> Result<crate::SearchPage> {
        self.run_search(request)
    }

    fn clear(&self) -> Result<()> {
        let mut writer = self.lock();
        writer.delete_all_documents()?;
        self.commit(&mut writer)?;
        self.checkpoints
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SearchIndex, SearchRequest, Searcher};

    fn stretch(conversation_id: u64, from: u64, through: u64) -> ConversationUpdate {
        let ops = (from..=through)
            .map(|conv_seq| {
                IndexOp::Upsert(MessageDoc {
                    conversation_id,
                    conv_seq,
                    msg_id: conv_seq,
                    sender_id: 1,
                    text: format!("stretch note {conv_seq}"),
                    sent_at_ms: conv_seq as i64,
                })
            })
            .collect();
        ConversationUpdate {
            conversation_id,
            ops,
            indexed_through: through,
        }
    }

    fn hits(index: &TantivyIndex) -> Vec<u64> {
        let mut request = SearchRequest::new(Searcher::Service, "stretch");
        request.limit = 100;
        let mut seqs: Vec<u64> = index
            .search(&request)
            .unwrap()
            .hits
            .iter()
            .map(|h| h.conv_seq)
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// An index holding conversation 7 through 3, whose next commit fails
    /// once it is durable.
    fn about_to_fail_after_a_commit(dir: &Path) -> TantivyIndex {
        let index = TantivyIndex::open(dir).unwrap();
        index.apply(&[stretch(7, 1, 3)]).unwrap();
        index.fail_after_commit.store(true, Ordering::SeqCst);
        index
    }

    #[test]
    fn a_commit_that_failed_after_it_was_durable_doubles_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = about_to_fail_after_a_commit(dir.path());
        assert!(index.apply(&[stretch(7, 4, 5)]).is_err());
        // The feeder does not know the stretch landed and sends it again,
        // and the next one, from the checkpoint it last saw.
        let _ = index.apply(&[stretch(7, 4, 5)]);
        index.apply(&[stretch(7, 6, 6)]).unwrap();
        assert_eq!(hits(&index), [1, 2, 3, 4, 5, 6]);
        assert_eq!(index.checkpoint(7).unwrap(), 6);
    }

    #[test]
    fn while_the_checkpoints_cannot_be_read_again_every_upsert_deletes_first() {
        let dir = tempfile::tempdir().unwrap();
        let index = about_to_fail_after_a_commit(dir.path());
        // The re-read after the failure fails, and so does the next one.
        index.failing_resyncs.store(2, Ordering::SeqCst);
        assert!(index.apply(&[stretch(7, 4, 5)]).is_err());
        assert!(index.stale.load(Ordering::SeqCst));
        // Still stale: the stretch that landed comes again from the
        // checkpoint held here (3), and must replace, not double.
        index.apply(&[stretch(7, 4, 5)]).unwrap();
        assert!(index.stale.load(Ordering::SeqCst));
        assert_eq!(hits(&index), [1, 2, 3, 4, 5]);
        // The next re-read succeeds and the index is itself again.
        index.apply(&[stretch(7, 6, 6)]).unwrap();
        assert!(!index.stale.load(Ordering::SeqCst));
        assert_eq!(hits(&index), [1, 2, 3, 4, 5, 6]);
        assert_eq!(index.checkpoint(7).unwrap(), 6);
    }

    #[test]
    fn an_operation_past_indexed_through_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = TantivyIndex::open(dir.path()).unwrap();
        let mut update = stretch(7, 1, 3);
        update.indexed_through = 2;
        let refused = index.apply(&[update]).unwrap_err();
        assert!(
            matches!(refused, SearchError::InvalidUpdate(_)),
            "{refused}"
        );
        assert_eq!(hits(&index), Vec::<u64>::new());
        assert_eq!(index.checkpoint(7).unwrap(), 0);
    }
}
