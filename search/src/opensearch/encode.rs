//! The shared tokenisation, spelled so that OpenSearch's built-in
//! `standard` analyzer indexes exactly its tokens at exactly its positions.
//!
//! OpenSearch's analysis of CJK text is not ours (the standard tokenizer
//! cuts ideographs into single characters), and the distribution without
//! plugins has no whitespace tokenizer to feed it our tokens. So every
//! token is written as one ASCII word the standard tokenizer keeps whole
//! (`w` + an ASCII word, `x` + the hex of its UTF-8, or `h` + a 128-bit
//! hash when that would pass the tokenizer's 255-character limit), and the
//! positions are laid out on a doubled axis: position `p` of the shared
//! tokeniser is slot `2p` (its word or CJK character) and slot `2p + 1`
//! (the CJK bigram starting there). A slot without a token holds [`GAP`],
//! a stop word of the index's analyzer: removed, it still takes its
//! position, so a phrase query written the same way asks for its tokens at
//! exactly the distances the shared tokeniser puts them.

use crate::tokens::{self, Token};

/// The stop word of the index's analyzer that fills an empty slot (no
/// encoded token is two letters long).
pub(crate) const GAP: &str = "zz";

/// Longest encoded token: the standard tokenizer splits longer words.
const MAX_ENCODED: usize = 250;

/// One token as a word the standard analyzer leaves as it is.
pub(crate) fn encode(token: &str) -> String {
    if token
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && token.len() < MAX_ENCODED
    {
        return format!("w{token}");
    }
    if 2 * token.len() < MAX_ENCODED {
        let mut out = String::with_capacity(1 + 2 * token.len());
        out.push('x');
        for b in token.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        return out;
    }
    format!("h{:032x}", fnv1a_128(token.as_bytes()))
}

/// FNV-1a, 128 bits: stable across builds and platforms (the index keeps
/// what it wrote), and collision-free in practice for words.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes.iter().fold(OFFSET, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
}

/// A bigram is two CJK characters; every other token (a word, a single
/// character) stands in the even slot of its position.
fn slot(token: &Token) -> usize {
    let mut chars = token.text.chars();
    let bigram = matches!((chars.next(), chars.next(), chars.next()),
        (Some(a), Some(b), None) if tokens::is_cjk(a) && tokens::is_cjk(b));
    2 * token.position + usize::from(bigram)
}

/// The slots from the first token's to the last one's, gaps filled.
fn lay_out(tokens: &[Token]) -> String {
    let mut slots: Vec<(usize, String)> =
        tokens.iter().map(|t| (slot(t), encode(&t.text))).collect();
    slots.sort_by_key(|(slot, _)| *slot);
    let mut out = String::new();
    let mut next = slots.first().map_or(0, |(slot, _)| *slot);
    for (slot, word) in slots {
        while next < slot {
            out.push_str(GAP);
            out.push(' ');
            next += 1;
        }
        out.push_str(&word);
        out.push(' ');
        next = slot + 1;
    }
    out.pop();
    out
}

/// What a message's text is indexed as.
pub(crate) fn index_text(text: &str) -> String {
    lay_out(&tokens::index_tokens(text))
}

/// The phrase one query clause asks for.
pub(crate) fn query_phrase(clause: &[Token]) -> String {
    lay_out(clause)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_characters_and_bigrams_take_their_slots() {
        // 数@0 数据@0 据@1 据库@1 库@2, then hello@3.
        let indexed = index_text("数据库, Hello");
        let [a, b, c, d, e, gap, hello]: [&str; 7] =
            indexed.split(' ').collect::<Vec<_>>().try_into().unwrap();
        assert_eq!(a, encode("数"));
        assert_eq!(b, encode("数据"));
        assert_eq!(c, encode("据"));
        assert_eq!(d, encode("据库"));
        assert_eq!(e, encode("库"));
        assert_eq!(gap, GAP);
        assert_eq!(hello, "whello");
    }

    #[test]
    fn a_query_phrase_leaves_gaps_where_it_asks_nothing() {
        let clause = tokens::query_tokens("数据库 hello");
        // 数据 at slot 1, 据库 at 3, hello at 6.
        assert_eq!(
            query_phrase(&clause),
            format!(
                "{} {GAP} {} {GAP} {GAP} whello",
                encode("数据"),
                encode("据库")
            )
        );
        assert_eq!(query_phrase(&tokens::query_tokens("库")), encode("库"));
    }

    #[test]
    fn encodings_are_single_ascii_words_within_the_tokenizer_limit() {
        for token in ["x2", "数据", "ÉCOLE", &"ж".repeat(64), &"a".repeat(64)] {
            let word = encode(&token.to_lowercase());
            assert!(word.len() <= MAX_ENCODED + 33, "{word}");
            assert!(word.bytes().all(|b| b.is_ascii_alphanumeric()), "{word}");
            assert_ne!(word, GAP);
        }
        assert_ne!(encode(&"ж".repeat(64)), encode(&"ж".repeat(63)));
    }
}
