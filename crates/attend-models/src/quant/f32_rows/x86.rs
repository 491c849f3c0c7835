//! AVX-512 and AVX2 dot products of one raw quantized row with a few f32 tokens.
//!
//! Each format's decoder turns `V::LANES` weights at a time into an f32 vector with
//! the operations of `dequantize` in the same order, so every weight is bit for bit
//! the dequantised one. The decoders are written once over the [`Vector`] trait and
//! instantiated for 512-bit and 256-bit registers.

use crate::quant::dequant::{f16_at, q4_k_scale_min};
use crate::GgmlType;
use std::arch::x86_64::*;

/// The operations the decoders and the dot product need, on `LANES` f32 or i32
/// values. Every method is called only from functions compiled with the features
/// of the implementing type.
trait Vector {
    const LANES: usize;
    type F: Copy;
    type I: Copy;

    fn zero() -> Self::F;
    /// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
    fn f16_at(bytes: &[u8], at: usize) -> f32;
    fn splat(value: f32) -> Self::F;
    fn splat_i(value: i32) -> Self::I;
    /// `[first, first + 1, ..., first + LANES - 1]`.
    fn iota(first: i32) -> Self::I;
    /// # Safety
    /// `p..p + LANES` is readable f32.
    unsafe fn load(p: *const f32) -> Self::F;
    /// Zero-extends `LANES` bytes at `p`.
    ///
    /// # Safety
    /// `p..p + LANES` is readable.
    unsafe fn load_u8(p: *const u8) -> Self::I;
    /// Sign-extends `LANES` bytes at `p`.
    ///
    /// # Safety
    /// `p..p + LANES` is readable.
    unsafe fn load_i8(p: *const u8) -> Self::I;
    fn and(a: Self::I, b: Self::I) -> Self::I;
    fn or(a: Self::I, b: Self::I) -> Self::I;
    fn sub_i(a: Self::I, b: Self::I) -> Self::I;
    fn shr(a: Self::I, bits: i32) -> Self::I;
    fn shl(a: Self::I, bits: i32) -> Self::I;
    /// Shifts each lane right by the matching lane of `bits`.
    fn shr_each(a: Self::I, bits: Self::I) -> Self::I;
    fn to_f32(a: Self::I) -> Self::F;
    fn mul(a: Self::F, b: Self::F) -> Self::F;
    fn add(a: Self::F, b: Self::F) -> Self::F;
    /// `a * b + c` rounded once.
    fn mul_add(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `a * b - c` rounded once.
    fn mul_sub(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    fn sum(a: Self::F) -> f32;
}

/// 16 lanes in 512-bit registers; AVX-512 F and F16C.
pub(super) struct Avx512;
/// 8 lanes in 256-bit registers; AVX2 and FMA.
pub(super) struct Avx2;

// SAFETY (both impls): each method is `#[inline(always)]` and only called from the
// `#[target_feature]` entry points below, which enable the features it uses. The
// loads read exactly the `LANES` elements their contract makes readable.
impl Vector for Avx512 {
    const LANES: usize = 16;
    type F = __m512;
    type I = __m512i;

    #[inline(always)]
    fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    fn f16_at(bytes: &[u8], at: usize) -> f32 {
        let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        // F16C's conversion is exact, as `dequant::f16_at` is.
        unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
    }
    #[inline(always)]
    fn splat(value: f32) -> __m512 {
        unsafe { _mm512_set1_ps(value) }
    }
    #[inline(always)]
    fn splat_i(value: i32) -> __m512i {
        unsafe { _mm512_set1_epi32(value) }
    }
    #[inline(always)]
    fn iota(first: i32) -> __m512i {
        unsafe {
            _mm512_add_epi32(
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                _mm512_set1_epi32(first),
            )
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> __m512i {
        unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8) -> __m512i {
        unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    fn and(a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_and_si512(a, b) }
    }
    #[inline(always)]
    fn or(a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_or_si512(a, b) }
    }
    #[inline(always)]
    fn sub_i(a: __m512i, b: __m512i) -> __m512i {
        unsafe { _mm512_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn shr(a: __m512i, bits: i32) -> __m512i {
        unsafe { _mm512_srl_epi32(a, _mm_cvtsi32_si128(bits)) }
    }
    #[inline(always)]
    fn shl(a: __m512i, bits: i32) -> __m512i {
        unsafe { _mm512_sll_epi32(a, _mm_cvtsi32_si128(bits)) }
    }
    #[inline(always)]
    fn shr_each(a: __m512i, bits: __m512i) -> __m512i {
        unsafe { _mm512_srlv_epi32(a, bits) }
    }
    #[inline(always)]
    fn to_f32(a: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mul_sub(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmsub_ps(a, b, c) }
    }
    #[inline(always)]
    fn sum(a: __m512) -> f32 {
        unsafe {
            let half = _mm256_add_ps(
                _mm512_castps512_ps256(a),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))),
            );
            Avx2::sum(half)
        }
    }
}

impl Vector for Avx2 {
    const LANES: usize = 8;
    type F = __m256;
    type I = __m256i;

    #[inline(always)]
    fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    fn f16_at(bytes: &[u8], at: usize) -> f32 {
        // Isa::Avx2 does not promise F16C.
        f16_at(bytes, at)
    }
    #[inline(always)]
    fn splat(value: f32) -> __m256 {
        unsafe { _mm256_set1_ps(value) }
    }
    #[inline(always)]
    fn splat_i(value: i32) -> __m256i {
        unsafe { _mm256_set1_epi32(value) }
    }
    #[inline(always)]
    fn iota(first: i32) -> __m256i {
        unsafe {
            _mm256_add_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(first),
            )
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_u8(p: *const u8) -> __m256i {
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8) -> __m256i {
        unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast())) }
    }
    #[inline(always)]
    fn and(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_and_si256(a, b) }
    }
    #[inline(always)]
    fn or(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_or_si256(a, b) }
    }
    #[inline(always)]
    fn sub_i(a: __m256i, b: __m256i) -> __m256i {
        unsafe { _mm256_sub_epi32(a, b) }
    }
    #[inline(always)]
    fn shr(a: __m256i, bits: i32) -> __m256i {
        unsafe { _mm256_srl_epi32(a, _mm_cvtsi32_si128(bits)) }
    }
    #[inline(always)]
    fn shl(a: __m256i, bits: i32) -> __m256i {
        unsafe { _mm256_sll_epi32(a, _mm_cvtsi32_si128(bits)) }
    }
    #[inline(always)]
    fn shr_each(a: __m256i, bits: __m256i) -> __m256i {
        unsafe { _mm256_srlv_epi32(a, bits) }
    }
    #[inline(always)]
    fn to_f32(a: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(a) }
    }
    #[inline(always)]
    fn mul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn add(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn mul_sub(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmsub_ps(a, b, c) }
    }
    #[inline(always)]
    fn sum(a: __m256) -> f32 {
        unsafe {
            let quad = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
        }
    }
}

/// `out[r][t] = sum_c W[r, c] * x[t, c]` for `R` consecutive rows of type `ty` and
/// `T` tokens. The rows share each load of `x`; a row's result does not depend on `R`.
///
/// # Shapes
/// `rows: [R * ty.bytes_for(cols)]`, `x: [T, cols]`.
///
/// The caller has checked that the CPU supports AVX-512 F and BW and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
pub(super) fn dot_rows_avx512<const R: usize, const T: usize>(
    ty: GgmlType,
    rows: &[u8],
    x: &[f32],
) -> [[f32; T]; R] {
    dot_rows::<Avx512, R, T>(ty, rows, x)
}

/// As [`dot_rows_avx512`], with 256-bit registers.
///
/// The caller has checked that the CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) fn dot_rows_avx2<const R: usize, const T: usize>(
    ty: GgmlType,
    rows: &[u8],
    x: &[f32],
) -> [[f32; T]; R] {
    dot_rows::<Avx2, R, T>(ty, rows, x)
}

/// Four accumulators per token. Each decoder alternates between a pair of them, and
/// for one or two tokens consecutive blocks use different pairs, so that
/// consecutive FMAs rarely wait on each other. Three or more tokens fold the pairs
/// together, which keeps `2 * T` accumulators in registers.
struct Accumulators<'x, V: Vector, const T: usize> {
    sums: [[V::F; 4]; T],
    /// `[T, cols]`
    x: &'x [f32],
    cols: usize,
}

// Derived, these would require `V: Copy`.
impl<V: Vector, const T: usize> Clone for Accumulators<'_, V, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V: Vector, const T: usize> Copy for Accumulators<'_, V, T> {}

impl<V: Vector, const T: usize> Accumulators<'_, V, T> {
    /// Adds `w * x[t, c..c + LANES]` for every token to accumulator `acc_idx` (0 to 3).
    #[inline(always)]
    fn add(&mut self, w: V::F, c: usize, acc_idx: usize) {
        assert!(c + V::LANES <= self.cols);
        let acc_idx = if T <= 2 { acc_idx } else { acc_idx % 2 };
        for (t, sums) in self.sums.iter_mut().enumerate() {
            // SAFETY: `c + LANES <= cols` (asserted above) and `x: [T, cols]`.
            let x = unsafe { V::load(self.x.as_ptr().add(t * self.cols + c)) };
            sums[acc_idx] = V::mul_add(w, x, sums[acc_idx]);
        }
    }

    #[inline(always)]
    fn totals(&self) -> [f32; T] {
        let mut totals = [0.0; T];
        for (total, &[a, b, c, d]) in totals.iter_mut().zip(&self.sums) {
            *total = V::sum(V::add(V::add(a, b), V::add(c, d)));
        }
        totals
    }
}

/// Calls `$decode(block, first_col, &mut acc[r], pair)` for every block of every row
/// `r` of `$rows` (`$row_bytes` each), block by block, with `pair` 0 for even blocks
/// and 2 for odd ones, as constants. The 256-weight decoders ignore `pair` and
/// alternate between the pairs inside the block.
macro_rules! block_pairs {
    ($rows:expr, $row_bytes:expr, $decode:ident, $block_bytes:literal, $block_elems:literal, $acc:ident) => {{
        let (rows, row_bytes): (&[u8], usize) = ($rows, $row_bytes);
        let blocks = row_bytes / $block_bytes;
        for p in 0..blocks / 2 {
            let c = 2 * p * $block_elems;
            for (r, acc) in $acc.iter_mut().enumerate() {
                let at = r * row_bytes + 2 * p * $block_bytes;
                $decode(&rows[at..at + $block_bytes], c, acc, 0);
            }
            for (r, acc) in $acc.iter_mut().enumerate() {
                let at = r * row_bytes + (2 * p + 1) * $block_bytes;
                $decode(&rows[at..at + $block_bytes], c + $block_elems, acc, 2);
            }
        }
        if blocks % 2 == 1 {
            let c = (blocks - 1) * $block_elems;
            for (r, acc) in $acc.iter_mut().enumerate() {
                let at = (r + 1) * row_bytes - $block_bytes;
                $decode(&rows[at..at + $block_bytes], c, acc, 0);
            }
        }
    }};
}

#[inline(always)]
fn dot_rows<V: Vector, const R: usize, const T: usize>(
    ty: GgmlType,
    rows: &[u8],
    x: &[f32],
) -> [[f32; T]; R] {
    let block_bytes = ty.block_bytes();
    let block_elems = ty.block_elems();
    assert!(R >= 1);
    assert!(rows.len().is_multiple_of(R * block_bytes));
    let row_bytes = rows.len() / R;
    let cols = row_bytes / block_bytes * block_elems;
    assert_eq!(x.len(), T * cols);
    let zero = Accumulators {
        sums: [[V::zero(); 4]; T],
        x,
        cols,
    };
    let mut acc: [Accumulators<V, T>; R] = [zero; R];
    // The decoders are called directly, not through closures, so that their
    // intrinsics are inlined under this function's target features.
    match ty {
        GgmlType::Q4_0 => block_pairs!(rows, row_bytes, q4_0, 18, 32, acc),
        GgmlType::Q4_1 => block_pairs!(rows, row_bytes, q4_1, 20, 32, acc),
        GgmlType::Q5_0 => block_pairs!(rows, row_bytes, q5_0, 22, 32, acc),
        GgmlType::Q8_0 => block_pairs!(rows, row_bytes, q8_0, 34, 32, acc),
        GgmlType::Q4_K => block_pairs!(rows, row_bytes, q4_k, 144, 256, acc),
        GgmlType::Q6_K => block_pairs!(rows, row_bytes, q6_k, 210, 256, acc),
        _ => unreachable!("dot_rows is only called for the quantized types"),
    }
    let mut totals = [[0.0; T]; R];
    for (totals, acc) in totals.iter_mut().zip(&acc) {
        *totals = acc.totals();
    }
    totals
}

/// Splits the `LANES` bytes at `p` into codes: `(low nibbles, high nibbles)`.
///
/// # Safety
/// `p..p + LANES` is readable.
#[inline(always)]
unsafe fn nibbles<V: Vector>(p: *const u8) -> (V::I, V::I) {
    let raw = unsafe { V::load_u8(p) };
    let low4 = V::splat_i(0x0F);
    (V::and(raw, low4), V::shr(raw, 4))
}

/// Q4_0: `y = d * (q - 8)`, low nibbles elements 0..16, high nibbles 16..32.
#[inline(always)]
fn q4_0<V: Vector, const T: usize>(b: &[u8], c0: usize, acc: &mut Accumulators<V, T>, pair: usize) {
    assert_eq!(b.len(), 18);
    let d = V::splat(V::f16_at(b, 0));
    let eight = V::splat_i(8);
    for v in 0..16 / V::LANES {
        // SAFETY: the nibbles at 2..18 lie inside the 18 bytes.
        let (low, high) = unsafe { nibbles::<V>(b.as_ptr().add(2 + v * V::LANES)) };
        let c = c0 + v * V::LANES;
        acc.add(V::mul(d, V::to_f32(V::sub_i(low, eight))), c, pair);
        acc.add(
            V::mul(d, V::to_f32(V::sub_i(high, eight))),
            c + 16,
            pair + 1,
        );
    }
}

/// Q4_1: `y = d * q + m`. `d * q` is exact in f32 (an 11-bit f16 significand times a
/// 4-bit code), so the fused multiply-add rounds the same as the two operations.
#[inline(always)]
fn q4_1<V: Vector, const T: usize>(b: &[u8], c0: usize, acc: &mut Accumulators<V, T>, pair: usize) {
    assert_eq!(b.len(), 20);
    let d = V::splat(V::f16_at(b, 0));
    let m = V::splat(V::f16_at(b, 2));
    for v in 0..16 / V::LANES {
        // SAFETY: the nibbles at 4..20 lie inside the 20 bytes.
        let (low, high) = unsafe { nibbles::<V>(b.as_ptr().add(4 + v * V::LANES)) };
        let c = c0 + v * V::LANES;
        acc.add(V::mul_add(d, V::to_f32(low), m), c, pair);
        acc.add(V::mul_add(d, V::to_f32(high), m), c + 16, pair + 1);
    }
}

/// Q5_0: `y = d * (q - 16)`, where bit `i` of the u32 at byte 2 is bit 4 of code `i`.
#[inline(always)]
fn q5_0<V: Vector, const T: usize>(b: &[u8], c0: usize, acc: &mut Accumulators<V, T>, pair: usize) {
    assert_eq!(b.len(), 22);
    let d = V::splat(V::f16_at(b, 0));
    let qh = V::splat_i(i32::from_le_bytes([b[2], b[3], b[4], b[5]]));
    let (one, sixteen) = (V::splat_i(1), V::splat_i(16));
    for v in 0..16 / V::LANES {
        // SAFETY: the nibbles at 6..22 lie inside the 22 bytes.
        let (low, high) = unsafe { nibbles::<V>(b.as_ptr().add(6 + v * V::LANES)) };
        let i = v * V::LANES;
        // Bit 4 of the codes of elements i.. and i + 16...
        let high_bit_low = V::and(V::shr_each(qh, V::iota(i as i32)), one);
        let high_bit_high = V::and(V::shr_each(qh, V::iota(i as i32 + 16)), one);
        let q_low = V::or(low, V::shl(high_bit_low, 4));
        let q_high = V::or(high, V::shl(high_bit_high, 4));
        acc.add(V::mul(d, V::to_f32(V::sub_i(q_low, sixteen))), c0 + i, pair);
        acc.add(
            V::mul(d, V::to_f32(V::sub_i(q_high, sixteen))),
            c0 + i + 16,
            1,
        );
    }
}

/// Q8_0: `y = d * q` with signed 8-bit codes at bytes 2..34.
#[inline(always)]
fn q8_0<V: Vector, const T: usize>(b: &[u8], c0: usize, acc: &mut Accumulators<V, T>, pair: usize) {
    assert_eq!(b.len(), 34);
    let d = V::splat(V::f16_at(b, 0));
    for v in 0..32 / V::LANES {
        // SAFETY: the codes at 2..34 lie inside the 34 bytes.
        let q = unsafe { V::load_i8(b.as_ptr().add(2 + v * V::LANES)) };
        acc.add(V::mul(d, V::to_f32(q)), c0 + v * V::LANES, pair + v % 2);
    }
}

/// Q4_K: `y = (d * sc) * q - dmin * m` per sub-block of 32. `d * sc` (17 bits) and
/// `(d * sc) * q` (21 bits) are exact in f32, so the fused multiply-subtract rounds
/// the same as ggml's separate operations.
#[inline(always)]
fn q4_k<V: Vector, const T: usize>(
    b: &[u8],
    c0: usize,
    acc: &mut Accumulators<V, T>,
    _pair: usize,
) {
    assert_eq!(b.len(), 144);
    let d = V::f16_at(b, 0);
    let dmin = V::f16_at(b, 2);
    let scales = &b[4..16];
    for chunk in 0..4 {
        // 32 bytes of nibbles: low nibbles sub-block 2 * chunk, high 2 * chunk + 1.
        let (sc_lo, m_lo) = q4_k_scale_min(scales, 2 * chunk);
        let (sc_hi, m_hi) = q4_k_scale_min(scales, 2 * chunk + 1);
        let (d_lo, min_lo) = (V::splat(d * sc_lo as f32), V::splat(dmin * m_lo as f32));
        let (d_hi, min_hi) = (V::splat(d * sc_hi as f32), V::splat(dmin * m_hi as f32));
        let qs = 16 + 32 * chunk;
        for v in 0..32 / V::LANES {
            // SAFETY: bytes qs..qs + 32 lie inside the 144 bytes.
            let (low, high) = unsafe { nibbles::<V>(b.as_ptr().add(qs + v * V::LANES)) };
            let c = c0 + 64 * chunk + v * V::LANES;
            acc.add(V::mul_sub(d_lo, V::to_f32(low), min_lo), c, 2 * (chunk % 2));
            acc.add(
                V::mul_sub(d_hi, V::to_f32(high), min_hi),
                c + 32,
                2 * (chunk % 2) + 1,
            );
        }
    }
}

/// Q6_K: `y = (d * sc) * (q - 32)` with one signed scale per 16 weights; the bit
/// layout is described at `dequantize_q6_k`. `d * sc` is exact in f32, and the
/// product with `q - 32` rounds once, as in ggml.
#[inline(always)]
fn q6_k<V: Vector, const T: usize>(
    b: &[u8],
    c0: usize,
    acc: &mut Accumulators<V, T>,
    _pair: usize,
) {
    assert_eq!(b.len(), 210);
    let d = V::f16_at(b, 208);
    let (low4, low2, thirty_two) = (V::splat_i(0x0F), V::splat_i(0x03), V::splat_i(32));
    for half in 0..2 {
        let (ql, qh, scales) = (64 * half, 128 + 32 * half, 192 + 8 * half);
        for k in 0..4 {
            for v in 0..32 / V::LANES {
                let l = v * V::LANES;
                // SAFETY: ql + 32 + l + LANES <= 128 and qh + l + LANES <= 192
                // lie inside the 210 bytes.
                let (low, top) = unsafe {
                    (
                        V::load_u8(b.as_ptr().add(ql + 32 * (k % 2) + l)),
                        V::load_u8(b.as_ptr().add(qh + l)),
                    )
                };
                let low = V::and(V::shr(low, 4 * (k / 2) as i32), low4);
                let top = V::shl(V::and(V::shr(top, 2 * k as i32), low2), 4);
                let q = V::sub_i(V::or(low, top), thirty_two);
                let i = 32 * k + l;
                let scale = V::splat(d * (b[scales + i / 16] as i8) as f32);
                acc.add(
                    V::mul(scale, V::to_f32(q)),
                    c0 + 128 * half + i,
                    2 * (k % 2) + v % 2,
                );
            }
        }
    }
}
