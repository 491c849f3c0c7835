//! Text to token ids and back, for the vocabularies that GGUF files carry.
//!
//! Two vocabulary kinds are supported, named by the file's `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE with a regex pre-tokenizer chosen by `tokenizer.ggml.pre`
//!   (SmolLM2), built on the `tokenizers` crate (module `bpe`);
//! - `llama`: SentencePiece-style merges by score with `<0xXX>` byte fallback
//!   (Gemma 3), written here (module `spm`).
//!
//! Both follow llama.cpp's tokenizer (`src/llama-vocab.cpp`), which is also the
//! reference the tests compare ids against. Special tokens (control, user-defined
//! and unknown types) are cut out of the text first, longest token first. Only the
//! text between them goes through the model's algorithm.
//!
//! ```no_run
//! use attend_models::gguf::Gguf;
//! use attend_models::tokenizer::{StreamDecoder, Tokenizer};
//!
//! let gguf = Gguf::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let tokenizer = Tokenizer::from_gguf(&gguf)?;
//! // BOS as the file says, and `<|im_start|>` parsed as one special token.
//! let ids = tokenizer.encode("<|im_start|>user\nHello<|im_end|>", true, true)?;
//! let mut decoder = StreamDecoder::new(false);
//! for &id in &ids {
//!     print!("{}", decoder.push(&tokenizer, id)?);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bpe;
mod gguf;
mod special;
mod spm;
mod stream;

pub use gguf::GgufTokenizerError;
pub use stream::StreamDecoder;

use std::collections::HashMap;

use bpe::BpeModel;
use special::{Fragment, SpecialMatcher};
use spm::SpmModel;

/// Errors from building a tokenizer or converting between text and ids.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("unsupported tokenizer model {0:?}: expected \"gpt2\" (byte-level BPE) or \"llama\" (SentencePiece)")]
    UnsupportedModel(String),
    #[error("unsupported BPE pre-tokenizer {0:?}: supported values are {1}")]
    UnsupportedPreTokenizer(String, &'static str),
    #[error("the vocabulary is empty")]
    EmptyVocabulary,
    #[error("tokenizer.ggml.{field} has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        field: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("tokenizer.ggml.{field} = {id} is out of range for a vocabulary of {n_vocab} tokens")]
    SpecialIdOutOfRange {
        field: &'static str,
        id: u32,
        n_vocab: usize,
    },
    #[error("invalid token type {value} for token {id}: expected 1 to 6 (normal, unknown, control, user-defined, unused, byte)")]
    InvalidTokenType { id: usize, value: i32 },
    #[error("a gpt2 (BPE) tokenizer needs tokenizer.ggml.merges, which is missing")]
    MissingMerges,
    #[error("invalid BPE merge {index} ({merge:?}): {reason}")]
    InvalidMerge {
        index: usize,
        merge: String,
        reason: String,
    },
    #[error("a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores, which is missing")]
    MissingScores,
    #[error(
        "no token for byte 0x{0:02X}: the vocabulary has neither <0x{0:02X}> nor the byte itself"
    )]
    MissingByteToken(u8),
    #[error("token id {id} is out of range for a vocabulary of {n_vocab} tokens")]
    IdOutOfRange { id: u32, n_vocab: usize },
    #[error("add_bos is set but the vocabulary has no BOS token id")]
    MissingBos,
    #[error("add_eos is set but the vocabulary has no EOS token id")]
    MissingEos,
    #[error("BPE encoding failed: {0}")]
    Bpe(String),
    #[error("failed to build the special-token matcher: {0}")]
    SpecialMatcher(String),
}

/// The vocabulary kind, from `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerModel {
    /// `gpt2`: byte-level BPE over regex pre-tokenized words.
    Gpt2Bpe,
    /// `llama`: SentencePiece-style merges by score with byte fallback.
    SentencePiece,
}

impl TokenizerModel {
    /// Parses the value of `tokenizer.ggml.model`.
    ///
    /// # Errors
    /// [`TokenizerError::UnsupportedModel`] for any other name.
    pub fn from_gguf_name(name: &str) -> Result<Self, TokenizerError> {
        match name {
            "gpt2" => Ok(Self::Gpt2Bpe),
            "llama" => Ok(Self::SentencePiece),
            other => Err(TokenizerError::UnsupportedModel(other.to_string())),
        }
    }
}

/// A token's type, with the numbering of `tokenizer.ggml.token_type` (llama.cpp's
/// `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    fn from_i32(value: i32) -> Option<Self> {
        Some(match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }

    /// Returns whether llama.cpp matches tokens of this type literally in the text
    /// before the model's algorithm runs.
    fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::UserDefined | Self::Unknown)
    }
}

/// The parts a tokenizer is built from, as a GGUF file stores them under
/// `tokenizer.ggml.*`.
#[derive(Clone, Debug)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`.
    pub model: TokenizerModel,
    /// `tokenizer.ggml.pre`: the BPE pre-tokenizer name (ignored for SentencePiece).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token text, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: merge priority per token (SentencePiece only).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: [`TokenType`] numbers per token; absent means
    /// every token is normal.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs in rank order (BPE only).
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn).
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id` (end of message).
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: prepend BOS when special tokens are added.
    pub add_bos: bool,
    /// `tokenizer.ggml.add_eos_token`: append EOS when special tokens are added.
    pub add_eos: bool,
    /// `tokenizer.ggml.add_space_prefix`: SentencePiece prepends a space to the text
    /// at the start and after each special token.
    pub add_space_prefix: bool,
}

enum Model {
    Bpe(Box<BpeModel>),
    Spm(Box<SpmModel>),
}

/// A tokenizer built from a [`TokenizerSpec`].
pub struct Tokenizer {
    model: Model,
    token_types: Vec<TokenType>,
    /// Token text with its original spelling, indexed by id.
    tokens: Vec<String>,
    /// The bytes each token decodes to, indexed by id.
    pieces: Vec<Vec<u8>>,
    special: SpecialMatcher,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eog_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let model = match self.model {
            Model::Bpe(_) => TokenizerModel::Gpt2Bpe,
            Model::Spm(_) => TokenizerModel::SentencePiece,
        };
        f.debug_struct("Tokenizer")
            .field("model", &model)
            .field("n_vocab", &self.tokens.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("eog_ids", &self.eog_ids)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// Token texts that end generation even when the file names another EOS token.
///
/// llama.cpp (`llama_vocab::impl::load` in `src/llama-vocab.cpp`) adds tokens with
/// these texts to its end-of-generation set so that a chat model stops at the end of
/// its turn: end-of-turn markers, and the fill-in-the-middle repository and padding
/// markers. SmolLM2's `<|endoftext|>` and `<reponame>` and Gemma 3's `<end_of_turn>`
/// and `</s>` are among them; the fixtures record llama.cpp's set for both files.
/// NOTE: llama.cpp's fill-in-the-middle lists are longer; only the markers seen in
/// the models used here and their close relatives are listed.
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<reponame>",
    "<|fim_pad|>",
    "<fim-pad>",
];

impl Tokenizer {
    /// Builds a tokenizer from its parts.
    ///
    /// # Errors
    /// A [`TokenizerError`] when a per-token array has the wrong length, a special id is
    /// out of range or a token type is unknown. Also when the model's merges or scores
    /// are missing, a merge names tokens not in the vocabulary, or the BPE
    /// pre-tokenizer is not supported.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Self, TokenizerError> {
        let n_vocab = spec.tokens.len();
        if n_vocab == 0 {
            return Err(TokenizerError::EmptyVocabulary);
        }
        let token_types = parse_token_types(spec.token_types.as_deref(), n_vocab)?;
        let check_id = |field: &'static str, id: Option<u32>| match id {
            Some(id) if id as usize >= n_vocab => {
                Err(TokenizerError::SpecialIdOutOfRange { field, id, n_vocab })
            }
            _ => Ok(id),
        };
        let bos_id = check_id("bos_token_id", spec.bos_id)?;
        let eos_id = check_id("eos_token_id", spec.eos_id)?;
        let eot_id = check_id("eot_token_id", spec.eot_id)?;
        let eom_id = check_id("eom_token_id", spec.eom_id)?;
        check_id("unknown_token_id", spec.unknown_id)?;
        check_id("padding_token_id", spec.padding_id)?;
        if spec.add_bos && bos_id.is_none() {
            return Err(TokenizerError::MissingBos);
        }
        if spec.add_eos && eos_id.is_none() {
            return Err(TokenizerError::MissingEos);
        }

        // llama.cpp's token_to_id map: a text that appears twice maps to the later id.
        let mut token_to_id: HashMap<String, u32> = HashMap::with_capacity(n_vocab);
        for (id, text) in spec.tokens.iter().enumerate() {
            token_to_id.insert(text.clone(), id as u32);
        }

        let (model, pieces) = match spec.model {
            TokenizerModel::Gpt2Bpe => {
                let merges = spec
                    .merges
                    .as_deref()
                    .ok_or(TokenizerError::MissingMerges)?;
                let model = BpeModel::new(&token_to_id, merges, spec.pre.as_deref())?;
                let pieces = bpe::token_pieces(&spec.tokens, &token_types);
                (Model::Bpe(Box::new(model)), pieces)
            }
            TokenizerModel::SentencePiece => {
                let scores = spec.scores.ok_or(TokenizerError::MissingScores)?;
                if scores.len() != n_vocab {
                    return Err(TokenizerError::LengthMismatch {
                        field: "scores",
                        found: scores.len(),
                        expected: n_vocab,
                    });
                }
                let pieces = spm::token_pieces(&spec.tokens, &token_types);
                let model = SpmModel::new(token_to_id, scores, spec.add_space_prefix);
                (Model::Spm(Box::new(model)), pieces)
            }
        };

        let special_ids: Vec<u32> = (0..n_vocab as u32)
            .filter(|&id| token_types[id as usize].is_special())
            .collect();
        let special = SpecialMatcher::new(&spec.tokens, &token_types, special_ids)?;

        let mut eog_ids: Vec<u32> = [eos_id, eot_id, eom_id].into_iter().flatten().collect();
        for (id, text) in spec.tokens.iter().enumerate() {
            if END_OF_GENERATION_TEXTS.contains(&text.as_str()) {
                eog_ids.push(id as u32);
            }
        }
        eog_ids.sort_unstable();
        eog_ids.dedup();

        Ok(Self {
            model,
            token_types,
            tokens: spec.tokens,
            pieces,
            special,
            bos_id,
            eos_id,
            eog_ids,
            add_bos: spec.add_bos,
            add_eos: spec.add_eos,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Returns the BOS token id, if the vocabulary has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Returns the EOS token id, if the vocabulary has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Returns whether [`Tokenizer::encode`] with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation: EOS, end of turn and end of message, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog_ids
    }

    /// Returns whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog_ids.binary_search(&id).is_ok()
    }

    /// Looks up the id of the token with exactly this text.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.special.id_of(text).or_else(|| match &self.model {
            Model::Bpe(m) => m.token_id(text),
            Model::Spm(m) => m.token_id(text),
        })
    }

    /// Returns the stored text of token `id` (byte-level or `▁`-escaped spelling).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Returns the type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.token_types.get(id as usize).copied()
    }

    /// Converts `text` to token ids.
    ///
    /// `add_special` prepends BOS and appends EOS where the file's `add_bos_token` and
    /// `add_eos_token` are set. `parse_special` matches control tokens such as
    /// `<|im_start|>` in the text; user-defined tokens are always matched, as in
    /// llama.cpp.
    ///
    /// # Errors
    /// [`TokenizerError::MissingByteToken`] when SentencePiece needs a byte-fallback
    /// token the vocabulary lacks, [`TokenizerError::Bpe`] when the BPE model fails.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos_id);
        }

        let fragments = self.special.partition(text, parse_special);
        let mut previous_was_special = true;
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    ids.push(id);
                    previous_was_special = true;
                }
                Fragment::Text(range) => {
                    let piece = &text[range];
                    match &self.model {
                        Model::Bpe(m) => m.encode(piece, &mut ids)?,
                        Model::Spm(m) => m.encode(piece, previous_was_special, &mut ids)?,
                    }
                    previous_was_special = false;
                }
            }
        }

        if add_special && self.add_eos {
            ids.extend(self.eos_id);
        }
        Ok(ids)
    }

    /// Returns the bytes token `id` decodes to. Control tokens give their text when
    /// `special` is set and nothing otherwise.
    ///
    /// # Errors
    /// [`TokenizerError::IdOutOfRange`] for an id past the vocabulary.
    pub fn token_bytes(&self, id: u32, special: bool) -> Result<&[u8], TokenizerError> {
        let index = id as usize;
        let piece = self.pieces.get(index).ok_or(TokenizerError::IdOutOfRange {
            id,
            n_vocab: self.tokens.len(),
        })?;
        if !special && self.token_types[index] == TokenType::Control {
            return Ok(&[]);
        }
        Ok(piece)
    }

    /// Converts ids to bytes; see [`Tokenizer::token_bytes`] for `special`.
    ///
    /// # Errors
    /// [`TokenizerError::IdOutOfRange`] for an id past the vocabulary.
    pub fn decode_bytes(&self, ids: &[u32], special: bool) -> Result<Vec<u8>, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id, special)?);
        }
        Ok(bytes)
    }

    /// Converts ids to text; byte sequences that are not valid UTF-8 become U+FFFD.
    ///
    /// # Errors
    /// [`TokenizerError::IdOutOfRange`] for an id past the vocabulary.
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids, special)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn parse_token_types(
    raw: Option<&[i32]>,
    n_vocab: usize,
) -> Result<Vec<TokenType>, TokenizerError> {
    let Some(raw) = raw else {
        return Ok(vec![TokenType::Normal; n_vocab]);
    };
    if raw.len() != n_vocab {
        return Err(TokenizerError::LengthMismatch {
            field: "token_type",
            found: raw.len(),
            expected: n_vocab,
        });
    }
    raw.iter()
        .enumerate()
        .map(|(id, &value)| {
            TokenType::from_i32(value).ok_or(TokenizerError::InvalidTokenType { id, value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm_spec(tokens: &[&str]) -> TokenizerSpec {
        TokenizerSpec {
            model: TokenizerModel::SentencePiece,
            pre: None,
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            scores: Some(vec![0.0; tokens.len()]),
            token_types: None,
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
        }
    }

    fn bpe_spec() -> TokenizerSpec {
        TokenizerSpec {
            model: TokenizerModel::Gpt2Bpe,
            pre: Some("smollm".into()),
            merges: Some(vec!["a b".into()]),
            ..spm_spec(&["a", "b", "ab", "<|end|>"])
        }
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<StreamDecoder>();
    }

    #[test]
    fn model_names_parse() {
        assert_eq!(
            TokenizerModel::from_gguf_name("gpt2").unwrap(),
            TokenizerModel::Gpt2Bpe
        );
        assert_eq!(
            TokenizerModel::from_gguf_name("llama").unwrap(),
            TokenizerModel::SentencePiece
        );
        let err = TokenizerModel::from_gguf_name("bert").unwrap_err();
        assert!(matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "bert"));
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        let empty = Tokenizer::from_spec(spm_spec(&[])).err().unwrap();
        assert!(matches!(empty, TokenizerError::EmptyVocabulary));

        let mut short_scores = spm_spec(&["a", "b"]);
        short_scores.scores = Some(vec![0.0]);
        let err = Tokenizer::from_spec(short_scores).err().unwrap();
        assert!(matches!(
            err,
            TokenizerError::LengthMismatch {
                field: "scores",
                found: 1,
                expected: 2
            }
        ));

        let mut no_scores = spm_spec(&["a"]);
        no_scores.scores = None;
        assert!(matches!(
            Tokenizer::from_spec(no_scores).err().unwrap(),
            TokenizerError::MissingScores
        ));

        let mut bad_type = spm_spec(&["a", "b"]);
        bad_type.token_types = Some(vec![1, 9]);
        let err = Tokenizer::from_spec(bad_type).err().unwrap();
        assert!(matches!(
            err,
            TokenizerError::InvalidTokenType { id: 1, value: 9 }
        ));

        let mut bad_bos = spm_spec(&["a"]);
        bad_bos.bos_id = Some(5);
        let err = Tokenizer::from_spec(bad_bos).err().unwrap();
        assert!(matches!(
            err,
            TokenizerError::SpecialIdOutOfRange {
                field: "bos_token_id",
                id: 5,
                ..
            }
        ));

        let mut add_bos_without_id = spm_spec(&["a"]);
        add_bos_without_id.add_bos = true;
        assert!(matches!(
            Tokenizer::from_spec(add_bos_without_id).err().unwrap(),
            TokenizerError::MissingBos
        ));

        let mut no_merges = bpe_spec();
        no_merges.merges = None;
        assert!(matches!(
            Tokenizer::from_spec(no_merges).err().unwrap(),
            TokenizerError::MissingMerges
        ));

        let mut unknown_pre = bpe_spec();
        unknown_pre.pre = Some("llama-bpe".into());
        let err = Tokenizer::from_spec(unknown_pre).err().unwrap();
        assert!(
            matches!(err, TokenizerError::UnsupportedPreTokenizer(ref p, _) if p == "llama-bpe")
        );
    }

    #[test]
    fn bpe_merges_and_special_tokens() {
        let mut spec = bpe_spec();
        spec.token_types = Some(vec![1, 1, 1, 3]);
        spec.eos_id = Some(3);
        spec.add_eos = true;
        let tokenizer = Tokenizer::from_spec(spec).unwrap();
        assert_eq!(
            tokenizer.encode("ab<|end|>a", true, true).unwrap(),
            vec![2, 3, 0, 3]
        );
        assert_eq!(tokenizer.decode(&[2, 3, 0], false).unwrap(), "aba");
        assert_eq!(tokenizer.decode(&[2, 3, 0], true).unwrap(), "ab<|end|>a");
        assert!(tokenizer.is_eog(3));
    }

    #[test]
    fn space_prefix_after_special_tokens() {
        let mut spec = spm_spec(&["<s>", "\u{2581}", "a", "\u{2581}a"]);
        spec.scores = Some(vec![0.0, 0.0, 0.0, 1.0]);
        spec.token_types = Some(vec![3, 1, 1, 1]);
        spec.bos_id = Some(0);
        spec.add_bos = true;
        spec.add_space_prefix = true;
        let tokenizer = Tokenizer::from_spec(spec).unwrap();
        // A leading space is added at the start and after the special token.
        assert_eq!(
            tokenizer.encode("a<s>a", true, true).unwrap(),
            vec![0, 3, 0, 3]
        );
        assert_eq!(tokenizer.encode("", true, true).unwrap(), vec![0]);
        assert_eq!(
            tokenizer.encode("", false, true).unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn decode_rejects_out_of_range_ids() {
        let tokenizer = Tokenizer::from_spec(spm_spec(&["a"])).unwrap();
        let err = tokenizer.decode(&[0, 1], false).unwrap_err();
        assert!(matches!(
            err,
            TokenizerError::IdOutOfRange { id: 1, n_vocab: 1 }
        ));
    }
}
