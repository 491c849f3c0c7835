//! SentencePiece-style tokenization (GGUF `tokenizer.ggml.model = "llama"`), as
//! llama.cpp's `llm_tokenizer_spm_session` does it.
//!
//! Written here rather than taken from the `tokenizers` crate, because its `BPE` model
//! merges by a ranked merge list and its `Unigram` model segments by Viterbi. llama.cpp
//! (the reference these ids are checked against) instead merges, again and again, the
//! adjacent pair whose joined text is the vocabulary token with the highest score. It
//! falls back to `<0xXX>` byte tokens for characters left unmerged.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::{TokenType, TokenizerError};

/// The character SentencePiece writes in place of a space (U+2581).
const SPACE_MARK: char = '\u{2581}';

pub(super) struct SpmModel {
    token_to_id: HashMap<String, u32>,
    scores: Vec<f32>,
    /// The `<0xXX>` token for each byte, or the single-byte token as a fallback.
    byte_ids: [Option<u32>; 256],
    add_space_prefix: bool,
}

/// One symbol of the text being merged: a byte range of the escaped text, linked to
/// its live neighbours. A symbol merged into its left neighbour has `len == 0`.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of two adjacent symbols whose joined text is a token.
#[derive(Clone, Copy)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    /// Byte length of the joined text when the bigram was made; a mismatch later means
    /// one side has changed since, and the bigram is stale.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Highest score first; among equal scores the leftmost pair first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl SpmModel {
    pub(super) fn new(
        token_to_id: HashMap<String, u32>,
        scores: Vec<f32>,
        add_space_prefix: bool,
    ) -> Self {
        let mut byte_ids = [None; 256];
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            let hex_name = format!("<0x{byte:02X}>");
            *slot = token_to_id.get(&hex_name).copied().or_else(|| {
                let single = [byte as u8];
                std::str::from_utf8(&single)
                    .ok()
                    .and_then(|s| token_to_id.get(s).copied())
            });
        }
        Self {
            token_to_id,
            scores,
            byte_ids,
            add_space_prefix,
        }
    }

    pub(super) fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Appends the ids of `text`, which contains no special tokens. With
    /// `add_space_prefix`, a text at the start or right after a special token gets a
    /// leading space, as SentencePiece's "add dummy prefix" option does.
    pub(super) fn encode(
        &self,
        text: &str,
        previous_was_special: bool,
        ids: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut escaped = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && previous_was_special {
            escaped.push(SPACE_MARK);
        }
        escaped.extend(text.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
        self.encode_escaped(&escaped, ids)
    }

    fn encode_escaped(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }

        // One symbol per character.
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let index = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: index.checked_sub(1),
                next: None,
            });
            if index > 0 {
                symbols[index - 1].next = Some(index);
            }
        }

        // Seed the queue with every adjacent pair that forms a token.
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for right in 1..symbols.len() {
            self.push_bigram(text, &symbols, Some(right - 1), Some(right), &mut queue);
        }

        // Merge the best pair until no adjacent pair forms a token.
        while let Some(bigram) = queue.pop() {
            let (left, right) = (symbols[bigram.left], symbols[bigram.right]);
            if left.len == 0 || right.len == 0 || left.len + right.len != bigram.len {
                continue;
            }
            symbols[bigram.left].len += right.len;
            symbols[bigram.left].next = right.next;
            symbols[bigram.right].len = 0;
            if let Some(next) = right.next {
                symbols[next].prev = Some(bigram.left);
            }
            let merged = symbols[bigram.left];
            self.push_bigram(text, &symbols, merged.prev, Some(bigram.left), &mut queue);
            self.push_bigram(text, &symbols, Some(bigram.left), merged.next, &mut queue);
        }

        // Every merged symbol is a token by construction. A single character that is
        // not a token becomes byte tokens. (llama.cpp also keeps a map to re-split
        // merged symbols that are not tokens, which this makes unreachable.)
        let mut cursor = Some(0);
        while let Some(index) = cursor {
            let symbol = symbols[index];
            let piece = &text[symbol.start..symbol.start + symbol.len];
            match self.token_to_id.get(piece) {
                Some(&id) => ids.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        let id = self.byte_ids[byte as usize]
                            .ok_or(TokenizerError::MissingByteToken(byte))?;
                        ids.push(id);
                    }
                }
            }
            cursor = symbol.next;
        }
        Ok(())
    }

    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: Option<usize>,
        right: Option<usize>,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (Some(left), Some(right)) = (left, right) else {
            return;
        };
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        let Some(&id) = self.token_to_id.get(&text[start..start + len]) else {
            return;
        };
        queue.push(Bigram {
            left,
            right,
            score: self.scores[id as usize],
            len,
        });
    }
}

/// Parses a byte-fallback token name such as `<0x0A>`.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Builds the bytes each token decodes to, following llama.cpp's `token_to_piece` for
/// SentencePiece vocabularies. `▁` becomes a space in normal and user-defined tokens,
/// and byte tokens give their byte. The unknown token gives `▅` (U+2585), unused
/// tokens give nothing, and control tokens give their text (shown only on request).
pub(super) fn token_pieces(tokens: &[String], token_types: &[TokenType]) -> Vec<Vec<u8>> {
    tokens
        .iter()
        .zip(token_types)
        .map(|(text, ty)| match ty {
            TokenType::Normal | TokenType::UserDefined => {
                text.replace(SPACE_MARK, " ").into_bytes()
            }
            TokenType::Byte => match parse_byte_token(text) {
                Some(byte) => vec![byte],
                None => text.as_bytes().to_vec(),
            },
            TokenType::Unknown => "\u{2585}".as_bytes().to_vec(),
            TokenType::Unused => Vec::new(),
            TokenType::Control => text.as_bytes().to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(vocab: &[(&str, f32)]) -> SpmModel {
        let token_to_id = vocab
            .iter()
            .enumerate()
            .map(|(id, (t, _))| (t.to_string(), id as u32))
            .collect();
        let scores = vocab.iter().map(|(_, s)| *s).collect();
        SpmModel::new(token_to_id, scores, false)
    }

    fn encode(m: &SpmModel, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        m.encode(text, true, &mut ids).unwrap();
        ids
    }

    #[test]
    fn merges_highest_score_first() {
        // "abc": "ab" (score 1) loses to "bc" (score 2), so the result is a + bc.
        let m = model(&[("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", 1.0), ("bc", 2.0)]);
        assert_eq!(encode(&m, "abc"), vec![0, 4]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let m = model(&[("a", 0.0), ("aa", 1.0)]);
        assert_eq!(encode(&m, "aaa"), vec![1, 0]);
    }

    #[test]
    fn spaces_become_space_marks() {
        let m = model(&[("a", 0.0), ("\u{2581}", 0.0), ("\u{2581}a", 1.0)]);
        assert_eq!(encode(&m, " a a"), vec![2, 2]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let mut vocab: Vec<(String, f32)> = vec![("a".into(), 0.0)];
        for byte in 0..=255u8 {
            vocab.push((format!("<0x{byte:02X}>"), 0.0));
        }
        let borrowed: Vec<(&str, f32)> = vocab.iter().map(|(t, s)| (t.as_str(), *s)).collect();
        let m = model(&borrowed);
        // 'é' is C3 A9 in UTF-8; byte b is token id 1 + b.
        assert_eq!(encode(&m, "aé"), vec![0, 1 + 0xC3, 1 + 0xA9]);
    }

    #[test]
    fn missing_byte_token_is_an_error() {
        let m = model(&[("a", 0.0)]);
        let mut ids = Vec::new();
        let err = m.encode("é", true, &mut ids).unwrap_err();
        assert!(matches!(err, TokenizerError::MissingByteToken(0xC3)));
    }

    /// Slow twin of the merge loop: rescans every adjacent pair after each merge and
    /// merges the highest-scoring one that is a token, leftmost on ties.
    fn naive_spm(vocab: &[(&str, f32)], text: &str) -> Vec<u32> {
        let lookup = |piece: &str| vocab.iter().rposition(|(t, _)| *t == piece);
        let mut symbols: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(usize, f32)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                let joined = format!("{}{}", symbols[i], symbols[i + 1]);
                if let Some(id) = lookup(&joined) {
                    let score = vocab[id].1;
                    if best.is_none_or(|(_, s)| score > s) {
                        best = Some((i, score));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        symbols
            .iter()
            .map(|s| lookup(s).expect("single characters are in the test vocabulary") as u32)
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn merge_loop_matches_naive_twin(
            scores in proptest::collection::vec(-10i8..10, 12),
            text in "[abc]{0,24}",
        ) {
            let pieces = ["a", "b", "c", "ab", "bc", "ca", "aa", "abc", "bca", "aab", "cab", "abca"];
            // Integer scores make ties common, which exercises the leftmost rule.
            let vocab: Vec<(&str, f32)> = pieces
                .iter()
                .zip(&scores)
                .map(|(p, s)| (*p, *s as f32))
                .collect();
            let m = model(&vocab);
            proptest::prop_assert_eq!(encode(&m, &text), naive_spm(&vocab, &text));
        }
    }

    #[test]
    fn byte_token_names_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(0x0A));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xFF));
        assert_eq!(parse_byte_token("<0x100>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
