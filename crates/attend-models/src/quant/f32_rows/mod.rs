//! Products of quantized weights with a few f32 tokens (decode), row by row.
//!
//! Each task takes a range of weight rows, decodes every row block by block into
//! f32 registers and multiplies it with every token by FMA, so the weights are read
//! once and never written back to memory as f32. The decoded weights are bit for
//! bit `dequantize`'s, because they come from the same f32 operations in the same
//! order. Only the order of the sum differs, so each output is within f32 rounding
//! of the product of the dequantised weights with `x`.
//!
//! The kernels are hand-written because no crate fuses ggml block decoding with an
//! f32 dot product. `gemm` and the BLAS crates take f32 matrices, so each
//! dequantised row would be written to memory and read back, which for one token
//! adds a store and a load to every weight of a product bound by reading weights.

#[cfg(target_arch = "x86_64")]
mod x86;

use super::dequant::dequantize;
use super::kernel::{prefetch, Isa};
use super::matmul::{QuantMatrix, SharedOut, TASKS_PER_THREAD};
use crate::GgmlType;
use rayon::prelude::*;
use std::ops::Range;

/// Maximum tokens of a product on this path. The decoder sends chunks of up to 16
/// tokens through its decode path, and longer inputs go to f32 GEMM. On Zen 4 with
/// 2 threads, GEMM on 17 tokens took 1.0x (Q4_K) to 1.8x (Q5_0) the time of this
/// path on 16 (an ad-hoc timing of 1536x576 and 576x1536 matrices).
pub(super) const MAX_TOKENS: usize = 16;
/// Rows ahead of the current ones whose bytes are prefetched, so that weights
/// streamed from memory arrive in time. On Zen 4, 8 rows made Gemma 3 decode 1.5x
/// faster (its output projection does not fit in cache), and 16 were no better.
const PREFETCH_ROWS_AHEAD: usize = 8;
/// Minimum rows per task, so that small matrices do not spread over many tiny tasks.
const MIN_TASK_ROWS: usize = 4;

/// Computes `out_i[t, r] = sum_c W_i[r, c] * x[t, c]` in f32 for every product, with
/// the rows of all of them split over one set of rayon tasks.
///
/// # Shapes
/// `x: [tokens, cols]`; each product's `w: [rows_i, cols]`, `out: [tokens, rows_i]`.
///
/// The caller has checked the lengths, that every `w` is of a quantized type with
/// non-zero rows and columns, that `1 <= tokens <= MAX_TOKENS` and that `isa` is
/// available.
pub(super) fn matmul_rows<'w, 'o>(
    x: &[f32],
    tokens: usize,
    products: impl Iterator<Item = (QuantMatrix<'w>, &'o mut [f32])>,
    isa: Isa,
) {
    assert!((1..=MAX_TOKENS).contains(&tokens));
    let products: Vec<(QuantMatrix, SharedOut)> = products
        .map(|(w, out)| {
            assert!(w.ty().is_quantized());
            assert_eq!(out.len(), tokens * w.rows());
            assert_eq!(x.len(), tokens * w.cols());
            (w, SharedOut::new(out))
        })
        .collect();
    let total_rows: usize = products.iter().map(|(w, _)| w.rows()).sum();
    let target_tasks = TASKS_PER_THREAD * rayon::current_num_threads();
    let task_rows = total_rows.div_ceil(target_tasks).max(MIN_TASK_ROWS);
    let mut tasks: Vec<(&QuantMatrix, &SharedOut, Range<usize>)> = Vec::new();
    for (w, out) in &products {
        for r0 in (0..w.rows()).step_by(task_rows) {
            tasks.push((w, out, r0..(r0 + task_rows).min(w.rows())));
        }
    }
    tasks.into_par_iter().for_each(|(w, out, rows)| {
        let row_bytes = w.row_bytes();
        let mut scratch = Vec::new();
        // One token takes the simple 32-weight formats two rows at a time, which
        // share their loads of `x`: 1.0-1.2x faster on Zen 4 (an ad-hoc timing of
        // 1536x576 and 576x1536 matrices). Q5_0 and the K formats, whose decoding
        // takes more registers, were 0.9-1.0x, so they go one row at a time.
        let simple = matches!(w.ty(), GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0);
        let pair_rows = tokens == 1 && simple;
        let mut sums = [0.0f32; 2 * MAX_TOKENS];
        let mut r0 = rows.start;
        while r0 < rows.end {
            let count = if pair_rows { 2.min(rows.end - r0) } else { 1 };
            let ahead = (r0 + PREFETCH_ROWS_AHEAD).min(w.rows());
            let ahead_end = (ahead + count).min(w.rows());
            prefetch(&w.data()[ahead * row_bytes..ahead_end * row_bytes]);
            let group = &w.data()[r0 * row_bytes..(r0 + count) * row_bytes];
            let sums = &mut sums[..count * tokens];
            dot_rows(isa, w.ty(), group, count, x, sums, &mut scratch);
            for (r, row_sums) in (r0..).zip(sums.chunks_exact(tokens)) {
                for (t, &sum) in row_sums.iter().enumerate() {
                    // SAFETY: (t, r) lies in this task's rows, which no other task
                    // covers, and inside `out: [tokens, rows]`.
                    unsafe { out.write(t * w.rows() + r, sum) };
                }
            }
            r0 += count;
        }
    });
}

/// Runs `$call` with the constant `$T` equal to `$out.len()` (1 to 8) and copies
/// its `[f32; $T]` result into `$out`.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch_tokens {
    ($out:expr, |$T:ident| $call:expr) => {{
        let out: &mut [f32] = $out;
        match out.len() {
            1 => {
                const $T: usize = 1;
                out.copy_from_slice(&$call)
            }
            2 => {
                const $T: usize = 2;
                out.copy_from_slice(&$call)
            }
            3 => {
                const $T: usize = 3;
                out.copy_from_slice(&$call)
            }
            4 => {
                const $T: usize = 4;
                out.copy_from_slice(&$call)
            }
            5 => {
                const $T: usize = 5;
                out.copy_from_slice(&$call)
            }
            6 => {
                const $T: usize = 6;
                out.copy_from_slice(&$call)
            }
            7 => {
                const $T: usize = 7;
                out.copy_from_slice(&$call)
            }
            8 => {
                const $T: usize = 8;
                out.copy_from_slice(&$call)
            }
            tokens => unreachable!("a tile of {tokens} tokens"),
        }
    }};
}

/// `out[r, t] = sum_c W[r, c] * x[t, c]` for `count` consecutive rows of quantized
/// type `ty`: one, or two with one token. `scratch` is the portable kernel's buffer
/// for the dequantised row.
///
/// # Shapes
/// `rows: [count * ty.bytes_for(cols)]`, `x: [tokens, cols]`, `out: [count, tokens]`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn dot_rows(
    isa: Isa,
    ty: GgmlType,
    rows: &[u8],
    count: usize,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let tokens = out.len() / count;
    let cols = x.len() / tokens;
    let row_bytes = rows.len() / count;
    let each_row = rows
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(tokens));
    match isa {
        // SAFETY (all four x86 arms): the caller checked that `isa` is available;
        // `Isa::Avx512Vnni` covers AVX-512 F and BW, F16C, AVX2 and FMA, and
        // `Isa::Avx2` covers AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if count == 2 => {
            let [[first], [second]] = unsafe { x86::dot_rows_avx512::<2, 1>(ty, rows, x) };
            out.copy_from_slice(&[first, second]);
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if count == 2 => {
            let [[first], [second]] = unsafe { x86::dot_rows_avx2::<2, 1>(ty, rows, x) };
            out.copy_from_slice(&[first, second]);
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            for (row, out) in each_row {
                for (t0, out) in (0..tokens).step_by(8).zip(out.chunks_mut(8)) {
                    let x = &x[t0 * cols..(t0 + out.len()) * cols];
                    dispatch_tokens!(out, |T| unsafe {
                        x86::dot_rows_avx512::<1, T>(ty, row, x)[0]
                    });
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            for (row, out) in each_row {
                for (t0, out) in (0..tokens).step_by(4).zip(out.chunks_mut(4)) {
                    let x = &x[t0 * cols..(t0 + out.len()) * cols];
                    dispatch_tokens!(out, |T| unsafe {
                        x86::dot_rows_avx2::<1, T>(ty, row, x)[0]
                    });
                }
            }
        }
        _ => {
            for (row, out) in each_row {
                dot_row_portable(ty, row, x, out, scratch);
            }
        }
    }
}

/// Dequantises the row with [`dequantize`] into `scratch`, then takes its dot product
/// with each token over 8 partial sums (the portable kernel).
fn dot_row_portable(ty: GgmlType, row: &[u8], x: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
    let cols = x.len() / out.len();
    scratch.resize(cols, 0.0);
    dequantize(ty, row, scratch).expect("the caller checked the row length");
    for (x, out) in x.chunks_exact(cols).zip(out.iter_mut()) {
        let mut partial = [0.0f32; 8];
        let mut w_chunks = scratch.chunks_exact(8);
        let mut x_chunks = x.chunks_exact(8);
        for (w, x) in (&mut w_chunks).zip(&mut x_chunks) {
            for i in 0..8 {
                partial[i] += w[i] * x[i];
            }
        }
        let tail: f32 = w_chunks
            .remainder()
            .iter()
            .zip(x_chunks.remainder())
            .map(|(w, x)| w * x)
            .sum();
        *out = partial.iter().sum::<f32>() + tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_pairs_match_single_rows_bitwise() {
        let cols = 96;
        let x: Vec<f32> = (0..cols).map(|c| (c as f32 * 0.37).sin()).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
        ] {
            let cols = cols.max(ty.block_elems());
            let x = &x.iter().cycle().take(cols).copied().collect::<Vec<_>>()[..];
            let row_bytes = ty.bytes_for(cols).unwrap();
            // A fixed byte pattern whose f16 scales have their high byte masked with
            // 0x3B, which keeps them finite, so no NaN hides a difference.
            let mut rows: Vec<u8> = (0..2 * row_bytes).map(|i| (i * 37 % 251) as u8).collect();
            for block in rows.chunks_exact_mut(ty.block_bytes()) {
                let at: &[usize] = match ty {
                    GgmlType::Q4_1 => &[0, 2],
                    GgmlType::Q6_K => &[208],
                    _ => &[0],
                };
                for &a in at {
                    block[a + 1] &= 0x3B;
                }
            }
            for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni] {
                if !isa.is_available() {
                    continue;
                }
                let mut scratch = Vec::new();
                let mut pair = [0.0f32; 2];
                dot_rows(isa, ty, &rows, 2, x, &mut pair, &mut scratch);
                for (r, &paired) in pair.iter().enumerate() {
                    let mut single = [0.0f32];
                    let row = &rows[r * row_bytes..(r + 1) * row_bytes];
                    dot_rows(isa, ty, row, 1, x, &mut single, &mut scratch);
                    assert_eq!(
                        paired.to_bits(),
                        single[0].to_bits(),
                        "{ty} {isa:?} row {r}: {paired} in a pair, {} alone",
                        single[0]
                    );
                }
            }
        }
    }
}
