//! AVX2 + FMA + F16C implementation.
//!
//! Every function here is `#[target_feature(enable = "avx2,fma,f16c")]`; the only way to
//! reach them is through an [`Avx2Fma`] token, which [`Avx2Fma::new`] creates only after
//! runtime detection.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::{pv_tile_shape, qk_tile_rows, sealed, Isa, Simd, TILE_KV};

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

    fn qk_tile(self, q: &[f32], kt: &[f32], scale: f32, head_dim: usize, s: &mut [f32]) {
        let rows = qk_tile_rows(q, kt, head_dim, s);
        // SAFETY: the token proves the features; `qk_tile_rows` guarantees `q` holds
        // `rows * head_dim`, `kt` holds `head_dim * TILE_KV` and `s` holds
        // `rows * TILE_KV` elements.
        unsafe {
            qk_tile(
                q.as_ptr(),
                kt.as_ptr(),
                scale,
                head_dim,
                s.as_mut_ptr(),
                rows,
            )
        }
    }

    fn pv_tile(self, p: &[f32], v: &[f32], cols: usize, head_dim: usize, o: &mut [f32]) {
        let (rows, cols) = pv_tile_shape(p, v, cols, head_dim, o);
        // SAFETY: the token proves the features; `pv_tile_shape` guarantees `p` holds
        // `rows * TILE_KV`, `v` holds `cols * head_dim` and `o` holds
        // `rows * head_dim` elements.
        unsafe { pv_tile(p.as_ptr(), v.as_ptr(), cols, head_dim, o.as_mut_ptr(), rows) }
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
    q: *const f32,
    kt: *const f32,
    scale: f32,
    head_dim: usize,
    s: *mut f32,
    rows: usize,
) {
    // Each pass covers 32 of the 64 keys, so 2 rows x 4 vectors of accumulators
    // plus 4 key vectors fit in the 16 registers.
    for half in 0..2 {
        let kt_half = kt.add(half * 4 * LANES);
        let s_half = s.add(half * 4 * LANES);
        let mut row = 0;
        while row + 2 <= rows {
            qk_rows::<2>(
                q.add(row * head_dim),
                kt_half,
                scale,
                head_dim,
                s_half.add(row * TILE_KV),
            );
            row += 2;
        }
        if row < rows {
            qk_rows::<1>(
                q.add(row * head_dim),
                kt_half,
                scale,
                head_dim,
                s_half.add(row * TILE_KV),
            );
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn qk_rows<const ROWS: usize>(
    q: *const f32,
    kt: *const f32,
    scale: f32,
    head_dim: usize,
    s: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 4]; ROWS];
    for d in 0..head_dim {
        let kt_row = kt.add(d * TILE_KV);
        let mut keys = [_mm256_setzero_ps(); 4];
        for (c, key) in keys.iter_mut().enumerate() {
            *key = _mm256_loadu_ps(kt_row.add(c * LANES));
        }
        for (row, acc_row) in acc.iter_mut().enumerate() {
            let q_value = _mm256_set1_ps(*q.add(row * head_dim + d));
            for (acc, key) in acc_row.iter_mut().zip(keys) {
                *acc = _mm256_fmadd_ps(q_value, key, *acc);
            }
        }
    }
    let scale_v = _mm256_set1_ps(scale);
    for (row, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            _mm256_storeu_ps(
                s.add(row * TILE_KV + c * LANES),
                _mm256_mul_ps(*acc, scale_v),
            );
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pv_tile(
    p: *const f32,
    v: *const f32,
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
            let p_rows = p.add(row * TILE_KV);
            let v_chunk = v.add(d0);
            let o_rows = o.add(row * head_dim + d0);
            match (step, vectors) {
                (2, 1) => pv_rows::<2, 1>(p_rows, v_chunk, cols, head_dim, o_rows),
                (2, 2) => pv_rows::<2, 2>(p_rows, v_chunk, cols, head_dim, o_rows),
                (2, 3) => pv_rows::<2, 3>(p_rows, v_chunk, cols, head_dim, o_rows),
                (2, _) => pv_rows::<2, 4>(p_rows, v_chunk, cols, head_dim, o_rows),
                (_, 1) => pv_rows::<1, 1>(p_rows, v_chunk, cols, head_dim, o_rows),
                (_, 2) => pv_rows::<1, 2>(p_rows, v_chunk, cols, head_dim, o_rows),
                (_, 3) => pv_rows::<1, 3>(p_rows, v_chunk, cols, head_dim, o_rows),
                (_, _) => pv_rows::<1, 4>(p_rows, v_chunk, cols, head_dim, o_rows),
            }
            row += step;
        }
        d0 += vectors * LANES;
    }
    for row in 0..rows {
        for d in full..head_dim {
            let mut acc = *o.add(row * head_dim + d);
            for kv in 0..cols {
                acc += *p.add(row * TILE_KV + kv) * *v.add(kv * head_dim + d);
            }
            *o.add(row * head_dim + d) = acc;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pv_rows<const ROWS: usize, const VECTORS: usize>(
    p: *const f32,
    v: *const f32,
    cols: usize,
    head_dim: usize,
    o: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); VECTORS]; ROWS];
    for (row, acc_row) in acc.iter_mut().enumerate() {
        for (c, acc) in acc_row.iter_mut().enumerate() {
            *acc = _mm256_loadu_ps(o.add(row * head_dim + c * LANES));
        }
    }
    for kv in 0..cols {
        let v_row = v.add(kv * head_dim);
        let mut values = [_mm256_setzero_ps(); VECTORS];
        for (c, value) in values.iter_mut().enumerate() {
            *value = _mm256_loadu_ps(v_row.add(c * LANES));
        }
        for (row, acc_row) in acc.iter_mut().enumerate() {
            let weight = _mm256_set1_ps(*p.add(row * TILE_KV + kv));
            for (acc, value) in acc_row.iter_mut().zip(values) {
                *acc = _mm256_fmadd_ps(weight, value, *acc);
            }
        }
    }
    for (row, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            _mm256_storeu_ps(o.add(row * head_dim + c * LANES), *acc);
        }
    }
}
