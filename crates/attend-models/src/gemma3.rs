//! The Gemma 3 text architecture (`general.architecture = gemma3`).
//!
//! The GGUF metadata gives the sizes, the global RoPE base and the sliding
//! window. The rest comes from the architecture's definition in Hugging Face
//! transformers (`models/gemma3/modeling_gemma3.py` and `configuration_gemma3.py`,
//! v4.50 and later) and llama.cpp's `gemma3` graph (`src/models/gemma3.cpp`,
//! `llama-model.cpp`), which read the same files:
//!
//! - layer pattern: five sliding-window layers, then one global layer
//!   (`sliding_window_pattern = 6`; layer `i` is global when `i % 6 == 5`);
//! - RoPE: half-split layout; global layers use `rope.freq_base` (1e6 in the
//!   270M file), sliding layers `rope_local_base_freq = 10000`;
//! - token embeddings multiplied by `sqrt(hidden)`;
//! - RMSNorm `x / rms(x) * (1 + w)`; llama.cpp's converter stores `1 + w` in
//!   the file, so the weights are used as they are;
//! - norms before and after both the attention and the feed-forward blocks, and
//!   RMSNorm over each head of q and k before RoPE;
//! - softmax scale `query_pre_attn_scalar^-1/2` with `query_pre_attn_scalar =
//!   head_dim` (256) for every size but 27B;
//! - GeGLU feed-forward with the tanh approximation of GELU;
//! - no logit soft-capping (Gemma 2 had it; Gemma 3 replaced it with q/k norms).

use attend::rope::{RopeConfig, RopeLayout};

use crate::decoder::{
    check_block_count, check_head_lengths, optional_f32, required_usize, Activation, DecoderConfig,
    LayerSpec,
};
use crate::error::ModelError;
use crate::gguf::Gguf;

/// One global layer follows every five sliding-window layers.
pub const SLIDING_WINDOW_PATTERN: usize = 6;

/// RoPE base of the sliding-window layers (`rope_local_base_freq`).
pub const LOCAL_ROPE_BASE: f64 = 10_000.0;

/// Whether layer `layer_idx` attends through the sliding window.
pub fn is_sliding_layer(layer_idx: usize) -> bool {
    layer_idx % SLIDING_WINDOW_PATTERN != SLIDING_WINDOW_PATTERN - 1
}

/// Reads a `gemma3` file's metadata into a [`DecoderConfig`].
///
/// # Errors
/// [`ModelError::Gguf`] for a missing or mistyped key, and
/// [`ModelError::InvalidConfig`] for values that do not fit together.
pub fn config(file: &Gguf) -> Result<DecoderConfig, ModelError> {
    let arch = "gemma3";
    let n_layers = required_usize(file, arch, "block_count")?;
    let hidden = required_usize(file, arch, "embedding_length")?;
    let n_heads = required_usize(file, arch, "attention.head_count")?;
    let n_kv_heads = required_usize(file, arch, "attention.head_count_kv")?;
    let head_dim = required_usize(file, arch, "attention.key_length")?;
    if n_heads % n_kv_heads != 0 {
        return Err(ModelError::InvalidConfig {
            key: format!("{arch}.attention.head_count_kv"),
            value: n_kv_heads.to_string(),
            reason: format!("must divide head_count {n_heads}"),
        });
    }
    check_block_count(file, arch, n_layers)?;
    check_head_lengths(file, arch, head_dim)?;
    let window = required_usize(file, arch, "attention.sliding_window")?;
    let global_base = optional_f32(file, arch, "rope.freq_base")?.unwrap_or(1_000_000.0);
    if let Some(factor) = optional_f32(file, arch, "rope.scaling.factor")? {
        if factor != 1.0 {
            // NOTE: larger Gemma 3 sizes scale the global RoPE linearly; the 270M
            // file has no scaling, and scaled files are rejected rather than run wrong.
            return Err(ModelError::InvalidConfig {
                key: format!("{arch}.rope.scaling.factor"),
                value: factor.to_string(),
                reason: "RoPE scaling in gemma3 files is not supported yet".into(),
            });
        }
    }
    let ropes = vec![
        RopeConfig::new(head_dim, f64::from(global_base), RopeLayout::HalfSplit),
        RopeConfig::new(head_dim, LOCAL_ROPE_BASE, RopeLayout::HalfSplit),
    ];
    let layers = (0..n_layers)
        .map(|i| {
            if is_sliding_layer(i) {
                LayerSpec {
                    window: Some(window),
                    rope_idx: 1,
                }
            } else {
                LayerSpec {
                    window: None,
                    rope_idx: 0,
                }
            }
        })
        .collect();
    let vocab = file.tensor("token_embd.weight")?.rows();

    Ok(DecoderConfig {
        architecture: arch.into(),
        n_layers,
        hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim: required_usize(file, arch, "feed_forward_length")?,
        vocab,
        context_trained: required_usize(file, arch, "context_length")?,
        rms_eps: optional_f32(file, arch, "attention.layer_norm_rms_epsilon")?.unwrap_or(1e-6),
        embed_scale: Some((hidden as f32).sqrt()),
        query_scale: 1.0 / (head_dim as f32).sqrt(),
        activation: Activation::GeluTanh,
        ropes,
        layers,
        qk_norm: true,
        post_norms: true,
        final_softcap: optional_f32(file, arch, "final_logit_softcapping")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global() {
        let global: Vec<usize> = (0..18).filter(|&i| !is_sliding_layer(i)).collect();
        assert_eq!(global, vec![5, 11, 17]);
    }
}
