//! AVX2 + FMA + F16C implementation.
//!
//! Every function here is `#[target_feature(enable = "avx2,fma,f16c")]`; the only way to
//! reach them is through an [`Avx2Fma`] token, which [`Avx2Fma::new`] creates only after
//! runtime detection.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::portable::{pv_rows_by_axpy, pv_tile_by_axpy};
use super::{
    pv_rows_shape, pv_tile_shape, qk_tile_cols, sealed, softmax_tile_cols, Isa, Rows, Simd, TILE_Q,
};

/// The token for AVX2 code with FMA and F16C.
#[derive(Debug, Clone, Copy)]
pub struct Avx2Fma {
    _detected: (),
}

impl Avx2Fma {
    /// Returns the token when this CPU supports AVX2, FMA and F16C.
    pub fn new() -> Option<Self> {
        let detected = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        detected.then_some(Self { _detected: () })
    }
}

impl sealed::Sealed for Avx2Fma {}

const LANES: usize = 8;

impl Simd for Avx2Fma {
    fn isa(self) -> Isa {
        Isa::Avx2Fma
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves avx2, fma and f16c; both pointers are valid for `n` reads.
        unsafe { dot(a.as_ptr(), b.as_ptr(), n) }
    }

    fn dot_f16(self, a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: as for `dot`.
        unsafe { dot_converted(a.as_ptr(), b.as_ptr(), n) }
    }

    fn dot_bf16(self, a: &[f32], b: &[bf16]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: as for `dot`.
        unsafe { dot_converted(a.as_ptr(), b.as_ptr(), n) }
    }

    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves the features; `x` is valid for `n` reads and `y`
        // for `n` reads and writes.
        unsafe { axpy(alpha, x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn axpy_f16(self, alpha: f32, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: as for `axpy`.
        unsafe { axpy_converted(alpha, x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn axpy_bf16(self, alpha: f32, x: &[bf16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: as for `axpy`.
        unsafe { axpy_converted(alpha, x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn widen_f16(self, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves avx2, fma and f16c; `x` is valid for `n` reads and `y`
        // for `n` writes.
        unsafe { widen(x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn widen_bf16(self, x: &[bf16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: as for `widen_f16`.
        unsafe { widen(x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn scale(self, alpha: f32, x: &mut [f32]) {
        // SAFETY: the token proves the features; `x` is valid for its length.
        unsafe { scale(alpha, x.as_mut_ptr(), x.len()) }
    }

    fn max(self, x: &[f32]) -> f32 {
        // SAFETY: the token proves the features; `x` is valid for its length.
        unsafe { max(x.as_ptr(), x.len()) }
    }

    fn exp_sub_sum(self, x: &mut [f32], shift: f32) -> f32 {
        // SAFETY: the token proves the features; `x` is valid for its length.
        unsafe { exp_sub_sum(x.as_mut_ptr(), x.len(), shift) }
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
        // SAFETY: the token proves the features; `qk_tile_cols` guarantees `qt` holds
        // `head_dim * TILE_Q` elements, `k` has `cols` rows of `head_dim` at
        // `k_row_stride`, and `st` contains `cols * TILE_Q` elements.
        unsafe {
            qk_tile(
                qt.as_ptr(),
                k.as_ptr(),
                k_row_stride,
                cols,
                head_dim,
                scale,
                st.as_mut_ptr(),
            )
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
        // SAFETY: the token proves the features; `softmax_tile_cols` guarantees `st`
        // contains `cols * TILE_Q` elements and `m`, `l`, `correction` contain `TILE_Q` each.
        unsafe {
            softmax_tile(
                st.as_mut_ptr(),
                cols,
                m.as_mut_ptr(),
                l.as_mut_ptr(),
                correction.as_mut_ptr(),
            )
        }
    }

    fn pv_tile(
        self,
        pt: &[f32],
        v: Rows<'_>,
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        o: &mut [f32],
    ) {
        let Rows::F32(v) = v else {
            // f16 and bf16 rows take one widening `axpy` per (row, key), as by default.
            return match_rows!(v, |v| pv_tile_by_axpy(
                self,
                pt,
                v,
                v_row_stride,
                cols,
                head_dim,
                o
            ));
        };
        let (rows, cols) = pv_tile_shape(pt, v, v_row_stride, cols, head_dim, o);
        let p = Probs {
            p: pt.as_ptr(),
            token_stride: TILE_Q,
            row_stride: 1,
        };
        // SAFETY: the token proves the features; `pv_tile_shape` guarantees `pt` holds
        // `cols * TILE_Q` elements, `v` has `cols` rows of `head_dim` at
        // `v_row_stride`, `o` contains `rows * head_dim` elements and `rows <= TILE_Q`.
        unsafe {
            pv_tile(
                p,
                v.as_ptr(),
                v_row_stride,
                cols,
                head_dim,
                o.as_mut_ptr(),
                rows,
            )
        }
    }

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
        let Rows::F32(v) = v else {
            // f16 and bf16 rows take one widening `axpy` per (row, key), as by default.
            return match_rows!(v, |v| pv_rows_by_axpy(
                self,
                p,
                p_row_stride,
                v,
                v_row_stride,
                cols,
                head_dim,
                o
            ));
        };
        let (rows, cols) = pv_rows_shape(p, p_row_stride, v, v_row_stride, cols, head_dim, o);
        let probs = Probs {
            p: p.as_ptr(),
            token_stride: 1,
            row_stride: p_row_stride,
        };
        // SAFETY: the token proves the features. `pv_rows_shape` guarantees that row
        // `r < rows` of `p` has `cols` elements at `r * p_row_stride`, that `v` has
        // `cols` rows of `head_dim` at `v_row_stride`, and that `o` contains
        // `rows * head_dim` elements.
        unsafe {
            pv_tile(
                probs,
                v.as_ptr(),
                v_row_stride,
                cols,
                head_dim,
                o.as_mut_ptr(),
                rows,
            )
        }
    }
}

/// A 16-bit storage type that widens 8 lanes at a time to f32.
trait Widen: crate::dtype::Element {
    /// Loads 8 elements from `ptr` as f32.
    ///
    /// # Safety
    /// avx2 and f16c must be available and `ptr` valid for 8 reads.
    unsafe fn load_lanes(ptr: *const Self) -> __m256;
}

impl Widen for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_lanes(ptr: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(ptr.cast()))
    }
}

impl Widen for bf16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_lanes(ptr: *const Self) -> __m256 {
        // A bf16 value is the upper half of the f32 with the same bits.
        let widened = _mm256_cvtepu16_epi32(_mm_loadu_si128(ptr.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(widened))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen<T: Widen>(x: *const T, y: *mut f32, n: usize) {
    let mut i = 0;
    while i + LANES <= n {
        _mm256_storeu_ps(y.add(i), T::load_lanes(x.add(i)));
        i += LANES;
    }
    while i < n {
        *y.add(i) = (*x.add(i)).to_f32();
        i += 1;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn horizontal_sum(x: __m256) -> f32 {
    let halves = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    let single = _mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs));
    _mm_cvtss_f32(single)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 4 * LANES <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let offset = i + u * LANES;
            *acc = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.add(offset)),
                _mm256_loadu_ps(b.add(offset)),
                *acc,
            );
        }
        i += 4 * LANES;
    }
    while i + LANES <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc[0]);
        i += LANES;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut total = horizontal_sum(sum);
    while i < n {
        total += *a.add(i) * *b.add(i);
        i += 1;
    }
    total
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_converted<T: Widen>(a: *const f32, b: *const T, n: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i + 2 * LANES <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), T::load_lanes(b.add(i)), acc[0]);
        acc[1] = _mm256_fmadd_ps(
            _mm256_loadu_ps(a.add(i + LANES)),
            T::load_lanes(b.add(i + LANES)),
            acc[1],
        );
        i += 2 * LANES;
    }
    if i + LANES <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), T::load_lanes(b.add(i)), acc[0]);
        i += LANES;
    }
    let mut total = horizontal_sum(_mm256_add_ps(acc[0], acc[1]));
    while i < n {
        total += *a.add(i) * (*b.add(i)).to_f32();
        i += 1;
    }
    total
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy(alpha: f32, x: *const f32, y: *mut f32, n: usize) {
    let alpha_v = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + LANES <= n {
        let updated = _mm256_fmadd_ps(
            alpha_v,
            _mm256_loadu_ps(x.add(i)),
            _mm256_loadu_ps(y.add(i)),
        );
        _mm256_storeu_ps(y.add(i), updated);
        i += LANES;
    }
    while i < n {
        *y.add(i) += alpha * *x.add(i);
        i += 1;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_converted<T: Widen>(alpha: f32, x: *const T, y: *mut f32, n: usize) {
    let alpha_v = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + LANES <= n {
        let updated = _mm256_fmadd_ps(alpha_v, T::load_lanes(x.add(i)), _mm256_loadu_ps(y.add(i)));
        _mm256_storeu_ps(y.add(i), updated);
        i += LANES;
    }
    while i < n {
        *y.add(i) += alpha * (*x.add(i)).to_f32();
        i += 1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale(alpha: f32, x: *mut f32, n: usize) {
    let alpha_v = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i + LANES <= n {
        _mm256_storeu_ps(x.add(i), _mm256_mul_ps(alpha_v, _mm256_loadu_ps(x.add(i))));
        i += LANES;
    }
    while i < n {
        *x.add(i) *= alpha;
        i += 1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn max(x: *const f32, n: usize) -> f32 {
    let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + LANES <= n {
        acc = _mm256_max_ps(acc, _mm256_loadu_ps(x.add(i)));
        i += LANES;
    }
    let mut lanes = [0.0f32; LANES];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut result = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    while i < n {
        result = result.max(*x.add(i));
        i += 1;
    }
    result
}

/// Computes `exp(x)` per lane, as the AVX-512 version does but building `2^n` from its
/// exponent bits. Lanes below -87 (where `2^n` would leave the normal range) return 0,
/// so `exp(-inf) = 0` exactly.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp(x: __m256) -> __m256 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let clamped = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        clamped,
        _mm256_set1_ps(LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), clamped);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let coefficients = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        1.0 / 2.0,
        1.0,
        1.0,
    ];
    let mut poly = _mm256_set1_ps(1.0 / 5040.0);
    for c in coefficients {
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
    }
    let exponent = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    let power = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(exponent));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(poly, power))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp_sub_sum(x: *mut f32, n: usize, shift: f32) -> f32 {
    let shift_v = _mm256_set1_ps(shift);
    let mut sum = _mm256_setzero_ps();
    let mut i = 0;
    while i + LANES <= n {
        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(x.add(i)), shift_v));
        _mm256_storeu_ps(x.add(i), e);
        sum = _mm256_add_ps(sum, e);
        i += LANES;
    }
    let mut total = horizontal_sum(sum);
    while i < n {
        let e = (*x.add(i) - shift).exp();
        *x.add(i) = e;
        total += e;
        i += 1;
    }
    total
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qk_tile(
    qt: *const f32,
    k: *const f32,
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    scale: f32,
    st: *mut f32,
) {
    // Each pass covers 32 of the 64 queries, so 2 keys x 4 vectors of accumulators
    // plus 4 query vectors fit in the 16 registers.
    for half in 0..2 {
        let qt_half = qt.add(half * 4 * LANES);
        let st_half = st.add(half * 4 * LANES);
        let mut col = 0;
        while col + 2 <= cols {
            qk_keys::<2>(
                qt_half,
                k.add(col * k_row_stride),
                k_row_stride,
                head_dim,
                scale,
                st_half.add(col * TILE_Q),
            );
            col += 2;
        }
        if col < cols {
            qk_keys::<1>(
                qt_half,
                k.add(col * k_row_stride),
                k_row_stride,
                head_dim,
                scale,
                st_half.add(col * TILE_Q),
            );
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qk_keys<const KEYS: usize>(
    qt: *const f32,
    k: *const f32,
    k_row_stride: usize,
    head_dim: usize,
    scale: f32,
    st: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 4]; KEYS];
    for d in 0..head_dim {
        let qt_row = qt.add(d * TILE_Q);
        let mut queries = [_mm256_setzero_ps(); 4];
        for (c, query) in queries.iter_mut().enumerate() {
            *query = _mm256_loadu_ps(qt_row.add(c * LANES));
        }
        for (key, acc_row) in acc.iter_mut().enumerate() {
            let k_value = _mm256_set1_ps(*k.add(key * k_row_stride + d));
            for (acc, query) in acc_row.iter_mut().zip(queries) {
                *acc = _mm256_fmadd_ps(k_value, query, *acc);
            }
        }
    }
    let scale_v = _mm256_set1_ps(scale);
    for (key, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            _mm256_storeu_ps(
                st.add(key * TILE_Q + c * LANES),
                _mm256_mul_ps(*acc, scale_v),
            );
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_tile(st: *mut f32, cols: usize, m: *mut f32, l: *mut f32, correction: *mut f32) {
    let negative_infinity = _mm256_set1_ps(f32::NEG_INFINITY);
    for offset in (0..TILE_Q).step_by(LANES) {
        let m_old = _mm256_loadu_ps(m.add(offset));
        let mut block_max = negative_infinity;
        for j in 0..cols {
            block_max = _mm256_max_ps(block_max, _mm256_loadu_ps(st.add(j * TILE_Q + offset)));
        }
        let m_new = _mm256_max_ps(m_old, block_max);
        // With nothing visible so far, subtract 0 instead of -inf: exp(-inf - 0) = 0,
        // where exp(-inf - -inf) would be NaN.
        let nothing_visible = _mm256_cmp_ps::<_CMP_EQ_OQ>(m_new, negative_infinity);
        let shift = _mm256_blendv_ps(m_new, _mm256_setzero_ps(), nothing_visible);
        let mut sum = _mm256_setzero_ps();
        for j in 0..cols {
            let p = exp(_mm256_sub_ps(
                _mm256_loadu_ps(st.add(j * TILE_Q + offset)),
                shift,
            ));
            _mm256_storeu_ps(st.add(j * TILE_Q + offset), p);
            sum = _mm256_add_ps(sum, p);
        }
        let factor = exp(_mm256_sub_ps(m_old, shift));
        _mm256_storeu_ps(correction.add(offset), factor);
        _mm256_storeu_ps(
            l.add(offset),
            _mm256_fmadd_ps(_mm256_loadu_ps(l.add(offset)), factor, sum),
        );
        _mm256_storeu_ps(m.add(offset), m_new);
    }
}

/// Probabilities of a value product: row `r`, key `j` at `p[j * token_stride + r *
/// row_stride]`. [`Simd::pv_tile`] has `(TILE_Q, 1)`, [`Simd::pv_rows`] `(1, p_row_stride)`.
#[derive(Clone, Copy)]
struct Probs {
    p: *const f32,
    token_stride: usize,
    row_stride: usize,
}

impl Probs {
    /// Returns the probability of row `row` and key `kv`.
    ///
    /// # Safety
    /// The element must lie inside the allocation that `p` points into.
    #[inline]
    unsafe fn get(self, row: usize, kv: usize) -> f32 {
        *self.p.add(kv * self.token_stride + row * self.row_stride)
    }
}

/// Accumulates `o[r][d] += sum_j p(r, j) * v[j * v_row_stride + d]` for `r < rows`,
/// `j < cols`, `d < head_dim`.
///
/// # Safety
/// avx2, fma and f16c must be available. `p` must contain `rows` rows of `cols`
/// probabilities, `v` must contain `cols` rows of `head_dim` at `v_row_stride`, and
/// `o` must contain `rows * head_dim` elements.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pv_tile(
    p: Probs,
    v: *const f32,
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    o: *mut f32,
    rows: usize,
) {
    // Full 8-lane vectors in chunks of up to 4, then the last head_dim % 8 columns
    // one at a time.
    let full = head_dim - head_dim % LANES;
    let mut d0 = 0;
    while d0 < full {
        let vectors = ((full - d0) / LANES).min(4);
        let mut row = 0;
        while row < rows {
            let step = if row + 2 <= rows { 2 } else { 1 };
            let chunk = ValueChunk {
                p: Probs {
                    p: p.p.add(row * p.row_stride),
                    ..p
                },
                v: v.add(d0),
                v_row_stride,
                cols,
                o: o.add(row * head_dim + d0),
                o_row_stride: head_dim,
            };
            match (step, vectors) {
                (2, 1) => pv_block::<2, 1>(chunk),
                (2, 2) => pv_block::<2, 2>(chunk),
                (2, 3) => pv_block::<2, 3>(chunk),
                (2, _) => pv_block::<2, 4>(chunk),
                (_, 1) => pv_block::<1, 1>(chunk),
                (_, 2) => pv_block::<1, 2>(chunk),
                (_, 3) => pv_block::<1, 3>(chunk),
                (_, _) => pv_block::<1, 4>(chunk),
            }
            row += step;
        }
        d0 += vectors * LANES;
    }
    for row in 0..rows {
        for d in full..head_dim {
            let mut acc = *o.add(row * head_dim + d);
            for kv in 0..cols {
                acc += p.get(row, kv) * *v.add(kv * v_row_stride + d);
            }
            *o.add(row * head_dim + d) = acc;
        }
    }
}

/// One block of a value tile product: pointers already offset to its first row and
/// head_dim column.
#[derive(Clone, Copy)]
struct ValueChunk {
    p: Probs,
    v: *const f32,
    v_row_stride: usize,
    cols: usize,
    o: *mut f32,
    o_row_stride: usize,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pv_block<const ROWS: usize, const VECTORS: usize>(chunk: ValueChunk) {
    let ValueChunk {
        p,
        v,
        v_row_stride,
        cols,
        o,
        o_row_stride,
    } = chunk;
    let mut acc = [[_mm256_setzero_ps(); VECTORS]; ROWS];
    for (row, acc_row) in acc.iter_mut().enumerate() {
        for (c, acc) in acc_row.iter_mut().enumerate() {
            *acc = _mm256_loadu_ps(o.add(row * o_row_stride + c * LANES));
        }
    }
    for kv in 0..cols {
        let v_row = v.add(kv * v_row_stride);
        let mut values = [_mm256_setzero_ps(); VECTORS];
        for (c, value) in values.iter_mut().enumerate() {
            *value = _mm256_loadu_ps(v_row.add(c * LANES));
        }
        for (row, acc_row) in acc.iter_mut().enumerate() {
            let weight = _mm256_set1_ps(p.get(row, kv));
            for (acc, value) in acc_row.iter_mut().zip(values) {
                *acc = _mm256_fmadd_ps(weight, value, *acc);
            }
        }
    }
    for (row, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            _mm256_storeu_ps(o.add(row * o_row_stride + c * LANES), *acc);
        }
    }
}
