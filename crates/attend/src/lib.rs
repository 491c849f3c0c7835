//! Exact attention kernels for the CPU.
//!
//! The crate computes `softmax(scale * q k^T + mask) v` exactly, tile by tile, with
//! the FlashAttention-2 forward algorithm ([`flash`]), beside a float64 oracle
//! ([`reference`](mod@reference)) that materialises every score. Tensors use the BSHD layout
//! `[batch, seq_len, heads, head_dim]` ([`layout`]), stored as f32, f16 or bf16
//! ([`dtype`]); arithmetic is f32. Masks and score modifications ([`mask`]) are generic
//! closures compiled into the kernel. SIMD code is chosen at run time ([`simd`]).
//!
//! ```
//! use attend::{attention, attention_reference, AttentionParams, Bshd, BshdMut};
//!
//! // One sequence of 3 queries and 5 keys, 2 query heads sharing 1 kv head, head_dim 4.
//! let (batch, q_len, kv_len, n_heads, n_kv_heads, head_dim) = (1, 3, 5, 2, 1, 4);
//! let q: Vec<f32> = (0..batch * q_len * n_heads * head_dim).map(|i| (i as f32 * 0.37).sin()).collect();
//! let k: Vec<f32> = (0..batch * kv_len * n_kv_heads * head_dim).map(|i| (i as f32 * 0.11).cos()).collect();
//! let v: Vec<f32> = (0..batch * kv_len * n_kv_heads * head_dim).map(|i| i as f32).collect();
//!
//! let q = Bshd::contiguous(&q, batch, q_len, n_heads, head_dim)?;
//! let k = Bshd::contiguous(&k, batch, kv_len, n_kv_heads, head_dim)?;
//! let v = Bshd::contiguous(&v, batch, kv_len, n_kv_heads, head_dim)?;
//! let mut out = vec![0.0f32; batch * q_len * n_heads * head_dim];
//! let mut lse = vec![0.0f32; batch * n_heads * q_len];
//!
//! // Causal, aligned bottom-right: query 0 sees keys 0..=2, query 2 sees all 5.
//! let params = AttentionParams { causal: true, ..Default::default() };
//! let mut out_view = BshdMut::contiguous(&mut out, batch, q_len, n_heads, head_dim)?;
//! attention(q, k, v, &params, &mut out_view, Some(&mut lse))?;
//!
//! let expected = attention_reference(q, k, v, &params)?;
//! for (x, y) in out.iter().zip(&expected.out) {
//!     assert!((f64::from(*x) - y).abs() < 1e-4);
//! }
//! # Ok::<(), attend::AttendError>(())
//! ```

pub mod decode;
pub mod dtype;
pub mod error;
pub mod flash;
pub mod kv;
pub mod layout;
pub mod mask;
pub mod mha;
pub mod reference;
pub mod rope;
pub mod simd;

pub use decode::{decode, decode_reference};
pub use dtype::{DType, Element};
pub use error::AttendError;
pub use flash::{
    attention, attention_varlen, attention_varlen_with_mods, attention_with_mods, AttentionParams,
    BLOCK_KV, BLOCK_Q,
};
pub use layout::{Bshd, BshdMut, BshdShape, BshdStrides, Packed, PackedMut};
pub use reference::{
    attention_reference, attention_varlen_reference, attention_varlen_with_mods_reference,
    attention_with_mods_reference, ReferenceOutput,
};
pub use simd::Isa;
