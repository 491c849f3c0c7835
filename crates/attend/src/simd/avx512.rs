//! AVX-512 Foundation implementation.
//!
//! Every function here is `#[target_feature(enable = "avx512f")]`; the only way to reach
//! them is through an [`Avx512`] token, which [`Avx512::new`] creates only after
//! runtime detection.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::{
    pack_v_bf16_cols, pv_rows_shape, pv_tile_bf16_shape, pv_tile_shape, qk_rows_shape,
    qk_tile_bf16_cols, qk_tile_cols, sealed, softmax_tile_cols, Isa, Rows, Simd, TILE_KV, TILE_Q,
};

/// The token for AVX-512 Foundation code, noting whether the bf16 tiles can run too.
#[derive(Debug, Clone, Copy)]
pub struct Avx512 {
    /// AVX512_BF16 for `vdpbf16ps` and `vcvtne2ps2bf16`, with AVX512BW and AVX512VL for
    /// the 16-bit shuffles and masked loads that pack bf16 pairs.
    bf16: bool,
}

impl Avx512 {
    /// Returns the token when this CPU supports AVX-512 Foundation.
    pub fn new() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then(|| Self {
            bf16: is_x86_feature_detected!("avx512bf16")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl"),
        })
    }
}

impl sealed::Sealed for Avx512 {}

const LANES: usize = 16;

impl Simd for Avx512 {
    fn isa(self) -> Isa {
        Isa::Avx512
    }

    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves avx512f; both pointers are valid for `n` reads.
        unsafe { dot(a.as_ptr(), b.as_ptr(), n) }
    }

    fn dot_f16(self, a: &[f32], b: &[f16]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves avx512f; both pointers are valid for `n` reads.
        unsafe { dot_converted(a.as_ptr(), b.as_ptr(), n) }
    }

    fn dot_bf16(self, a: &[f32], b: &[bf16]) -> f32 {
        let n = a.len().min(b.len());
        // SAFETY: the token proves avx512f; both pointers are valid for `n` reads.
        unsafe { dot_converted(a.as_ptr(), b.as_ptr(), n) }
    }

    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves avx512f; `x` is valid for `n` reads and `y` for
        // `n` reads and writes, and they cannot overlap (shared vs unique borrow).
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
        // SAFETY: the token proves avx512f; `x` is valid for `x.len()` reads and writes.
        unsafe { scale(alpha, x.as_mut_ptr(), x.len()) }
    }

    fn max(self, x: &[f32]) -> f32 {
        // SAFETY: the token proves avx512f; `x` is valid for `x.len()` reads.
        unsafe { max(x.as_ptr(), x.len()) }
    }

    fn exp_sub_sum(self, x: &mut [f32], shift: f32) -> f32 {
        // SAFETY: the token proves avx512f; `x` is valid for `x.len()` reads and writes.
        unsafe { exp_sub_sum(x.as_mut_ptr(), x.len(), shift) }
    }

    fn widen_f16(self, x: &[f16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: the token proves avx512f; `x` is valid for `n` reads and `y` for `n`
        // writes.
        unsafe { widen(x.as_ptr(), y.as_mut_ptr(), n) }
    }

    fn widen_bf16(self, x: &[bf16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        // SAFETY: as for `widen_f16`.
        unsafe { widen(x.as_ptr(), y.as_mut_ptr(), n) }
    }

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
        match_rows!(k, |k| self.qk_rows_widened(
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
        // SAFETY: the token proves avx512f; `qk_tile_cols` guarantees `qt` holds
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

    fn has_bf16_dot(self) -> bool {
        self.bf16
    }

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
        if !self.bf16 {
            return super::portable::qk_tile_bf16(qp, k, k_row_stride, cols, head_dim, scale, st);
        }
        let cols = qk_tile_bf16_cols(qp, k, k_row_stride, cols, head_dim, st);
        // SAFETY: the token proves avx512f and, with `self.bf16`, avx512bf16;
        // `qk_tile_bf16_cols` guarantees `qp` contains `ceil(head_dim / 2) * 2 * TILE_Q`
        // elements, `k` has `cols` rows of `head_dim` at `k_row_stride`, and `st`
        // contains `cols * TILE_Q` elements.
        unsafe {
            qk_tile_bf16(
                qp.as_ptr(),
                k.as_ptr(),
                k_row_stride,
                cols,
                head_dim,
                scale,
                st.as_mut_ptr(),
            )
        }
    }

    fn pack_v_bf16(
        self,
        v: &[bf16],
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        vp: &mut [bf16],
    ) {
        if !self.bf16 {
            return super::portable::pack_v_bf16(v, v_row_stride, cols, head_dim, vp);
        }
        let cols = pack_v_bf16_cols(v, v_row_stride, cols, head_dim, vp);
        // SAFETY: the token proves avx512f and, with `self.bf16`, avx512bw and avx512vl.
        // `pack_v_bf16_cols` guarantees that `v` has `cols` rows of `head_dim` at
        // `v_row_stride` and that `vp` contains `ceil(cols / 2) * 2 * head_dim` elements.
        unsafe { pack_v_bf16(v.as_ptr(), v_row_stride, cols, head_dim, vp.as_mut_ptr()) }
    }

    fn pv_tile_bf16(self, pt: &[f32], vp: &[bf16], cols: usize, head_dim: usize, o: &mut [f32]) {
        if !self.bf16 {
            return super::portable::pv_tile_bf16(pt, vp, cols, head_dim, o);
        }
        let (rows, cols) = pv_tile_bf16_shape(pt, vp, cols, head_dim, o);
        // SAFETY: the token proves avx512f and, with `self.bf16`, avx512bw and
        // avx512bf16. `pv_tile_bf16_shape` guarantees `cols <= TILE_KV` and `rows <=
        // TILE_Q`, and that `pt` contains `cols * TILE_Q` elements, `vp` contains
        // `ceil(cols / 2) * 2 * head_dim` and `o` contains `rows * head_dim`.
        unsafe {
            pv_tile_bf16(
                pt.as_ptr(),
                vp.as_ptr(),
                cols,
                head_dim,
                o.as_mut_ptr(),
                rows,
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
        // SAFETY: the token proves avx512f; `softmax_tile_cols` guarantees `st` holds
        // `cols * TILE_Q` elements and `m`, `l`, `correction` contain `TILE_Q` each.
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
        match_rows!(v, |v| self.pv_tile_widened(
            pt,
            v,
            v_row_stride,
            cols,
            head_dim,
            o
        ))
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
        match_rows!(v, |v| self.pv_rows_widened(
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

impl Avx512 {
    /// [`Simd::qk_rows`] over f32, f16 or bf16 keys; 16-bit keys are widened in
    /// registers.
    #[allow(clippy::too_many_arguments)]
    fn qk_rows_widened<T: Widen>(
        self,
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
        let block = ScoreRows {
            q: q.as_ptr(),
            k: k.as_ptr(),
            k_row_stride,
            cols,
            head_dim,
            scale,
            s: s.as_mut_ptr(),
            s_row_stride,
        };
        // SAFETY: the token proves avx512f. `qk_rows_shape` guarantees that `q` contains
        // `rows * head_dim` elements and `k` has `cols` rows of `head_dim` at
        // `k_row_stride`. It also guarantees that row `r < rows` of `s` has `cols`
        // elements at `r * s_row_stride`.
        unsafe { qk_rows(block, rows) }
    }

    /// [`Simd::pv_tile`] over f32, f16 or bf16 values; 16-bit values are widened in
    /// registers.
    fn pv_tile_widened<T: Widen>(
        self,
        pt: &[f32],
        v: &[T],
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        o: &mut [f32],
    ) {
        let (rows, cols) = pv_tile_shape(pt, v, v_row_stride, cols, head_dim, o);
        let tile = ValueTile {
            p: pt.as_ptr(),
            p_token_stride: TILE_Q,
            p_row_stride: 1,
            v: v.as_ptr(),
            v_row_stride,
            cols,
            o: o.as_mut_ptr(),
            head_dim,
        };
        // SAFETY: the token proves avx512f; `pv_tile_shape` guarantees `pt` holds
        // `cols * TILE_Q` elements, `v` has `cols` rows of `head_dim` at
        // `v_row_stride`, `o` contains `rows * head_dim` elements and `rows <= TILE_Q`.
        unsafe { pv_tile(tile, rows) }
    }

    /// [`Simd::pv_rows`] over f32, f16 or bf16 values; 16-bit values are widened in
    /// registers.
    #[allow(clippy::too_many_arguments)]
    fn pv_rows_widened<T: Widen>(
        self,
        p: &[f32],
        p_row_stride: usize,
        v: &[T],
        v_row_stride: usize,
        cols: usize,
        head_dim: usize,
        o: &mut [f32],
    ) {
        let (rows, cols) = pv_rows_shape(p, p_row_stride, v, v_row_stride, cols, head_dim, o);
        let tile = ValueTile {
            p: p.as_ptr(),
            p_token_stride: 1,
            p_row_stride,
            v: v.as_ptr(),
            v_row_stride,
            cols,
            o: o.as_mut_ptr(),
            head_dim,
        };
        // SAFETY: the token proves avx512f. `pv_rows_shape` guarantees that row
        // `r < rows` of `p` has `cols` elements at `r * p_row_stride`, that `v` has
        // `cols` rows of `head_dim` at `v_row_stride`, and that `o` contains
        // `rows * head_dim` elements.
        unsafe { pv_tile(tile, rows) }
    }
}

/// Returns a mask with the low `count` lanes set (`count <= 16`).
#[inline]
fn lane_mask(count: usize) -> __mmask16 {
    ((1u32 << count) - 1) as __mmask16
}

/// A storage type that loads 16 lanes at a time as f32: f32 itself, or a 16-bit type
/// widened on load.
trait Widen: crate::dtype::Element {
    /// Loads 16 elements from `ptr` as f32.
    ///
    /// # Safety
    /// avx512f must be available and `ptr` valid for 16 reads.
    unsafe fn load_lanes(ptr: *const Self) -> __m512;

    /// Loads the low lanes that `mask` selects from `ptr` as f32 and sets the others to 0.
    ///
    /// # Safety
    /// avx512f must be available, `mask` must select the low `mask.count_ones()` lanes,
    /// and `ptr` must be valid for that many reads.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_lanes_masked(ptr: *const Self, mask: __mmask16) -> __m512 {
        if mask == 0xFFFF {
            return Self::load_lanes(ptr);
        }
        // A masked 16-bit load needs AVX512BW, which the token does not promise: copy
        // the selected elements into a zero-padded block instead. Only a head_dim that is
        // not a multiple of 16 comes here.
        let mut block = [Self::default(); LANES];
        std::ptr::copy_nonoverlapping(ptr, block.as_mut_ptr(), mask.count_ones() as usize);
        Self::load_lanes(block.as_ptr())
    }
}

impl Widen for f32 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_lanes(ptr: *const Self) -> __m512 {
        _mm512_loadu_ps(ptr)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_lanes_masked(ptr: *const Self, mask: __mmask16) -> __m512 {
        _mm512_maskz_loadu_ps(mask, ptr)
    }
}

impl Widen for f16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_lanes(ptr: *const Self) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(ptr.cast()))
    }
}

impl Widen for bf16 {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_lanes(ptr: *const Self) -> __m512 {
        // A bf16 value is the upper half of the f32 with the same bits.
        let widened = _mm512_cvtepu16_epi32(_mm256_loadu_si256(ptr.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(widened))
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 4 * LANES <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let offset = i + u * LANES;
            *acc = _mm512_fmadd_ps(
                _mm512_loadu_ps(a.add(offset)),
                _mm512_loadu_ps(b.add(offset)),
                *acc,
            );
        }
        i += 4 * LANES;
    }
    while i + LANES <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc[0]);
        i += LANES;
    }
    if i < n {
        let mask = lane_mask(n - i);
        let x = _mm512_maskz_loadu_ps(mask, a.add(i));
        let y = _mm512_maskz_loadu_ps(mask, b.add(i));
        acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum)
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn dot_converted<T: Widen>(a: *const f32, b: *const T, n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 2];
    let mut i = 0;
    while i + 2 * LANES <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), T::load_lanes(b.add(i)), acc[0]);
        acc[1] = _mm512_fmadd_ps(
            _mm512_loadu_ps(a.add(i + LANES)),
            T::load_lanes(b.add(i + LANES)),
            acc[1],
        );
        i += 2 * LANES;
    }
    if i + LANES <= n {
        acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), T::load_lanes(b.add(i)), acc[0]);
        i += LANES;
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    while i < n {
        sum += *a.add(i) * (*b.add(i)).to_f32();
        i += 1;
    }
    sum
}

#[target_feature(enable = "avx512f")]
unsafe fn widen<T: Widen>(x: *const T, y: *mut f32, n: usize) {
    let mut i = 0;
    while i + LANES <= n {
        _mm512_storeu_ps(y.add(i), T::load_lanes(x.add(i)));
        i += LANES;
    }
    while i < n {
        *y.add(i) = (*x.add(i)).to_f32();
        i += 1;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn axpy(alpha: f32, x: *const f32, y: *mut f32, n: usize) {
    let alpha_v = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i + LANES <= n {
        let updated = _mm512_fmadd_ps(
            alpha_v,
            _mm512_loadu_ps(x.add(i)),
            _mm512_loadu_ps(y.add(i)),
        );
        _mm512_storeu_ps(y.add(i), updated);
        i += LANES;
    }
    if i < n {
        let mask = lane_mask(n - i);
        let x_v = _mm512_maskz_loadu_ps(mask, x.add(i));
        let y_v = _mm512_maskz_loadu_ps(mask, y.add(i));
        _mm512_mask_storeu_ps(y.add(i), mask, _mm512_fmadd_ps(alpha_v, x_v, y_v));
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_converted<T: Widen>(alpha: f32, x: *const T, y: *mut f32, n: usize) {
    let alpha_v = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i + LANES <= n {
        let updated = _mm512_fmadd_ps(alpha_v, T::load_lanes(x.add(i)), _mm512_loadu_ps(y.add(i)));
        _mm512_storeu_ps(y.add(i), updated);
        i += LANES;
    }
    while i < n {
        *y.add(i) += alpha * (*x.add(i)).to_f32();
        i += 1;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn scale(alpha: f32, x: *mut f32, n: usize) {
    let alpha_v = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i + LANES <= n {
        _mm512_storeu_ps(x.add(i), _mm512_mul_ps(alpha_v, _mm512_loadu_ps(x.add(i))));
        i += LANES;
    }
    if i < n {
        let mask = lane_mask(n - i);
        let x_v = _mm512_maskz_loadu_ps(mask, x.add(i));
        _mm512_mask_storeu_ps(x.add(i), mask, _mm512_mul_ps(alpha_v, x_v));
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn max(x: *const f32, n: usize) -> f32 {
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i + LANES <= n {
        acc = _mm512_max_ps(acc, _mm512_loadu_ps(x.add(i)));
        i += LANES;
    }
    if i < n {
        // Lanes outside the mask keep their value from `acc`.
        let tail = _mm512_mask_loadu_ps(acc, lane_mask(n - i), x.add(i));
        acc = _mm512_max_ps(acc, tail);
    }
    _mm512_reduce_max_ps(acc)
}

/// Computes `exp(x)` per lane.
///
/// `exp(x) = 2^n * exp(r)` with `n = round(x / ln 2)` and `|r| <= ln(2) / 2`; `exp(r)` is
/// its Taylor polynomial of degree 7 (truncation error below `0.35^8 / 8! < 6e-9`,
/// under f32's unit roundoff). Inputs are clamped to `[-104, 88]`: below -104 the
/// result rounds to 0 (so `exp(-inf) = 0` exactly), above 88 the softmax never goes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn exp(x: __m512) -> __m512 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let coefficients = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        1.0 / 2.0,
        1.0,
        1.0,
    ];
    let mut poly = _mm512_set1_ps(1.0 / 5040.0);
    for c in coefficients {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(poly, n)
}

#[target_feature(enable = "avx512f")]
unsafe fn exp_sub_sum(x: *mut f32, n: usize, shift: f32) -> f32 {
    let shift_v = _mm512_set1_ps(shift);
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    while i + LANES <= n {
        let e = exp(_mm512_sub_ps(_mm512_loadu_ps(x.add(i)), shift_v));
        _mm512_storeu_ps(x.add(i), e);
        sum = _mm512_add_ps(sum, e);
        i += LANES;
    }
    if i < n {
        let mask = lane_mask(n - i);
        let e = exp(_mm512_sub_ps(
            _mm512_maskz_loadu_ps(mask, x.add(i)),
            shift_v,
        ));
        _mm512_mask_storeu_ps(x.add(i), mask, e);
        sum = _mm512_mask_add_ps(sum, mask, sum, e);
    }
    _mm512_reduce_add_ps(sum)
}

/// Vectors per transposed score row: `TILE_Q / LANES`.
const TILE_VECTORS: usize = TILE_Q / LANES;

#[target_feature(enable = "avx512f")]
unsafe fn qk_tile(
    qt: *const f32,
    k: *const f32,
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    scale: f32,
    st: *mut f32,
) {
    let mut col = 0;
    while col + 6 <= cols {
        qk_keys::<6>(
            qt,
            k.add(col * k_row_stride),
            k_row_stride,
            head_dim,
            scale,
            st.add(col * TILE_Q),
        );
        col += 6;
    }
    if col + 4 <= cols {
        qk_keys::<4>(
            qt,
            k.add(col * k_row_stride),
            k_row_stride,
            head_dim,
            scale,
            st.add(col * TILE_Q),
        );
        col += 4;
    }
    while col < cols {
        qk_keys::<1>(
            qt,
            k.add(col * k_row_stride),
            k_row_stride,
            head_dim,
            scale,
            st.add(col * TILE_Q),
        );
        col += 1;
    }
}

/// Computes the scores of `KEYS` keys against all `TILE_Q` queries; the `KEYS x 4`
/// accumulators stay in registers.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn qk_keys<const KEYS: usize>(
    qt: *const f32,
    k: *const f32,
    k_row_stride: usize,
    head_dim: usize,
    scale: f32,
    st: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); TILE_VECTORS]; KEYS];
    for d in 0..head_dim {
        let qt_row = qt.add(d * TILE_Q);
        let mut queries = [_mm512_setzero_ps(); TILE_VECTORS];
        for (c, query) in queries.iter_mut().enumerate() {
            *query = _mm512_loadu_ps(qt_row.add(c * LANES));
        }
        for (key, acc_row) in acc.iter_mut().enumerate() {
            let k_value = _mm512_set1_ps(*k.add(key * k_row_stride + d));
            for (acc, query) in acc_row.iter_mut().zip(queries) {
                *acc = _mm512_fmadd_ps(k_value, query, *acc);
            }
        }
    }
    let scale_v = _mm512_set1_ps(scale);
    for (key, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            _mm512_storeu_ps(
                st.add(key * TILE_Q + c * LANES),
                _mm512_mul_ps(*acc, scale_v),
            );
        }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn qk_tile_bf16(
    qp: *const bf16,
    k: *const bf16,
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    scale: f32,
    st: *mut f32,
) {
    let mut col = 0;
    while col + 6 <= cols {
        qk_keys_bf16::<6>(
            qp,
            k.add(col * k_row_stride),
            k_row_stride,
            head_dim,
            scale,
            st.add(col * TILE_Q),
        );
        col += 6;
    }
    if col + 4 <= cols {
        qk_keys_bf16::<4>(
            qp,
            k.add(col * k_row_stride),
            k_row_stride,
            head_dim,
            scale,
            st.add(col * TILE_Q),
        );
        col += 4;
    }
    while col < cols {
        qk_keys_bf16::<1>(
            qp,
            k.add(col * k_row_stride),
            k_row_stride,
            head_dim,
            scale,
            st.add(col * TILE_Q),
        );
        col += 1;
    }
}

/// Computes the scores of `KEYS` keys against all `TILE_Q` queries with `vdpbf16ps`,
/// which multiplies pairs of bf16 values and adds both products to an f32 lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn qk_keys_bf16<const KEYS: usize>(
    qp: *const bf16,
    k: *const bf16,
    k_row_stride: usize,
    head_dim: usize,
    scale: f32,
    st: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); TILE_VECTORS]; KEYS];
    for pair in 0..head_dim.div_ceil(2) {
        // Lane i of vector c holds the pair (q[16c + i][2 pair], q[16c + i][2 pair + 1]).
        let qp_row = qp.add(pair * 2 * TILE_Q);
        let mut queries = [_mm512_setzero_si512(); TILE_VECTORS];
        for (c, query) in queries.iter_mut().enumerate() {
            *query = _mm512_loadu_si512(qp_row.add(c * 2 * LANES).cast());
        }
        let d = 2 * pair;
        for (key, acc_row) in acc.iter_mut().enumerate() {
            let k_row = k.add(key * k_row_stride);
            // The two bf16 keys of the pair as one 32-bit lane, low half first; an odd
            // head_dim leaves the high half 0, matching the zero-padded queries.
            let bits = if d + 1 < head_dim {
                (k_row.add(d) as *const u32).read_unaligned()
            } else {
                u32::from((*k_row.add(d)).to_bits())
            };
            let keys: __m512bh = std::mem::transmute(_mm512_set1_epi32(bits as i32));
            for (acc, query) in acc_row.iter_mut().zip(queries) {
                *acc =
                    _mm512_dpbf16_ps(*acc, keys, std::mem::transmute::<__m512i, __m512bh>(query));
            }
        }
    }
    let scale_v = _mm512_set1_ps(scale);
    for (key, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            _mm512_storeu_ps(
                st.add(key * TILE_Q + c * LANES),
                _mm512_mul_ps(*acc, scale_v),
            );
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn softmax_tile(st: *mut f32, cols: usize, m: *mut f32, l: *mut f32, correction: *mut f32) {
    let negative_infinity = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in 0..TILE_VECTORS {
        let offset = c * LANES;
        let m_old = _mm512_loadu_ps(m.add(offset));
        let mut block_max = negative_infinity;
        for j in 0..cols {
            block_max = _mm512_max_ps(block_max, _mm512_loadu_ps(st.add(j * TILE_Q + offset)));
        }
        let m_new = _mm512_max_ps(m_old, block_max);
        // With nothing visible so far, subtract 0 instead of -inf: exp(-inf - 0) = 0,
        // where exp(-inf - -inf) would be NaN.
        let nothing_visible = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m_new, negative_infinity);
        let shift = _mm512_mask_blend_ps(nothing_visible, m_new, _mm512_setzero_ps());
        let mut sum = _mm512_setzero_ps();
        for j in 0..cols {
            let p = exp(_mm512_sub_ps(
                _mm512_loadu_ps(st.add(j * TILE_Q + offset)),
                shift,
            ));
            _mm512_storeu_ps(st.add(j * TILE_Q + offset), p);
            sum = _mm512_add_ps(sum, p);
        }
        let factor = exp(_mm512_sub_ps(m_old, shift));
        _mm512_storeu_ps(correction.add(offset), factor);
        _mm512_storeu_ps(
            l.add(offset),
            _mm512_fmadd_ps(_mm512_loadu_ps(l.add(offset)), factor, sum),
        );
        _mm512_storeu_ps(m.add(offset), m_new);
    }
}

/// Runs [`ValueTile`] over `rows` output rows of `head_dim` columns.
///
/// # Safety
/// avx512f must be available, and `tile` must describe `rows` rows of probabilities,
/// `tile.cols` value rows and `rows` output rows inside their allocations.
#[target_feature(enable = "avx512f")]
unsafe fn pv_tile<T: Widen>(tile: ValueTile<T>, rows: usize) {
    walk_output(tile, rows, tile.head_dim);
}

/// A micro-kernel that accumulates `ROWS` rows of a `[rows, head_dim]` output over
/// `VECTORS * 16` columns of head_dim.
trait OutputKernel: Copy {
    /// Accumulates output rows `row..row + ROWS` at head_dim columns `d0..`; the last of
    /// the `VECTORS` vectors covers only the lanes of `last_mask`.
    ///
    /// # Safety
    /// The instruction sets the implementation enables must be available, and the rows
    /// and columns must lie inside the tile that its pointers describe.
    unsafe fn accumulate<const ROWS: usize, const VECTORS: usize>(
        self,
        row: usize,
        d0: usize,
        last_mask: __mmask16,
    );
}

/// Runs `kernel` over `rows` output rows and `head_dim` columns, in blocks of 6, 4, 3, 2 or 1
/// rows by up to 4 vectors (64 columns). The last vector of a row is masked when
/// head_dim is not a multiple of 16.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn walk_output<K: OutputKernel>(kernel: K, rows: usize, head_dim: usize) {
    let mut d0 = 0;
    while d0 < head_dim {
        let width = (head_dim - d0).min(4 * LANES);
        let vectors = width.div_ceil(LANES);
        let last_mask = lane_mask(width - (vectors - 1) * LANES);
        let mut row = 0;
        while row < rows {
            let step = match rows - row {
                6.. => 6,
                4 | 5 => 4,
                left => left,
            };
            match (step, vectors) {
                (6, 1) => kernel.accumulate::<6, 1>(row, d0, last_mask),
                (6, 2) => kernel.accumulate::<6, 2>(row, d0, last_mask),
                (6, 3) => kernel.accumulate::<6, 3>(row, d0, last_mask),
                (6, _) => kernel.accumulate::<6, 4>(row, d0, last_mask),
                (4, 1) => kernel.accumulate::<4, 1>(row, d0, last_mask),
                (4, 2) => kernel.accumulate::<4, 2>(row, d0, last_mask),
                (4, 3) => kernel.accumulate::<4, 3>(row, d0, last_mask),
                (4, _) => kernel.accumulate::<4, 4>(row, d0, last_mask),
                (3, 1) => kernel.accumulate::<3, 1>(row, d0, last_mask),
                (3, 2) => kernel.accumulate::<3, 2>(row, d0, last_mask),
                (3, 3) => kernel.accumulate::<3, 3>(row, d0, last_mask),
                (3, _) => kernel.accumulate::<3, 4>(row, d0, last_mask),
                (2, 1) => kernel.accumulate::<2, 1>(row, d0, last_mask),
                (2, 2) => kernel.accumulate::<2, 2>(row, d0, last_mask),
                (2, 3) => kernel.accumulate::<2, 3>(row, d0, last_mask),
                (2, _) => kernel.accumulate::<2, 4>(row, d0, last_mask),
                (_, 1) => kernel.accumulate::<1, 1>(row, d0, last_mask),
                (_, 2) => kernel.accumulate::<1, 2>(row, d0, last_mask),
                (_, 3) => kernel.accumulate::<1, 3>(row, d0, last_mask),
                (_, _) => kernel.accumulate::<1, 4>(row, d0, last_mask),
            }
            row += step;
        }
        d0 += width;
    }
}

/// Returns the mask of vector `c` of `VECTORS`: all lanes but in the last vector.
#[inline]
fn vector_mask<const VECTORS: usize>(c: usize, last_mask: __mmask16) -> __mmask16 {
    if c + 1 == VECTORS {
        last_mask
    } else {
        0xFFFF
    }
}

/// Loads `ROWS` output rows of `VECTORS` vectors from `o`, rows `o_row_stride` apart.
/// The last vector of each row loads only the lanes of `last_mask` and sets the others
/// to 0.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_output<const ROWS: usize, const VECTORS: usize>(
    o: *const f32,
    o_row_stride: usize,
    last_mask: __mmask16,
) -> [[__m512; VECTORS]; ROWS] {
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; ROWS];
    for (r, acc_row) in acc.iter_mut().enumerate() {
        for (c, acc) in acc_row.iter_mut().enumerate() {
            let mask = vector_mask::<VECTORS>(c, last_mask);
            *acc = _mm512_maskz_loadu_ps(mask, o.add(r * o_row_stride + c * LANES));
        }
    }
    acc
}

/// Stores the rows that [`load_output`] loaded, under the same masks.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_output<const ROWS: usize, const VECTORS: usize>(
    acc: &[[__m512; VECTORS]; ROWS],
    o: *mut f32,
    o_row_stride: usize,
    last_mask: __mmask16,
) {
    for (r, acc_row) in acc.iter().enumerate() {
        for (c, acc) in acc_row.iter().enumerate() {
            let mask = vector_mask::<VECTORS>(c, last_mask);
            _mm512_mask_storeu_ps(o.add(r * o_row_stride + c * LANES), mask, *acc);
        }
    }
}

/// A value tile product `o[r] += sum_j p(r, j) * v[j]`, with the probability of row `r`
/// and key `j` at `p[j * p_token_stride + r * p_row_stride]`: [`Simd::pv_tile`] passes
/// `(TILE_Q, 1)`, [`Simd::pv_rows`] `(1, p_row_stride)`. The values are f32, f16 or bf16.
#[derive(Clone, Copy)]
struct ValueTile<T> {
    p: *const f32,
    p_token_stride: usize,
    p_row_stride: usize,
    v: *const T,
    v_row_stride: usize,
    cols: usize,
    o: *mut f32,
    head_dim: usize,
}

impl<T: Widen> OutputKernel for ValueTile<T> {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn accumulate<const ROWS: usize, const VECTORS: usize>(
        self,
        row: usize,
        d0: usize,
        last_mask: __mmask16,
    ) {
        let o = self.o.add(row * self.head_dim + d0);
        let mask = |c: usize| vector_mask::<VECTORS>(c, last_mask);
        let mut acc = load_output::<ROWS, VECTORS>(o, self.head_dim, last_mask);
        for kv in 0..self.cols {
            let v_row = self.v.add(kv * self.v_row_stride + d0);
            let mut values = [_mm512_setzero_ps(); VECTORS];
            for (c, value) in values.iter_mut().enumerate() {
                *value = T::load_lanes_masked(v_row.add(c * LANES), mask(c));
            }
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let p = self
                    .p
                    .add(kv * self.p_token_stride + (row + r) * self.p_row_stride);
                let weight = _mm512_set1_ps(*p);
                for (acc, value) in acc_row.iter_mut().zip(values) {
                    *acc = _mm512_fmadd_ps(weight, value, *acc);
                }
            }
        }
        store_output(&acc, o, self.head_dim, last_mask);
    }
}

/// Returns the `vpermw` index that interleaves the two 16-word halves of a vector:
/// output words `2i` and `2i + 1` are input words `i` and `16 + i`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn interleave_halves_index() -> __m512i {
    let mut index = [0u16; 2 * LANES];
    for i in 0..LANES {
        index[2 * i] = i as u16;
        index[2 * i + 1] = (LANES + i) as u16;
    }
    _mm512_loadu_si512(index.as_ptr().cast())
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn pack_v_bf16(
    v: *const bf16,
    v_row_stride: usize,
    cols: usize,
    head_dim: usize,
    vp: *mut bf16,
) {
    let index = interleave_halves_index();
    for pair in 0..cols.div_ceil(2) {
        let first = v.add(2 * pair * v_row_stride);
        let has_second = 2 * pair + 1 < cols;
        let packed = vp.add(pair * 2 * head_dim);
        for d in (0..head_dim).step_by(LANES) {
            let mask = lane_mask((head_dim - d).min(LANES));
            let low = _mm256_maskz_loadu_epi16(mask, first.add(d).cast());
            let high = if has_second {
                _mm256_maskz_loadu_epi16(mask, first.add(v_row_stride + d).cast())
            } else {
                _mm256_setzero_si256()
            };
            // Lane d of the result contains (v[2 pair][d], v[2 pair + 1][d]), low half
            // first.
            let halves = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
            let pairs = _mm512_permutexvar_epi16(index, halves);
            _mm512_mask_storeu_epi32(packed.add(2 * d).cast(), mask, pairs);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pv_tile_bf16(
    pt: *const f32,
    vp: *const bf16,
    cols: usize,
    head_dim: usize,
    o: *mut f32,
    rows: usize,
) {
    // Round the probabilities to bf16 in pairs of keys. `pp[pair * TILE_Q + i]` contains
    // (p[2 pair][i], p[2 pair + 1][i]) as one 32-bit lane, low half first, with 0 for the
    // missing key of an odd `cols`. The rows past `rows` are converted but unused.
    let mut pp = [0u32; TILE_KV / 2 * TILE_Q];
    let index = interleave_halves_index();
    for pair in 0..cols.div_ceil(2) {
        for c in 0..TILE_VECTORS {
            let first = _mm512_loadu_ps(pt.add(2 * pair * TILE_Q + c * LANES));
            let second = if 2 * pair + 1 < cols {
                _mm512_loadu_ps(pt.add((2 * pair + 1) * TILE_Q + c * LANES))
            } else {
                _mm512_setzero_ps()
            };
            // Words 0..16 are `first` and 16..32 `second`, rounded to nearest even.
            let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(second, first));
            _mm512_storeu_si512(
                pp.as_mut_ptr().add(pair * TILE_Q + c * LANES).cast(),
                _mm512_permutexvar_epi16(index, halves),
            );
        }
    }

    let tile = PairTile {
        pp: pp.as_ptr(),
        vp,
        pairs: cols.div_ceil(2),
        o,
        head_dim,
    };
    walk_output(tile, rows, head_dim);
}

/// A bf16 value tile product: probabilities and values both in key pairs, the
/// probabilities as `[pairs, TILE_Q]` 32-bit lanes and the values as `[pairs,
/// head_dim, 2]` (see [`Simd::pack_v_bf16`]).
#[derive(Clone, Copy)]
struct PairTile {
    pp: *const u32,
    vp: *const bf16,
    pairs: usize,
    o: *mut f32,
    head_dim: usize,
}

impl OutputKernel for PairTile {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn accumulate<const ROWS: usize, const VECTORS: usize>(
        self,
        row: usize,
        d0: usize,
        last_mask: __mmask16,
    ) {
        let o = self.o.add(row * self.head_dim + d0);
        let mask = |c: usize| vector_mask::<VECTORS>(c, last_mask);
        let mut acc = load_output::<ROWS, VECTORS>(o, self.head_dim, last_mask);
        for pair in 0..self.pairs {
            // Lane d of vector c: (v[2 pair][d0 + 16c + d], v[2 pair + 1][...]); masked
            // lanes load 0 and add nothing.
            let vp_row = self.vp.add(pair * 2 * self.head_dim + 2 * d0);
            let mut values = [_mm512_setzero_si512(); VECTORS];
            for (c, value) in values.iter_mut().enumerate() {
                *value = _mm512_maskz_loadu_epi32(mask(c), vp_row.add(c * 2 * LANES).cast());
            }
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let weights = _mm512_set1_epi32(*self.pp.add(pair * TILE_Q + row + r) as i32);
                let weights: __m512bh = std::mem::transmute(weights);
                for (acc, value) in acc_row.iter_mut().zip(values) {
                    let values: __m512bh = std::mem::transmute(value);
                    *acc = _mm512_dpbf16_ps(*acc, weights, values);
                }
            }
        }
        store_output(&acc, o, self.head_dim, last_mask);
    }
}

/// Operands of [`qk_rows`], with `q` and `s` offset to the first row of a block; the
/// keys are f32, f16 or bf16.
#[derive(Clone, Copy)]
struct ScoreRows<T> {
    q: *const f32,
    k: *const T,
    k_row_stride: usize,
    cols: usize,
    head_dim: usize,
    scale: f32,
    s: *mut f32,
    s_row_stride: usize,
}

/// Scores `rows` query rows in blocks of up to 4, which share each key row's loads.
///
/// # Safety
/// avx512f must be available, and `block` must satisfy the shapes of `Simd::qk_rows`
/// for `rows` query rows.
#[target_feature(enable = "avx512f")]
unsafe fn qk_rows<T: Widen>(block: ScoreRows<T>, rows: usize) {
    let mut row = 0;
    while row < rows {
        let step = (rows - row).min(4);
        let rows_block = ScoreRows {
            q: block.q.add(row * block.head_dim),
            s: block.s.add(row * block.s_row_stride),
            ..block
        };
        // The common head dims get their own unrolled copies.
        match (step, block.head_dim) {
            (4, 64) => qk_row_block::<4, 4, T>(rows_block),
            (3, 64) => qk_row_block::<3, 4, T>(rows_block),
            (2, 64) => qk_row_block::<2, 4, T>(rows_block),
            (_, 64) => qk_row_block::<1, 4, T>(rows_block),
            (4, 128) => qk_row_block::<4, 8, T>(rows_block),
            (3, 128) => qk_row_block::<3, 8, T>(rows_block),
            (2, 128) => qk_row_block::<2, 8, T>(rows_block),
            (_, 128) => qk_row_block::<1, 8, T>(rows_block),
            (4, 256) => qk_row_block::<4, 16, T>(rows_block),
            (3, 256) => qk_row_block::<3, 16, T>(rows_block),
            (2, 256) => qk_row_block::<2, 16, T>(rows_block),
            (_, 256) => qk_row_block::<1, 16, T>(rows_block),
            (4, _) => qk_row_block::<4, 0, T>(rows_block),
            (3, _) => qk_row_block::<3, 0, T>(rows_block),
            (2, _) => qk_row_block::<2, 0, T>(rows_block),
            (_, _) => qk_row_block::<1, 0, T>(rows_block),
        }
        row += step;
    }
}

/// Scores `ROWS` query rows against all keys, 16 keys per step. Each (row, key) pair
/// leaves one vector of partial sums over head_dim, and the 16 vectors of a row are
/// reduced together instead of one horizontal sum per key. Four folding steps
/// ([`fold_halves`] to [`fold_last`]) each add pairs of vectors, so every sum keeps
/// half as many lanes per key and the keys stay apart: 15 additions for 16 keys, where
/// 16 horizontal sums would take 64. The folds run as the keys are scored, two keys at
/// a time, so only a few partial vectors per row are live.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn qk_row_block<const ROWS: usize, const VECTORS: usize, T: Widen>(block: ScoreRows<T>) {
    let scale = _mm512_set1_ps(block.scale);
    let mut key0 = 0;
    while key0 < block.cols {
        let keys = KeyBlock {
            first: key0,
            len: (block.cols - key0).min(LANES),
        };
        let (a, b) = (
            key_octet::<ROWS, VECTORS, T>(&block, keys, 0),
            key_octet::<ROWS, VECTORS, T>(&block, keys, 1),
        );
        let store_mask = lane_mask(keys.len);
        for r in 0..ROWS {
            let scores = _mm512_mul_ps(fold_last(a[r], b[r]), scale);
            _mm512_mask_storeu_ps(
                block.s.add(r * block.s_row_stride + key0),
                store_mask,
                scores,
            );
        }
        key0 += LANES;
    }
}

/// Up to 16 keys scored together: keys `first..first + len`.
#[derive(Clone, Copy)]
struct KeyBlock {
    first: usize,
    len: usize,
}

/// Defines `$name(block, keys, i)`: per row, `$fold` of the results of `$below` for
/// `2i` and `2i + 1`, so each level of the lane-sum tree covers twice as many keys.
macro_rules! key_fold_level {
    ($(#[$doc:meta])* $name:ident, $below:ident, $fold:ident) => {
        $(#[$doc])*
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn $name<const ROWS: usize, const VECTORS: usize, T: Widen>(
            block: &ScoreRows<T>,
            keys: KeyBlock,
            i: usize,
        ) -> [__m512; ROWS] {
            let (a, b) = (
                $below::<ROWS, VECTORS, T>(block, keys, 2 * i),
                $below::<ROWS, VECTORS, T>(block, keys, 2 * i + 1),
            );
            std::array::from_fn(|r| $fold(a[r], b[r]))
        }
    };
}

key_fold_level!(
    /// Returns, per row, the partial sums of keys `8i..8i + 8` after three folding steps.
    key_octet,
    key_quartet,
    fold_pairs
);
key_fold_level!(
    /// Returns, per row, the partial sums of keys `4i..4i + 4` after two folding steps.
    key_quartet,
    key_pair,
    fold_quarters
);
key_fold_level!(
    /// Returns, per row, the partial sums of keys `2i` and `2i + 1` after one folding step.
    key_pair,
    key_products,
    fold_halves
);

/// Returns, per row, the vector of products of the query row and key `j` of the block.
/// Its lanes sum to the unscaled score, and it is zero past the block's last key.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn key_products<const ROWS: usize, const VECTORS: usize, T: Widen>(
    block: &ScoreRows<T>,
    keys: KeyBlock,
    j: usize,
) -> [__m512; ROWS] {
    let mut acc = [_mm512_setzero_ps(); ROWS];
    if j >= keys.len {
        return acc;
    }
    // With VECTORS > 0 the head_dim is known at compile time and the loop unrolls.
    let head_dim = if VECTORS > 0 {
        VECTORS * LANES
    } else {
        block.head_dim
    };
    let full_vectors = head_dim / LANES;
    let tail_mask = lane_mask(head_dim % LANES);
    let k_row = block.k.add((keys.first + j) * block.k_row_stride);
    for c in 0..full_vectors {
        let key = T::load_lanes(k_row.add(c * LANES));
        for (r, acc) in acc.iter_mut().enumerate() {
            let query = _mm512_loadu_ps(block.q.add(r * head_dim + c * LANES));
            *acc = _mm512_fmadd_ps(query, key, *acc);
        }
    }
    if tail_mask != 0 {
        let offset = full_vectors * LANES;
        let key = T::load_lanes_masked(k_row.add(offset), tail_mask);
        for (r, acc) in acc.iter_mut().enumerate() {
            let query = _mm512_maskz_loadu_ps(tail_mask, block.q.add(r * head_dim + offset));
            *acc = _mm512_fmadd_ps(query, key, *acc);
        }
    }
    acc
}

/// Step 1 of the lane sums, 16 -> 8 vectors: the 128-bit quarters of the result are
/// `[a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2, b.q1 + b.q3]` for keys `2i` in `a` and
/// `2i + 1` in `b`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold_halves(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    )
}

/// Step 2, 8 -> 4 vectors: quarter `q` of result `i` contains 4 partial sums of key
/// `4i + q`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold_quarters(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
    )
}

/// Step 3, 4 -> 2 vectors, within quarters: quarter `q` of result `i` contains 2 partial
/// sums of key `8i + q`, then 2 of key `8i + 4 + q`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold_pairs(a: __m512, b: __m512) -> __m512 {
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
        _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
    )
}

/// Step 4, 2 -> 1 vector: after the addition lane `4q + m` contains the sum of key
/// `4m + q`, and the permutation moves key `j` to lane `j`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold_last(a: __m512, b: __m512) -> __m512 {
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
        _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
    );
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_ps(order, sums)
}
