//! The one tokenisation of message text and of queries, shared by every
//! backend and by the brute-force matcher, so that "what matches" has one
//! definition.
//!
//! Words (runs of letters and digits outside the CJK scripts) are one
//! lower-cased token each. A run of CJK characters (Han, kana, Hangul) is
//! indexed as its overlapping bigrams plus every single character, and a
//! query asks for the bigrams only (a lone character asks for itself): a
//! query for 数据库 is the phrase 数据·据库, which "数据很多，库存不足" does not
//! contain. No dictionary is needed and no word boundary can be guessed
//! wrong, at the cost of substring semantics inside CJK runs.
//!
//! Positions: a word takes one; a CJK run of n characters takes n, its
//! bigram i and character i both at `start + i`. Query tokens take the
//! same positions as the text they were cut from, so a phrase mixing
//! scripts matches exactly where the same tokens stand in a message.
//! Punctuation and spaces take none (a phrase ignores them).

/// Longest word kept whole, in characters: longer ones are cut (the same
/// way in messages and queries, so they still match each other).
pub const MAX_WORD_CHARS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub position: usize,
    /// Byte offsets of the token in the text it was cut from.
    pub start: usize,
    pub end: usize,
}

pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F  // Extensions B-F, compatibility supplement
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Index,
    Query,
}

/// The tokens a message's text is indexed under.
pub fn index_tokens(text: &str) -> Vec<Token> {
    tokenize(text, Mode::Index)
}

/// The tokens a query phrase asks for, at the positions they must stand
/// relative to each other.
pub fn query_tokens(text: &str) -> Vec<Token> {
    tokenize(text, Mode::Query)
}

fn tokenize(text: &str, mode: Mode) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut position = 0;
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if is_cjk(c) {
            let mut run = Vec::new();
            while let Some(&(offset, c)) = chars.peek() {
                if !is_cjk(c) {
                    break;
                }
                run.push((offset, c));
                chars.next();
            }
            cjk_run(&run, position, mode, &mut tokens);
            position += run.len();
        } else if c.is_alphanumeric() {
            let mut word = String::new();
            let mut end = start;
            let mut kept = 0;
            while let Some(&(offset, c)) = chars.peek() {
                if is_cjk(c) || !c.is_alphanumeric() {
                    break;
                }
                if kept < MAX_WORD_CHARS {
                    word.extend(c.to_lowercase());
                    kept += 1;
                }
                end = offset + c.len_utf8();
                chars.next();
            }
            tokens.push(Token {
                text: word,
                position,
                start,
                end,
            });
            position += 1;
        } else {
            chars.next();
        }
    }
    tokens
}

fn cjk_run(run: &[(usize, char)], start: usize, mode: Mode, tokens: &mut Vec<Token>) {
    let end_of = |i: usize| run[i].0 + run[i].1.len_utf8();
    if run.len() == 1 || mode == Mode::Index {
        for (i, &(offset, c)) in run.iter().enumerate() {
            tokens.push(Token {
                text: c.to_string(),
                position: start + i,
                start: offset,
                end: end_of(i),
            });
        }
    }
    for i in 0..run.len().saturating_sub(1) {
        tokens.push(Token {
            text: [run[i].1, run[i + 1].1].iter().collect(),
            position: start + i,
            start: run[i].0,
            end: end_of(i + 1),
        });
    }
}

/// Where each occurrence of the phrase `clause` (query tokens, at least
/// one) stands in `text_tokens` (index tokens): the byte span from its
/// first token's start to its last token's end. Linear in the text: each
/// clause token is a lookup by (position, text), not a scan, so a long
/// text of one repeated word costs its length, not its square.
pub fn phrase_spans(text_tokens: &[Token], clause: &[Token]) -> Vec<(usize, usize)> {
    let Some(first) = clause.first() else {
        return Vec::new();
    };
    let at: std::collections::HashMap<(usize, &str), usize> = text_tokens
        .iter()
        .map(|t| ((t.position, t.text.as_str()), t.end))
        .collect();
    let mut spans = Vec::new();
    for anchor in text_tokens.iter().filter(|t| t.text == first.text) {
        let Some(base) = anchor.position.checked_sub(first.position) else {
            continue;
        };
        let mut end = anchor.end;
        let all = clause.iter().all(|wanted| {
            match at.get(&(base + wanted.position, wanted.text.as_str())) {
                Some(&found_end) => {
                    end = end.max(found_end);
                    true
                }
                None => false,
            }
        });
        if all {
            spans.push((anchor.start, end));
        }
    }
    spans
}

/// Sorted, overlapping spans merged into one.
pub fn merge_spans(mut spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(tokens: &[Token]) -> Vec<(&str, usize)> {
        tokens
            .iter()
            .map(|t| (t.text.as_str(), t.position))
            .collect()
    }

    /// A text at the size limit made of one word, searched for a phrase of
    /// that word 16 times: a scan per clause token made this minutes of
    /// CPU for one hit; lookups make it a few milliseconds.
    #[test]
    fn a_long_text_of_one_repeated_word_is_matched_in_linear_time() {
        let text = "a ".repeat(32_768);
        let text_tokens = index_tokens(&text);
        let clause = query_tokens(&"a ".repeat(16));
        let spans = phrase_spans(&text_tokens, &clause);
        assert_eq!(spans.len(), 32_768 - 15);
        assert_eq!(spans[0], (0, 31));
        assert_eq!(merge_spans(spans), [(0, text.len() - 1)]);
    }

    #[test]
    fn words_are_lower_cased_and_punctuation_takes_no_position() {
        let tokens = index_tokens("Hello, World! x2");
        assert_eq!(texts(&tokens), [("hello", 0), ("world", 1), ("x2", 2)]);
        assert_eq!((tokens[1].start, tokens[1].end), (7, 12));
    }

    #[test]
    fn cjk_runs_are_bigrams_and_characters_in_the_index_bigrams_in_queries() {
        assert_eq!(
            texts(&index_tokens("数据库")),
            [("数", 0), ("据", 1), ("库", 2), ("数据", 0), ("据库", 1)]
        );
        assert_eq!(texts(&query_tokens("数据库")), [("数据", 0), ("据库", 1)]);
        assert_eq!(texts(&query_tokens("库")), [("库", 0)]);
    }

    #[test]
    fn a_chinese_phrase_matches_where_it_stands_and_not_its_scattered_characters() {
        let query = query_tokens("数据库");
        assert_eq!(
            phrase_spans(&index_tokens("我们的数据库很快"), &query),
            [(9, 18)]
        );
        assert!(phrase_spans(&index_tokens("数据很多，库存不足"), &query).is_empty());
    }

    #[test]
    fn mixed_scripts_keep_their_relative_positions() {
        let query = query_tokens("数据库 hello");
        assert_eq!(texts(&query), [("数据", 0), ("据库", 1), ("hello", 3)]);
        let text = index_tokens("看看数据库, hello!");
        assert_eq!(phrase_spans(&text, &query), [(6, 22)]);
        assert!(phrase_spans(&index_tokens("数据库 x hello"), &query).is_empty());
    }

    #[test]
    fn long_words_are_cut_the_same_way_on_both_sides() {
        let long = "a".repeat(100);
        let query = query_tokens(&long);
        assert_eq!(query[0].text.len(), MAX_WORD_CHARS);
        assert_eq!(phrase_spans(&index_tokens(&long), &query), [(0, 100)]);
    }

    #[test]
    fn spans_merge_when_they_overlap() {
        assert_eq!(merge_spans(vec![(5, 9), (0, 3), (2, 4)]), [(0, 4), (5, 9)]);
    }
}
