//! AArch64 Advanced SIMD implementation.
//!
//! NEON is part of the AArch64 baseline, so the portable loops are already compiled to
//! NEON; the row primitives here add explicit four-way accumulation, and the tile and
//! exponential functions reuse the portable code.
//!
//! NOTE: this module is type-checked for `aarch64-unknown-linux-gnu` but has not been
//! run on ARM hardware; the tests that compare it with the portable code run only there.

use std::arch::aarch64::*;

use half::{bf16, f16};

use super::{sealed, Isa, Portable, Simd};

/// The token for AArch64 Advanced SIMD code.
#[derive(Debug, Clone, Copy)]
pub struct Neon {
    _detected: (),
}

impl Neon {
    /// Returns the token when this CPU supports Advanced SIMD.
    pub fn new() -> Option<Self> {
        std::arch::is_aarch64_feature_detected!("neon").then_some(Self { _detected: () })
    }
}

impl sealed::Sealed for Neon {}

const LANES: usize = 4;

impl Simd for Neon {
    fn isa(self) -> Isa {
        Isa::Neon
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves neon; both pointers are valid for `n` reads.
        unsafe { dot(a.as_ptr(), b.as_ptr(), n) }
    }

    fn dot_f16(self, a: &[f32], b: &[f16]) -> f32 {
        Portable.dot_f16(a, b)
    }

    fn dot_bf16(self, a: &[f32], b: &[bf16]) -> f32 {
        Portable.dot_bf16(a, b)
    }

    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves neon; `x` is valid for `n` reads and `y` for `n`
        // reads and writes.
        unsafe { axpy(alpha, x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn axpy_f16(self, alpha: f32, x: &[f16], y: &mut [f32]) {
        Portable.axpy_f16(alpha, x, y)
    }

    fn axpy_bf16(self, alpha: f32, x: &[bf16], y: &mut [f32]) {
        Portable.axpy_bf16(alpha, x, y)
    }

    fn scale(self, alpha: f32, x: &mut [f32]) {
        Portable.scale(alpha, x)
    }

    fn max(self, x: &[f32]) -> f32 {
        Portable.max(x)
    }

    fn exp_sub_sum(self, x: &mut [f32], shift: f32) -> f32 {
        Portable.exp_sub_sum(x, shift)
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
        Portable.qk_tile(qt, k, k_row_stride, cols, head_dim, scale, st)
    }

    fn softmax_tile(
        self,
        st: &mut [f32],
        cols: usize,
        m: &mut [f32],
        l: &mut [f32],
        correction: &mut [f32],
    ) {
        Portable.softmax_tile(st, cols, m, l, correction)
    }

    // pv_tile and pv_rows keep the trait's versions, one NEON `axpy` per (row, key),
    // so both layouts give the same bits.
}

#[target_feature(enable = "neon")]
unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 4 * LANES <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let offset = i + u * LANES;
            *acc = vfmaq_f32(*acc, vld1q_f32(a.add(offset)), vld1q_f32(b.add(offset)));
        }
        i += 4 * LANES;
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut total = vaddvq_f32(sum);
    while i < n {
        total += *a.add(i) * *b.add(i);
        i += 1;
    }
    total
}

#[target_feature(enable = "neon")]
unsafe fn axpy(alpha: f32, x: *const f32, y: *mut f32, n: usize) {
    let mut i = 0;
    while i + LANES <= n {
        let updated = vfmaq_n_f32(vld1q_f32(y.add(i)), vld1q_f32(x.add(i)), alpha);
        vst1q_f32(y.add(i), updated);
        i += LANES;
    }
    while i < n {
        *y.add(i) += alpha * *x.add(i);
        i += 1;
    }
}
