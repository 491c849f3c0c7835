//! Incremental decoding that emits only whole UTF-8 characters.
//!
//! One character can span several tokens: byte-fallback tokens carry one byte each,
//! and byte-level BPE tokens can end in the middle of a character. The decoder holds
//! back an incomplete trailing sequence until the bytes that finish it arrive.

use super::{Tokenizer, TokenizerError};

/// Turns a stream of token ids into text pieces that are always valid UTF-8.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    /// Bytes of a character still incomplete; at most 3.
    pending: Vec<u8>,
    /// Whether control tokens are rendered as their text.
    special: bool,
}

impl StreamDecoder {
    /// Creates a decoder; `special` renders control tokens (such as `<|im_end|>`) as
    /// their text instead of dropping them.
    pub fn new(special: bool) -> Self {
        Self {
            pending: Vec::new(),
            special,
        }
    }

    /// Adds one token and returns the text it completes, possibly empty.
    ///
    /// Bytes that can never form a valid character are returned as U+FFFD right away;
    /// an incomplete sequence at the end is held back.
    ///
    /// # Errors
    /// [`TokenizerError::IdOutOfRange`] for an id past the vocabulary.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        self.pending
            .extend_from_slice(tokenizer.token_bytes(id, self.special)?);
        Ok(self.take_complete())
    }

    /// Returns whatever is held back, with U+FFFD for an incomplete character, and
    /// resets the decoder.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// Returns whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn take_complete(&mut self) -> String {
        let mut text = String::new();
        let mut consumed = 0;
        loop {
            match std::str::from_utf8(&self.pending[consumed..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    consumed = self.pending.len();
                    break;
                }
                Err(error) => {
                    let valid_end = consumed + error.valid_up_to();
                    // The prefix up to valid_end was just checked to be valid UTF-8.
                    text.push_str(&String::from_utf8_lossy(&self.pending[consumed..valid_end]));
                    match error.error_len() {
                        // Invalid bytes: replace them and keep going.
                        Some(bad_len) => {
                            text.push('\u{FFFD}');
                            consumed = valid_end + bad_len;
                        }
                        // An incomplete character at the end: hold it back.
                        None => {
                            consumed = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{TokenizerModel, TokenizerSpec};

    /// Builds a SentencePiece vocabulary of the 256 byte tokens only, so id `b` is byte `b`.
    fn byte_tokenizer() -> Tokenizer {
        let tokens: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        let spec = TokenizerSpec {
            model: TokenizerModel::SentencePiece,
            pre: None,
            scores: Some(vec![0.0; tokens.len()]),
            token_types: Some(vec![6; tokens.len()]),
            tokens,
            merges: None,
            bos_id: None,
            eos_id: None,
            eot_id: None,
            eom_id: None,
            unknown_id: None,
            padding_id: None,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
        };
        Tokenizer::from_spec(spec).unwrap()
    }

    fn stream(tokenizer: &Tokenizer, bytes: &[u8]) -> (Vec<String>, String) {
        let mut decoder = StreamDecoder::new(false);
        let pieces: Vec<String> = bytes
            .iter()
            .map(|&b| decoder.push(tokenizer, b as u32).unwrap())
            .collect();
        (pieces, decoder.finish())
    }

    #[test]
    fn holds_back_partial_characters() {
        let tokenizer = byte_tokenizer();
        let (pieces, rest) = stream(&tokenizer, "a€".as_bytes());
        assert_eq!(pieces, vec!["a", "", "", "€"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn invalid_bytes_become_replacement_at_once() {
        let tokenizer = byte_tokenizer();
        let (pieces, rest) = stream(&tokenizer, &[0xFF, b'a', 0xE2, 0x82, b'b']);
        assert_eq!(pieces, vec!["\u{FFFD}", "a", "", "", "\u{FFFD}b"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn finish_flushes_incomplete_tail() {
        let tokenizer = byte_tokenizer();
        let (pieces, rest) = stream(&tokenizer, &[b'x', 0xF0, 0x9F]);
        assert_eq!(pieces, vec!["x", "", ""]);
        assert_eq!(rest, "\u{FFFD}");
    }

    #[test]
    fn out_of_range_id_is_an_error() {
        let tokenizer = byte_tokenizer();
        let mut decoder = StreamDecoder::new(false);
        let err = decoder.push(&tokenizer, 256).unwrap_err();
        assert!(matches!(err, TokenizerError::IdOutOfRange { id: 256, .. }));
    }

    proptest::proptest! {
        #[test]
        fn stream_equals_lossy_decode(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let tokenizer = byte_tokenizer();
            let (pieces, rest) = stream(&tokenizer, &bytes);
            let streamed: String = pieces.concat() + &rest;
            proptest::prop_assert_eq!(streamed, String::from_utf8_lossy(&bytes).into_owned());
        }

        #[test]
        fn valid_text_streams_exactly(text in "\\PC{0,32}") {
            let tokenizer = byte_tokenizer();
            let (pieces, rest) = stream(&tokenizer, text.as_bytes());
            proptest::prop_assert_eq!(rest, "");
            proptest::prop_assert_eq!(pieces.concat(), text);
        }
    }
}
