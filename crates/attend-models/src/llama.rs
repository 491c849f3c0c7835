//! The Llama architecture (`general.architecture = llama`), as SmolLM2 uses it:
//! RMSNorm before attention and feed-forward, grouped-query attention, SwiGLU,
//! RoPE on every layer, optionally tied embeddings.
//!
//! RoPE layout: llama.cpp's converter permutes the rows of `attn_q` and `attn_k`
//! so that its "normal" rotation, which pairs dimensions `(2i, 2i + 1)`, gives the
//! same result as Hugging Face's half-split rotation on the original weights. The
//! file is therefore run with the interleaved layout.

use attend::rope::{RopeConfig, RopeLayout};

use crate::decoder::{
    check_block_count, check_head_lengths, optional_f32, required_usize, Activation, DecoderConfig,
    LayerSpec,
};
use crate::error::ModelError;
use crate::gguf::{Gguf, OptionalKey};

/// Reads a `llama` file's metadata into a [`DecoderConfig`].
///
/// # Errors
/// [`ModelError::Gguf`] for a missing or mistyped key, and
/// [`ModelError::InvalidConfig`] for values that do not fit together.
pub fn config(file: &Gguf) -> Result<DecoderConfig, ModelError> {
    let arch = "llama";
    let n_layers = required_usize(file, arch, "block_count")?;
    let hidden = required_usize(file, arch, "embedding_length")?;
    let n_heads = required_usize(file, arch, "attention.head_count")?;
    let n_kv_heads = required_usize(file, arch, "attention.head_count_kv")?;
    let head_dim = match file
        .get_integer::<usize>(&format!("{arch}.attention.key_length"))
        .optional()?
    {
        Some(dim) => dim,
        None => hidden / n_heads,
    };
    if head_dim == 0 || n_heads % n_kv_heads != 0 {
        return Err(ModelError::InvalidConfig {
            key: format!("{arch}.attention.head_count_kv"),
            value: n_kv_heads.to_string(),
            reason: format!("must divide head_count {n_heads}, with a head dim of at least 1"),
        });
    }
    check_block_count(file, arch, n_layers)?;
    check_head_lengths(file, arch, head_dim)?;
    let rotary_dim = match file
        .get_integer::<usize>(&format!("{arch}.rope.dimension_count"))
        .optional()?
    {
        Some(dim) => dim,
        None => head_dim,
    };
    let base = optional_f32(file, arch, "rope.freq_base")?.unwrap_or(10_000.0);
    let mut rope = RopeConfig::new(head_dim, f64::from(base), RopeLayout::Interleaved);
    rope.rotary_dim = rotary_dim;
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
        rms_eps: optional_f32(file, arch, "attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        embed_scale: None,
        query_scale: 1.0 / (head_dim as f32).sqrt(),
        activation: Activation::Silu,
        ropes: vec![rope],
        layers: vec![
            LayerSpec {
                window: None,
                rope_idx: 0
            };
            n_layers
        ],
        qk_norm: false,
        post_norms: false,
        final_softcap: None,
    })
}
