//! Cutting special tokens out of the text before the model's algorithm runs.
//!
//! This follows llama.cpp's `tokenizer_st_partition`: special tokens are tried in
//! order of decreasing text length, and each one is cut out of every stretch of text
//! still unclaimed, scanning left to right. A longer token therefore wins over a
//! shorter one wherever both could match, even when the shorter one starts earlier.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};

use super::{TokenType, TokenizerError};

/// A piece of the input: a special token, or a byte range of ordinary text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fragment {
    Token(u32),
    Text(Range<usize>),
}

pub(super) struct SpecialMatcher {
    /// Special token ids, longest text first, ties by id.
    ordered_ids: Vec<u32>,
    /// Text of each entry of `ordered_ids`.
    ordered_texts: Vec<String>,
    /// Whether each entry of `ordered_ids` is matched only when parsing special tokens
    /// (control and unknown tokens; user-defined tokens are always matched).
    needs_parse_special: Vec<bool>,
    /// Finds which special tokens occur anywhere in a text, so the exact partition
    /// below only loops over those (Gemma 3 has about 6400 special tokens).
    automaton: Option<AhoCorasick>,
    id_by_text: HashMap<String, u32>,
}

impl SpecialMatcher {
    pub(super) fn new(
        tokens: &[String],
        token_types: &[TokenType],
        special_ids: Vec<u32>,
    ) -> Result<Self, TokenizerError> {
        // An empty special token would match everywhere; llama.cpp's vocabularies have none.
        let mut ordered_ids: Vec<u32> = special_ids
            .into_iter()
            .filter(|&id| !tokens[id as usize].is_empty())
            .collect();
        ordered_ids.sort_by(|&a, &b| {
            let (len_a, len_b) = (tokens[a as usize].len(), tokens[b as usize].len());
            len_b.cmp(&len_a).then(a.cmp(&b))
        });
        let ordered_texts: Vec<String> = ordered_ids
            .iter()
            .map(|&id| tokens[id as usize].clone())
            .collect();
        let needs_parse_special = ordered_ids
            .iter()
            .map(|&id| token_types[id as usize] != TokenType::UserDefined)
            .collect();
        let automaton = if ordered_texts.is_empty() {
            None
        } else {
            let automaton = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(&ordered_texts)
                .map_err(|e| TokenizerError::SpecialMatcher(e.to_string()))?;
            Some(automaton)
        };
        let id_by_text = ordered_ids
            .iter()
            .zip(&ordered_texts)
            .map(|(&id, text)| (text.clone(), id))
            .collect();
        Ok(Self {
            ordered_ids,
            ordered_texts,
            needs_parse_special,
            automaton,
            id_by_text,
        })
    }

    pub(super) fn id_of(&self, text: &str) -> Option<u32> {
        self.id_by_text.get(text).copied()
    }

    /// Splits `text` into special tokens and the ordinary text between them.
    /// An empty text gives no fragments.
    pub(super) fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(0..text.len())];
        let Some(automaton) = &self.automaton else {
            return fragments;
        };

        // Pattern indices are positions in `ordered_ids`, so the set iterates longest first.
        let present: BTreeSet<usize> = automaton
            .find_overlapping_iter(text)
            .map(|m| m.pattern().as_usize())
            .collect();

        for index in present {
            if !parse_special && self.needs_parse_special[index] {
                continue;
            }
            let needle = self.ordered_texts[index].as_str();
            let id = self.ordered_ids[index];
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut start = range.start;
                while let Some(offset) = text[start..range.end].find(needle) {
                    let match_start = start + offset;
                    if match_start > start {
                        next.push(Fragment::Text(start..match_start));
                    }
                    next.push(Fragment::Token(id));
                    start = match_start + needle.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            fragments = next;
        }
        fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(specials: &[(&str, TokenType)]) -> SpecialMatcher {
        let tokens: Vec<String> = specials.iter().map(|(t, _)| t.to_string()).collect();
        let types: Vec<TokenType> = specials.iter().map(|(_, ty)| *ty).collect();
        let ids = (0..tokens.len() as u32).collect();
        SpecialMatcher::new(&tokens, &types, ids).unwrap()
    }

    #[test]
    fn longer_token_wins_over_earlier_shorter() {
        // "<a" starts first, but "a>b" is longer and is cut first.
        let m = matcher(&[("<a", TokenType::Control), ("a>b", TokenType::Control)]);
        let parts = m.partition("x<a>by", true);
        assert_eq!(
            parts,
            vec![
                Fragment::Text(0..2),
                Fragment::Token(1),
                Fragment::Text(5..6)
            ]
        );
    }

    #[test]
    fn repeated_and_adjacent_tokens() {
        let m = matcher(&[("<s>", TokenType::Control)]);
        let parts = m.partition("<s><s>a<s>", true);
        assert_eq!(
            parts,
            vec![
                Fragment::Token(0),
                Fragment::Token(0),
                Fragment::Text(6..7),
                Fragment::Token(0)
            ]
        );
    }

    #[test]
    fn control_tokens_need_parse_special() {
        let m = matcher(&[
            ("<c>", TokenType::Control),
            ("\n\n", TokenType::UserDefined),
        ]);
        let parts = m.partition("<c>\n\n", false);
        assert_eq!(parts, vec![Fragment::Text(0..3), Fragment::Token(1)]);
    }

    #[test]
    fn empty_text_gives_no_fragments() {
        let m = matcher(&[("<c>", TokenType::Control)]);
        assert!(m.partition("", true).is_empty());
    }
}
