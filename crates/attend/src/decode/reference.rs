//! The float64 twin of [`super::decode`]: every score materialised, no splits.

use super::{check_decode, visible_ranges};
use crate::error::AttendError;
use crate::flash::AttentionParams;
use crate::kv::KvSeqView;
use crate::layout::Bshd;
use crate::reference::ReferenceOutput;

/// Reference for [`super::decode`], with the same position rules, computed in f64 over
/// each view dequantised to f32 ([`KvSeqView::to_dense`]).
///
/// # Shapes
/// As [`super::decode`]; the output `[batch, q_len, n_heads, head_dim]` and the
/// log-sum-exp `[batch, n_heads, q_len]` are returned, contiguous.
///
/// # Errors
/// As [`super::decode`].
pub fn decode_reference(
    q: Bshd<f32>,
    kv: &[KvSeqView],
    params: &AttentionParams,
) -> Result<ReferenceOutput, AttendError> {
    let dims = check_decode(&q, kv, params, None, None)?;
    let (n_heads, head_dim, q_len) = (dims.n_heads, dims.head_dim, dims.q_len);
    let batch = kv.len();
    let mut out = vec![0.0f64; batch * q_len * n_heads * head_dim];
    let mut lse = vec![0.0f64; batch * n_heads * q_len];
    let row_len = dims.n_kv_heads * head_dim;

    for (batch_idx, view) in kv.iter().enumerate() {
        let dense = view.to_dense();
        let visible = visible_ranges(view, &dims);
        for head_idx in 0..n_heads {
            let kv_head = head_idx / dims.group();
            let sink = params.sinks.map(|sinks| f64::from(sinks[head_idx]));
            for (q_idx, range) in visible.iter().enumerate() {
                let Some(q_row) = q.row(batch_idx, q_idx, head_idx) else {
                    continue;
                };
                let head_of = |rows: &[f32], token: usize| {
                    let start = token * row_len + kv_head * head_dim;
                    rows[start..start + head_dim].to_vec()
                };

                // Scores of the visible keys; hidden keys stay out of the softmax.
                let mut scores = Vec::new();
                for (token, &position) in dense.positions.iter().enumerate() {
                    if !range.contains(position) {
                        continue;
                    }
                    let k = head_of(&dense.k, token);
                    let dot: f64 = q_row
                        .iter()
                        .zip(&k)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    let mut score = f64::from(dims.scale) * dot;
                    if let Some(cap) = dims.softcap {
                        let cap = f64::from(cap);
                        score = cap * (score / cap).tanh();
                    }
                    scores.push((token, score));
                }

                // Softmax with the maximum subtracted; the sink only adds to the denominator.
                let max = scores
                    .iter()
                    .map(|&(_, s)| s)
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                let lse_idx = (batch_idx * n_heads + head_idx) * q_len + q_idx;
                if max == f64::NEG_INFINITY {
                    lse[lse_idx] = f64::NEG_INFINITY;
                    continue;
                }
                let denominator: f64 = scores.iter().map(|&(_, s)| (s - max).exp()).sum::<f64>()
                    + sink.map_or(0.0, |s| (s - max).exp());
                let out_start = ((batch_idx * q_len + q_idx) * n_heads + head_idx) * head_dim;
                let out_row = &mut out[out_start..out_start + head_dim];
                for &(token, score) in &scores {
                    let weight = (score - max).exp() / denominator;
                    for (o, &v) in out_row.iter_mut().zip(&head_of(&dense.v, token)) {
                        *o += weight * f64::from(v);
                    }
                }
                lse[lse_idx] = max + denominator.ln();
            }
        }
    }
    Ok(ReferenceOutput { out, lse })
}
