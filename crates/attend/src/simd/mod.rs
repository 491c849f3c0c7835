//! SIMD primitives behind one trait, with runtime dispatch in one function.
//!
//! [`Simd`] is implemented by one zero-sized token type per instruction set. A token
//! other than [`Portable`] can only be created after runtime detection has confirmed
//! its instructions, so its safe methods may call `#[target_feature]` code.
//! [`dispatch`] is the one place that turns an [`Isa`] value into a token and runs a
//! [`SimdOp`] with it; the free functions ([`dot`], [`axpy`], ...) use the best
//! instruction set of this CPU, and tests can run the same code on [`Isa::Portable`].
//!
//! The slice functions follow `Iterator::zip`: when two slices differ in length, only
//! the shorter length is used.

use half::{bf16, f16};

use crate::error::AttendError;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;

#[cfg(target_arch = "x86_64")]
pub use avx2::Avx2Fma;
#[cfg(target_arch = "x86_64")]
pub use avx512::Avx512;
#[cfg(target_arch = "aarch64")]
pub use neon::Neon;
pub use portable::Portable;

/// Width in keys of the score tiles that [`Simd::qk_tile`] and [`Simd::pv_tile`] use.
pub const TILE_KV: usize = 64;

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, for any CPU; the compiler may still vectorise it.
    Portable,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2Fma,
    /// x86-64 AVX-512 Foundation.
    Avx512,
    /// AArch64 Advanced SIMD.
    Neon,
}

impl Isa {
    /// Returns the fastest instruction set available on this CPU.
    pub fn detect() -> Isa {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Neon]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// Returns true when this CPU can run the instruction set.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => Avx2Fma::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Avx512::new().is_some(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Neon::new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Returns the lower-case name used in benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2-fma",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Vector primitives over f32 rows, implemented once per instruction set.
///
/// Rows of f16 or bf16 are converted to f32 as they are read; all arithmetic is f32.
pub trait Simd: Copy + Send + Sync + sealed::Sealed {
    /// Returns the instruction set of this token.
    fn isa(self) -> Isa;

    /// Returns `sum(a[i] * b[i])`.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;

    /// Returns `sum(a[i] * b[i])` with `b` stored as f16.
    fn dot_f16(self, a: &[f32], b: &[f16]) -> f32;

    /// Returns `sum(a[i] * b[i])` with `b` stored as bf16.
    fn dot_bf16(self, a: &[f32], b: &[bf16]) -> f32;

    /// Computes `y[i] += alpha * x[i]`.
    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]);

    /// Computes `y[i] += alpha * x[i]` with `x` stored as f16.
    fn axpy_f16(self, alpha: f32, x: &[f16], y: &mut [f32]);

    /// Computes `y[i] += alpha * x[i]` with `x` stored as bf16.
    fn axpy_bf16(self, alpha: f32, x: &[bf16], y: &mut [f32]);

    /// Computes `x[i] *= alpha`.
    fn scale(self, alpha: f32, x: &mut [f32]);

    /// Returns the maximum of `x`, or negative infinity for an empty slice.
    fn max(self, x: &[f32]) -> f32;

    /// Replaces each `x[i]` by `exp(x[i] - shift)` and returns their sum.
    ///
    /// `exp(-inf)` is exactly 0. The vector versions use a polynomial accurate to a few
    /// units in the last place and flush results below about `exp(-87)` to 0 or to
    /// subnormals, which the softmax never needs.
    fn exp_sub_sum(self, x: &mut [f32], shift: f32) -> f32;

    /// Computes a score tile: `s[i][j] = scale * sum_d q[i][d] * kt[d][j]`.
    ///
    /// # Shapes
    /// `q: [rows, head_dim]`, `kt: [head_dim, TILE_KV]` (keys transposed, zero-padded),
    /// `s: [rows, TILE_KV]`, with `rows = q.len() / head_dim`. Slices shorter than these
    /// shapes shrink the tile to the rows that fit; a short `kt` computes nothing.
    fn qk_tile(self, q: &[f32], kt: &[f32], scale: f32, head_dim: usize, s: &mut [f32]);

    /// Accumulates `o[i][d] += sum_j p[i][j] * v[j][d]` for `j < cols`.
    ///
    /// # Shapes
    /// `p: [rows, TILE_KV]`, `v: [cols, head_dim]`, `o: [rows, head_dim]`, with
    /// `rows = o.len() / head_dim` and `cols <= TILE_KV`. Slices shorter than these
    /// shapes shrink the tile to what fits.
    fn pv_tile(self, p: &[f32], v: &[f32], cols: usize, head_dim: usize, o: &mut [f32]);
}

/// Returns the number of rows that fit every slice of a qk tile, or 0 when `kt` is short.
#[inline]
fn qk_tile_rows(q: &[f32], kt: &[f32], head_dim: usize, s: &[f32]) -> usize {
    if head_dim == 0 || kt.len() < head_dim * TILE_KV {
        return 0;
    }
    (q.len() / head_dim).min(s.len() / TILE_KV)
}

/// Returns `(rows, cols)` that fit every slice of a pv tile.
#[inline]
fn pv_tile_shape(p: &[f32], v: &[f32], cols: usize, head_dim: usize, o: &[f32]) -> (usize, usize) {
    if head_dim == 0 {
        return (0, 0);
    }
    let cols = cols.min(TILE_KV).min(v.len() / head_dim);
    let rows = (o.len() / head_dim).min(p.len() / TILE_KV);
    (rows, cols)
}

/// An operation generic over the instruction set, run by [`dispatch`].
pub trait SimdOp {
    /// What the operation returns.
    type Output;

    /// Runs the operation with the given token.
    fn run<S: Simd>(self, simd: S) -> Self::Output;
}

/// Runs `op` with the token for `isa`.
///
/// # Errors
/// [`AttendError::IsaUnavailable`] when this CPU cannot run `isa`.
pub fn dispatch<O: SimdOp>(isa: Isa, op: O) -> Result<O::Output, AttendError> {
    try_dispatch(isa, op).map_err(|_| AttendError::IsaUnavailable { isa })
}

/// Turns `isa` into its token and runs `op`, or hands `op` back when the CPU lacks `isa`.
fn try_dispatch<O: SimdOp>(isa: Isa, op: O) -> Result<O::Output, O> {
    match isa {
        Isa::Portable => Ok(op.run(Portable)),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match Avx512::new() {
            Some(simd) => Ok(op.run(simd)),
            None => Err(op),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => match Avx2Fma::new() {
            Some(simd) => Ok(op.run(simd)),
            None => Err(op),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match Neon::new() {
            Some(simd) => Ok(op.run(simd)),
            None => Err(op),
        },
        #[allow(unreachable_patterns)]
        _ => Err(op),
    }
}

/// Runs `op` on the best instruction set of this CPU.
fn dispatch_best<O: SimdOp>(op: O) -> O::Output {
    // `Isa::detect` returns only available instruction sets, so the portable fallback
    // is not expected to run; it keeps this path free of panics.
    try_dispatch(Isa::detect(), op).unwrap_or_else(|op| op.run(Portable))
}

/// Returns `sum(a[i] * b[i])` over the shorter length, on this CPU's best ISA.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    struct Op<'a>(&'a [f32], &'a [f32]);
    impl SimdOp for Op<'_> {
        type Output = f32;
        fn run<S: Simd>(self, simd: S) -> f32 {
            simd.dot(self.0, self.1)
        }
    }
    dispatch_best(Op(a, b))
}

/// Returns `sum(a[i] * b[i])` with `b` stored as f16, on this CPU's best ISA.
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    struct Op<'a>(&'a [f32], &'a [f16]);
    impl SimdOp for Op<'_> {
        type Output = f32;
        fn run<S: Simd>(self, simd: S) -> f32 {
            simd.dot_f16(self.0, self.1)
        }
    }
    dispatch_best(Op(a, b))
}

/// Returns `sum(a[i] * b[i])` with `b` stored as bf16, on this CPU's best ISA.
pub fn dot_bf16(a: &[f32], b: &[bf16]) -> f32 {
    struct Op<'a>(&'a [f32], &'a [bf16]);
    impl SimdOp for Op<'_> {
        type Output = f32;
        fn run<S: Simd>(self, simd: S) -> f32 {
            simd.dot_bf16(self.0, self.1)
        }
    }
    dispatch_best(Op(a, b))
}

/// Returns the maximum of `x` (negative infinity when empty), on this CPU's best ISA.
pub fn max(x: &[f32]) -> f32 {
    struct Op<'a>(&'a [f32]);
    impl SimdOp for Op<'_> {
        type Output = f32;
        fn run<S: Simd>(self, simd: S) -> f32 {
            simd.max(self.0)
        }
    }
    dispatch_best(Op(x))
}

/// Computes `y[i] += alpha * x[i]` over the shorter length, on this CPU's best ISA.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    struct Op<'a>(f32, &'a [f32], &'a mut [f32]);
    impl SimdOp for Op<'_> {
        type Output = ();
        fn run<S: Simd>(self, simd: S) {
            simd.axpy(self.0, self.1, self.2)
        }
    }
    dispatch_best(Op(alpha, x, y))
}

/// Computes `y[i] += alpha * x[i]` with `x` stored as f16, on this CPU's best ISA.
pub fn axpy_f16(alpha: f32, x: &[f16], y: &mut [f32]) {
    struct Op<'a>(f32, &'a [f16], &'a mut [f32]);
    impl SimdOp for Op<'_> {
        type Output = ();
        fn run<S: Simd>(self, simd: S) {
            simd.axpy_f16(self.0, self.1, self.2)
        }
    }
    dispatch_best(Op(alpha, x, y))
}

/// Computes `y[i] += alpha * x[i]` with `x` stored as bf16, on this CPU's best ISA.
pub fn axpy_bf16(alpha: f32, x: &[bf16], y: &mut [f32]) {
    struct Op<'a>(f32, &'a [bf16], &'a mut [f32]);
    impl SimdOp for Op<'_> {
        type Output = ();
        fn run<S: Simd>(self, simd: S) {
            simd.axpy_bf16(self.0, self.1, self.2)
        }
    }
    dispatch_best(Op(alpha, x, y))
}

/// Computes `x[i] *= alpha`, on this CPU's best ISA.
pub fn scale(alpha: f32, x: &mut [f32]) {
    struct Op<'a>(f32, &'a mut [f32]);
    impl SimdOp for Op<'_> {
        type Output = ();
        fn run<S: Simd>(self, simd: S) {
            simd.scale(self.0, self.1)
        }
    }
    dispatch_best(Op(alpha, x))
}

#[cfg(test)]
mod tests;
