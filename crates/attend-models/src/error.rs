//! The error type of loading and running models.

use attend::kv::KvError;
use attend::rope::RopeError;
use attend::AttendError;

use crate::gguf::GgufError;
use crate::quant::QuantError;
use crate::sampling::SamplingError;
use crate::tokenizer::{GgufTokenizerError, TokenizerError};
use crate::GgmlType;

/// Errors from loading a model file or running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Attention(#[from] AttendError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error(transparent)]
    Rope(#[from] RopeError),
    /// The RoPE settings read from the file's metadata are invalid.
    #[error("the file's RoPE metadata is invalid: {0}; the file is not a model attend can run, or it is corrupt")]
    RopeMetadata(RopeError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    GgufTokenizer(#[from] GgufTokenizerError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),

    /// The chat template is missing or failed to render.
    #[error("chat template: {0}")]
    Chat(String),

    /// The file's `general.architecture` is not one this engine runs.
    #[error("unsupported architecture '{found}'; attend runs {supported}")]
    UnsupportedArchitecture {
        found: String,
        supported: &'static str,
    },

    /// A tensor has another shape than the metadata implies.
    #[error("tensor {name} has dims {found:?} but the model config implies {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor type the engine has no kernel for in that role.
    #[error("tensor {name} has type {ty}, which attend cannot use there; supported: {supported}")]
    TensorType {
        name: String,
        ty: GgmlType,
        supported: &'static str,
    },

    /// A metadata value that is out of range or inconsistent.
    #[error("invalid model config: {key} = {value}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },

    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },

    /// The model produced a NaN or infinite logit, which finite weights and
    /// inputs never do.
    #[error("the model produced a non-finite logit ({value}) at token {token_idx}; the model file may be corrupt, so download or convert it again")]
    NonFiniteLogits { token_idx: usize, value: f32 },

    /// More tokens than the session's context holds.
    #[error("{requested} tokens do not fit in the context of {context} tokens; pass a larger --ctx (the model was trained with {trained})")]
    ContextFull {
        requested: usize,
        context: usize,
        trained: usize,
    },
}
