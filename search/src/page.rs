//! What every backend does the same way once it has its matches: the hit
//! with its highlights, the page cut and its cursor.

use crate::model::{MAX_HIGHLIGHTS_PER_HIT, MessageDoc, ParsedQuery, Rank, SearchHit, SearchPage};
use crate::tokens::{self, Token};

/// The hit for a matching message: its spans are found again in its text
/// with the shared tokeniser, so every backend highlights alike.
pub(crate) fn hit(doc: MessageDoc, clauses: &[Vec<Token>], score: f32) -> SearchHit {
    let text_tokens = tokens::index_tokens(&doc.text);
    let spans = clauses
        .iter()
        .flat_map(|clause| tokens::phrase_spans(&text_tokens, clause))
        .collect();
    let mut highlights = tokens::merge_spans(spans);
    highlights.truncate(MAX_HIGHLIGHTS_PER_HIT);
    SearchHit {
        conversation_id: doc.conversation_id,
        conv_seq: doc.conv_seq,
        msg_id: doc.msg_id,
        sender_id: doc.sender_id,
        text: doc.text,
        sent_at_ms: doc.sent_at_ms,
        highlights,
        score,
    }
}

/// `ranked` holds the best matches after the cursor in page order, up to
/// one more than the page: the extra one says a next page exists.
pub(crate) fn cut<T>(
    mut ranked: Vec<(Rank, T)>,
    query: &ParsedQuery,
    timed_out: bool,
    mut to_hit: impl FnMut(Rank, T) -> crate::Result<SearchHit>,
) -> crate::Result<SearchPage> {
    ranked.sort_by(|a, b| a.0.cmp_order(&b.0));
    let more = ranked.len() > query.limit;
    ranked.truncate(query.limit);
    let next_cursor = if more {
        ranked.last().map(|(rank, _)| rank.encode())
    } else {
        None
    };
    let hits = ranked
        .into_iter()
        .map(|(rank, item)| to_hit(rank, item))
        .collect::<crate::Result<_>>()?;
    Ok(SearchPage {
        hits,
        next_cursor,
        timed_out,
    })
}

/// Whether a document's rank falls after the cursor.
pub(crate) fn after_cursor(rank: &Rank, cursor: Option<Rank>) -> bool {
    cursor.is_none_or(|cursor| rank.cmp_order(&cursor).is_gt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_carries_the_first_highlights_only() {
        let doc = MessageDoc {
            conversation_id: 1,
            conv_seq: 1,
            msg_id: 1,
            sender_id: 1,
            text: "a b ".repeat(16_000),
            sent_at_ms: 0,
        };
        let clauses = [tokens::query_tokens("a"), tokens::query_tokens("a")];
        let hit = hit(doc, &clauses, 0.0);
        // 16,000 separate matches, each found twice: the reply would carry
        // every one of them.
        assert_eq!(hit.highlights.len(), MAX_HIGHLIGHTS_PER_HIT);
        assert_eq!(hit.highlights[0], (0, 1));
        assert_eq!(hit.highlights[MAX_HIGHLIGHTS_PER_HIT - 1], (252, 253));
    }
}
