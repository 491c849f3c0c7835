//! AVX-512F and AVX2 row quantisation, bit for bit equal to the portable
//! [`quantize_block`]: the same maximum, the same product `x * inverse`,
//! rounding half away from zero as `f32::round` does, and the same clamp.
//! Blocks with a NaN, an infinity or an overflowing `127 / max |x|` go through
//! [`quantize_block`] itself.

use std::arch::x86_64::*;

use super::{block_outputs, block_scale, quantize_block};
use crate::quant::unpack::GROUP;

/// `_mm*_round_ps` mode: toward zero, without raising the inexact exception.
const TRUNCATE: i32 = _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC;

/// Quantises one row with AVX-512F; arguments as for `quantize_row`.
#[target_feature(enable = "avx512f")]
pub(super) fn quantize_row_avx512(
    x: &[f32],
    block_elems: usize,
    codes: &mut [i8],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    let row = RowOutputs {
        codes,
        scales,
        sums,
    };
    quantize_row_with(
        x,
        block_elems,
        row,
        |block| max_abs_avx512(block),
        |values, inverse, codes| quantize_group_avx512(values, inverse, codes),
    );
}

/// One row's outputs, as `quantize_row` takes them.
struct RowOutputs<'a> {
    codes: &'a mut [i8],
    scales: &'a mut [f32],
    sums: &'a mut [f32],
}

/// The row loop of both vector paths, with their maximum and their
/// quantisation of one 16-value group (which returns the sum of its codes).
#[inline(always)]
fn quantize_row_with(
    x: &[f32],
    block_elems: usize,
    row: RowOutputs,
    max_abs: impl Fn(&[f32]) -> f32,
    quantize_group: impl Fn(&[f32], f32, &mut [i8]) -> i32,
) {
    for (b, block) in x.chunks_exact(block_elems).enumerate() {
        let (codes, scales, sums) = block_outputs(b, block_elems, row.codes, row.scales, row.sums);
        let max_abs = max_abs(block);
        let (scale, inverse) = block_scale(max_abs);
        if !(max_abs.is_finite() && inverse.is_finite()) {
            quantize_block(block, codes, scales, sums);
            continue;
        }

        scales.fill(scale);
        for ((values, codes), sum) in block
            .chunks_exact(GROUP)
            .zip(codes.chunks_exact_mut(GROUP))
            .zip(sums.iter_mut())
        {
            *sum = scale * quantize_group(values, inverse, codes) as f32;
        }
    }
}

/// Writes the 16 codes of `values` scaled by `inverse` and returns their sum.
#[target_feature(enable = "avx512f")]
fn quantize_group_avx512(values: &[f32], inverse: f32, codes: &mut [i8]) -> i32 {
    assert_eq!(values.len(), GROUP);
    assert_eq!(codes.len(), GROUP);
    // SAFETY: `values` contains GROUP = 16 floats, one vector.
    let v = unsafe { _mm512_loadu_ps(values.as_ptr()) };
    let ints = _mm512_cvtps_epi32(round_clamp_avx512(_mm512_mul_ps(
        v,
        _mm512_set1_ps(inverse),
    )));
    // SAFETY: `codes` contains GROUP = 16 bytes, one 128-bit store.
    unsafe { _mm_storeu_si128(codes.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(ints)) };
    _mm512_reduce_add_epi32(ints)
}

/// `max |v|` over `block` (a multiple of 16 values), NaN if any value is NaN.
#[target_feature(enable = "avx512f")]
fn max_abs_avx512(block: &[f32]) -> f32 {
    debug_assert!(block.len().is_multiple_of(16));
    let mut max = _mm512_setzero_ps();
    let mut nan_lanes: __mmask16 = 0;
    for values in block.chunks_exact(16) {
        // SAFETY: `values` contains 16 floats, one vector.
        let v = unsafe { _mm512_loadu_ps(values.as_ptr()) };
        nan_lanes |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        max = _mm512_max_ps(max, _mm512_abs_ps(v));
    }
    if nan_lanes != 0 {
        f32::NAN
    } else {
        _mm512_reduce_max_ps(max)
    }
}

/// `y.round().clamp(-127.0, 127.0)` per lane, for finite `y`.
#[target_feature(enable = "avx512f")]
fn round_clamp_avx512(y: __m512) -> __m512 {
    // Half away from zero: with `t = trunc(y)` the fraction `y - t` is exact and in
    // (-1, 1), so `trunc(2 (y - t))` is the sign of y exactly when |y - t| >= 0.5.
    let t = _mm512_roundscale_ps::<TRUNCATE>(y);
    let fraction = _mm512_sub_ps(y, t);
    let carry = _mm512_roundscale_ps::<TRUNCATE>(_mm512_add_ps(fraction, fraction));
    let rounded = _mm512_add_ps(t, carry);
    _mm512_min_ps(
        _mm512_max_ps(rounded, _mm512_set1_ps(-127.0)),
        _mm512_set1_ps(127.0),
    )
}

/// Quantises one row with AVX2; arguments as for `quantize_row`.
#[target_feature(enable = "avx2")]
pub(super) fn quantize_row_avx2(
    x: &[f32],
    block_elems: usize,
    codes: &mut [i8],
    scales: &mut [f32],
    sums: &mut [f32],
) {
    let row = RowOutputs {
        codes,
        scales,
        sums,
    };
    quantize_row_with(
        x,
        block_elems,
        row,
        |block| max_abs_avx2(block),
        |values, inverse, codes| quantize_group_avx2(values, inverse, codes),
    );
}

/// As [`quantize_group_avx512`], in two vectors of 8.
#[target_feature(enable = "avx2")]
fn quantize_group_avx2(values: &[f32], inverse: f32, codes: &mut [i8]) -> i32 {
    assert_eq!(values.len(), GROUP);
    assert_eq!(codes.len(), GROUP);
    let inverse = _mm256_set1_ps(inverse);
    // SAFETY: `values` contains GROUP = 16 floats, two vectors.
    let (low, high) = unsafe {
        (
            _mm256_loadu_ps(values.as_ptr()),
            _mm256_loadu_ps(values.as_ptr().add(8)),
        )
    };
    let low = _mm256_cvtps_epi32(round_clamp_avx2(_mm256_mul_ps(low, inverse)));
    let high = _mm256_cvtps_epi32(round_clamp_avx2(_mm256_mul_ps(high, inverse)));

    // The packs work within 128-bit halves: i16 [low 0-3, high 0-3, low 4-7,
    // high 4-7], reordered to [low 0-7, high 0-7] before the byte pack.
    let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(low, high));
    let bytes = _mm_packs_epi16(
        _mm256_castsi256_si128(words),
        _mm256_extracti128_si256::<1>(words),
    );
    // SAFETY: `codes` contains GROUP = 16 bytes, one 128-bit store.
    unsafe { _mm_storeu_si128(codes.as_mut_ptr().cast(), bytes) };
    sum_epi32_avx2(_mm256_add_epi32(low, high))
}

/// `max |v|` over `block` (a multiple of 8 values), NaN if any value is NaN.
#[target_feature(enable = "avx2")]
fn max_abs_avx2(block: &[f32]) -> f32 {
    debug_assert!(block.len().is_multiple_of(8));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let mut max = _mm256_setzero_ps();
    let mut nan_lanes = _mm256_setzero_ps();
    for values in block.chunks_exact(8) {
        // SAFETY: `values` contains 8 floats, one vector.
        let v = unsafe { _mm256_loadu_ps(values.as_ptr()) };
        nan_lanes = _mm256_or_ps(nan_lanes, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        max = _mm256_max_ps(max, _mm256_and_ps(v, abs_mask));
    }
    if _mm256_movemask_ps(nan_lanes) != 0 {
        return f32::NAN;
    }
    let half = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
    let quarter = _mm_max_ps(half, _mm_movehl_ps(half, half));
    let single = _mm_max_ss(quarter, _mm_shuffle_ps::<0b01>(quarter, quarter));
    _mm_cvtss_f32(single)
}

/// As [`round_clamp_avx512`], with 8 lanes.
#[target_feature(enable = "avx2")]
fn round_clamp_avx2(y: __m256) -> __m256 {
    let t = _mm256_round_ps::<TRUNCATE>(y);
    let fraction = _mm256_sub_ps(y, t);
    let carry = _mm256_round_ps::<TRUNCATE>(_mm256_add_ps(fraction, fraction));
    let rounded = _mm256_add_ps(t, carry);
    _mm256_min_ps(
        _mm256_max_ps(rounded, _mm256_set1_ps(-127.0)),
        _mm256_set1_ps(127.0),
    )
}

/// Sums the 8 lanes.
#[target_feature(enable = "avx2")]
fn sum_epi32_avx2(v: __m256i) -> i32 {
    let half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let quarter = _mm_add_epi32(half, _mm_shuffle_epi32::<0b01_00_11_10>(half));
    let single = _mm_add_epi32(quarter, _mm_shuffle_epi32::<0b10_11_00_01>(quarter));
    _mm_cvtsi128_si32(single)
}
