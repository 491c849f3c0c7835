//! Tiled exact attention for prefill: the FlashAttention-2 forward algorithm on the CPU.
//!
//! Four entries share one kernel (the private `kernel` module):
//!
//! | entry | layout | mask and score |
//! |---|---|---|
//! | [`attention`] | BSHD | causal, window, softcap, sinks from [`AttentionParams`] |
//! | [`attention_varlen`] | packed + `cu_seqlens` | the same |
//! | [`attention_with_mods`] | BSHD | the params plus a [`MaskMod`] and a [`ScoreMod`] |
//! | [`attention_varlen_with_mods`] | packed + `cu_seqlens` | the same |
//!
//! Work is split into tasks of one (sequence, query head, block of [`BLOCK_Q`] queries)
//! and run in parallel with rayon. Each task walks the key blocks of [`BLOCK_KV`] keys
//! in order on one thread, so the result does not depend on the number of threads.
//! Extra memory is a few tiles per thread, independent of the sequence lengths.
//!
//! Arithmetic is f32 whatever the storage type, with one exception. bf16 inputs on a
//! CPU with AVX512_BF16 ([`Isa::has_bf16_dot`]) use `vdpbf16ps` for both block products.
//! They round the softmax probabilities to bf16 before the product with V, as
//! FlashAttention-2's CUDA forward kernel converts P to the input type. That rounding
//! moves each output element by at most `2^-8` times the largest `|v|`, and the
//! log-sum-exp is unaffected.

mod kernel;

use crate::dtype::Element;
use crate::error::AttendError;
use crate::layout::{Bshd, BshdMut, Packed, PackedMut};
use crate::mask::{And, Chain, MaskMod, NoMask, NoScoreMod, ScoreMod, Softcap, Window};
use crate::simd::{self, Isa};

/// Queries per tile.
pub const BLOCK_Q: usize = simd::TILE_Q;

/// Keys per tile.
pub const BLOCK_KV: usize = simd::TILE_KV;

/// Options shared by all attention entries.
///
/// The default is full (non-causal) attention with scale `1 / sqrt(head_dim)` on the
/// best instruction set of this CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AttentionParams<'a> {
    /// Softmax scale; `None` means `1 / sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Causal masking, aligned bottom-right: query `i` sits at position
    /// `i + kv_len - q_len` and sees keys at or before it. Same as `window.1 = Some(0)`.
    pub causal: bool,
    /// Local window `(left, right)` in tokens around the aligned query position
    /// `p`: key `j` is visible iff `p - left <= j <= p + right`; `None` is unbounded.
    pub window: (Option<usize>, Option<usize>),
    /// Logit soft cap: each scaled score `s` becomes `cap * tanh(s / cap)`.
    pub softcap: Option<f32>,
    /// Attention sinks, `[n_heads]`: a per-head logit that joins the softmax
    /// denominator without a value row. The log-sum-exp output includes it.
    pub sinks: Option<&'a [f32]>,
    /// Instruction set; `None` means [`Isa::detect`].
    pub isa: Option<Isa>,
}

impl AttentionParams<'_> {
    /// Returns the window bounds with `causal` folded in.
    fn effective_window(&self) -> (Option<usize>, Option<usize>) {
        let (left, right) = self.window;
        let right = if self.causal { Some(0) } else { right };
        (left, right)
    }
}

/// Sizes and scale shared by every sequence of a call, after validation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl Dims {
    /// Returns `n_heads / n_kv_heads`: query head `h` reads kv head `h / group`.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// One sequence of a call: where its rows start (in elements) and its lengths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sequence {
    pub q_start: usize,
    pub k_start: usize,
    pub v_start: usize,
    pub out_start: usize,
    pub lse_start: usize,
    pub q_len: usize,
    pub kv_len: usize,
}

/// Validates the parts of `params` that do not depend on the tensors.
fn check_params(
    params: &AttentionParams,
    head_dim: usize,
    n_heads: usize,
) -> Result<f32, AttendError> {
    let scale = params.scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    if !scale.is_finite() || scale == 0.0 {
        return Err(AttendError::InvalidScale { scale });
    }
    if let Some(cap) = params.softcap {
        Softcap::new(cap)?;
    }
    if let Some(sinks) = params.sinks {
        if sinks.len() != n_heads {
            return Err(AttendError::BufferLength {
                buffer: "sinks",
                found: sinks.len(),
                expected: n_heads,
            });
        }
    }
    if let Some(isa) = params.isa {
        if !isa.is_available() {
            return Err(AttendError::IsaUnavailable { isa });
        }
    }
    Ok(scale)
}

fn check_equal(
    tensor: &'static str,
    dim: &'static str,
    found: usize,
    expected: usize,
    reference: &'static str,
) -> Result<(), AttendError> {
    if found != expected {
        return Err(AttendError::ShapeMismatch {
            tensor,
            dim,
            found,
            expected,
            reference,
        });
    }
    Ok(())
}

/// Validates head counts and head_dim of q, k and v and returns the shared sizes.
fn check_heads<T>(
    q: &Bshd<T>,
    k: &Bshd<T>,
    v: &Bshd<T>,
    params: &AttentionParams,
) -> Result<Dims, AttendError> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    for (tensor, shape) in [("q", qs), ("k", ks), ("v", vs)] {
        if shape.head_dim == 0 {
            return Err(AttendError::ZeroDim {
                tensor,
                dim: "head_dim",
            });
        }
        if shape.heads == 0 {
            return Err(AttendError::ZeroDim {
                tensor,
                dim: "heads",
            });
        }
    }
    check_equal("k", "head_dim", ks.head_dim, qs.head_dim, "q")?;
    check_equal("v", "head_dim", vs.head_dim, qs.head_dim, "q")?;
    check_equal("v", "heads", vs.heads, ks.heads, "k")?;
    if qs.heads % ks.heads != 0 {
        return Err(AttendError::HeadsNotDivisible {
            n_heads: qs.heads,
            n_kv_heads: ks.heads,
        });
    }
    let scale = check_params(params, qs.head_dim, qs.heads)?;
    Ok(Dims {
        n_heads: qs.heads,
        n_kv_heads: ks.heads,
        head_dim: qs.head_dim,
        scale,
    })
}

fn check_lse(lse: Option<&[f32]>, expected: usize) -> Result<(), AttendError> {
    if let Some(lse) = lse {
        if lse.len() != expected {
            return Err(AttendError::BufferLength {
                buffer: "lse",
                found: lse.len(),
                expected,
            });
        }
    }
    Ok(())
}

/// Checks cumulative offsets: non-empty, starting at 0, non-decreasing and, when
/// `total_tokens` is given, ending there.
pub(crate) fn check_cu_seqlens(
    name: &'static str,
    cu_seqlens: &[usize],
    total_tokens: Option<usize>,
) -> Result<(), AttendError> {
    let invalid = |index: usize, reason: String| AttendError::InvalidOffsets {
        name,
        index,
        reason,
    };
    let Some(&first) = cu_seqlens.first() else {
        return Err(invalid(
            0,
            "it is empty; it needs batch + 1 entries starting at 0".into(),
        ));
    };
    if first != 0 {
        return Err(invalid(0, format!("it starts at {first}, not 0")));
    }
    if let Some(index) = cu_seqlens.windows(2).position(|pair| pair[1] < pair[0]) {
        let (previous, next) = (cu_seqlens[index], cu_seqlens[index + 1]);
        return Err(invalid(
            index + 1,
            format!("{next} is less than the previous offset {previous}"),
        ));
    }
    if let Some(total) = total_tokens {
        let last = cu_seqlens[cu_seqlens.len() - 1];
        if last != total {
            return Err(invalid(
                cu_seqlens.len() - 1,
                format!("the last offset is {last}, but the packed tensor has {total} tokens"),
            ));
        }
    }
    Ok(())
}

/// Validates a fixed-length call and returns its sizes and per-batch sequences.
pub(crate) fn plan_bshd<T>(
    q: &Bshd<T>,
    k: &Bshd<T>,
    v: &Bshd<T>,
    out_shape: Option<crate::layout::BshdShape>,
    params: &AttentionParams,
) -> Result<(Dims, Vec<Sequence>), AttendError> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    check_equal("k", "batch", ks.batch, qs.batch, "q")?;
    check_equal("v", "batch", vs.batch, qs.batch, "q")?;
    check_equal("v", "seq_len", vs.seq_len, ks.seq_len, "k")?;
    let dims = check_heads(q, k, v, params)?;
    if let Some(os) = out_shape {
        check_equal("out", "batch", os.batch, qs.batch, "q")?;
        check_equal("out", "seq_len", os.seq_len, qs.seq_len, "q")?;
        check_equal("out", "heads", os.heads, qs.heads, "q")?;
        check_equal("out", "head_dim", os.head_dim, qs.head_dim, "q")?;
    }
    let (q_st, k_st, v_st) = (q.strides(), k.strides(), v.strides());
    let sequences = (0..qs.batch)
        .map(|b| Sequence {
            q_start: b * q_st.batch_stride,
            k_start: b * k_st.batch_stride,
            v_start: b * v_st.batch_stride,
            out_start: 0,
            lse_start: b * qs.heads * qs.seq_len,
            q_len: qs.seq_len,
            kv_len: ks.seq_len,
        })
        .collect();
    Ok((dims, sequences))
}

/// Validates a varlen call and returns its sizes and one sequence per pair of offsets.
pub(crate) fn plan_varlen<T>(
    q: &Packed<T>,
    k: &Packed<T>,
    v: &Packed<T>,
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    params: &AttentionParams,
) -> Result<(Dims, Vec<Sequence>), AttendError> {
    check_equal("v", "total_tokens", v.total_tokens(), k.total_tokens(), "k")?;
    let dims = check_heads(&q.as_bshd(), &k.as_bshd(), &v.as_bshd(), params)?;
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, Some(q.total_tokens()))?;
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, Some(k.total_tokens()))?;
    check_equal(
        "cu_seqlens_k",
        "len",
        cu_seqlens_k.len(),
        cu_seqlens_q.len(),
        "cu_seqlens_q",
    )?;
    let (q_st, k_st, v_st) = (
        q.as_bshd().strides(),
        k.as_bshd().strides(),
        v.as_bshd().strides(),
    );
    let sequences = cu_seqlens_q
        .windows(2)
        .zip(cu_seqlens_k.windows(2))
        .map(|(qo, ko)| Sequence {
            q_start: qo[0] * q_st.seq_stride,
            k_start: ko[0] * k_st.seq_stride,
            v_start: ko[0] * v_st.seq_stride,
            out_start: 0,
            lse_start: qo[0],
            q_len: qo[1] - qo[0],
            kv_len: ko[1] - ko[0],
        })
        .collect();
    Ok((dims, sequences))
}

/// Computes `out = softmax(scale * q k^T + mask) v` for a fixed-length batch.
///
/// Grouped-query heads: query head `h` reads kv head `h / (n_heads / n_kv_heads)`.
/// A query that sees no key (fully masked, or `kv_len = 0`) gets a zero output row and
/// log-sum-exp `-inf` (or its sink logit when `params.sinks` is set), never NaN.
///
/// # Shapes
/// - `q: [batch, q_len, n_heads, head_dim]`
/// - `k, v: [batch, kv_len, n_kv_heads, head_dim]`
/// - `out: [batch, q_len, n_heads, head_dim]`, f32
/// - `lse: [batch, n_heads, q_len]`, f32, natural log of the softmax denominator
///
/// # Errors
/// [`AttendError::ShapeMismatch`] when the shapes disagree,
/// [`AttendError::ZeroDim`] for `head_dim = 0` or zero heads,
/// [`AttendError::HeadsNotDivisible`] when `n_heads % n_kv_heads != 0`,
/// [`AttendError::InvalidScale`], [`AttendError::InvalidSoftcap`],
/// [`AttendError::BufferLength`] for a wrong `lse` or `sinks` length,
/// [`AttendError::IsaUnavailable`] when `params.isa` cannot run here.
pub fn attention<T: Element>(
    q: Bshd<T>,
    k: Bshd<T>,
    v: Bshd<T>,
    params: &AttentionParams,
    out: &mut BshdMut,
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    attention_with_mods(q, k, v, params, &NoMask, &NoScoreMod, out, lse)
}

/// Computes attention for a varlen batch packed along the token axis.
///
/// Sequence `b` has queries `cu_seqlens_q[b]..cu_seqlens_q[b + 1]` and keys
/// `cu_seqlens_k[b]..cu_seqlens_k[b + 1]`; causal and window masks align each sequence
/// bottom-right on its own lengths. Empty sequences are allowed.
///
/// # Shapes
/// - `q: [total_q, n_heads, head_dim]`, `k, v: [total_k, n_kv_heads, head_dim]`
/// - `cu_seqlens_q, cu_seqlens_k: [batch + 1]`, starting at 0, non-decreasing, ending
///   at `total_q` and `total_k`
/// - `out: [total_q, n_heads, head_dim]`, f32
/// - `lse: [n_heads, total_q]`, f32
///
/// # Errors
/// As [`attention`], plus [`AttendError::InvalidOffsets`] for offsets that are empty,
/// do not start at 0, decrease or do not end at the token count.
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen<T: Element>(
    q: Packed<T>,
    k: Packed<T>,
    v: Packed<T>,
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    params: &AttentionParams,
    out: &mut PackedMut,
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    attention_varlen_with_mods(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        params,
        &NoMask,
        &NoScoreMod,
        out,
        lse,
    )
}

/// Computes attention with a user mask and score modification, on top of `params`.
///
/// Per pair, the kernel computes `s = scale * q.k`, applies `params.softcap`, then
/// `score_mod(s, batch_idx, head_idx, q_idx, kv_idx)`, and hides the pair unless both
/// the causal/window rule of `params` and `mask_mod(batch_idx, head_idx, q_idx, kv_idx)`
/// show it. Indices are positions within the sequence. Blocks are first classified
/// with [`MaskMod::classify_block`]; empty blocks are skipped and full blocks call
/// neither mask. Modified scores must be finite or negative infinity.
///
/// # Shapes
/// As [`attention`].
///
/// # Errors
/// As [`attention`].
#[allow(clippy::too_many_arguments)]
pub fn attention_with_mods<T: Element, M: MaskMod, F: ScoreMod>(
    q: Bshd<T>,
    k: Bshd<T>,
    v: Bshd<T>,
    params: &AttentionParams,
    mask_mod: &M,
    score_mod: &F,
    out: &mut BshdMut,
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    let (dims, sequences) = plan_bshd(&q, &k, &v, Some(out.shape()), params)?;
    let qs = q.shape();
    check_lse(lse.as_deref(), qs.batch * qs.heads * qs.seq_len)?;
    let (left, right) = params.effective_window();
    let window = Window::new(left, right, qs.seq_len, k.shape().seq_len);
    let out_strides = out.strides();
    let sequences: Vec<Sequence> = sequences
        .into_iter()
        .enumerate()
        .map(|(b, seq)| Sequence {
            out_start: b * out_strides.batch_stride,
            ..seq
        })
        .collect();
    let tensors = kernel::Tensors {
        q: q.data(),
        k: k.data(),
        v: v.data(),
        q_strides: q.strides(),
        k_strides: k.strides(),
        v_strides: v.strides(),
        out_strides,
        lse_head_stride: qs.seq_len,
        sinks: params.sinks,
    };
    run_masked(
        &tensors,
        dims,
        &sequences,
        params,
        &And(window, ByRef(mask_mod)),
        score_mod,
        out.data_mut(),
        lse,
    )
}

/// Computes varlen attention with a user mask and score modification.
///
/// `batch_idx` passed to the mods is the sequence index; `q_idx` and `kv_idx` count
/// from the start of that sequence.
///
/// # Shapes
/// As [`attention_varlen`].
///
/// # Errors
/// As [`attention_varlen`].
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen_with_mods<T: Element, M: MaskMod, F: ScoreMod>(
    q: Packed<T>,
    k: Packed<T>,
    v: Packed<T>,
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    params: &AttentionParams,
    mask_mod: &M,
    score_mod: &F,
    out: &mut PackedMut,
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    let (dims, sequences) = plan_varlen(&q, &k, &v, cu_seqlens_q, cu_seqlens_k, params)?;
    let mut out = out.as_bshd_mut();
    let os = out.shape();
    check_equal("out", "total_tokens", os.seq_len, q.total_tokens(), "q")?;
    check_equal("out", "heads", os.heads, dims.n_heads, "q")?;
    check_equal("out", "head_dim", os.head_dim, dims.head_dim, "q")?;
    check_lse(lse.as_deref(), dims.n_heads * q.total_tokens())?;
    let (left, right) = params.effective_window();
    let window = Window::varlen(left, right, cu_seqlens_q, cu_seqlens_k)?;
    let out_strides = out.strides();
    let sequences: Vec<Sequence> = sequences
        .into_iter()
        .zip(cu_seqlens_q)
        .map(|(seq, &start)| Sequence {
            out_start: start * out_strides.seq_stride,
            ..seq
        })
        .collect();
    let (qb, kb, vb) = (q.as_bshd(), k.as_bshd(), v.as_bshd());
    let tensors = kernel::Tensors {
        q: qb.data(),
        k: kb.data(),
        v: vb.data(),
        q_strides: qb.strides(),
        k_strides: kb.strides(),
        v_strides: vb.strides(),
        out_strides,
        lse_head_stride: q.total_tokens(),
        sinks: params.sinks,
    };
    run_masked(
        &tensors,
        dims,
        &sequences,
        params,
        &And(window, ByRef(mask_mod)),
        score_mod,
        out.data_mut(),
        lse,
    )
}

/// Adds the optional soft cap to the score modification and runs the kernel.
#[allow(clippy::too_many_arguments)]
fn run_masked<T: Element, M: MaskMod, F: ScoreMod>(
    tensors: &kernel::Tensors<T>,
    dims: Dims,
    sequences: &[Sequence],
    params: &AttentionParams,
    mask_mod: &M,
    score_mod: &F,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    let isa = params.isa.unwrap_or_else(Isa::detect);
    match params.softcap {
        Some(cap) => {
            let softcapped = Chain(Softcap::new(cap)?, ByRef(score_mod));
            kernel::run(
                isa,
                tensors,
                dims,
                sequences,
                mask_mod,
                &softcapped,
                out,
                lse,
            )
        }
        None => kernel::run(isa, tensors, dims, sequences, mask_mod, score_mod, out, lse),
    }
}

/// Borrows a mask or score modification so that it can sit inside [`And`] or [`Chain`].
struct ByRef<'a, X>(&'a X);

impl<F: ScoreMod> ScoreMod for ByRef<'_, F> {
    const IS_IDENTITY: bool = F::IS_IDENTITY;

    #[inline]
    fn apply(&self, score: f32, b: usize, h: usize, q: usize, kv: usize) -> f32 {
        self.0.apply(score, b, h, q, kv)
    }

    fn apply_f64(&self, score: f64, b: usize, h: usize, q: usize, kv: usize) -> f64 {
        self.0.apply_f64(score, b, h, q, kv)
    }
}

impl<M: MaskMod> MaskMod for ByRef<'_, M> {
    #[inline]
    fn is_visible(&self, b: usize, h: usize, q: usize, kv: usize) -> bool {
        self.0.is_visible(b, h, q, kv)
    }

    fn classify_block(
        &self,
        b: usize,
        h: usize,
        q: std::ops::Range<usize>,
        kv: std::ops::Range<usize>,
    ) -> crate::mask::BlockClass {
        self.0.classify_block(b, h, q, kv)
    }
}
