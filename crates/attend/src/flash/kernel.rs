//! The tile loop of the FlashAttention-2 forward pass.
//!
//! For one block of queries `Q_i` and each visible block of keys `K_j, V_j`:
//!
//! ```text
//! S    = scale * Q_i K_j^T, then softcap / score_mod, then the mask (-inf)
//! m'   = max(m, rowmax(S))                  running row maximum
//! P    = exp(S - m')                        unnormalised probabilities
//! l'   = l * exp(m - m') + rowsum(P)        running softmax denominator
//! O'   = O * exp(m - m') + P V_j            running unnormalised output
//! ```
//!
//! and at the end `out = O / l`, `lse = m + ln(l)`. The invariant after each key block
//! is `O = sum_k exp(s_k - m) v_k` and `l = sum_k exp(s_k - m)` over the keys seen.

use rayon::prelude::*;

use super::{Dims, Sequence, BLOCK_KV, BLOCK_Q};
use crate::dtype::Element;
use crate::error::AttendError;
use crate::layout::BshdStrides;
use crate::mask::{BlockClass, MaskMod, ScoreMod};
use crate::simd::{self, Isa, Simd, SimdOp};

/// The input slices and strides of one call.
pub(crate) struct Tensors<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub q_strides: BshdStrides,
    pub k_strides: BshdStrides,
    pub v_strides: BshdStrides,
    pub out_strides: BshdStrides,
    /// Distance in elements between the log-sum-exp rows of two heads.
    pub lse_head_stride: usize,
    pub sinks: Option<&'a [f32]>,
}

/// A raw pointer that tasks may share because each writes only its own elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: tasks write disjoint elements through the pointer (see `write_rows`), and the
// caller holds the unique borrow of the buffer until every task has finished.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// Per-thread buffers, sized for one tile; independent of the sequence lengths.
struct Scratch {
    /// `[BLOCK_Q, head_dim]` queries as f32.
    q: Vec<f32>,
    /// `[head_dim, BLOCK_KV]` keys, transposed and zero-padded.
    kt: Vec<f32>,
    /// `[BLOCK_KV, head_dim]` values as f32.
    v: Vec<f32>,
    /// `[BLOCK_Q, BLOCK_KV]` scores, then probabilities.
    s: Vec<f32>,
    /// `[BLOCK_Q, head_dim]` unnormalised output.
    o: Vec<f32>,
    /// `[head_dim]` one converted key row.
    row: Vec<f32>,
    /// `[BLOCK_Q]` running row maximum.
    m: Vec<f32>,
    /// `[BLOCK_Q]` running softmax denominator.
    l: Vec<f32>,
}

impl Scratch {
    fn new(head_dim: usize) -> Self {
        Self {
            q: vec![0.0; BLOCK_Q * head_dim],
            kt: vec![0.0; head_dim * BLOCK_KV],
            v: vec![0.0; BLOCK_KV * head_dim],
            s: vec![0.0; BLOCK_Q * BLOCK_KV],
            o: vec![0.0; BLOCK_Q * head_dim],
            row: vec![0.0; head_dim],
            m: vec![f32::NEG_INFINITY; BLOCK_Q],
            l: vec![0.0; BLOCK_Q],
        }
    }
}

/// One call, ready to run on any instruction set.
struct Call<'a, T, M, F> {
    tensors: &'a Tensors<'a, T>,
    dims: Dims,
    sequences: &'a [Sequence],
    mask_mod: &'a M,
    score_mod: &'a F,
    out: SharedOut,
    lse: Option<SharedOut>,
}

impl<T: Element, M: MaskMod, F: ScoreMod> SimdOp for Call<'_, T, M, F> {
    type Output = ();

    fn run<S: Simd>(self, simd: S) {
        run_tasks(simd, &self);
    }
}

/// Runs all tasks of a validated call on `isa`.
///
/// The caller has checked that `out` covers every output element the sequences address
/// with `tensors.out_strides`, that those elements are distinct, and that `lse` (when
/// given) covers every `lse_start + head_idx * lse_head_stride + q_idx`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<T: Element, M: MaskMod, F: ScoreMod>(
    isa: Isa,
    tensors: &Tensors<T>,
    dims: Dims,
    sequences: &[Sequence],
    mask_mod: &M,
    score_mod: &F,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<(), AttendError> {
    let call = Call {
        tensors,
        dims,
        sequences,
        mask_mod,
        score_mod,
        out: SharedOut(out.as_mut_ptr()),
        lse: lse.map(|lse| SharedOut(lse.as_mut_ptr())),
    };
    simd::dispatch(isa, call)
}

fn run_tasks<S: Simd, T: Element, M: MaskMod, F: ScoreMod>(simd: S, call: &Call<T, M, F>) {
    // Task `t` of sequence `b` is `first_task[b] + head_idx * q_blocks + q_block_idx`.
    // The split depends only on BLOCK_Q, never on the number of threads.
    let mut first_task = Vec::with_capacity(call.sequences.len());
    let mut total = 0usize;
    for seq in call.sequences {
        first_task.push(total);
        total += call.dims.n_heads * seq.q_len.div_ceil(BLOCK_Q);
    }
    let head_dim = call.dims.head_dim;
    (0..total).into_par_iter().for_each_init(
        || Scratch::new(head_dim),
        |scratch, task| {
            // `first_task[0] = 0 <= task`, so the partition point is at least 1.
            let batch_idx = first_task.partition_point(|&first| first <= task) - 1;
            let seq = &call.sequences[batch_idx];
            let local = task - first_task[batch_idx];
            let q_blocks = seq.q_len.div_ceil(BLOCK_Q);
            let block = QueryBlock {
                batch_idx,
                head_idx: local / q_blocks,
                q_start: (local % q_blocks) * BLOCK_Q,
            };
            process_block(simd, call, seq, block, scratch);
        },
    );
}

/// The queries one task computes: `BLOCK_Q` (or fewer, at the end) rows of one head.
#[derive(Clone, Copy)]
struct QueryBlock {
    batch_idx: usize,
    head_idx: usize,
    q_start: usize,
}

fn process_block<S: Simd, T: Element, M: MaskMod, F: ScoreMod>(
    simd: S,
    call: &Call<T, M, F>,
    seq: &Sequence,
    block: QueryBlock,
    scratch: &mut Scratch,
) {
    let t = call.tensors;
    let head_dim = call.dims.head_dim;
    let QueryBlock {
        batch_idx,
        head_idx,
        q_start,
    } = block;
    let rows = BLOCK_Q.min(seq.q_len - q_start);
    let kv_head_idx = head_idx / call.dims.group();
    let q_range = q_start..q_start + rows;

    // Load the query rows as f32.
    for row in 0..rows {
        let start = seq.q_start
            + (q_start + row) * t.q_strides.seq_stride
            + head_idx * t.q_strides.head_stride;
        T::convert_to_f32(
            &t.q[start..start + head_dim],
            &mut scratch.q[row * head_dim..][..head_dim],
        );
    }
    scratch.o[..rows * head_dim].fill(0.0);
    scratch.m[..rows].fill(f32::NEG_INFINITY);
    scratch.l[..rows].fill(0.0);

    for kv_start in (0..seq.kv_len).step_by(BLOCK_KV) {
        let cols = BLOCK_KV.min(seq.kv_len - kv_start);
        let kv_range = kv_start..kv_start + cols;
        let class = call
            .mask_mod
            .classify_block(batch_idx, head_idx, q_range.clone(), kv_range);
        if class == BlockClass::Empty {
            continue;
        }

        // Pack the keys transposed, `kt[d][j]`, zero-padded to BLOCK_KV columns.
        let k_base =
            seq.k_start + kv_start * t.k_strides.seq_stride + kv_head_idx * t.k_strides.head_stride;
        for col in 0..cols {
            let start = k_base + col * t.k_strides.seq_stride;
            T::convert_to_f32(&t.k[start..start + head_dim], &mut scratch.row);
            for (d, &value) in scratch.row.iter().enumerate() {
                scratch.kt[d * BLOCK_KV + col] = value;
            }
        }
        if cols < BLOCK_KV {
            for d in 0..head_dim {
                scratch.kt[d * BLOCK_KV + cols..(d + 1) * BLOCK_KV].fill(0.0);
            }
        }

        // Scores S = scale * Q K^T.
        let s = &mut scratch.s[..rows * BLOCK_KV];
        simd.qk_tile(
            &scratch.q[..rows * head_dim],
            &scratch.kt,
            call.dims.scale,
            head_dim,
            s,
        );

        // Score modification, mask and padding columns. Hidden pairs become -inf.
        for (row, s_row) in s.chunks_exact_mut(BLOCK_KV).enumerate() {
            let q_idx = q_start + row;
            if !F::IS_IDENTITY {
                for (col, score) in s_row[..cols].iter_mut().enumerate() {
                    *score =
                        call.score_mod
                            .apply(*score, batch_idx, head_idx, q_idx, kv_start + col);
                }
            }
            if class == BlockClass::Partial {
                for (col, score) in s_row[..cols].iter_mut().enumerate() {
                    if !call
                        .mask_mod
                        .is_visible(batch_idx, head_idx, q_idx, kv_start + col)
                    {
                        *score = f32::NEG_INFINITY;
                    }
                }
            }
            s_row[cols..].fill(f32::NEG_INFINITY);
        }

        // Online softmax: update m and l, turn scores into probabilities, rescale O.
        for (row, s_row) in s.chunks_exact_mut(BLOCK_KV).enumerate() {
            let s_row = &mut s_row[..cols];
            let m_old = scratch.m[row];
            let m_new = m_old.max(simd.max(s_row));
            if m_new == f32::NEG_INFINITY {
                // Nothing visible to this row yet: exp(s - m_new) would be NaN, and the
                // row's probabilities are all zero.
                s_row.fill(0.0);
                continue;
            }
            // exp(-inf) = 0 when this is the first visible block of the row.
            let correction = (m_old - m_new).exp();
            let row_sum = simd.exp_sub_sum(s_row, m_new);
            scratch.l[row] = scratch.l[row] * correction + row_sum;
            scratch.m[row] = m_new;
            if correction != 1.0 {
                simd.scale(correction, &mut scratch.o[row * head_dim..][..head_dim]);
            }
        }

        // Pack the values as f32 rows and accumulate O += P V.
        let v_base =
            seq.v_start + kv_start * t.v_strides.seq_stride + kv_head_idx * t.v_strides.head_stride;
        for col in 0..cols {
            let start = v_base + col * t.v_strides.seq_stride;
            T::convert_to_f32(
                &t.v[start..start + head_dim],
                &mut scratch.v[col * head_dim..][..head_dim],
            );
        }
        simd.pv_tile(
            s,
            &scratch.v[..cols * head_dim],
            cols,
            head_dim,
            &mut scratch.o[..rows * head_dim],
        );
    }

    write_rows(call, seq, block, rows, scratch);
}

/// Normalises the output rows of a block, adds the sink, and writes out and lse.
fn write_rows<T: Element, M: MaskMod, F: ScoreMod>(
    call: &Call<T, M, F>,
    seq: &Sequence,
    block: QueryBlock,
    rows: usize,
    scratch: &Scratch,
) {
    let t = call.tensors;
    let head_dim = call.dims.head_dim;
    let sink = t.sinks.and_then(|sinks| sinks.get(block.head_idx).copied());
    for row in 0..rows {
        let (m, l) = (scratch.m[row], scratch.l[row]);
        let (out_scale, lse) = match sink {
            Some(sink) => {
                // The sink joins the denominator: l' = l * exp(m - m') + exp(sink - m').
                let m_final = m.max(sink);
                if m_final == f32::NEG_INFINITY {
                    (0.0, f32::NEG_INFINITY)
                } else {
                    let l_final = l * (m - m_final).exp() + (sink - m_final).exp();
                    ((m - m_final).exp() / l_final, m_final + l_final.ln())
                }
            }
            // A fully masked row: zeros and -inf rather than 0 / 0.
            None if l == 0.0 => (0.0, f32::NEG_INFINITY),
            None => (1.0 / l, m + l.ln()),
        };

        let q_idx = block.q_start + row;
        let out_start = seq.out_start
            + q_idx * t.out_strides.seq_stride
            + block.head_idx * t.out_strides.head_stride;
        let o_row = &scratch.o[row * head_dim..][..head_dim];
        for (d, &value) in o_row.iter().enumerate() {
            // SAFETY: the caller validated that `out` covers this element, and the
            // output strides nest without overlap, so no other task writes it:
            // tasks differ in (sequence, head, query block).
            unsafe { *call.out.0.add(out_start + d) = value * out_scale };
        }
        if let Some(lse_out) = call.lse {
            let index = seq.lse_start + block.head_idx * t.lse_head_stride + q_idx;
            // SAFETY: the caller validated the lse length; the index is unique to
            // (sequence, head, query).
            unsafe { *lse_out.0.add(index) = lse };
        }
    }
}
