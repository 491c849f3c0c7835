//! Products with f32 activations through the `gemm` crate: for float weights (F32,
//! F16, BF16) always, and for quantized weights when the caller asks for
//! [`Activations::F32`](super::Activations::F32) with more than 16 tokens (fewer
//! go through `f32_rows`).

use super::dequant::dequantize;
use super::matmul::{QuantMatrix, SharedOut};
use crate::GgmlType;
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows of weights widened or dequantised to f32 at a time; 64 rows of 2048
/// columns are 512 KiB, which stays in L2 while every token passes over them.
const PANEL_ROWS: usize = 64;

/// `out[t, r] = sum_c W[r, c] * x[t, c]` in f32 for weights of any supported
/// type; the caller has checked every length and that `tokens`, `rows` and
/// `cols` are non-zero.
pub(super) fn matmul_float(w: &QuantMatrix, x: &[f32], tokens: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    if let Some(weights) = f32_view(w) {
        // SAFETY: `weights: [rows, cols]`, `x: [tokens, cols]` and
        // `out: [tokens, rows]` have the lengths the strides below address,
        // as the caller checked.
        unsafe {
            gemm_nt(
                tokens,
                rows,
                cols,
                out.as_mut_ptr(),
                rows,
                x,
                weights.as_ptr(),
                threads(),
            );
        }
        return;
    }

    // F16, BF16, unaligned F32 or quantized: widen a panel of rows at a time
    // and multiply it by every token, so the matrix is never widened whole.
    let shared_out = SharedOut::new(out);
    let row_bytes = w.row_bytes();
    w.data()
        .par_chunks(PANEL_ROWS * row_bytes)
        .enumerate()
        .for_each(|(panel_idx, panel_bytes)| {
            let panel_rows = panel_bytes.len() / row_bytes;
            let mut panel = vec![0.0f32; panel_rows * cols];
            dequantize(w.ty(), panel_bytes, &mut panel)
                .expect("the caller checked the weight length");
            let r0 = panel_idx * PANEL_ROWS;
            // SAFETY: this panel writes only columns r0..r0 + panel_rows of
            // `out: [tokens, rows]`, which no other panel writes, and the
            // strides stay inside `out` because r0 + panel_rows <= rows.
            unsafe {
                let dst = shared_out.ptr().add(r0);
                gemm_nt(
                    tokens,
                    panel_rows,
                    cols,
                    dst,
                    rows,
                    x,
                    panel.as_ptr(),
                    Parallelism::None,
                );
            }
        });
}

/// The weights as f32 without a copy, when the bytes are F32, aligned and
/// the target is little-endian like GGUF files.
fn f32_view<'a>(w: &QuantMatrix<'a>) -> Option<&'a [f32]> {
    if w.ty() != GgmlType::F32 || cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32, and `align_to` only hands
    // out the correctly aligned middle part.
    let (prefix, floats, suffix) = unsafe { w.data().align_to::<f32>() };
    (prefix.is_empty() && suffix.is_empty()).then_some(floats)
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst[t, r] = sum_c x[t, c] * w[r, c]` with `dst` row stride `dst_row_stride`.
///
/// # Safety
/// `x` has `tokens * cols` values, `w` points to `rows * cols` values, and
/// `dst` addresses `dst[t * dst_row_stride + r]` for every `t < tokens`,
/// `r < rows`, with no other thread touching those elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_nt(
    tokens: usize,
    rows: usize,
    cols: usize,
    dst: *mut f32,
    dst_row_stride: usize,
    x: &[f32],
    w: *const f32,
    parallelism: Parallelism,
) {
    debug_assert_eq!(x.len(), tokens * cols);
    // SAFETY: forwarded from this function's contract. gemm's `lhs` is
    // `x: [tokens, cols]` and its `rhs` the transpose of `w: [rows, cols]`.
    unsafe {
        gemm::gemm(
            tokens,
            rows,
            cols,
            dst,
            1,
            dst_row_stride as isize,
            false,
            x.as_ptr(),
            1,
            cols as isize,
            w,
            cols as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
