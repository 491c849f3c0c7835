//! The float64 oracle: attention that materialises every score and accumulates in f64.
//!
//! It is slow (O(q_len * kv_len) memory per row set, no tiling) and written for
//! obviousness; every kernel is tested against it. It validates its inputs exactly as
//! the kernels do, so it returns the same errors.

use crate::dtype::Element;
use crate::error::AttendError;
use crate::flash::{plan_bshd, plan_varlen, AttentionParams};
use crate::layout::{Bshd, Packed};
use crate::mask::{MaskMod, NoMask, NoScoreMod, ScoreMod};

/// Output of the reference: `out` and `lse` in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceOutput {
    /// `[batch, q_len, n_heads, head_dim]`, or `[total_q, n_heads, head_dim]` for varlen.
    pub out: Vec<f64>,
    /// `[batch, n_heads, q_len]`, or `[n_heads, total_q]` for varlen.
    pub lse: Vec<f64>,
}

/// Reference for [`crate::attention`].
///
/// # Shapes
/// As [`crate::attention`]; the output is returned, contiguous.
///
/// # Errors
/// As [`crate::attention`].
pub fn attention_reference<T: Element>(
    q: Bshd<T>,
    k: Bshd<T>,
    v: Bshd<T>,
    params: &AttentionParams,
) -> Result<ReferenceOutput, AttendError> {
    attention_with_mods_reference(q, k, v, params, &NoMask, &NoScoreMod)
}

/// Reference for [`crate::attention_with_mods`].
///
/// # Shapes
/// As [`crate::attention`]; the output is returned, contiguous.
///
/// # Errors
/// As [`crate::attention`].
pub fn attention_with_mods_reference<T: Element, M: MaskMod, F: ScoreMod>(
    q: Bshd<T>,
    k: Bshd<T>,
    v: Bshd<T>,
    params: &AttentionParams,
    mask_mod: &M,
    score_mod: &F,
) -> Result<ReferenceOutput, AttendError> {
    let (dims, _) = plan_bshd(&q, &k, &v, None, params)?;
    let qs = q.shape();
    let kv_len = k.shape().seq_len;
    let (n_heads, head_dim) = (dims.n_heads, dims.head_dim);
    let mut out = vec![0.0; qs.batch * qs.seq_len * n_heads * head_dim];
    let mut lse = vec![0.0; qs.batch * n_heads * qs.seq_len];
    for b in 0..qs.batch {
        for h in 0..n_heads {
            for i in 0..qs.seq_len {
                let rows = Rows {
                    q: |d: usize| q.row(b, i, h).map_or(0.0, |row| f64::from(row[d].to_f32())),
                    k: |j: usize, d: usize| {
                        k.row(b, j, h / dims.group())
                            .map_or(0.0, |row| f64::from(row[d].to_f32()))
                    },
                    v: |j: usize, d: usize| {
                        v.row(b, j, h / dims.group())
                            .map_or(0.0, |row| f64::from(row[d].to_f32()))
                    },
                };
                let position = Position {
                    batch_idx: b,
                    head_idx: h,
                    q_idx: i,
                    q_len: qs.seq_len,
                    kv_len,
                };
                let out_row =
                    &mut out[((b * qs.seq_len + i) * n_heads + h) * head_dim..][..head_dim];
                lse[(b * n_heads + h) * qs.seq_len + i] = attend_row(
                    &rows,
                    position,
                    head_dim,
                    f64::from(dims.scale),
                    params,
                    mask_mod,
                    score_mod,
                    out_row,
                );
            }
        }
    }
    Ok(ReferenceOutput { out, lse })
}

/// Reference for [`crate::attention_varlen`].
///
/// # Shapes
/// As [`crate::attention_varlen`]; the output is returned, contiguous.
///
/// # Errors
/// As [`crate::attention_varlen`].
pub fn attention_varlen_reference<T: Element>(
    q: Packed<T>,
    k: Packed<T>,
    v: Packed<T>,
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    params: &AttentionParams,
) -> Result<ReferenceOutput, AttendError> {
    attention_varlen_with_mods_reference(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        params,
        &NoMask,
        &NoScoreMod,
    )
}

/// Reference for [`crate::attention_varlen_with_mods`].
///
/// # Shapes
/// As [`crate::attention_varlen`]; the output is returned, contiguous.
///
/// # Errors
/// As [`crate::attention_varlen`].
#[allow(clippy::too_many_arguments)]
pub fn attention_varlen_with_mods_reference<T: Element, M: MaskMod, F: ScoreMod>(
    q: Packed<T>,
    k: Packed<T>,
    v: Packed<T>,
    cu_seqlens_q: &[usize],
    cu_seqlens_k: &[usize],
    params: &AttentionParams,
    mask_mod: &M,
    score_mod: &F,
) -> Result<ReferenceOutput, AttendError> {
    let (dims, _) = plan_varlen(&q, &k, &v, cu_seqlens_q, cu_seqlens_k, params)?;
    let (q, k, v) = (q.as_bshd(), k.as_bshd(), v.as_bshd());
    let total_q = q.shape().seq_len;
    let (n_heads, head_dim) = (dims.n_heads, dims.head_dim);
    let mut out = vec![0.0; total_q * n_heads * head_dim];
    let mut lse = vec![0.0; n_heads * total_q];
    for (b, (qo, ko)) in cu_seqlens_q
        .windows(2)
        .zip(cu_seqlens_k.windows(2))
        .enumerate()
    {
        let (q_len, kv_len) = (qo[1] - qo[0], ko[1] - ko[0]);
        for h in 0..n_heads {
            for i in 0..q_len {
                let kv_head = h / dims.group();
                let rows = Rows {
                    q: |d: usize| {
                        q.row(0, qo[0] + i, h)
                            .map_or(0.0, |row| f64::from(row[d].to_f32()))
                    },
                    k: |j: usize, d: usize| {
                        k.row(0, ko[0] + j, kv_head)
                            .map_or(0.0, |row| f64::from(row[d].to_f32()))
                    },
                    v: |j: usize, d: usize| {
                        v.row(0, ko[0] + j, kv_head)
                            .map_or(0.0, |row| f64::from(row[d].to_f32()))
                    },
                };
                let position = Position {
                    batch_idx: b,
                    head_idx: h,
                    q_idx: i,
                    q_len,
                    kv_len,
                };
                let token = qo[0] + i;
                let out_row = &mut out[(token * n_heads + h) * head_dim..][..head_dim];
                lse[h * total_q + token] = attend_row(
                    &rows,
                    position,
                    head_dim,
                    f64::from(dims.scale),
                    params,
                    mask_mod,
                    score_mod,
                    out_row,
                );
            }
        }
    }
    Ok(ReferenceOutput { out, lse })
}

/// Element readers for one query row and its keys and values, in f64.
struct Rows<Q, K, V> {
    q: Q,
    k: K,
    v: V,
}

#[derive(Clone, Copy)]
struct Position {
    batch_idx: usize,
    head_idx: usize,
    q_idx: usize,
    q_len: usize,
    kv_len: usize,
}

/// Computes one output row and returns its log-sum-exp.
#[allow(clippy::too_many_arguments)]
fn attend_row<Q, K, V, M, F>(
    rows: &Rows<Q, K, V>,
    at: Position,
    head_dim: usize,
    scale: f64,
    params: &AttentionParams,
    mask_mod: &M,
    score_mod: &F,
    out_row: &mut [f64],
) -> f64
where
    Q: Fn(usize) -> f64,
    K: Fn(usize, usize) -> f64,
    V: Fn(usize, usize) -> f64,
    M: MaskMod,
    F: ScoreMod,
{
    // Bottom-right alignment: the query sits at position q_idx + kv_len - q_len.
    let position = at.q_idx as i64 + at.kv_len as i64 - at.q_len as i64;
    let (left, right) = params.window;
    let right = if params.causal { Some(0) } else { right };

    // Scores of the visible keys; hidden keys are left out of the softmax entirely.
    let mut scores: Vec<(usize, f64)> = Vec::with_capacity(at.kv_len);
    for j in 0..at.kv_len {
        let key = j as i64;
        let in_window = left.is_none_or(|left| key >= position - left as i64)
            && right.is_none_or(|right| key <= position + right as i64);
        if !in_window || !mask_mod.is_visible(at.batch_idx, at.head_idx, at.q_idx, j) {
            continue;
        }
        let mut score = scale
            * (0..head_dim)
                .map(|d| (rows.q)(d) * (rows.k)(j, d))
                .sum::<f64>();
        if let Some(cap) = params.softcap {
            let cap = f64::from(cap);
            score = cap * (score / cap).tanh();
        }
        score = score_mod.apply_f64(score, at.batch_idx, at.head_idx, at.q_idx, j);
        scores.push((j, score));
    }
    let sink = params
        .sinks
        .and_then(|sinks| sinks.get(at.head_idx))
        .map(|&s| f64::from(s));

    // Softmax with the maximum subtracted; the sink only adds to the denominator.
    let max = scores
        .iter()
        .map(|&(_, s)| s)
        .chain(sink)
        .fold(f64::NEG_INFINITY, f64::max);
    out_row.fill(0.0);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let denominator: f64 = scores.iter().map(|&(_, s)| (s - max).exp()).sum::<f64>()
        + sink.map_or(0.0, |s| (s - max).exp());
    for &(j, s) in &scores {
        let weight = (s - max).exp() / denominator;
        for (d, out) in out_row.iter_mut().enumerate() {
            *out += weight * (rows.v)(j, d);
        }
    }
    max + denominator.ln()
}
