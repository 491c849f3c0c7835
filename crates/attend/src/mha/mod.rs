//! Multi-head attention with Q, K, V and output projections, grouped-query heads,
//! optional RoPE and q/k normalisation, with or without a KV cache.
//!
//! One call of [`MultiHeadAttention`] runs these steps for `tokens` input rows:
//!
//! ```text
//! q = x Wq^T        [tokens, n_heads * head_dim]
//! k = x Wk^T        [tokens, n_kv_heads * head_dim]    (x = context for cross-attention)
//! v = x Wv^T        [tokens, n_kv_heads * head_dim]
//! q, k = norm(q), norm(k)          per head row, when a hook is set
//! q, k = rope(q, positions), rope(k, positions)      when a Rope is set
//! a = attention(q, k, v)           tiled kernel (prefill) or decode kernel (cached, 1 token)
//! out = a Wo^T      [tokens, hidden]
//! ```
//!
//! Projections are [`Linear`] trait objects, so a model can plug in quantised weights;
//! [`DenseLinear`] is the f32 implementation on the `gemm` crate.

use thiserror::Error;

mod linear;

pub use linear::{DenseLinear, Linear};

use crate::decode::decode;
use crate::error::AttendError;
use crate::flash::{attention, attention_with_mods, AttentionParams};
use crate::kv::{KvCache, KvError, SeqId};
use crate::layout::{Bshd, BshdMut};
use crate::mask::NoScoreMod;
use crate::rope::{Rope, RopeError};

/// Errors of the multi-head attention module.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum MhaError {
    #[error(transparent)]
    Attention(#[from] AttendError),
    #[error(transparent)]
    Cache(#[from] KvError),
    #[error(transparent)]
    Rope(#[from] RopeError),
    #[error("attention parameter `{name}` = {value} is invalid; expected {expected}")]
    InvalidConfig {
        name: &'static str,
        value: usize,
        expected: &'static str,
    },
    #[error("{projection} projection maps {found_in} -> {found_out} features; expected {expected_in} -> {expected_out}")]
    ProjectionShape {
        projection: &'static str,
        found_in: usize,
        found_out: usize,
        expected_in: usize,
        expected_out: usize,
    },
    #[error("{name} has {found} elements, expected {expected}")]
    BufferLength {
        name: &'static str,
        found: usize,
        expected: usize,
    },
    #[error(
        "the RoPE head_dim is {rope_head_dim}, but the attention heads have head_dim {head_dim}"
    )]
    RopeHeadDim {
        rope_head_dim: usize,
        head_dim: usize,
    },
}

pub(crate) fn check_len(
    name: &'static str,
    found: usize,
    expected: Option<usize>,
) -> Result<(), MhaError> {
    match expected {
        Some(expected) if expected == found => Ok(()),
        expected => Err(MhaError::BufferLength {
            name,
            found,
            expected: expected.unwrap_or(usize::MAX),
        }),
    }
}

/// Head layout and attention options of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MhaConfig {
    /// Model width: the input of the Q projection and the output of the O projection.
    pub hidden: usize,
    pub n_heads: usize,
    /// Must divide `n_heads`: 1 is multi-query, `n_heads` is plain multi-head attention.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Softmax scale of this layer; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Causal self-attention (ignored by [`MultiHeadAttention::forward_cross`]).
    pub causal: bool,
    /// Window `(left, right)` of self-attention. Without a cache it counts tokens; with a
    /// cache it counts positions (the same for consecutive positions).
    pub window: (Option<usize>, Option<usize>),
    /// Logit soft cap.
    pub softcap: Option<f32>,
}

impl MhaConfig {
    fn params(&self) -> AttentionParams<'static> {
        AttentionParams {
            scale: self.scale,
            causal: self.causal,
            window: self.window,
            softcap: self.softcap,
            ..Default::default()
        }
    }

    fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// A hook applied in place to each head row, `[head_dim]`, of q or k (for example the
/// RMSNorm of Gemma 3 and Qwen 3).
pub type HeadNorm = Box<dyn Fn(&mut [f32]) + Send + Sync>;

/// Multi-head (grouped-query, multi-query) attention with its projections.
pub struct MultiHeadAttention {
    config: MhaConfig,
    q_proj: Box<dyn Linear>,
    k_proj: Box<dyn Linear>,
    v_proj: Box<dyn Linear>,
    o_proj: Box<dyn Linear>,
    rope: Option<Rope>,
    q_norm: Option<HeadNorm>,
    k_norm: Option<HeadNorm>,
}

impl std::fmt::Debug for MultiHeadAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiHeadAttention")
            .field("config", &self.config)
            .field("rope", &self.rope.as_ref().map(Rope::config))
            .field("q_norm", &self.q_norm.is_some())
            .field("k_norm", &self.k_norm.is_some())
            .finish_non_exhaustive()
    }
}

/// Projected, normalised and rotated q, k and v of a call.
struct Projected {
    /// `[tokens, n_heads * head_dim]`
    q: Vec<f32>,
    /// `[kv_tokens, n_kv_heads * head_dim]`
    k: Vec<f32>,
    /// `[kv_tokens, n_kv_heads * head_dim]`
    v: Vec<f32>,
}

impl MultiHeadAttention {
    /// Creates the layer from its four projections.
    ///
    /// K and V may read a different width than `hidden` (the context of cross-attention),
    /// but must read the same width as each other.
    ///
    /// # Errors
    /// [`MhaError::InvalidConfig`] for zero sizes; [`MhaError::Attention`] with
    /// [`AttendError::HeadsNotDivisible`]; [`MhaError::ProjectionShape`] when a projection
    /// does not map the widths above.
    pub fn new(
        config: MhaConfig,
        q_proj: Box<dyn Linear>,
        k_proj: Box<dyn Linear>,
        v_proj: Box<dyn Linear>,
        o_proj: Box<dyn Linear>,
    ) -> Result<Self, MhaError> {
        for (name, value) in [
            ("hidden", config.hidden),
            ("n_heads", config.n_heads),
            ("n_kv_heads", config.n_kv_heads),
            ("head_dim", config.head_dim),
        ] {
            if value == 0 {
                return Err(MhaError::InvalidConfig {
                    name,
                    value,
                    expected: "at least 1",
                });
            }
        }
        if !config.n_heads.is_multiple_of(config.n_kv_heads) {
            return Err(AttendError::HeadsNotDivisible {
                n_heads: config.n_heads,
                n_kv_heads: config.n_kv_heads,
            }
            .into());
        }
        let kv_in = k_proj.in_features();
        let expected = [
            ("q", &q_proj, config.hidden, config.q_width()),
            ("k", &k_proj, kv_in, config.kv_width()),
            ("v", &v_proj, kv_in, config.kv_width()),
            ("o", &o_proj, config.q_width(), config.hidden),
        ];
        for (projection, linear, expected_in, expected_out) in expected {
            if linear.in_features() != expected_in || linear.out_features() != expected_out {
                return Err(MhaError::ProjectionShape {
                    projection,
                    found_in: linear.in_features(),
                    found_out: linear.out_features(),
                    expected_in,
                    expected_out,
                });
            }
        }
        Ok(Self {
            config,
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            rope: None,
            q_norm: None,
            k_norm: None,
        })
    }

    /// Rotates q and k with `rope` at the positions of each call.
    ///
    /// # Errors
    /// [`MhaError::RopeHeadDim`] when the rope's head_dim differs from the layer's.
    pub fn with_rope(mut self, rope: Rope) -> Result<Self, MhaError> {
        if rope.config().head_dim != self.config.head_dim {
            return Err(MhaError::RopeHeadDim {
                rope_head_dim: rope.config().head_dim,
                head_dim: self.config.head_dim,
            });
        }
        self.rope = Some(rope);
        Ok(self)
    }

    /// Applies `norm` to each q head row after the projection and before RoPE.
    pub fn with_q_norm(mut self, norm: HeadNorm) -> Self {
        self.q_norm = Some(norm);
        self
    }

    /// Applies `norm` to each k head row after the projection and before RoPE.
    pub fn with_k_norm(mut self, norm: HeadNorm) -> Self {
        self.k_norm = Some(norm);
        self
    }

    pub fn config(&self) -> &MhaConfig {
        &self.config
    }

    /// Projects `x` to q and `context` to k and v, applies the norms, and rotates q and k
    /// (RoPE only when `positions` is given).
    fn project(
        &mut self,
        x: &[f32],
        context: &[f32],
        positions: Option<&[u32]>,
    ) -> Result<Projected, MhaError> {
        let c = self.config;
        let tokens = x.len() / c.hidden;
        let kv_tokens = context.len() / self.k_proj.in_features();
        let mut q = vec![0.0; tokens * c.q_width()];
        let mut k = vec![0.0; kv_tokens * c.kv_width()];
        let mut v = vec![0.0; kv_tokens * c.kv_width()];
        self.q_proj.forward(x, &mut q);
        self.k_proj.forward(context, &mut k);
        self.v_proj.forward(context, &mut v);
        if let Some(norm) = &self.q_norm {
            q.chunks_exact_mut(c.head_dim).for_each(norm);
        }
        if let Some(norm) = &self.k_norm {
            k.chunks_exact_mut(c.head_dim).for_each(norm);
        }
        if let (Some(rope), Some(positions)) = (self.rope.as_mut(), positions) {
            rope.apply_qk(&mut q, c.n_heads, &mut k, c.n_kv_heads, positions)?;
        }
        Ok(Projected { q, k, v })
    }

    /// Checks `x: [tokens, hidden]` and `out: [tokens, hidden]` and returns `tokens`.
    fn check_rows(&self, x: &[f32], out: &[f32], tokens: usize) -> Result<(), MhaError> {
        let hidden = self.config.hidden;
        check_len("x", x.len(), tokens.checked_mul(hidden))?;
        check_len("out", out.len(), tokens.checked_mul(hidden))
    }

    /// Self-attention over `x` alone, without a cache, through the tiled kernel.
    ///
    /// Causal and window masks count tokens of `x`; `positions` only rotate q and k.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]`, `positions: [tokens]`, `out: [tokens, hidden]`.
    ///
    /// # Errors
    /// [`MhaError::BufferLength`] when the lengths disagree; [`MhaError::Rope`] for a
    /// position the rope rejects; [`MhaError::Attention`] for invalid attention options.
    pub fn forward(
        &mut self,
        x: &[f32],
        positions: &[u32],
        out: &mut [f32],
    ) -> Result<(), MhaError> {
        let tokens = positions.len();
        self.check_rows(x, out, tokens)?;
        let p = self.project(x, x, Some(positions))?;
        let attended =
            self.attend_dense(&p.q, &p.k, &p.v, tokens, tokens, &self.config.params())?;
        self.o_proj.forward(&attended, out);
        Ok(())
    }

    /// Cross-attention: queries from `x`, keys and values from `context`, no mask and
    /// no RoPE.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]`, `context: [context_tokens, context_width]` with
    /// `context_width` the K projection's input, `out: [tokens, hidden]`.
    ///
    /// # Errors
    /// [`MhaError::BufferLength`] when the lengths disagree; [`MhaError::Attention`] for
    /// invalid attention options.
    pub fn forward_cross(
        &mut self,
        x: &[f32],
        context: &[f32],
        out: &mut [f32],
    ) -> Result<(), MhaError> {
        let tokens = x.len() / self.config.hidden;
        self.check_rows(x, out, tokens)?;
        let kv_in = self.k_proj.in_features();
        let context_tokens = context.len() / kv_in;
        check_len("context", context.len(), context_tokens.checked_mul(kv_in))?;
        let p = self.project(x, context, None)?;
        let params = AttentionParams {
            causal: false,
            window: (None, None),
            ..self.config.params()
        };
        let attended = self.attend_dense(&p.q, &p.k, &p.v, tokens, context_tokens, &params)?;
        self.o_proj.forward(&attended, out);
        Ok(())
    }

    /// Self-attention of new tokens of sequence `seq` over everything `cache` holds for it.
    ///
    /// The new k and v rows are appended to the cache. One token runs the decode kernel
    /// over the cache after the append. Several tokens (prefill, or a chunk of it) run
    /// the tiled kernel over the cached rows (dequantised) followed by the new rows. The
    /// new rows enter unrounded, so an int8 or f16 cache changes the prefill only through
    /// the older tokens. Masks compare positions: a layer over a rolling cache of
    /// `window` tokens should set `window.0 = Some(window - 1)` so that a prefill chunk
    /// longer than the ring masks what the ring would have dropped.
    ///
    /// NOTE: the layer window hides sink tokens of a rolling cache once they fall out of
    /// it, so a rolling cache with sinks should come with `window = (None, _)` and
    /// prefill chunks no longer than its ring.
    ///
    /// # Shapes
    /// `x: [tokens, hidden]`, `positions: [tokens]` (after the cached ones, increasing),
    /// `out: [tokens, hidden]`.
    ///
    /// # Errors
    /// [`MhaError::BufferLength`]; [`MhaError::Cache`] when the sequence is missing, the
    /// positions do not increase or the cache is full (the cache is then unchanged);
    /// [`MhaError::Rope`]; [`MhaError::Attention`].
    pub fn forward_cached(
        &mut self,
        x: &[f32],
        positions: &[u32],
        cache: &mut dyn KvCache,
        seq: SeqId,
        out: &mut [f32],
    ) -> Result<(), MhaError> {
        if positions.len() == 1 {
            return self.decode_batch(x, positions, cache, &[seq], out);
        }
        let tokens = positions.len();
        self.check_rows(x, out, tokens)?;
        let p = self.project(x, x, Some(positions))?;
        let c = self.config;

        // The cached rows, then the new ones, as one dense key/value sequence.
        let mut dense = cache.view(seq)?.to_dense();
        let cached = dense.positions.len();
        cache.append(seq, &p.k, &p.v, positions)?;
        dense.k.extend_from_slice(&p.k);
        dense.v.extend_from_slice(&p.v);
        dense.positions.extend_from_slice(positions);
        let kv_len = cached + tokens;

        // Consecutive positions make index masks equal position masks; otherwise the
        // mask compares positions itself.
        let consecutive = dense
            .positions
            .windows(2)
            .all(|pair| pair[1] == pair[0].wrapping_add(1));
        let attended = if consecutive {
            self.attend_dense(&p.q, &dense.k, &dense.v, tokens, kv_len, &c.params())?
        } else {
            let key_positions = &dense.positions;
            let (left, right) = c.window;
            let right = if c.causal { Some(0) } else { right };
            let mask = |_: usize, _: usize, q_idx: usize, kv_idx: usize| {
                let query = i64::from(positions[q_idx]);
                let key = i64::from(key_positions[kv_idx]);
                // Window sizes above i64::MAX saturate instead of wrapping negative.
                let size = |size: usize| i64::try_from(size).unwrap_or(i64::MAX);
                left.is_none_or(|left| key >= query.saturating_sub(size(left)))
                    && right.is_none_or(|right| key <= query.saturating_add(size(right)))
            };
            let params = AttentionParams {
                causal: false,
                window: (None, None),
                ..c.params()
            };
            let mut attended = vec![0.0; tokens * c.q_width()];
            let q = Bshd::contiguous(&p.q, 1, tokens, c.n_heads, c.head_dim)?;
            let k = Bshd::contiguous(&dense.k, 1, kv_len, c.n_kv_heads, c.head_dim)?;
            let v = Bshd::contiguous(&dense.v, 1, kv_len, c.n_kv_heads, c.head_dim)?;
            let mut out_view =
                BshdMut::contiguous(&mut attended, 1, tokens, c.n_heads, c.head_dim)?;
            attention_with_mods(q, k, v, &params, &mask, &NoScoreMod, &mut out_view, None)?;
            attended
        };
        self.o_proj.forward(&attended, out);
        Ok(())
    }

    /// Decodes one new token for each of several sequences in one decode-kernel call.
    ///
    /// Token `b` (row `b` of `x`, at `positions[b]`) is appended to `seqs[b]`, then every
    /// sequence attends over its whole cache.
    ///
    /// # Shapes
    /// `x: [batch, hidden]`, `positions: [batch]`, `seqs: [batch]`, `out: [batch, hidden]`.
    ///
    /// # Errors
    /// As [`MultiHeadAttention::forward_cached`]. When the append to one sequence fails,
    /// the sequences before it in `seqs` keep their new token.
    pub fn decode_batch(
        &mut self,
        x: &[f32],
        positions: &[u32],
        cache: &mut dyn KvCache,
        seqs: &[SeqId],
        out: &mut [f32],
    ) -> Result<(), MhaError> {
        let batch = positions.len();
        check_len("seqs", seqs.len(), Some(batch))?;
        self.check_rows(x, out, batch)?;
        let p = self.project(x, x, Some(positions))?;
        let c = self.config;

        let kv_width = c.kv_width();
        for (b, &seq) in seqs.iter().enumerate() {
            let rows = b * kv_width..(b + 1) * kv_width;
            cache.append(seq, &p.k[rows.clone()], &p.v[rows], &positions[b..b + 1])?;
        }
        let views = seqs
            .iter()
            .map(|&seq| cache.view(seq))
            .collect::<Result<Vec<_>, _>>()?;
        let mut attended = vec![0.0; batch * c.q_width()];
        let q = Bshd::contiguous(&p.q, batch, 1, c.n_heads, c.head_dim)?;
        let mut out_view = BshdMut::contiguous(&mut attended, batch, 1, c.n_heads, c.head_dim)?;
        decode(q, &views, &c.params(), &mut out_view, None)?;
        self.o_proj.forward(&attended, out);
        Ok(())
    }

    /// Runs the tiled kernel over dense q, k, v and returns `[q_len, n_heads * head_dim]`.
    fn attend_dense(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        q_len: usize,
        kv_len: usize,
        params: &AttentionParams,
    ) -> Result<Vec<f32>, MhaError> {
        let c = self.config;
        let mut attended = vec![0.0; q_len * c.q_width()];
        let q = Bshd::contiguous(q, 1, q_len, c.n_heads, c.head_dim)?;
        let k = Bshd::contiguous(k, 1, kv_len, c.n_kv_heads, c.head_dim)?;
        let v = Bshd::contiguous(v, 1, kv_len, c.n_kv_heads, c.head_dim)?;
        let mut out_view = BshdMut::contiguous(&mut attended, 1, q_len, c.n_heads, c.head_dim)?;
        attention(q, k, v, params, &mut out_view, None)?;
        Ok(attended)
    }
}
