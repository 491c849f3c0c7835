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

/// Evaluates `$body` with `$slice` bound to the slice inside the [`Rows`] value `$rows`.
/// The body is compiled once per storage type, so generic code in it is monomorphised
/// for f32, f16 and bf16 rows alike.
macro_rules! match_rows {
    ($rows:expr, |$slice:ident| $body:expr) => {
        match $rows {
            $crate::simd::Rows::F32($slice) => $body,
            $crate::simd::Rows::F16($slice) => $body,
            $crate::simd::Rows::Bf16($slice) => $body,
        }
    };
}

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

/// Maximum keys in the score tiles of [`Simd::qk_tile`] and [`Simd::pv_tile`].
pub const TILE_KV: usize = 64;

/// Queries in the score tiles of [`Simd::qk_tile`] and [`Simd::pv_tile`].
pub const TILE_Q: usize = 64;

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

    /// Returns true when bf16 attention on this instruction set uses the CPU's bf16
    /// dot-product instructions (AVX512_BF16 on [`Isa::Avx512`]). Returns false when this
    /// CPU lacks them or cannot run the instruction set. The bf16 dot-product path rounds
    /// the softmax probabilities to bf16 before their product with V.
    pub fn has_bf16_dot(self) -> bool {
        struct Op;
        impl SimdOp for Op {
            type Output = bool;
            fn run<S: Simd>(self, simd: S) -> bool {
                simd.has_bf16_dot()
            }
        }
        try_dispatch(self, Op).unwrap_or(false)
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

/// Key or value rows in their storage type, borrowed for [`Simd::qk_rows`],
/// [`Simd::pv_tile`] and [`Simd::pv_rows`]. The products widen f16 and bf16 rows to f32 as they load them, so
/// no f32 copy of the rows is written. All arithmetic is f32.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// f32 rows.
    F32(&'a [f32]),
    /// f16 rows.
    F16(&'a [f16]),
    /// bf16 rows. Products and sums are f32, unlike in [`Simd::pv_tile_bf16`], which
    /// rounds the probabilities to bf16.
    Bf16(&'a [bf16]),
}

impl<'a> Rows<'a> {
    /// Returns the rows from element `start` on; empty when `start` is past the end.
    pub(crate) fn offset(self, start: usize) -> Rows<'a> {
        match self {
            Rows::F32(x) => Rows::F32(x.get(start..).unwrap_or_default()),
            Rows::F16(x) => Rows::F16(x.get(start..).unwrap_or_default()),
            Rows::Bf16(x) => Rows::Bf16(x.get(start..).unwrap_or_default()),
        }
    }
}

/// A storage type of [`Rows`], with the row primitives of [`Simd`] that read it.
pub(crate) trait RowElement: Copy {
    /// Returns `sum(a[i] * b[i])`, as [`Simd::dot`] does for f32.
    fn dot<S: Simd>(simd: S, a: &[f32], b: &[Self]) -> f32;

    /// Computes `y[i] += alpha * x[i]`, as [`Simd::axpy`] does for f32.
    fn axpy<S: Simd>(simd: S, alpha: f32, x: &[Self], y: &mut [f32]);
}

/// Implements [`RowElement`] for `$element` with the [`Simd`] methods that read it.
macro_rules! impl_row_element {
    ($element:ty, $dot:ident, $axpy:ident) => {
        impl RowElement for $element {
            #[inline]
            fn dot<S: Simd>(simd: S, a: &[f32], b: &[$element]) -> f32 {
                simd.$dot(a, b)
            }

            #[inline]
            fn axpy<S: Simd>(simd: S, alpha: f32, x: &[$element], y: &mut [f32]) {
                simd.$axpy(alpha, x, y)
            }
        }
    };
}

impl_row_element!(f32, dot, axpy);
impl_row_element!(f16, dot_f16, axpy_f16);
impl_row_element!(bf16, dot_bf16, axpy_bf16);

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

    /// Converts `x` to f32 into `y`.
    fn widen_f16(self, x: &[f16], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y = x.to_f32();
        }
    }

    /// Converts `x` to f32 into `y`.
    fn widen_bf16(self, x: &[bf16], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y = x.to_f32();
        }
    }

    /// Computes the scores of a few query rows against a tile of key rows, neither
    /// transposed: `s[r * s_row_stride + j] = scale * sum_d q[r * head_dim + d] *
    /// k[j * k_row_stride + d]`. Decoding scores a handful of query rows per kv head, too
    /// few for the 64-query tiles of [`Simd::qk_tile`].
    ///
    /// # Shapes
    /// `q: [rows, head_dim]` with `rows = q.len() / head_dim`, key row `j < cols` at
    /// `k[j * k_row_stride..][..head_dim]`, `s: [rows, s_row_stride]`. Short slices shrink
    /// `rows` and `cols` to what fits, and `cols` is at most `s_row_stride`.
    #[allow(clippy::too_many_arguments)]
    fn qk_rows(
        self,
        q: &[f32],
        k: Rows<'_>,
        k_row_stride: usize,
        cols: usize,
        head_dim: usize,
        scale: f32,
        s: &mut [f32],
        s_row_stride: usize,
    ) {
        match_rows!(k, |k| portable::qk_rows_by_dot(
            self,
            q,
            k,
            k_row_stride,
            cols,
            head_dim,
            scale,
            s,
            s_row_stride
        ))
    }

    /// Computes a transposed score tile: `st[j][i] = scale * sum_d k[j][d] * qt[d][i]`.
    ///
    /// # Shapes
    /// `qt: [head_dim, TILE_Q]` (queries transposed, zero-padded), key row `j < cols` at
    /// `k[j * k_row_stride..][..head_dim]`, `st: [cols, TILE_Q]`, `cols <= TILE_KV`.
    /// When a slice is shorter than its shape, `cols` shrinks to the key rows that fit,
    /// and a short `qt` computes nothing.
    #[allow(clippy::too_many_arguments)]
    fn qk_tile(
        self,
        qt: &[f32],
        k: &[f32],
        k_row_stride: usize,
        cols: usize,
        head_dim: usize,
        scale: f32,
        st: &mut [f32],
    );

    /// Returns true when [`Simd::qk_tile_bf16`], [`Simd::pack_v_bf16`] and
    /// [`Simd::pv_tile_bf16`] use native bf16 instructions (AVX512_BF16 `vdpbf16ps`), so
    /// bf16 inputs should take that path. The other tokens run them in plain Rust.
    fn has_bf16_dot(self) -> bool {
        false
    }

    /// Computes a transposed score tile from bf16 inputs:
    /// `st[j][i] = scale * sum_d k[j][d] * q[i][d]`, products and sums in f32.
    ///
    /// # Shapes
    /// `qp: [ceil(head_dim / 2), TILE_Q, 2]`, the queries in pairs of consecutive
    /// head_dim elements (the last pair zero-padded for odd head_dim); key row
    /// `j < cols` at `k[j * k_row_stride..][..head_dim]`; `st: [cols, TILE_Q]`. Short
    /// slices shrink `cols`; a short `qp` computes nothing.
    #[allow(clippy::too_many_arguments)]
    fn qk_tile_bf16(
        self,
        qp: &[bf16],
        k: &[bf16],
        k_row_stride: usize,
        cols: usize,
        head_dim: usize,
        scale: f32,
        st: &mut [f32],
    ) {
        portable::qk_tile_bf16(qp, k, k_row_stride, cols, head_dim, scale, st)
    }

    /// Packs bf16 value rows for [`Simd::pv_tile_bf16`] in pairs of consecutive keys,
    /// interleaved along head_dim: `vp[j / 2][d][j % 2] = v[j * v_row_stride + d]`. When
    /// `cols` is odd, the second half of the last pair is zero.
    ///
    /// # Shapes
    /// Value row `j < cols` at `v[j * v_row_stride..][..head_dim]`, `vp: [ceil(cols / 2),
    /// head_dim, 2]`, `cols <= TILE_KV`. Short slices shrink `cols` to the rows that fit.
    fn pack_v_bf16(
        self,
        v: &[bf16],
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        vp: &mut [bf16],
    ) {
        portable::pack_v_bf16(v, v_row_stride, cols, head_dim, vp)
    }

    /// Accumulates `o[i][d] += sum_j bf16(pt[j][i]) * v[j][d]` for `j < cols`: each
    /// probability is rounded to bf16 (to nearest even), as FlashAttention-2's CUDA
    /// kernel converts P to the input type, and products and sums are f32. On AVX512_BF16,
    /// `vcvtne2ps2bf16` and `vdpbf16ps` treat subnormal inputs as zero and flush
    /// subnormal results to zero (Intel SDM), which the plain Rust version does not.
    ///
    /// # Shapes
    /// `pt: [cols, TILE_Q]`, `vp: [ceil(cols / 2), head_dim, 2]` as written by
    /// [`Simd::pack_v_bf16`], `o: [rows, head_dim]` with `rows = o.len() / head_dim <=
    /// TILE_Q`. Short slices shrink `cols` and `rows` to what fits.
    fn pv_tile_bf16(self, pt: &[f32], vp: &[bf16], cols: usize, head_dim: usize, o: &mut [f32]) {
        portable::pv_tile_bf16(pt, vp, cols, head_dim, o)
    }

    /// Runs one online-softmax step over the key axis of a transposed score tile.
    ///
    /// For each query column `i`: `m' = max(m[i], max_j st[j][i])`, `st[j][i] =
    /// exp(st[j][i] - m')`, `correction[i] = exp(m[i] - m')`, `l[i] = l[i] *
    /// correction[i] + sum_j st[j][i]`, `m[i] = m'`. A column whose scores are all
    /// -inf so far keeps `m = -inf`, `l = 0` and gets probabilities 0, never NaN.
    ///
    /// # Shapes
    /// `st: [cols, TILE_Q]`; `m, l, correction: [TILE_Q]`. Short slices shrink `cols`;
    /// a short `m`, `l` or `correction` computes nothing.
    fn softmax_tile(
        self,
        st: &mut [f32],
        cols: usize,
        m: &mut [f32],
        l: &mut [f32],
        correction: &mut [f32],
    );

    /// Accumulates `o[i][d] += sum_j pt[j][i] * v[j * v_row_stride + d]` for `j < cols`.
    ///
    /// # Shapes
    /// `pt: [cols, TILE_Q]`, value row `j` at `v[j * v_row_stride..][..head_dim]`,
    /// `o: [rows, head_dim]` with `rows = o.len() / head_dim <= TILE_Q`. Short slices
    /// shrink `cols` and `rows` to what fits.
    fn pv_tile(
        self,
        pt: &[f32],
        v: Rows<'_>,
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        o: &mut [f32],
    ) {
        match_rows!(v, |v| portable::pv_tile_by_axpy(
            self,
            pt,
            v,
            v_row_stride,
            cols,
            head_dim,
            o
        ))
    }

    /// Accumulates `o[r][d] += sum_j p[r * p_row_stride + j] * v[j * v_row_stride + d]`
    /// for `j < cols`: [`Simd::pv_tile`] with the probabilities row-major, as decoding
    /// computes them, so they need no transposition.
    ///
    /// # Shapes
    /// `p: [rows, p_row_stride]`, value row `j` at `v[j * v_row_stride..][..head_dim]`,
    /// `o: [rows, head_dim]` with `rows = o.len() / head_dim`. Short slices shrink
    /// `rows` and `cols` to what fits, and `cols` is at most `p_row_stride`.
    #[allow(clippy::too_many_arguments)]
    fn pv_rows(
        self,
        p: &[f32],
        p_row_stride: usize,
        v: Rows<'_>,
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        o: &mut [f32],
    ) {
        match_rows!(v, |v| portable::pv_rows_by_axpy(
            self,
            p,
            p_row_stride,
            v,
            v_row_stride,
            cols,
            head_dim,
            o
        ))
    }
}

/// Returns how many rows of a strided `[rows, head_dim]` slice of `len` elements fit,
/// up to `rows`.
#[inline]
fn strided_rows(len: usize, row_stride: usize, rows: usize, head_dim: usize) -> usize {
    if len < head_dim {
        return 0;
    }
    // Row r needs r * row_stride + head_dim <= len; with stride 0 every row fits.
    let fitting = (len - head_dim)
        .checked_div(row_stride)
        .map_or(rows, |last| last + 1);
    rows.min(fitting)
}

/// Returns `(rows, cols)` that fit every slice of [`Simd::qk_rows`].
#[inline]
fn qk_rows_shape<T>(
    q: &[f32],
    k: &[T],
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    s: &[f32],
    s_row_stride: usize,
) -> (usize, usize) {
    if head_dim == 0 {
        return (0, 0);
    }
    let cols = strided_rows(k.len(), k_row_stride, cols.min(s_row_stride), head_dim);
    let rows = strided_rows(s.len(), s_row_stride, q.len() / head_dim, cols);
    (rows, cols)
}

/// Returns the key rows that fit every slice of a bf16 qk tile, or 0 when `qp` is short.
#[inline]
fn qk_tile_bf16_cols(
    qp: &[bf16],
    k: &[bf16],
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    st: &[f32],
) -> usize {
    if head_dim == 0 || qp.len() < head_dim.div_ceil(2) * 2 * TILE_Q {
        return 0;
    }
    strided_rows(k.len(), k_row_stride, cols.min(TILE_KV), head_dim).min(st.len() / TILE_Q)
}

/// Returns the key rows that fit every slice of a qk tile, or 0 when `qt` is short.
#[inline]
fn qk_tile_cols(
    qt: &[f32],
    k: &[f32],
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    st: &[f32],
) -> usize {
    if head_dim == 0 || qt.len() < head_dim * TILE_Q {
        return 0;
    }
    strided_rows(k.len(), k_row_stride, cols.min(TILE_KV), head_dim).min(st.len() / TILE_Q)
}

/// Returns `(rows, cols)` that fit every slice of [`Simd::pv_rows`].
#[inline]
fn pv_rows_shape<T>(
    p: &[f32],
    p_row_stride: usize,
    v: &[T],
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    o: &[f32],
) -> (usize, usize) {
    if head_dim == 0 {
        return (0, 0);
    }
    let cols = strided_rows(v.len(), v_row_stride, cols.min(p_row_stride), head_dim);
    let rows = strided_rows(p.len(), p_row_stride, o.len() / head_dim, cols);
    (rows, cols)
}

/// Returns `(rows, cols)` that fit every slice of a pv tile.
#[inline]
fn pv_tile_shape<T>(
    pt: &[f32],
    v: &[T],
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    o: &[f32],
) -> (usize, usize) {
    if head_dim == 0 {
        return (0, 0);
    }
    let cols =
        strided_rows(v.len(), v_row_stride, cols.min(TILE_KV), head_dim).min(pt.len() / TILE_Q);
    let rows = (o.len() / head_dim).min(TILE_Q);
    (rows, cols)
}

/// Returns the key rows of a bf16 value block that fit both `v` and `vp`.
#[inline]
fn pack_v_bf16_cols(
    v: &[bf16],
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    vp: &[bf16],
) -> usize {
    if head_dim == 0 {
        return 0;
    }
    let packed_rows = 2 * (vp.len() / (2 * head_dim));
    strided_rows(v.len(), v_row_stride, cols.min(TILE_KV), head_dim).min(packed_rows)
}

/// Returns `(rows, cols)` that fit every slice of a bf16 pv tile.
#[inline]
fn pv_tile_bf16_shape(
    pt: &[f32],
    vp: &[bf16],
    cols: usize,
    head_dim: usize,
    o: &[f32],
) -> (usize, usize) {
    if head_dim == 0 {
        return (0, 0);
    }
    let packed_rows = 2 * (vp.len() / (2 * head_dim));
    let cols = cols.min(TILE_KV).min(pt.len() / TILE_Q).min(packed_rows);
    let rows = (o.len() / head_dim).min(TILE_Q);
    (rows, cols)
}

/// Returns the key rows a softmax tile may touch, or 0 when a per-query slice is short.
#[inline]
fn softmax_tile_cols(st: &[f32], cols: usize, m: &[f32], l: &[f32], correction: &[f32]) -> usize {
    if m.len() < TILE_Q || l.len() < TILE_Q || correction.len() < TILE_Q {
        return 0;
    }
    cols.min(st.len() / TILE_Q)
}

/// An operation generic over the instruction set, run by [`dispatch`].
pub trait SimdOp {
    /// The result type of the operation.
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

/// Asks the CPU to start loading `x` into its L2 cache, one request per 64-byte line, so
/// that a later pass finds it there. A hint only: results do not change, and on other
/// architectures than x86-64 it does nothing.
pub(crate) fn prefetch<T>(x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let start = x.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(x)).step_by(64) {
            // SAFETY: SSE is part of x86-64; `start + offset` lies inside `x`, and a
            // prefetch neither faults nor changes memory or registers.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

#[cfg(test)]
mod tests;
