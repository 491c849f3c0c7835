//! x86-64 kernels: AVX-512 VNNI (`vpdpbusd`) and AVX2 (`vpmaddubsw`).
//!
//! Both walk the padded row in steps and keep one f32 accumulator vector per
//! (row, token) of the tile. Each weight vector is loaded once per step and
//! reused for every token, which is what makes prefill compute-bound.

// The kernels index accumulators by (row, token) across several arrays at
// once, which reads more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

use super::interleave::super_steps;
use super::{dispatch_tile_shape, widen, Tile, MAX_TILE_ROWS, MAX_TILE_TOKENS};
use crate::quant::unpack::{GROUP, LANE};
use std::arch::x86_64::*;

type TileSums = [[f32; MAX_TILE_TOKENS]; MAX_TILE_ROWS];

/// AVX-512 VNNI kernel.
///
/// The caller has run `tile.check()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) fn dot_tile_avx512(tile: &Tile) -> TileSums {
    dispatch_tile_shape!(avx512_fixed, tile)
}

/// Reads the tile in the interleaved unit order (see [`super::interleave`]):
/// each lane's integer dot products add up over a super-step, and only then are
/// converted and scaled, once per super-step instead of once per step.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn avx512_fixed<const R: usize, const T: usize>(tile: &Tile) -> TileSums {
    const STEP: usize = 64;
    let p = tile.padded;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    for (first_step, n) in super_steps(p / STEP) {
        // Lane i of `idot` is the exact dot product of the 4n codes of lane i.
        let mut idot = [[_mm512_setzero_si512(); T]; R];
        for s in first_step..first_step + n {
            // Load each row's 64 codes once per step.
            let mut w = [_mm512_setzero_si512(); R];
            for r in 0..R {
                // SAFETY: `tile.check()` guarantees `w_codes.len() >= R * p`,
                // and `s * STEP + STEP <= p`.
                w[r] = unsafe {
                    _mm512_loadu_si512(tile.w_codes.as_ptr().add(r * p + s * STEP).cast())
                };
            }
            for t in 0..T {
                // SAFETY: as above, with `x_codes.len() >= T * p`.
                let x = unsafe {
                    _mm512_loadu_si512(tile.x_codes.as_ptr().add(t * p + s * STEP).cast())
                };
                for r in 0..R {
                    idot[r][t] = _mm512_dpbusd_epi32(idot[r][t], w[r], x);
                }
            }
        }

        // A lane's scales are the same in every step of the super-step.
        let lane = first_step * STEP / LANE;
        let mut w_scale = [_mm512_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: `tile.check()` guarantees `w_scales.len() >= R * p / 4`,
            // and `lane + 16 <= p / 4`.
            w_scale[r] =
                unsafe { _mm512_loadu_ps(tile.w_scales.as_ptr().add(r * p / LANE + lane)) };
        }
        for t in 0..T {
            // SAFETY: as above, with `x_scales.len() >= T * p / 4`.
            let x_scale =
                unsafe { _mm512_loadu_ps(tile.x_scales.as_ptr().add(t * p / LANE + lane)) };
            for r in 0..R {
                let scale = _mm512_mul_ps(w_scale[r], x_scale);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot[r][t]), scale, acc[r][t]);
            }
        }
    }

    // The offsets times the activation sums, 16 groups at a time; the
    // masked loads read nothing past the last group.
    let groups = p / GROUP;
    for g in (0..groups).step_by(16) {
        let mask: __mmask16 = if groups - g >= 16 {
            0xFFFF
        } else {
            (1u16 << (groups - g)) - 1
        };
        let mut w_offset = [_mm512_setzero_ps(); R];
        for r in 0..R {
            // SAFETY: `tile.check()` guarantees `w_offsets.len() >= R * groups`,
            // and the mask covers only groups below `groups`.
            w_offset[r] =
                unsafe { _mm512_maskz_loadu_ps(mask, tile.w_offsets.as_ptr().add(r * groups + g)) };
        }
        for t in 0..T {
            // SAFETY: as above, with `x_sums.len() >= T * groups`.
            let x_sum =
                unsafe { _mm512_maskz_loadu_ps(mask, tile.x_sums.as_ptr().add(t * groups + g)) };
            for r in 0..R {
                acc[r][t] = _mm512_fmadd_ps(w_offset[r], x_sum, acc[r][t]);
            }
        }
    }

    let mut sums = [[0.0f32; T]; R];
    if R == 4 && T == 4 {
        let mut flat = [_mm512_setzero_ps(); 16];
        for r in 0..R {
            for t in 0..T {
                flat[4 * r + t] = acc[r][t];
            }
        }
        let lanes = reduce_add_16(flat);
        let mut values = [0.0f32; 16];
        // SAFETY: `values` contains 16 floats, one vector.
        unsafe { _mm512_storeu_ps(values.as_mut_ptr(), lanes) };
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = values[4 * t + r];
            }
        }
    } else {
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }
    widen(sums)
}

/// Sums each of 16 vectors at once, in 45 shuffles and adds instead of 16
/// separate reductions: lane `4j + i` of the result is the sum of `v[4i + j]`.
#[target_feature(enable = "avx512f")]
fn reduce_add_16(v: [__m512; 16]) -> __m512 {
    // Halve the lanes per vector at each level while pairing vectors up. First
    // 128-bit blocks: `[a0 + a2, a1 + a3, b0 + b2, b1 + b3]` from a and b.
    let mut halves = [_mm512_setzero_ps(); 8];
    for k in 0..8 {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        halves[k] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        );
    }

    // Block j of `quarters[m]` contains 4 partial sums of v[4m + j].
    let mut quarters = [_mm512_setzero_ps(); 4];
    for m in 0..4 {
        let (ab, cd) = (halves[2 * m], halves[2 * m + 1]);
        quarters[m] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
        );
    }

    // Then within each 128-bit block: block j of `pairs[h]` contains 2 partial sums
    // of v[8h + j], then 2 of v[8h + 4 + j].
    let mut pairs = [_mm512_setzero_ps(); 2];
    for h in 0..2 {
        let (x, y) = (quarters[2 * h], quarters[2 * h + 1]);
        pairs[h] = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm512_shuffle_ps::<0b11_10_11_10>(x, y),
        );
    }

    // Finally block j contains the sums of v[j], v[4 + j], v[8 + j] and v[12 + j].
    let (x, y) = (pairs[0], pairs[1]);
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(x, y),
        _mm512_shuffle_ps::<0b11_01_11_01>(x, y),
    )
}

/// AVX2 kernel.
///
/// The caller has run `tile.check()`.
#[target_feature(enable = "avx2,fma")]
pub(super) fn dot_tile_avx2(tile: &Tile) -> TileSums {
    if tile.wide_codes {
        dispatch_tile_shape!(avx2_wide, tile)
    } else {
        dispatch_tile_shape!(avx2_narrow, tile)
    }
}

#[target_feature(enable = "avx2,fma")]
fn avx2_narrow<const R: usize, const T: usize>(tile: &Tile) -> TileSums {
    avx2_fixed::<R, T, false>(tile)
}

#[target_feature(enable = "avx2,fma")]
fn avx2_wide<const R: usize, const T: usize>(tile: &Tile) -> TileSums {
    avx2_fixed::<R, T, true>(tile)
}

/// `WIDE` selects the Q8_0 path, whose codes reach 255: `vpmaddubsw` then
/// multiplies `|code - 128|` by the activation with the sign of `code - 128`
/// (each pair sum stays within `2 * 128 * 127 < 32767`) and adds back
/// `128 * sum(x)`. Codes of at most 63 take `vpmaddubsw` directly
/// (`2 * 63 * 127 < 32767`), so no pair sum saturates.
#[inline(always)]
fn avx2_fixed<const R: usize, const T: usize, const WIDE: bool>(tile: &Tile) -> TileSums {
    const HALF_STEP: usize = 32;
    // SAFETY: every caller is compiled with AVX2 and FMA enabled, which is
    // all the intrinsics below need.
    unsafe {
        let p = tile.padded;
        let ones_i16 = _mm256_set1_epi16(1);
        let ones_u8 = _mm256_set1_epi8(1);
        let bias = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for s in 0..p / HALF_STEP {
            let mut w = [_mm256_setzero_si256(); R];
            let mut w_abs = [_mm256_setzero_si256(); R];
            let mut w_scale = [_mm256_setzero_ps(); R];
            for r in 0..R {
                // SAFETY (loads): `tile.check()` guarantees the slice lengths and
                // `s * HALF_STEP + HALF_STEP <= p`.
                w[r] = _mm256_loadu_si256(tile.w_codes.as_ptr().add(r * p + s * HALF_STEP).cast());
                w_scale[r] =
                    _mm256_loadu_ps(tile.w_scales.as_ptr().add((r * p + s * HALF_STEP) / LANE));
                if WIDE {
                    w[r] = _mm256_xor_si256(w[r], bias);
                    w_abs[r] = _mm256_abs_epi8(w[r]);
                }
            }

            for t in 0..T {
                let x = _mm256_loadu_si256(tile.x_codes.as_ptr().add(t * p + s * HALF_STEP).cast());
                let x_scale =
                    _mm256_loadu_ps(tile.x_scales.as_ptr().add((t * p + s * HALF_STEP) / LANE));
                let x_bias_sum = if WIDE {
                    let x_sum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones_u8, x), ones_i16);
                    _mm256_slli_epi32::<7>(x_sum)
                } else {
                    _mm256_setzero_si256()
                };

                for r in 0..R {
                    let idot = if WIDE {
                        let signed_x = _mm256_sign_epi8(x, w[r]);
                        let pairs = _mm256_maddubs_epi16(w_abs[r], signed_x);
                        _mm256_add_epi32(_mm256_madd_epi16(pairs, ones_i16), x_bias_sum)
                    } else {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(w[r], x), ones_i16)
                    };
                    let scale = _mm256_mul_ps(w_scale[r], x_scale);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot), scale, acc[r][t]);
                }
            }
        }

        // The offsets times the activation sums, 8 groups at a time.
        // SAFETY (masked loads): `tile.check()` guarantees `R * groups`
        // offsets and `T * groups` sums, and the mask enables only lanes
        // below `groups`, which is all `vmaskmovps` reads.
        let groups = p / GROUP;
        for g in (0..groups).step_by(8) {
            let valid = (groups - g).min(8) as i32;
            let mask = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(valid),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            let mut w_offset = [_mm256_setzero_ps(); R];
            for r in 0..R {
                w_offset[r] = _mm256_maskload_ps(tile.w_offsets.as_ptr().add(r * groups + g), mask);
            }
            for t in 0..T {
                let x_sum = _mm256_maskload_ps(tile.x_sums.as_ptr().add(t * groups + g), mask);
                for r in 0..R {
                    acc[r][t] = _mm256_fmadd_ps(w_offset[r], x_sum, acc[r][t]);
                }
            }
        }

        let mut sums = [[0.0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = hsum_avx(acc[r][t]);
            }
        }
        widen(sums)
    }
}

#[inline(always)]
unsafe fn hsum_avx(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let one = _mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair));
    _mm_cvtss_f32(one)
}
