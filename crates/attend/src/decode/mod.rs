//! Split-KV decoding (Flash-Decoding): a few new queries against cached keys and values.
//!
//! [`decode`] attends `q_len` query tokens of each sequence of a batch to that sequence's
//! cached tokens, given as a [`KvSeqView`] of any cache kind and storage dtype. Int8 rows
//! are dequantised on the fly with their per-token, per-head scales.
//!
//! Each sequence's cached tokens are cut into splits of [`SPLIT_TOKENS`] tokens, and every
//! (sequence, split) pair is one rayon task. A task walks its tokens in tiles of at most
//! [`TILE_TOKENS`] and keeps an online softmax per query row:
//!
//! ```text
//! m'   = max(m, max_j s_j)                      running maximum of the scores
//! l'   = l * exp(m - m') + sum_j exp(s_j - m')  denominator
//! acc' = acc * exp(m - m') + sum_j exp(s_j - m') * v_j
//! ```
//!
//! Within a tile, f32, f16 and bf16 K rows are read in place (16-bit rows widened as the
//! products load them), and int8 rows are converted to f32 once, front to back. Each kv
//! head's rows are then scored against all query rows of its group with
//! [`Simd::qk_rows`], and the V rows go the same way into [`Simd::pv_rows`]. Both walk
//! the tile in sub-blocks of 16 tokens that visit every kv head before moving on, so
//! memory is read nearly in order, and each call prefetches a share of the rows 32
//! tokens ahead. The splits of a sequence are then merged in split order through their
//! log-sum-exp, so the result depends on the split size (a constant) and not on the
//! number of threads: it is bitwise identical for any thread count.
//!
//! Masks are measured in positions, not in indices, so rolling caches after wrap-around
//! and attention-sink tokens see the right keys; see [`decode`]. [`decode_reference`] is
//! the float64 twin that the tests compare against.

mod reference;
mod task;

use rayon::prelude::*;

use crate::error::AttendError;
use crate::flash::AttentionParams;
use crate::kv::KvSeqView;
use crate::layout::{Bshd, BshdMut};
use crate::mask::Softcap;
use crate::simd::{self, Isa, Simd, SimdOp};

pub use reference::decode_reference;

use task::{Partial, SeqPlan};

/// Cached tokens per split-KV task. A constant, so that results do not depend on threads.
pub const SPLIT_TOKENS: usize = 256;

/// Cached tokens scored per online-softmax step inside a task.
pub const TILE_TOKENS: usize = simd::TILE_KV;

/// Sizes and options of a validated decode call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub q_len: usize,
    pub scale: f32,
    pub softcap: Option<f32>,
    /// Window `(left, right)` in positions, with causal folded in as `right = 0`.
    pub window: (Option<usize>, Option<usize>),
}

impl Dims {
    /// Returns `n_heads / n_kv_heads`: query head `h` reads kv head `h / group`.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Returns the query rows of one sequence, `n_heads * q_len`; row
    /// `r = head_idx * q_len + q_idx`, so the rows of kv head `g` are contiguous.
    pub fn rows(&self) -> usize {
        self.n_heads * self.q_len
    }
}

/// Positions `lo..=hi` of the keys one query may see, as i64 so that windows reaching
/// below 0 or above `u32::MAX` need no special case.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VisibleRange {
    pub lo: i64,
    pub hi: i64,
}

impl VisibleRange {
    #[inline]
    pub fn contains(&self, position: u32) -> bool {
        let p = i64::from(position);
        self.lo <= p && p <= self.hi
    }
}

/// Computes attention of a few new queries per sequence against each sequence's cache.
///
/// Sequence `b` attends its query rows `q[b]` to the cached tokens of `kv[b]`; the
/// sequences may have different lengths. Query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)`.
///
/// Positions: query `i` of a sequence with `kv_len` cached tokens is aligned bottom-right
/// as in the tiled kernel: it takes the position of cached token `i + kv_len - q_len`, so
/// the new tokens are expected to be in the cache already. A query with
/// `i + kv_len < q_len` sits `q_len - kv_len - i` positions before the first cached token.
/// With `params.causal`, a query at position `p` sees cached keys at positions `<= p`;
/// `params.window = (left, right)` keeps keys at positions `p - left ..= p + right`.
/// Because the mask compares cached positions, a rolling cache after wrap-around and its
/// sink tokens are handled exactly.
///
/// A query that sees no key (an empty cache, or every key masked) gets a zero output row
/// and log-sum-exp `-inf`, or the head's sink logit when `params.sinks` is set.
///
/// Extra memory: one partial output of `n_heads * q_len * head_dim` f32 per split of
/// [`SPLIT_TOKENS`] cached tokens (for one query and f32 storage with GQA 32/8 heads,
/// 0.8% of the K/V bytes read), and for bf16 and int8 storage per running task a tile
/// of `n_kv_heads * TILE_TOKENS * head_dim` f32 values, all freed before returning.
///
/// # Shapes
/// - `q: [batch, q_len, n_heads, head_dim]`, f32
/// - `kv: [batch]` views, each `[kv_len_b, n_kv_heads, head_dim]` in any storage dtype
/// - `out: [batch, q_len, n_heads, head_dim]`, f32
/// - `lse: [batch, n_heads, q_len]`, f32, natural log of the softmax denominator
///
/// # Errors
/// [`AttendError::ShapeMismatch`] when `kv.len()` differs from the batch, a view's
/// `head_dim` differs from `q`'s, a view's `n_kv_heads` differs from `kv[0]`'s, or `out`
/// differs from `q`; [`AttendError::ZeroDim`] for zero heads or `head_dim = 0`;
/// [`AttendError::HeadsNotDivisible`]; [`AttendError::InvalidScale`];
/// [`AttendError::InvalidSoftcap`]; [`AttendError::BufferLength`] for a wrong `lse` or
/// `sinks` length; [`AttendError::IsaUnavailable`] when `params.isa` cannot run here.
pub fn decode(
    q: Bshd<f32>,
    kv: &[KvSeqView],
    params: &AttentionParams,
    out: &mut BshdMut,
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    let dims = check_decode(&q, kv, params, Some(out.shape()), lse.as_deref())?;
    if q.shape().element_count() == Some(0) {
        return Ok(());
    }
    let isa = params.isa.unwrap_or_else(Isa::detect);
    let op = DecodeOp {
        q,
        kv,
        dims,
        sinks: params.sinks,
        out,
        lse,
    };
    simd::dispatch(isa, op)
}

/// Validates a decode call and returns its sizes.
pub(crate) fn check_decode(
    q: &Bshd<f32>,
    kv: &[KvSeqView],
    params: &AttentionParams,
    out_shape: Option<crate::layout::BshdShape>,
    lse: Option<&[f32]>,
) -> Result<Dims, AttendError> {
    let shape = q.shape();
    for (dim, value) in [("heads", shape.heads), ("head_dim", shape.head_dim)] {
        if value == 0 {
            return Err(AttendError::ZeroDim { tensor: "q", dim });
        }
    }
    check_equal("kv", "batch", kv.len(), shape.batch, "q")?;
    let n_kv_heads = kv
        .first()
        .map_or(shape.heads, |view| view.config().n_kv_heads);
    for view in kv {
        let config = view.config();
        check_equal("kv", "head_dim", config.head_dim, shape.head_dim, "q")?;
        check_equal("kv", "n_kv_heads", config.n_kv_heads, n_kv_heads, "kv[0]")?;
    }
    if n_kv_heads == 0 || !shape.heads.is_multiple_of(n_kv_heads) {
        return Err(AttendError::HeadsNotDivisible {
            n_heads: shape.heads,
            n_kv_heads,
        });
    }
    if let Some(os) = out_shape {
        check_equal("out", "batch", os.batch, shape.batch, "q")?;
        check_equal("out", "seq_len", os.seq_len, shape.seq_len, "q")?;
        check_equal("out", "heads", os.heads, shape.heads, "q")?;
        check_equal("out", "head_dim", os.head_dim, shape.head_dim, "q")?;
    }
    check_length("lse", lse, shape.batch * shape.heads * shape.seq_len)?;
    check_length("sinks", params.sinks, shape.heads)?;

    let scale = params.scale.unwrap_or(1.0 / (shape.head_dim as f32).sqrt());
    if !scale.is_finite() || scale == 0.0 {
        return Err(AttendError::InvalidScale { scale });
    }
    if let Some(cap) = params.softcap {
        Softcap::new(cap)?;
    }
    if let Some(isa) = params.isa {
        if !isa.is_available() {
            return Err(AttendError::IsaUnavailable { isa });
        }
    }
    let (left, right) = params.window;
    let right = if params.causal { Some(0) } else { right };
    Ok(Dims {
        n_heads: shape.heads,
        n_kv_heads,
        head_dim: shape.head_dim,
        q_len: shape.seq_len,
        scale,
        softcap: params.softcap,
        window: (left, right),
    })
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

fn check_length(
    buffer: &'static str,
    values: Option<&[f32]>,
    expected: usize,
) -> Result<(), AttendError> {
    match values {
        Some(values) if values.len() != expected => Err(AttendError::BufferLength {
            buffer,
            found: values.len(),
            expected,
        }),
        _ => Ok(()),
    }
}

/// Returns the key positions visible to each query of a sequence, `[q_len]`.
pub(crate) fn visible_ranges(view: &KvSeqView, dims: &Dims) -> Vec<VisibleRange> {
    let kv_len = view.len();
    let q_len = dims.q_len;

    // Positions of the cached tokens the queries align with: the last q_len tokens.
    let mut aligned: Vec<i64> = view
        .chunks_in(kv_len.saturating_sub(q_len), kv_len)
        .flat_map(|chunk| chunk.positions.iter().map(|&p| i64::from(p)))
        .collect();

    // Queries without a cached token of their own sit 1, 2, ... positions before the
    // first cached token (before position 0 for an empty cache).
    let first = aligned.first().copied().unwrap_or(0);
    let missing = q_len - aligned.len();
    let before = (0..missing).map(|i| first - (missing - i) as i64);
    aligned.splice(0..0, before);

    // Window sizes above i64::MAX (such as usize::MAX for "unbounded") saturate.
    let to_i64 = |size: usize| i64::try_from(size).unwrap_or(i64::MAX);
    let (left, right) = dims.window;
    aligned
        .into_iter()
        .map(|p| VisibleRange {
            lo: left.map_or(i64::MIN, |left| p.saturating_sub(to_i64(left))),
            hi: right.map_or(i64::MAX, |right| p.saturating_add(to_i64(right))),
        })
        .collect()
}

struct DecodeOp<'a, 'o> {
    q: Bshd<'a, f32>,
    kv: &'a [KvSeqView<'a>],
    dims: Dims,
    sinks: Option<&'a [f32]>,
    out: &'a mut BshdMut<'o>,
    lse: Option<&'a mut [f32]>,
}

impl SimdOp for DecodeOp<'_, '_> {
    type Output = ();

    fn run<S: Simd>(self, simd: S) {
        let dims = self.dims;
        let plans: Vec<SeqPlan> = self
            .kv
            .iter()
            .enumerate()
            .map(|(batch_idx, view)| SeqPlan::new(view, &self.q, batch_idx, &dims))
            .collect();

        // One task per (sequence, split), in sequence order, then split order.
        let tasks: Vec<(usize, usize)> = plans
            .iter()
            .enumerate()
            .flat_map(|(batch_idx, plan)| {
                (0..plan.kv_len.div_ceil(SPLIT_TOKENS)).map(move |split| (batch_idx, split))
            })
            .collect();
        let partials: Vec<Partial> = tasks
            .par_iter()
            .map(|&(batch_idx, split)| {
                let plan = &plans[batch_idx];
                let start = split * SPLIT_TOKENS;
                let end = (start + SPLIT_TOKENS).min(plan.kv_len);
                task::run_split(simd, &dims, plan, start, end)
            })
            .collect();

        let mut lse = self.lse;
        let mut first_task = 0;
        for (batch_idx, plan) in plans.iter().enumerate() {
            let n_splits = plan.kv_len.div_ceil(SPLIT_TOKENS);
            let lse_rows = lse
                .as_deref_mut()
                .map(|lse| &mut lse[batch_idx * dims.rows()..(batch_idx + 1) * dims.rows()]);
            merge_splits(
                simd,
                &dims,
                &partials[first_task..first_task + n_splits],
                self.sinks,
                batch_idx,
                self.out,
                lse_rows,
            );
            first_task += n_splits;
        }
    }
}

/// Merges the splits of one sequence in split order and writes its output rows and
/// log-sum-exp: `lse = M + ln(sum_s l_s * exp(m_s - M))` with `M = max_s m_s`, and
/// `out = sum_s acc_s * exp(m_s - M) / exp(lse - M)`. A sink joins as a split with
/// `m = sink`, `l = 1` and no output.
fn merge_splits<S: Simd>(
    simd: S,
    dims: &Dims,
    partials: &[Partial],
    sinks: Option<&[f32]>,
    batch_idx: usize,
    out: &mut BshdMut,
    mut lse: Option<&mut [f32]>,
) {
    let head_dim = dims.head_dim;
    let strides = out.strides();
    let data = out.data_mut();
    for head_idx in 0..dims.n_heads {
        let sink = sinks.map(|sinks| sinks[head_idx]);
        for q_idx in 0..dims.q_len {
            let row = head_idx * dims.q_len + q_idx;
            let start = batch_idx * strides.batch_stride
                + q_idx * strides.seq_stride
                + head_idx * strides.head_stride;
            let out_row = &mut data[start..start + head_dim];
            out_row.fill(0.0);

            let m_max = partials
                .iter()
                .map(|partial| partial.m[row])
                .chain(sink)
                .fold(f32::NEG_INFINITY, f32::max);
            // Nothing visible and no sink: zeros and -inf, never exp(-inf - -inf) = NaN.
            if m_max == f32::NEG_INFINITY {
                if let Some(lse) = lse.as_deref_mut() {
                    lse[row] = f32::NEG_INFINITY;
                }
                continue;
            }

            let mut denominator = 0.0f32;
            for partial in partials {
                // A split in which this row saw no key adds nothing (and would give
                // 0 * -inf style products if it were weighted).
                if partial.m[row] == f32::NEG_INFINITY {
                    continue;
                }
                let weight = (partial.m[row] - m_max).exp();
                denominator += partial.l[row] * weight;
                let acc = &partial.acc[row * head_dim..(row + 1) * head_dim];
                simd.axpy(weight, acc, out_row);
            }
            if let Some(sink) = sink {
                denominator += (sink - m_max).exp();
            }
            simd.scale(1.0 / denominator, out_row);
            if let Some(lse) = lse.as_deref_mut() {
                lse[row] = m_max + denominator.ln();
            }
        }
    }
}
