//! BERT encoder and sentence embeddings from a sentence-transformers folder
//! (all-MiniLM-L6-v2 and other BERT models with mean pooling).
//!
//! The forward pass follows Hugging Face `BertModel` (transformers 4.x and 5.x):
//! embeddings = word + token type 0 + absolute position, then LayerNorm; each layer
//! is post-LN: `x = LN(x + Wo · attention(Wq x, Wk x, Wv x))`, then
//! `x = LN(x + W2 · gelu(W1 x))` with the exact (erf) GELU. The sentence embedding is
//! the mean of the last hidden states over the sentence's tokens (`[CLS]` and `[SEP]`
//! included, as sentence-transformers' mean pooling does), L2-normalised.
//!
//! A batch runs packed: the sentences' tokens lie one after another, `[total_tokens,
//! hidden]`, with cumulative offsets, and attention is one varlen call. Nothing is
//! padded, so no work is spent on padding and no padding mask is needed. Every other
//! step works row by row, so a sentence's embedding does not depend on what else is
//! in the batch: bitwise with the AVX-512 linear kernel, to the last bits of the
//! gemm crate's rounding otherwise (see [`crate::linear`]).

use std::path::{Path, PathBuf};

use attend::{attention_varlen, AttendError, AttentionParams, Packed, PackedMut};
use rayon::prelude::*;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::linear::{Linear, LinearError, LinearKernel};
use crate::ops::{add_in_place, gelu_erf_in_place, layer_norm};
use crate::safetensors_file::{SafetensorsError, SafetensorsFile};

/// Errors from loading a BERT sentence encoder or running it.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    /// A file the model folder needs is absent.
    #[error("{path} not found; expected a sentence-transformers model folder with config.json, model.safetensors and tokenizer.json")]
    MissingFile { path: PathBuf },
    /// A GGUF file was given where a sentence-transformers folder is needed.
    #[error("{path} is a GGUF file; sentence embeddings need a sentence-transformers BERT folder (config.json, model.safetensors, tokenizer.json)")]
    GgufGiven { path: PathBuf },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON config file is malformed.
    #[error("{path} is not a valid config: {source}")]
    ConfigJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A config value is out of range or unsupported.
    #[error("{path}: `{field}` = {value} is not supported: {reason}")]
    ConfigValue {
        path: PathBuf,
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The tokenizer file could not be loaded or configured.
    #[error("cannot load tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// Tokenizing an input failed.
    #[error("cannot tokenize input {index}: {message}")]
    Tokenize { index: usize, message: String },
    /// The weights file is unreadable or disagrees with config.json.
    #[error(transparent)]
    Weights(#[from] SafetensorsError),
    /// The requested truncation length is outside what the model supports.
    #[error("max tokens {requested} is out of range; choose 2 to {max_positions} (the model's position table)")]
    MaxTokens {
        requested: usize,
        max_positions: usize,
    },
    /// A token id from the tokenizer has no row in the embedding table.
    #[error("token id {id} is outside the vocabulary of {vocab_size}; tokenizer.json does not match the model")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    /// A linear layer rejected its weights or buffers.
    #[error(transparent)]
    Linear(#[from] LinearError),
    /// Packed-batch offsets that do not run from 0 to the token count in order.
    #[error("invalid sequence offsets {cu_seqlens:?} for {total_tokens} tokens; they must start at 0, not decrease and end at the token count")]
    InvalidOffsets {
        cu_seqlens: Vec<usize>,
        total_tokens: usize,
    },
    /// The attention kernel rejected its input.
    #[error("attention failed: {0}")]
    Attention(#[from] AttendError),
    /// `num_hidden_layers` disagrees with the encoder layers in the weights file.
    #[error("config.json `num_hidden_layers` = {value} does not match {path}, which has {layers_in_file} encoder layers among its {n_tensors} tensors; use the config.json that belongs to these weights")]
    LayerCount {
        path: PathBuf,
        value: usize,
        layers_in_file: usize,
        n_tensors: usize,
    },
    /// An embedding came out NaN or infinite, which finite weights never give.
    #[error("the embedding of input {index} is not finite (NaN or infinity); the model weights may be corrupt, so download the model again")]
    NonFiniteEmbedding { index: usize },
}

/// The fields of a Hugging Face BERT `config.json` that the forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_position_embedding_type() -> String {
    "absolute".to_string()
}

impl BertConfig {
    /// Reads and validates `config.json`.
    ///
    /// # Errors
    /// [`BertError::MissingFile`], [`BertError::ConfigJson`], or
    /// [`BertError::ConfigValue`] naming the first unsupported field.
    pub fn load(path: &Path) -> Result<Self, BertError> {
        let config: Self = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Returns `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Returns the multiply-add FLOPs (2 per multiply-add) of one forward pass over
    /// sequences of the given lengths: the linear layers plus the attention scores
    /// and weighted sums. Embeddings, norms and activations are not counted.
    pub fn forward_flops(&self, seq_lens: &[usize]) -> f64 {
        let hidden = self.hidden_size as f64;
        let inter = self.intermediate_size as f64;
        let tokens: f64 = seq_lens.iter().map(|&len| len as f64).sum();
        let linear = 2.0 * tokens * (4.0 * hidden * hidden + 2.0 * hidden * inter);
        let attention: f64 = seq_lens
            .iter()
            .map(|&len| 4.0 * (len as f64) * (len as f64) * hidden)
            .sum();
        self.num_hidden_layers as f64 * (linear + attention)
    }

    fn validate(&self, path: &Path) -> Result<(), BertError> {
        let invalid = |field, value: String, reason| BertError::ConfigValue {
            path: path.to_path_buf(),
            field,
            value,
            reason,
        };
        if self.model_type != "bert" {
            return Err(invalid(
                "model_type",
                self.model_type.clone(),
                "only BERT encoders (model_type \"bert\") are supported",
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(invalid(
                "hidden_act",
                self.hidden_act.clone(),
                "only the exact GELU (\"gelu\") is implemented",
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(invalid(
                "position_embedding_type",
                self.position_embedding_type.clone(),
                "only absolute position embeddings are implemented",
            ));
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "0".to_string(), "it must be at least 1"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(invalid(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                "it must divide hidden_size",
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(invalid(
                "layer_norm_eps",
                self.layer_norm_eps.to_string(),
                "it must be finite and positive",
            ));
        }
        Ok(())
    }
}

/// `sentence_bert_config.json`: the truncation length sentence-transformers uses.
#[derive(Debug, Clone, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

/// `1_Pooling/config.json`: which pooling the sentence embedding uses.
#[derive(Debug, Clone, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// One encoder layer's weights.
struct Layer {
    /// Query, key and value projections stacked: `[3 * hidden, hidden]`.
    qkv: Linear,
    /// `[hidden, hidden]`.
    attn_out: Linear,
    attn_norm_weight: Vec<f32>,
    attn_norm_bias: Vec<f32>,
    /// `[intermediate, hidden]`.
    ffn_up: Linear,
    /// `[hidden, intermediate]`.
    ffn_down: Linear,
    ffn_norm_weight: Vec<f32>,
    ffn_norm_bias: Vec<f32>,
}

/// A BERT encoder with its weights in f32.
pub struct BertModel {
    config: BertConfig,
    /// `[vocab_size, hidden]`.
    word_embeddings: Vec<f32>,
    /// `[max_position_embeddings, hidden]`.
    position_embeddings: Vec<f32>,
    /// Row 0 of the token type table, `[hidden]`: every input is a single segment.
    token_type_embedding: Vec<f32>,
    embed_norm_weight: Vec<f32>,
    embed_norm_bias: Vec<f32>,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for BertModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BertModel {
    /// Loads the weights from `weights` (Hugging Face `BertModel` tensor names), checking
    /// every tensor's dtype and shape against `config`.
    ///
    /// The linear layers use `kernel` (`None`: the fastest this CPU runs).
    ///
    /// # Errors
    /// [`BertError::LayerCount`] when `config.num_hidden_layers` differs from the
    /// layers in `weights`; [`BertError::Weights`] naming the first tensor that is
    /// missing, not f32, or shaped differently from what `config` implies; [`BertError::Linear`] when
    /// `kernel` cannot run on this CPU.
    pub fn load(
        config: BertConfig,
        weights: &SafetensorsFile,
        kernel: Option<LinearKernel>,
    ) -> Result<Self, BertError> {
        let hidden = config.hidden_size;
        let inter = config.intermediate_size;
        let vector = |name: &str, len: usize| weights.tensor_f32(name, &[len]);
        let matrix = |name: &str, rows: usize, cols: usize| weights.tensor_f32(name, &[rows, cols]);
        let dense = |prefix: &str, out_dim: usize, in_dim: usize| -> Result<Linear, BertError> {
            let weight = matrix(&format!("{prefix}.weight"), out_dim, in_dim)?;
            let bias = vector(&format!("{prefix}.bias"), out_dim)?;
            Ok(Linear::new(weight, bias, in_dim, kernel)?)
        };

        let word_embeddings = matrix(
            "embeddings.word_embeddings.weight",
            config.vocab_size,
            hidden,
        )?;
        let position_embeddings = matrix(
            "embeddings.position_embeddings.weight",
            config.max_position_embeddings,
            hidden,
        )?;
        let mut token_type_embedding = matrix(
            "embeddings.token_type_embeddings.weight",
            config.type_vocab_size,
            hidden,
        )?;
        token_type_embedding.truncate(hidden);
        let embed_norm_weight = vector("embeddings.LayerNorm.weight", hidden)?;
        let embed_norm_bias = vector("embeddings.LayerNorm.bias", hidden)?;

        check_layer_count(&config, weights)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer_idx in 0..config.num_hidden_layers {
            let name = |suffix: &str| format!("encoder.layer.{layer_idx}.{suffix}");
            let mut qkv_weight = Vec::with_capacity(3 * hidden * hidden);
            let mut qkv_bias = Vec::with_capacity(3 * hidden);
            for part in ["query", "key", "value"] {
                qkv_weight.extend(matrix(
                    &name(&format!("attention.self.{part}.weight")),
                    hidden,
                    hidden,
                )?);
                qkv_bias.extend(vector(
                    &name(&format!("attention.self.{part}.bias")),
                    hidden,
                )?);
            }
            layers.push(Layer {
                qkv: Linear::new(qkv_weight, qkv_bias, hidden, kernel)?,
                attn_out: dense(&name("attention.output.dense"), hidden, hidden)?,
                attn_norm_weight: vector(&name("attention.output.LayerNorm.weight"), hidden)?,
                attn_norm_bias: vector(&name("attention.output.LayerNorm.bias"), hidden)?,
                ffn_up: dense(&name("intermediate.dense"), inter, hidden)?,
                ffn_down: dense(&name("output.dense"), hidden, inter)?,
                ffn_norm_weight: vector(&name("output.LayerNorm.weight"), hidden)?,
                ffn_norm_bias: vector(&name("output.LayerNorm.bias"), hidden)?,
            });
        }

        Ok(Self {
            config,
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embed_norm_weight,
            embed_norm_bias,
            layers,
        })
    }

    /// Returns the model config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Runs the encoder over a packed batch and returns the last hidden states.
    ///
    /// Sequence `b` is `ids[cu_seqlens[b]..cu_seqlens[b + 1]]`; positions restart at 0
    /// for each sequence and every token has token type 0.
    ///
    /// # Shapes
    /// - `ids: [total_tokens]`, `cu_seqlens: [batch + 1]` from 0 to `total_tokens`
    /// - returns `[total_tokens, hidden_size]`
    ///
    /// # Errors
    /// [`BertError::TokenOutOfRange`] for an id past the vocabulary,
    /// [`BertError::MaxTokens`] for a sequence longer than the position table,
    /// [`BertError::InvalidOffsets`] for offsets that do not run from 0 to
    /// `ids.len()` without decreasing.
    pub fn forward(&self, ids: &[u32], cu_seqlens: &[usize]) -> Result<Vec<f32>, BertError> {
        let offsets_valid = cu_seqlens.first() == Some(&0)
            && cu_seqlens.last() == Some(&ids.len())
            && cu_seqlens.windows(2).all(|w| w[0] <= w[1]);
        if !offsets_valid {
            return Err(BertError::InvalidOffsets {
                cu_seqlens: cu_seqlens.to_vec(),
                total_tokens: ids.len(),
            });
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }

        let hidden = self.config.hidden_size;
        let n_heads = self.config.num_attention_heads;
        let head_dim = self.config.head_dim();
        let inter = self.config.intermediate_size;
        let eps = self.config.layer_norm_eps as f32;
        let total = ids.len();

        let mut x = self.embed(ids, cu_seqlens)?; // [total, hidden]
        let mut qkv = vec![0.0f32; total * 3 * hidden]; // [total, 3 * hidden]
        let mut context = vec![0.0f32; total * hidden]; // [total, n_heads, head_dim]
        let mut projected = vec![0.0f32; total * hidden]; // [total, hidden]
        let mut ffn = vec![0.0f32; total * inter]; // [total, intermediate]

        for layer in &self.layers {
            // Self-attention over each sequence, reading q, k and v in place from the
            // fused projection: token stride 3 * hidden, head stride head_dim.
            layer.qkv.forward(&x, &mut qkv)?;
            let view = |offset: usize| {
                Packed::strided(
                    &qkv[offset..],
                    total,
                    n_heads,
                    head_dim,
                    3 * hidden,
                    head_dim,
                )
            };
            let (q, k, v) = (view(0)?, view(hidden)?, view(2 * hidden)?);
            let mut out = PackedMut::contiguous(&mut context, total, n_heads, head_dim)?;
            attention_varlen(
                q,
                k,
                v,
                cu_seqlens,
                cu_seqlens,
                &AttentionParams::default(),
                &mut out,
                None,
            )?;

            // Output projection, residual, LayerNorm.
            layer.attn_out.forward(&context, &mut projected)?;
            add_in_place(&mut x, &projected);
            layer_norm_rows(&mut x, &layer.attn_norm_weight, &layer.attn_norm_bias, eps);

            // Feed-forward with exact GELU, residual, LayerNorm.
            layer
                .ffn_up
                .forward_activated(&x, &mut ffn, gelu_erf_in_place)?;
            layer.ffn_down.forward(&ffn, &mut projected)?;
            add_in_place(&mut x, &projected);
            layer_norm_rows(&mut x, &layer.ffn_norm_weight, &layer.ffn_norm_bias, eps);
        }
        Ok(x)
    }

    /// Sums word, token type 0 and position embeddings and normalises them.
    fn embed(&self, ids: &[u32], cu_seqlens: &[usize]) -> Result<Vec<f32>, BertError> {
        let hidden = self.config.hidden_size;
        let vocab_size = self.config.vocab_size;
        let max_positions = self.config.max_position_embeddings;
        let mut x = vec![0.0f32; ids.len() * hidden]; // [total, hidden]

        for bounds in cu_seqlens.windows(2) {
            let (start, end) = (bounds[0], bounds[1]);
            if end - start > max_positions {
                return Err(BertError::MaxTokens {
                    requested: end - start,
                    max_positions,
                });
            }
            for (position, token_idx) in (start..end).enumerate() {
                let id = ids[token_idx];
                let id_idx = id as usize;
                if id_idx >= vocab_size {
                    return Err(BertError::TokenOutOfRange { id, vocab_size });
                }
                let word = &self.word_embeddings[id_idx * hidden..(id_idx + 1) * hidden];
                let pos = &self.position_embeddings[position * hidden..(position + 1) * hidden];
                let row = &mut x[token_idx * hidden..(token_idx + 1) * hidden];
                // Same order of f32 additions as Hugging Face: (word + type) + position.
                for (((r, &w), &t), &p) in row
                    .iter_mut()
                    .zip(word)
                    .zip(&self.token_type_embedding)
                    .zip(pos)
                {
                    *r = (w + t) + p;
                }
            }
        }

        let eps = self.config.layer_norm_eps as f32;
        layer_norm_rows(&mut x, &self.embed_norm_weight, &self.embed_norm_bias, eps);
        Ok(x)
    }
}

/// Tokens per packed forward pass in [`SentenceEncoder::embed_ids`]. The activations
/// take `4 * (3 * hidden + 2 * hidden + intermediate)` bytes per token, 15 KiB for
/// MiniLM (hidden 384, intermediate 1536), so 60 MiB at this length.
pub const MAX_TOKENS_PER_FORWARD: usize = 4096;

/// Rows per rayon task in the element-wise steps.
const ROWS_PER_TASK: usize = 16;

/// [`layer_norm`] over `[rows, dim]`, rows split across threads.
fn layer_norm_rows(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    x.par_chunks_mut(ROWS_PER_TASK * weight.len())
        .for_each(|chunk| layer_norm(chunk, weight, bias, eps));
}

/// The token ids of one input after truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Ids fed to the model, `[CLS]` first and `[SEP]` last.
    pub ids: Vec<u32>,
    /// Whether the input had more tokens than the truncation length.
    pub truncated: bool,
}

/// A sentence encoder: tokenizer, BERT and mean pooling, as sentence-transformers
/// builds it from a model folder.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    /// The folder's `max_seq_length` (the truncation length by default).
    default_max_tokens: usize,
    max_tokens: usize,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads a sentence-transformers folder with `config.json`, `model.safetensors`
    /// and `tokenizer.json`. The optional `sentence_bert_config.json` sets the
    /// truncation length (without it, the model's position count), and the optional
    /// `1_Pooling/config.json` must select mean pooling.
    ///
    /// # Errors
    /// [`BertError::GgufGiven`] when `dir` is a GGUF file, [`BertError::MissingFile`]
    /// for a missing required file, and the errors of [`BertConfig::load`] and
    /// [`BertModel::load`].
    pub fn load(dir: &Path) -> Result<Self, BertError> {
        Self::load_with_kernel(dir, None)
    }

    /// As [`Self::load`], with the linear layers on `kernel` (`None`: the fastest
    /// this CPU runs).
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_with_kernel(dir: &Path, kernel: Option<LinearKernel>) -> Result<Self, BertError> {
        if dir.is_file() {
            return Err(if has_gguf_magic(dir) {
                BertError::GgufGiven {
                    path: dir.to_path_buf(),
                }
            } else {
                BertError::MissingFile {
                    path: dir.join("config.json"),
                }
            });
        }
        let config = BertConfig::load(&dir.join("config.json"))?;

        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            let pooling: PoolingConfig = read_json(&pooling_path)?;
            let mean_only = pooling.pooling_mode_mean_tokens
                && !pooling.pooling_mode_cls_token
                && !pooling.pooling_mode_max_tokens
                && !pooling.pooling_mode_mean_sqrt_len_tokens;
            if !mean_only {
                return Err(BertError::ConfigValue {
                    path: pooling_path,
                    field: "pooling_mode_mean_tokens",
                    value: format!("{pooling:?}"),
                    reason: "only mean pooling alone is implemented",
                });
            }
        }

        let sentence_path = dir.join("sentence_bert_config.json");
        let default_max_tokens = if sentence_path.exists() {
            let sentence: SentenceBertConfig = read_json(&sentence_path)?;
            if sentence.max_seq_length < 2
                || sentence.max_seq_length > config.max_position_embeddings
            {
                return Err(BertError::ConfigValue {
                    path: sentence_path,
                    field: "max_seq_length",
                    value: sentence.max_seq_length.to_string(),
                    reason: "it must lie between 2 and max_position_embeddings",
                });
            }
            sentence.max_seq_length
        } else {
            config.max_position_embeddings
        };

        let weights_path = dir.join("model.safetensors");
        if !weights_path.exists() {
            return Err(BertError::MissingFile { path: weights_path });
        }
        if has_gguf_magic(&weights_path) {
            return Err(BertError::GgufGiven { path: weights_path });
        }
        let weights = SafetensorsFile::open(&weights_path)?;
        let model = BertModel::load(config, &weights, kernel)?;
        drop(weights);

        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(BertError::MissingFile {
                path: tokenizer_path,
            });
        }
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|err| BertError::Tokenizer {
                path: tokenizer_path.clone(),
                message: err.to_string(),
            })?;
        // tokenizer.json may carry its own padding and truncation (all-MiniLM-L6-v2's
        // pads and truncates to 128); sentence-transformers replaces both, and so do we.
        tokenizer.with_padding(None);

        let mut encoder = Self {
            model,
            tokenizer,
            tokenizer_path,
            default_max_tokens,
            max_tokens: default_max_tokens,
        };
        encoder.set_max_tokens(default_max_tokens)?;
        Ok(encoder)
    }

    /// Returns the encoder.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// Returns the embedding width (`hidden_size`).
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size
    }

    /// Returns the truncation length in tokens, `[CLS]` and `[SEP]` included.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Returns the folder's `max_seq_length`, the default truncation length.
    pub fn default_max_tokens(&self) -> usize {
        self.default_max_tokens
    }

    /// Sets the truncation length in tokens, `[CLS]` and `[SEP]` included.
    ///
    /// # Errors
    /// [`BertError::MaxTokens`] unless `2 <= max_tokens <= max_position_embeddings`;
    /// [`BertError::Tokenizer`] when the tokenizer rejects the length.
    pub fn set_max_tokens(&mut self, max_tokens: usize) -> Result<(), BertError> {
        let max_positions = self.model.config.max_position_embeddings;
        if !(2..=max_positions).contains(&max_tokens) {
            return Err(BertError::MaxTokens {
                requested: max_tokens,
                max_positions,
            });
        }
        // sentence-transformers keeps as many word pieces as fit in max_seq_length
        // together with the added [CLS] and [SEP]. The tokenizer's own truncation
        // does the same when given the total length.
        let params = TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_tokens,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        self.tokenizer
            .with_truncation(Some(params))
            .map_err(|err| BertError::Tokenizer {
                path: self.tokenizer_path.clone(),
                message: err.to_string(),
            })?;
        self.max_tokens = max_tokens;
        Ok(())
    }

    /// Returns the sentence that completes a truncation warning: the length used and
    /// how to keep more tokens, if the model allows more.
    pub fn truncation_note(&self) -> String {
        let max_positions = self.model.config.max_position_embeddings;
        if self.max_tokens < max_positions {
            format!(
                "was truncated to {} tokens; raise --max-tokens (up to {max_positions}) to keep more",
                self.max_tokens
            )
        } else {
            format!(
                "was truncated to {} tokens, the model's maximum",
                self.max_tokens
            )
        }
    }

    /// Tokenizes `text` with `[CLS]` and `[SEP]`, truncated to [`Self::max_tokens`].
    ///
    /// # Errors
    /// [`BertError::Tokenize`] when the tokenizer fails on the input.
    pub fn tokenize(&self, text: &str) -> Result<Tokens, BertError> {
        self.tokenize_indexed(0, text)
    }

    fn tokenize_indexed(&self, index: usize, text: &str) -> Result<Tokens, BertError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|err| BertError::Tokenize {
                index,
                message: err.to_string(),
            })?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }

    /// Embeds each text: tokenize, truncate, encode as one packed batch, mean-pool
    /// over the text's tokens and L2-normalise. Logs a warning for each truncated input.
    ///
    /// # Shapes
    /// Returns `[texts.len()]` vectors of [`Self::dim`] values.
    ///
    /// # Errors
    /// [`BertError::Tokenize`] and the errors of [`BertModel::forward`].
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>, BertError> {
        let mut batch = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let tokens = self.tokenize_indexed(index, text.as_ref())?;
            if tokens.truncated {
                tracing::warn!("input {index} {}", self.truncation_note());
            }
            batch.push(tokens.ids);
        }
        self.embed_ids(&batch)
    }

    /// Embeds sequences of token ids (each with its `[CLS]` and `[SEP]`).
    ///
    /// Sequences run in packed forward passes of at most [`MAX_TOKENS_PER_FORWARD`]
    /// tokens (a longer single sequence runs alone), which bounds the activation
    /// memory without changing any embedding.
    ///
    /// # Shapes
    /// Returns `[batch.len()]` vectors of [`Self::dim`] values.
    ///
    /// # Errors
    /// As [`BertModel::forward`].
    pub fn embed_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, BertError> {
        let mut embeddings = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let mut end = start + 1;
            let mut tokens = batch[start].len();
            while end < batch.len() && tokens + batch[end].len() <= MAX_TOKENS_PER_FORWARD {
                tokens += batch[end].len();
                end += 1;
            }
            embeddings.extend(self.embed_packed(&batch[start..end], start)?);
            start = end;
        }
        Ok(embeddings)
    }

    /// Embeds `batch`, whose first sequence is input `first_index`, in one packed
    /// forward pass.
    fn embed_packed(
        &self,
        batch: &[Vec<u32>],
        first_index: usize,
    ) -> Result<Vec<Vec<f32>>, BertError> {
        let mut cu_seqlens = Vec::with_capacity(batch.len() + 1);
        cu_seqlens.push(0);
        let mut ids = Vec::new();
        for sequence in batch {
            ids.extend_from_slice(sequence);
            cu_seqlens.push(ids.len());
        }
        let hidden_states = self.model.forward(&ids, &cu_seqlens)?;
        mean_pool_normalized(&hidden_states, &cu_seqlens, self.dim()).map_err(|batch_idx| {
            BertError::NonFiniteEmbedding {
                index: first_index + batch_idx,
            }
        })
    }
}

/// Averages each sequence's rows and scales the mean to unit L2 norm (a zero mean,
/// or an empty sequence, stays zero).
///
/// # Errors
/// `Err` carries the batch index of the first sequence whose mean is not finite,
/// which the normalisation would otherwise turn into zeros.
///
/// # Shapes
/// `hidden_states: [total_tokens, dim]`, `cu_seqlens: [batch + 1]`; returns `[batch]`
/// vectors of `dim` values.
///
/// # Panics
/// When the offsets decrease or lie past `hidden_states`; [`BertModel::forward`]
/// validates the offsets it returns states for.
fn mean_pool_normalized(
    hidden_states: &[f32],
    cu_seqlens: &[usize],
    dim: usize,
) -> Result<Vec<Vec<f32>>, usize> {
    cu_seqlens
        .windows(2)
        .enumerate()
        .map(|(batch_idx, bounds)| {
            let rows = &hidden_states[bounds[0] * dim..bounds[1] * dim];
            if rows.is_empty() {
                return Ok(vec![0.0; dim]);
            }
            let count = (bounds[1] - bounds[0]) as f64;
            let mut sum = vec![0.0f64; dim];
            for row in rows.chunks_exact(dim) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += f64::from(v);
                }
            }
            if !sum.iter().all(|s| s.is_finite()) {
                return Err(batch_idx);
            }
            let norm = sum.iter().map(|s| (s / count).powi(2)).sum::<f64>().sqrt();
            Ok(sum
                .iter()
                .map(|s| {
                    if norm > 0.0 {
                        (s / count / norm) as f32
                    } else {
                        0.0
                    }
                })
                .collect())
        })
        .collect()
}

/// Checks `config.num_hidden_layers` against the encoder layers
/// (`encoder.layer.{i}.*`) in `weights` before anything is allocated per layer.
/// Every layer has tensors, so the count can exceed neither the number of
/// tensors nor the highest layer index plus one.
fn check_layer_count(config: &BertConfig, weights: &SafetensorsFile) -> Result<(), BertError> {
    let names = weights.tensor_names();
    let layers_in_file = names
        .iter()
        .filter_map(|name| {
            name.strip_prefix("encoder.layer.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |last_idx| last_idx + 1);
    if config.num_hidden_layers > names.len() || config.num_hidden_layers != layers_in_file {
        return Err(BertError::LayerCount {
            path: weights.path().to_path_buf(),
            value: config.num_hidden_layers,
            layers_in_file,
            n_tensors: names.len(),
        });
    }
    Ok(())
}

/// Returns the cosine similarity of two vectors, accumulated in f64; 0 when either
/// is zero. Vectors of different lengths are compared over the shorter length.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut norm_a, mut norm_b) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        norm_a += f64::from(x) * f64::from(x);
        norm_b += f64::from(y) * f64::from(y);
    }
    let denom = (norm_a * norm_b).sqrt();
    if denom > 0.0 {
        dot / denom
    } else {
        0.0
    }
}

/// Returns whether the file starts with the GGUF magic `GGUF`.
fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BertError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BertError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            BertError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    serde_json::from_str(&text).map_err(|source| BertError::ConfigJson {
        path: path.to_path_buf(),
        source,
    })
}
