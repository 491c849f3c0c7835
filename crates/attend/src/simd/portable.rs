//! The portable implementation: plain loops that any CPU runs.

use half::{bf16, f16};

use super::{
    pack_v_bf16_cols, pv_rows_shape, pv_tile_bf16_shape, pv_tile_shape, qk_rows_shape,
    qk_tile_bf16_cols, qk_tile_cols, sealed, softmax_tile_cols, Isa, RowElement, Simd, TILE_Q,
};

/// The token for plain Rust code; always available.
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

impl sealed::Sealed for Portable {}

impl Simd for Portable {
    fn isa(self) -> Isa {
        Isa::Portable
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn dot_f16(self, a: &[f32], b: &[f16]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
    }

    fn dot_bf16(self, a: &[f32], b: &[bf16]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
    }

    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
    }

    fn axpy_f16(self, alpha: f32, x: &[f16], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x.to_f32();
        }
    }

    fn axpy_bf16(self, alpha: f32, x: &[bf16], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x.to_f32();
        }
    }

    fn scale(self, alpha: f32, x: &mut [f32]) {
        for x in x {
            *x *= alpha;
        }
    }

    fn max(self, x: &[f32]) -> f32 {
        x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    fn exp_sub_sum(self, x: &mut [f32], shift: f32) -> f32 {
        let mut sum = 0.0;
        for x in x {
            *x = (*x - shift).exp();
            sum += *x;
        }
        sum
    }

    fn qk_tile(
        self,
        qt: &[f32],
        k: &[f32],
        k_row_stride: usize,
        cols: usize,
        head_dim: usize,
        scale: f32,
        st: &mut [f32],
    ) {
        let cols = qk_tile_cols(qt, k, k_row_stride, cols, head_dim, st);
        for col in 0..cols {
            let k_row = &k[col * k_row_stride..][..head_dim];
            let st_row = &mut st[col * TILE_Q..][..TILE_Q];
            st_row.fill(0.0);
            for (d, &k_value) in k_row.iter().enumerate() {
                let qt_row = &qt[d * TILE_Q..][..TILE_Q];
                for (acc, &q_value) in st_row.iter_mut().zip(qt_row) {
                    *acc += k_value * q_value;
                }
            }
            for acc in st_row.iter_mut() {
                *acc *= scale;
            }
        }
    }

    fn softmax_tile(
        self,
        st: &mut [f32],
        cols: usize,
        m: &mut [f32],
        l: &mut [f32],
        correction: &mut [f32],
    ) {
        let cols = softmax_tile_cols(st, cols, m, l, correction);
        for i in 0..TILE_Q {
            let block_max = (0..cols)
                .map(|j| st[j * TILE_Q + i])
                .fold(f32::NEG_INFINITY, f32::max);
            let m_new = m[i].max(block_max);
            // With nothing visible so far, subtract 0 instead of -inf: exp(-inf - 0) = 0,
            // where exp(-inf - -inf) would be NaN.
            let shift = if m_new == f32::NEG_INFINITY {
                0.0
            } else {
                m_new
            };
            let mut sum = 0.0;
            for j in 0..cols {
                let p = (st[j * TILE_Q + i] - shift).exp();
                st[j * TILE_Q + i] = p;
                sum += p;
            }
            correction[i] = (m[i] - shift).exp();
            l[i] = l[i] * correction[i] + sum;
            m[i] = m_new;
        }
    }
}

/// Scores query rows against key rows of any storage type one [`RowElement::dot`] at a
/// time, with the shapes of [`Simd::qk_rows`]; the tokens without a blocked version use it.
#[allow(clippy::too_many_arguments)]
pub(super) fn qk_rows_by_dot<S: Simd, T: RowElement>(
    simd: S,
    q: &[f32],
    k: &[T],
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    scale: f32,
    s: &mut [f32],
    s_row_stride: usize,
) {
    let (rows, cols) = qk_rows_shape(q, k, k_row_stride, cols, head_dim, s, s_row_stride);
    for row in 0..rows {
        let q_row = &q[row * head_dim..][..head_dim];
        for col in 0..cols {
            let k_row = &k[col * k_row_stride..][..head_dim];
            s[row * s_row_stride + col] = scale * T::dot(simd, q_row, k_row);
        }
    }
}

/// Accumulates value rows of any storage type into output rows one [`RowElement::axpy`]
/// per (row, key), with the shapes of [`Simd::pv_tile`]; the tokens without a blocked
/// version use it.
pub(super) fn pv_tile_by_axpy<S: Simd, T: RowElement>(
    simd: S,
    pt: &[f32],
    v: &[T],
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    o: &mut [f32],
) {
    let (rows, cols) = pv_tile_shape(pt, v, v_row_stride, cols, head_dim, o);
    let prob = |row: usize, col: usize| pt[col * TILE_Q + row];
    axpy_rows(simd, prob, v, v_row_stride, (rows, cols), head_dim, o);
}

/// Accumulates value rows of any storage type into output rows one [`RowElement::axpy`]
/// per (row, key), with the shapes of [`Simd::pv_rows`]; the tokens without a blocked
/// version use it.
#[allow(clippy::too_many_arguments)]
pub(super) fn pv_rows_by_axpy<S: Simd, T: RowElement>(
    simd: S,
    p: &[f32],
    p_row_stride: usize,
    v: &[T],
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    o: &mut [f32],
) {
    let (rows, cols) = pv_rows_shape(p, p_row_stride, v, v_row_stride, cols, head_dim, o);
    let prob = |row: usize, col: usize| p[row * p_row_stride + col];
    axpy_rows(simd, prob, v, v_row_stride, (rows, cols), head_dim, o);
}

/// Runs `o[row] += prob(row, col) * v[col]` for the `(rows, cols)` of `shape`, which
/// the caller has fitted to the slices.
fn axpy_rows<S: Simd, T: RowElement>(
    simd: S,
    prob: impl Fn(usize, usize) -> f32,
    v: &[T],
    v_row_stride: usize,
    (rows, cols): (usize, usize),
    head_dim: usize,
    o: &mut [f32],
) {
    for row in 0..rows {
        let o_row = &mut o[row * head_dim..][..head_dim];
        for col in 0..cols {
            let v_row = &v[col * v_row_stride..][..head_dim];
            T::axpy(simd, prob(row, col), v_row, o_row);
        }
    }
}

/// Computes a bf16 score tile in plain Rust; every token without bf16 dot products uses it.
pub(super) fn qk_tile_bf16(
    qp: &[bf16],
    k: &[bf16],
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    scale: f32,
    st: &mut [f32],
) {
    let cols = qk_tile_bf16_cols(qp, k, k_row_stride, cols, head_dim, st);
    for col in 0..cols {
        let k_row = &k[col * k_row_stride..][..head_dim];
        let st_row = &mut st[col * TILE_Q..][..TILE_Q];
        st_row.fill(0.0);
        for (d, k_value) in k_row.iter().enumerate() {
            let k_value = k_value.to_f32();
            let pairs = &qp[(d / 2) * 2 * TILE_Q..][..2 * TILE_Q];
            for (query, acc) in st_row.iter_mut().enumerate() {
                *acc += k_value * pairs[2 * query + d % 2].to_f32();
            }
        }
        for acc in st_row.iter_mut() {
            *acc *= scale;
        }
    }
}

/// Packs bf16 value rows in key pairs in plain Rust; every token without bf16 dot
/// products uses it.
pub(super) fn pack_v_bf16(
    v: &[bf16],
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    vp: &mut [bf16],
) {
    let cols = pack_v_bf16_cols(v, v_row_stride, cols, head_dim, vp);
    for (pair, packed) in vp
        .chunks_exact_mut(2 * head_dim)
        .take(cols.div_ceil(2))
        .enumerate()
    {
        for half in 0..2 {
            let col = 2 * pair + half;
            for d in 0..head_dim {
                packed[2 * d + half] = if col < cols {
                    v[col * v_row_stride + d]
                } else {
                    bf16::ZERO
                };
            }
        }
    }
}

/// Computes a bf16 value tile in plain Rust; every token without bf16 dot products
/// uses it.
pub(super) fn pv_tile_bf16(pt: &[f32], vp: &[bf16], cols: usize, head_dim: usize, o: &mut [f32]) {
    let (rows, cols) = pv_tile_bf16_shape(pt, vp, cols, head_dim, o);
    for row in 0..rows {
        let o_row = &mut o[row * head_dim..][..head_dim];
        for col in 0..cols {
            let weight = bf16::from_f32(pt[col * TILE_Q + row]).to_f32();
            let packed = &vp[(col / 2) * 2 * head_dim..][..2 * head_dim];
            for (d, acc) in o_row.iter_mut().enumerate() {
                *acc += weight * packed[2 * d + col % 2].to_f32();
            }
        }
    }
}
