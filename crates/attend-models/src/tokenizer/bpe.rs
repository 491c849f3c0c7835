//! Byte-level BPE (GGUF `tokenizer.ggml.model = "gpt2"`), built on the `tokenizers`
//! crate: its `BPE` model is built in memory from the file's vocabulary and merges,
//! and its `Digits` and `ByteLevel` pre-tokenizers reproduce the splits that
//! llama.cpp applies for the file's `tokenizer.ggml.pre` value.

use std::collections::HashMap;

use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    Model as _, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _,
};

use super::{TokenType, TokenizerError};

/// `tokenizer.ggml.pre` values whose llama.cpp split is one digit per piece followed
/// by the GPT-2 regex (`LLAMA_VOCAB_PRE_TYPE_SMOLLM` and the types that share its
/// case in `llm_tokenizer_bpe`'s constructor).
const DIGITS_THEN_GPT2: &[&str] = &["smollm", "starcoder", "refact", "command-r", "codeshell"];

/// `tokenizer.ggml.pre` values whose llama.cpp split is the GPT-2 regex alone.
const GPT2_ONLY: &[&str] = &["gpt2", "mpt", "olmo", "jais"];

const SUPPORTED_PRE: &str =
    "smollm, starcoder, refact, command-r, codeshell (digits then GPT-2), gpt2, mpt, olmo, jais";

pub(super) struct BpeModel {
    pre_tokenizer: PreTokenizerWrapper,
    model: BPE,
}

impl BpeModel {
    pub(super) fn new(
        token_to_id: &HashMap<String, u32>,
        merges: &[String],
        pre: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        let pre_name = pre.unwrap_or("gpt2");
        // The GPT-2 regex of llama.cpp (`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
        // ?[^\s\p{L}\p{N}]+|\s+(?!\S)`) is the one ByteLevel uses with `use_regex`.
        let byte_level = ByteLevel::new(false, false, true);
        let pre_tokenizer: PreTokenizerWrapper = if DIGITS_THEN_GPT2.contains(&pre_name) {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        } else if GPT2_ONLY.contains(&pre_name) {
            byte_level.into()
        } else {
            return Err(TokenizerError::UnsupportedPreTokenizer(
                pre_name.to_string(),
                SUPPORTED_PRE,
            ));
        };

        let parsed_merges = parse_merges(merges, token_to_id)?;
        let vocab: Vocab = token_to_id.iter().map(|(t, &id)| (t.clone(), id)).collect();
        let model = BPE::builder()
            .vocab_and_merges(vocab, parsed_merges)
            .build()
            .map_err(|e| TokenizerError::Bpe(e.to_string()))?;

        Ok(Self {
            pre_tokenizer,
            model,
        })
    }

    pub(super) fn token_id(&self, text: &str) -> Option<u32> {
        self.model.token_to_id(text)
    }

    /// Appends the ids of `text`, which contains no special tokens.
    pub(super) fn encode(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        // The pre-tokenizer and model are called directly rather than through
        // `tokenizers::Tokenizer`, which also builds offsets and an `Encoding`.
        let bpe_error = |e: tokenizers::Error| TokenizerError::Bpe(e.to_string());
        let mut pretokenized = PreTokenizedString::from(text);
        self.pre_tokenizer
            .pre_tokenize(&mut pretokenized)
            .map_err(bpe_error)?;
        pretokenized
            .tokenize(|normalized| self.model.tokenize(normalized.get()))
            .map_err(bpe_error)?;
        let splits = pretokenized.get_splits(OffsetReferential::Original, OffsetType::Byte);
        for (_, _, tokens) in splits {
            if let Some(tokens) = tokens {
                ids.extend(tokens.iter().map(|token| token.id));
            }
        }
        Ok(())
    }
}

/// Splits each `"left right"` merge at its first space after the first character,
/// as llama.cpp does, and checks that both sides and their join are tokens.
fn parse_merges(
    merges: &[String],
    token_to_id: &HashMap<String, u32>,
) -> Result<Merges, TokenizerError> {
    let mut parsed = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        let invalid = |reason: &str| TokenizerError::InvalidMerge {
            index,
            merge: merge.clone(),
            reason: reason.to_string(),
        };
        let first_len = merge.chars().next().map_or(0, char::len_utf8);
        let split = merge
            .get(first_len..)
            .and_then(|rest| rest.find(' '))
            .map(|offset| first_len + offset)
            .ok_or_else(|| invalid("expected two tokens separated by a space"))?;
        let (left, right) = (&merge[..split], &merge[split + 1..]);
        if right.is_empty() {
            return Err(invalid("the right side is empty"));
        }
        for side in [left, right] {
            if !token_to_id.contains_key(side) {
                return Err(invalid(&format!("{side:?} is not in the vocabulary")));
            }
        }
        if !token_to_id.contains_key(&format!("{left}{right}")) {
            return Err(invalid("the merged token is not in the vocabulary"));
        }
        parsed.push((left.to_string(), right.to_string()));
    }
    Ok(parsed)
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes
/// map to themselves, the other 68 bytes to U+0100 onwards in byte order.
fn byte_to_char_table() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut next_extra = 0u32;
    for byte in 0..=255u8 {
        table[byte as usize] = if printable(byte) {
            char::from(byte)
        } else {
            next_extra += 1;
            // 256 + 67 at most, always a valid scalar value.
            char::from_u32(255 + next_extra).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// Builds the bytes each token decodes to: byte-level characters mapped back to bytes for
/// ordinary tokens, the text itself for control and user-defined tokens (which are
/// matched literally in the input, so their text is their inverse).
pub(super) fn token_pieces(tokens: &[String], token_types: &[TokenType]) -> Vec<Vec<u8>> {
    let table = byte_to_char_table();
    let char_to_byte: HashMap<char, u8> = table
        .iter()
        .enumerate()
        .map(|(byte, &c)| (c, byte as u8))
        .collect();
    tokens
        .iter()
        .zip(token_types)
        .map(|(text, ty)| match ty {
            TokenType::Control | TokenType::UserDefined => text.as_bytes().to_vec(),
            _ => {
                let mut bytes = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match char_to_byte.get(&c) {
                        Some(&b) => bytes.push(b),
                        // Not a byte-level character: keep its UTF-8 form.
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Just, Strategy};

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_to_char_table();
        let distinct: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
    }

    #[test]
    fn merge_parsing_rejects_bad_merges() {
        let vocab: HashMap<String, u32> = [("a", 0), ("b", 1), ("ab", 2)]
            .into_iter()
            .map(|(t, id)| (t.to_string(), id))
            .collect();
        assert!(parse_merges(&["a b".into()], &vocab).is_ok());
        for bad in ["ab", "a c", "b a", "a "] {
            let err = parse_merges(&[bad.to_string()], &vocab).unwrap_err();
            assert!(
                matches!(err, TokenizerError::InvalidMerge { index: 0, .. }),
                "{bad}"
            );
        }
    }

    /// Slow twin of rank-ordered BPE on one word: merge the adjacent pair with the
    /// lowest merge rank, leftmost on ties, until no pair has a merge.
    fn naive_bpe(merges: &[(&str, &str)], word: &str) -> Vec<String> {
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let mut best: Option<(usize, usize)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                let rank = merges
                    .iter()
                    .position(|(l, r)| *l == symbols[i] && *r == symbols[i + 1]);
                if let Some(rank) = rank {
                    if best.is_none_or(|(_, best_rank)| rank < best_rank) {
                        best = Some((i, rank));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let right = symbols.remove(i + 1);
            symbols[i].push_str(&right);
        }
        symbols
    }

    proptest::proptest! {
        #[test]
        fn bpe_matches_naive_twin(
            order in Just((0..8usize).collect::<Vec<_>>()).prop_shuffle(),
            word in "[abc]{1,20}",
        ) {
            let candidates = [
                ("a", "b"), ("b", "c"), ("a", "a"), ("ab", "c"),
                ("c", "a"), ("b", "b"), ("a", "bc"), ("ab", "ab"),
            ];
            let merges: Vec<(&str, &str)> = order.iter().map(|&i| candidates[i]).collect();
            let mut tokens: Vec<String> = ["a", "b", "c"].iter().map(|t| t.to_string()).collect();
            for (l, r) in &merges {
                tokens.push(format!("{l}{r}"));
            }
            let mut token_to_id = HashMap::new();
            for (id, text) in tokens.iter().enumerate() {
                token_to_id.insert(text.clone(), id as u32);
            }
            // Keep only merges whose parts exist, as real merge lists do.
            let usable: Vec<(&str, &str)> = merges
                .iter()
                .copied()
                .filter(|(l, r)| token_to_id.contains_key(*l) && token_to_id.contains_key(*r))
                .collect();
            let merge_strings: Vec<String> = usable.iter().map(|(l, r)| format!("{l} {r}")).collect();
            let model = BpeModel::new(&token_to_id, &merge_strings, Some("gpt2")).unwrap();
            let mut ids = Vec::new();
            model.encode(&word, &mut ids).unwrap();
            let expected: Vec<u32> = naive_bpe(&usable, &word)
                .iter()
                .map(|piece| token_to_id[piece])
                .collect();
            proptest::prop_assert_eq!(ids, expected);
        }
    }
}
