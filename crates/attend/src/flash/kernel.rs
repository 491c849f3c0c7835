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
//!
//! With bf16 storage on a CPU with bf16 dot products, both block products run on them:
//! `Q_i K_j^T` from bf16 pairs, and `P V_j` with `P` rounded to bf16 and `V_j` repacked
//! into key pairs for each block. `l` sums the unrounded `P`, so the output moves by at
//! most `2^-8 * max |v|` against f32 arithmetic; `m`, `l` and `lse` stay f32.

use half::bf16;
use rayon::prelude::*;

use super::{Dims, Sequence, BLOCK_KV, BLOCK_Q};
use crate::dtype::Element;
use crate::error::AttendError;
use crate::layout::BshdStrides;
use crate::mask::{BlockClass, MaskMod, ScoreMod};
use crate::simd::{self, Isa, Rows, Simd, SimdOp};

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
// caller keeps the unique borrow of the buffer until every task has finished.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

/// Per-thread buffers, sized for one tile; independent of the sequence lengths.
struct Scratch {
    /// `[head_dim, BLOCK_Q]` queries as f32, transposed and zero-padded.
    qt: Vec<f32>,
    /// `[ceil(head_dim / 2), BLOCK_Q, 2]` bf16 queries in pairs along head_dim, for
    /// bf16 dot-product instructions (empty unless they run).
    qp: Vec<bf16>,
    /// `[BLOCK_KV / 2, head_dim, 2]` bf16 values in pairs of keys, for bf16 dot-product
    /// instructions (empty unless they run).
    vp: Vec<bf16>,
    /// `[head_dim]` one converted query row.
    row: Vec<f32>,
    /// `[BLOCK_KV, head_dim]` keys converted to f32 (empty for f32 storage and for
    /// bf16 dot products).
    k: Vec<f32>,
    /// `[BLOCK_KV, head_dim]` values converted to f32 (empty as `k`).
    v: Vec<f32>,
    /// `[BLOCK_KV, BLOCK_Q]` transposed scores, then probabilities.
    st: Vec<f32>,
    /// `[BLOCK_Q, head_dim]` unnormalised output.
    o: Vec<f32>,
    /// `[BLOCK_Q]` running maximum per query.
    m: Vec<f32>,
    /// `[BLOCK_Q]` running softmax denominator per query.
    l: Vec<f32>,
    /// `[BLOCK_Q]` factor `exp(m_old - m_new)` of the last step.
    correction: Vec<f32>,
}

impl Scratch {
    /// Allocates the buffers for `head_dim`. `bf16_dot` is true when the bf16
    /// dot-product tiles run (see [`uses_bf16_dot`]).
    fn new<T: Element>(head_dim: usize, bf16_dot: bool) -> Self {
        let converted_len = if T::as_f32_slice(&[]).is_some() || bf16_dot {
            0
        } else {
            BLOCK_KV * head_dim
        };
        let (q_pairs_len, v_pairs_len) = if bf16_dot {
            (
                head_dim.div_ceil(2) * 2 * BLOCK_Q,
                BLOCK_KV.div_ceil(2) * 2 * head_dim,
            )
        } else {
            (0, 0)
        };
        Self {
            qt: vec![0.0; head_dim * BLOCK_Q],
            qp: vec![bf16::ZERO; q_pairs_len],
            vp: vec![bf16::ZERO; v_pairs_len],
            row: vec![0.0; head_dim],
            k: vec![0.0; converted_len],
            v: vec![0.0; converted_len],
            st: vec![0.0; BLOCK_KV * BLOCK_Q],
            o: vec![0.0; BLOCK_Q * head_dim],
            m: vec![f32::NEG_INFINITY; BLOCK_Q],
            l: vec![0.0; BLOCK_Q],
            correction: vec![0.0; BLOCK_Q],
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
    let bf16_dot = uses_bf16_dot::<S, T>(simd);
    (0..total).into_par_iter().for_each_init(
        || Scratch::new::<T>(head_dim, bf16_dot),
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

/// Returns true when bf16 inputs run on the bf16 dot-product tiles: q, k and v are
/// stored as bf16 and `simd` has native bf16 dot products. Everything else widens the
/// inputs to f32.
fn uses_bf16_dot<S: Simd, T: Element>(simd: S) -> bool {
    simd.has_bf16_dot() && T::as_bf16_slice(&[]).is_some()
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
    let Scratch {
        qt,
        qp,
        vp,
        row: q_row,
        k: k_converted,
        v: v_converted,
        st,
        o,
        m,
        l,
        correction,
    } = scratch;
    let bf16_dot = uses_bf16_dot::<S, T>(simd);

    // Load the queries transposed, qt[d][i] (or in bf16 pairs, qp[d / 2][i][d % 2]),
    // zero-padded to BLOCK_Q queries and, for the pairs, an even head_dim.
    if rows < BLOCK_Q {
        qt.fill(0.0);
        qp.fill(bf16::ZERO);
    }
    for row in 0..rows {
        let start = seq.q_start
            + (q_start + row) * t.q_strides.seq_stride
            + head_idx * t.q_strides.head_stride;
        let q_values = &t.q[start..start + head_dim];
        match T::as_bf16_slice(q_values) {
            Some(q_bf16) if bf16_dot => {
                for (d, &value) in q_bf16.iter().enumerate() {
                    qp[(d / 2) * 2 * BLOCK_Q + 2 * row + d % 2] = value;
                }
            }
            _ => {
                T::convert_to_f32(q_values, q_row);
                for (d, &value) in q_row.iter().enumerate() {
                    qt[d * BLOCK_Q + row] = value;
                }
            }
        }
    }
    o[..rows * head_dim].fill(0.0);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);

    for kv_start in (0..seq.kv_len).step_by(BLOCK_KV) {
        let cols = BLOCK_KV.min(seq.kv_len - kv_start);
        let kv_range = kv_start..kv_start + cols;
        let class = call
            .mask_mod
            .classify_block(batch_idx, head_idx, q_range.clone(), kv_range);
        if class == BlockClass::Empty {
            continue;
        }

        // Transposed scores St = scale * K Q^T, reading f32 keys in place.
        let k_base =
            seq.k_start + kv_start * t.k_strides.seq_stride + kv_head_idx * t.k_strides.head_stride;
        let st = &mut st[..cols * BLOCK_Q];
        match T::as_bf16_slice(&t.k[k_base..]) {
            Some(k_bf16) if bf16_dot => {
                simd.qk_tile_bf16(
                    qp,
                    k_bf16,
                    t.k_strides.seq_stride,
                    cols,
                    head_dim,
                    call.dims.scale,
                    st,
                );
            }
            _ => {
                let k_stride = t.k_strides.seq_stride;
                let (k_rows, k_row_stride) =
                    rows_as_f32(&t.k[k_base..], k_stride, cols, head_dim, k_converted);
                simd.qk_tile(
                    qt,
                    k_rows,
                    k_row_stride,
                    cols,
                    head_dim,
                    call.dims.scale,
                    st,
                );
            }
        }

        // Score modification and mask. Hidden pairs become -inf.
        if !F::IS_IDENTITY || class == BlockClass::Partial {
            for (col, st_row) in st.chunks_exact_mut(BLOCK_Q).enumerate() {
                let kv_idx = kv_start + col;
                for (row, score) in st_row[..rows].iter_mut().enumerate() {
                    let q_idx = q_start + row;
                    if !F::IS_IDENTITY {
                        *score = call
                            .score_mod
                            .apply(*score, batch_idx, head_idx, q_idx, kv_idx);
                    }
                    if class == BlockClass::Partial
                        && !call.mask_mod.is_visible(batch_idx, head_idx, q_idx, kv_idx)
                    {
                        *score = f32::NEG_INFINITY;
                    }
                }
            }
        }

        // Online softmax over this key block, then rescale the rows whose maximum grew.
        simd.softmax_tile(st, cols, m, l, correction);
        for (row, &factor) in correction[..rows].iter().enumerate() {
            if factor != 1.0 {
                simd.scale(factor, &mut o[row * head_dim..][..head_dim]);
            }
        }

        // O += P V: with bf16 dot products, P rounded to bf16 times the values packed
        // in key pairs; otherwise in f32, reading f32 values in place.
        let v_base =
            seq.v_start + kv_start * t.v_strides.seq_stride + kv_head_idx * t.v_strides.head_stride;
        let v_stride = t.v_strides.seq_stride;
        match T::as_bf16_slice(&t.v[v_base..]) {
            Some(v_bf16) if bf16_dot => {
                simd.pack_v_bf16(v_bf16, v_stride, cols, head_dim, vp);
                simd.pv_tile_bf16(st, vp, cols, head_dim, &mut o[..rows * head_dim]);
            }
            _ => {
                let (v_rows, v_row_stride) =
                    rows_as_f32(&t.v[v_base..], v_stride, cols, head_dim, v_converted);
                simd.pv_tile(
                    st,
                    Rows::F32(v_rows),
                    v_row_stride,
                    cols,
                    head_dim,
                    &mut o[..rows * head_dim],
                );
            }
        }
    }

    write_rows(call, seq, block, rows, scratch);
}

/// Returns `rows` rows of `head_dim` elements at `row_stride` as f32: the input itself
/// for f32 storage, otherwise converted into `buffer` with stride `head_dim`.
fn rows_as_f32<'a, T: Element>(
    data: &'a [T],
    row_stride: usize,
    rows: usize,
    head_dim: usize,
    buffer: &'a mut [f32],
) -> (&'a [f32], usize) {
    if let Some(values) = T::as_f32_slice(data) {
        return (values, row_stride);
    }
    for row in 0..rows {
        let start = row * row_stride;
        T::convert_to_f32(
            &data[start..start + head_dim],
            &mut buffer[row * head_dim..][..head_dim],
        );
    }
    (&buffer[..rows * head_dim], head_dim)
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
