//! aarch64 NEON kernel: widening 8-bit multiplies with pairwise adds.
//!
//! Codes are unsigned (up to 255 for Q8_0) and NEON's 8-bit multiplies take
//! both operands with the same sign, so the kernel multiplies the signed
//! `code - 128` by the activation and adds back `128 * sum(x)` per lane.
//! Each product fits in i16 (`128 * 127`), and pairs are widened to i32
//! before they are added.
//!
//! NOTE: this kernel compiles for aarch64 but has not run on an aarch64 CPU.

// The kernel indexes accumulators by (row, token) across several arrays at
// once, which reads more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

use super::{dispatch_tile_shape, widen, Tile, MAX_TILE_ROWS, MAX_TILE_TOKENS};
use crate::quant::unpack::{GROUP, LANE};
use std::arch::aarch64::*;

type TileSums = [[f32; MAX_TILE_TOKENS]; MAX_TILE_ROWS];

/// NEON kernel.
///
/// The caller has run `tile.check()`.
#[target_feature(enable = "neon")]
pub(super) fn dot_tile_neon(tile: &Tile) -> TileSums {
    dispatch_tile_shape!(neon_fixed, tile)
}

#[target_feature(enable = "neon")]
fn neon_fixed<const R: usize, const T: usize>(tile: &Tile) -> TileSums {
    const STEP: usize = 16;
    let p = tile.padded;
    // SAFETY: `tile.check()` guarantees `w_codes.len() >= R * p`,
    // `w_scales.len() >= R * p / 4` and the same for the tokens, and
    // `s * STEP + STEP <= p`; the function is compiled with NEON.
    unsafe {
        let bias = vdupq_n_u8(0x80);
        let mut acc = [[vdupq_n_f32(0.0); T]; R];
        for s in 0..p / STEP {
            // Load each row's 16 codes, shifted to signed, and 4 lane scales.
            let mut w = [vdupq_n_s8(0); R];
            let mut w_scale = [vdupq_n_f32(0.0); R];
            for r in 0..R {
                let codes = vld1q_u8(tile.w_codes.as_ptr().add(r * p + s * STEP));
                w[r] = vreinterpretq_s8_u8(veorq_u8(codes, bias));
                w_scale[r] = vld1q_f32(tile.w_scales.as_ptr().add((r * p + s * STEP) / LANE));
            }

            for t in 0..T {
                let x = vld1q_s8(tile.x_codes.as_ptr().add(t * p + s * STEP));
                let x_scale = vld1q_f32(tile.x_scales.as_ptr().add((t * p + s * STEP) / LANE));
                // Lane i: 128 * (x[4i] + ... + x[4i + 3]).
                let x_bias_sum = vshlq_n_s32::<7>(vpaddlq_s16(vpaddlq_s8(x)));

                for r in 0..R {
                    let low = vpaddlq_s16(vmull_s8(vget_low_s8(w[r]), vget_low_s8(x)));
                    let high = vpaddlq_s16(vmull_high_s8(w[r], x));
                    // Lane i: the dot product of codes 4i..4i + 4.
                    let idot = vaddq_s32(vpaddq_s32(low, high), x_bias_sum);
                    let scale = vmulq_f32(w_scale[r], x_scale);
                    acc[r][t] = vfmaq_f32(acc[r][t], vcvtq_f32_s32(idot), scale);
                }
            }
        }

        // The offsets times the activation sums, 4 groups at a time (the
        // padded length is a multiple of 64, so groups come in fours).
        let groups = p / GROUP;
        for g in (0..groups).step_by(4) {
            let mut w_offset = [vdupq_n_f32(0.0); R];
            for r in 0..R {
                w_offset[r] = vld1q_f32(tile.w_offsets.as_ptr().add(r * groups + g));
            }
            for t in 0..T {
                let x_sum = vld1q_f32(tile.x_sums.as_ptr().add(t * groups + g));
                for r in 0..R {
                    acc[r][t] = vfmaq_f32(acc[r][t], w_offset[r], x_sum);
                }
            }
        }

        let mut sums = [[0.0f32; T]; R];
        for r in 0..R {
            for t in 0..T {
                sums[r][t] = vaddvq_f32(acc[r][t]);
            }
        }
        widen(sums)
    }
}
