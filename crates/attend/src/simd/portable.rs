//! The portable implementation: plain loops that any CPU runs.

use half::{bf16, f16};

use super::{pv_tile_shape, qk_tile_rows, sealed, Isa, Simd, TILE_KV};

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

    fn qk_tile(self, q: &[f32], kt: &[f32], scale: f32, head_dim: usize, s: &mut [f32]) {
        let rows = qk_tile_rows(q, kt, head_dim, s);
        for row_idx in 0..rows {
            let q_row = &q[row_idx * head_dim..][..head_dim];
            let s_row = &mut s[row_idx * TILE_KV..][..TILE_KV];
            s_row.fill(0.0);
            for (d, &q_value) in q_row.iter().enumerate() {
                let kt_row = &kt[d * TILE_KV..][..TILE_KV];
                for (acc, &k_value) in s_row.iter_mut().zip(kt_row) {
                    *acc += q_value * k_value;
                }
            }
            for acc in s_row.iter_mut() {
                *acc *= scale;
            }
        }
    }

    fn pv_tile(self, p: &[f32], v: &[f32], cols: usize, head_dim: usize, o: &mut [f32]) {
        let (rows, cols) = pv_tile_shape(p, v, cols, head_dim, o);
        for row_idx in 0..rows {
            let p_row = &p[row_idx * TILE_KV..][..cols];
            let o_row = &mut o[row_idx * head_dim..][..head_dim];
            for (kv_idx, &weight) in p_row.iter().enumerate() {
                let v_row = &v[kv_idx * head_dim..][..head_dim];
                for (acc, &v_value) in o_row.iter_mut().zip(v_row) {
                    *acc += weight * v_value;
                }
            }
        }
    }
}
