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

    /// Whether bytes of an incomplete character are being held back.
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
