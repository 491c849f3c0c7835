//! AVX-512 VNNI dot products of one raw quantized row with one quantised
//! token, decoding each 64-weight step in registers.
//!
//! Decode (one token) reads every weight once, so writing unpacked rows to
//! memory and reading them back, as the tiled kernel does, would cost more
//! than the product itself. Each step yields the same codes, lane scales and
//! group offsets as `unpack.rs` describes, only in registers.

use crate::quant::unpack::{unpack_row, GROUP, LANE, STEP};
use crate::GgmlType;
use std::arch::x86_64::*;

/// One decoded step of 64 weights: codes, 16 lane scales, 4 group offsets.
struct Step {
    codes: __m512i,
    scales: __m512,
    offsets: __m128,
}

/// `sum_c W[c] * x_hat[c]` for one row of type `ty`.
///
/// # Shapes
/// `row: [ty.bytes_for(cols)]`, `x_codes: [padded]`, `x_scales: [padded / 4]`,
/// `x_sums: [padded / 16]` with `padded >= cols` a multiple of 64.
///
/// The caller has checked that the CPU supports AVX-512 F, BW and VNNI and
/// F16C, and that `ty` is one of the quantized supported types.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
pub(super) fn dot_row_avx512(
    ty: GgmlType,
    row: &[u8],
    x_codes: &[i8],
    x_scales: &[f32],
    x_sums: &[f32],
) -> f32 {
    let cols = row.len() / ty.block_bytes() * ty.block_elems();
    assert!(x_codes.len() >= cols.div_ceil(STEP) * STEP);
    assert!(x_scales.len() * LANE >= x_codes.len());
    assert!(x_sums.len() * GROUP >= x_codes.len());
    let mut acc = Accumulator::new();
    let full_steps = cols / STEP;
    match ty {
        GgmlType::Q4_0 => (0..full_steps).for_each(|s| {
            acc.add(
                s,
                &q4_0_step(&row[s * 36..s * 36 + 36]),
                x_codes,
                x_scales,
                x_sums,
            )
        }),
        GgmlType::Q4_1 => (0..full_steps).for_each(|s| {
            acc.add(
                s,
                &q4_1_step(&row[s * 40..s * 40 + 40]),
                x_codes,
                x_scales,
                x_sums,
            )
        }),
        GgmlType::Q5_0 => (0..full_steps).for_each(|s| {
            acc.add(
                s,
                &q5_0_step(&row[s * 44..s * 44 + 44]),
                x_codes,
                x_scales,
                x_sums,
            )
        }),
        GgmlType::Q8_0 => (0..full_steps).for_each(|s| {
            acc.add(
                s,
                &q8_0_step(&row[s * 68..s * 68 + 68]),
                x_codes,
                x_scales,
                x_sums,
            )
        }),
        GgmlType::Q4_K => {
            for (b, block) in row.chunks_exact(144).enumerate() {
                for (c, step) in q4_k_steps(block).iter().enumerate() {
                    acc.add(4 * b + c, step, x_codes, x_scales, x_sums);
                }
            }
        }
        GgmlType::Q6_K => {
            for (b, block) in row.chunks_exact(210).enumerate() {
                for (c, step) in q6_k_steps(block).iter().enumerate() {
                    acc.add(4 * b + c, step, x_codes, x_scales, x_sums);
                }
            }
        }
        _ => unreachable!("dot_row_avx512 is only called for the quantized types"),
    }

    // A row of an odd number of 32-weight blocks ends in half a step:
    // unpack its last block into a zero-padded step on the stack.
    if !cols.is_multiple_of(STEP) {
        let block_bytes = ty.block_bytes();
        let last = &row[row.len() - block_bytes..];
        let mut codes = [0u8; STEP];
        let mut scales = [0.0f32; STEP / LANE];
        let mut offsets = [0.0f32; STEP / GROUP];
        unpack_row(ty, last, &mut codes, &mut scales, &mut offsets);
        // SAFETY: the arrays hold 64 bytes, 16 and 4 floats.
        let step = unsafe {
            Step {
                codes: _mm512_loadu_si512(codes.as_ptr().cast()),
                scales: _mm512_loadu_ps(scales.as_ptr()),
                offsets: _mm_loadu_ps(offsets.as_ptr()),
            }
        };
        acc.add(full_steps, &step, x_codes, x_scales, x_sums);
    }
    acc.total()
}

struct Accumulator {
    products: __m512,
    offsets: __m128,
}

impl Accumulator {
    #[inline(always)]
    fn new() -> Self {
        // SAFETY: only called from functions compiled with AVX-512 F.
        unsafe {
            Accumulator {
                products: _mm512_setzero_ps(),
                offsets: _mm_setzero_ps(),
            }
        }
    }

    /// Adds step `s` of the row against the same step of the token.
    #[inline(always)]
    fn add(&mut self, s: usize, step: &Step, x_codes: &[i8], x_scales: &[f32], x_sums: &[f32]) {
        // SAFETY: `dot_row_avx512` asserted that the token slices cover
        // every step of the row, padded to 64, and the callers are compiled
        // with AVX-512 F, BW and VNNI.
        unsafe {
            let x = _mm512_loadu_si512(x_codes.as_ptr().add(s * STEP).cast());
            let x_scale = _mm512_loadu_ps(x_scales.as_ptr().add(s * STEP / LANE));
            let x_sum = _mm_loadu_ps(x_sums.as_ptr().add(s * STEP / GROUP));
            let idot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), step.codes, x);
            let scale = _mm512_mul_ps(step.scales, x_scale);
            self.products = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), scale, self.products);
            self.offsets = _mm_fmadd_ps(step.offsets, x_sum, self.offsets);
        }
    }

    #[inline(always)]
    fn total(&self) -> f32 {
        // SAFETY: as for `new`.
        unsafe {
            let quad = _mm_add_ps(self.offsets, _mm_movehl_ps(self.offsets, self.offsets));
            let offsets = _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps::<0b01>(quad, quad)));
            _mm512_reduce_add_ps(self.products) + offsets
        }
    }
}

/// Two f16 values at `bytes[a..a + 2]` and `bytes[b..b + 2]` as f32, with F16C.
#[inline(always)]
fn f16_pair(bytes: &[u8], a: usize, b: usize) -> (f32, f32) {
    let bits = u16::from_le_bytes([bytes[a], bytes[a + 1]]) as u32
        | (u16::from_le_bytes([bytes[b], bytes[b + 1]]) as u32) << 16;
    // SAFETY: the callers are compiled with F16C.
    unsafe {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        (
            _mm_cvtss_f32(v),
            _mm_cvtss_f32(_mm_shuffle_ps::<0b01>(v, v)),
        )
    }
}

/// Codes of two 32-weight blocks whose nibbles start at `p` and `p + stride`:
/// low nibbles of each block first, then its high nibbles.
///
/// # Safety
/// `p..p + 16` and `p + stride..p + stride + 16` are readable; AVX-512 F and BW.
#[inline(always)]
unsafe fn nibble_pair_codes(p: *const u8, stride: usize) -> __m512i {
    unsafe {
        let nibbles = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(p.cast())),
            _mm_loadu_si128(p.add(stride).cast()),
        );
        let mask = _mm256_set1_epi8(0x0F);
        let low = _mm256_and_si256(nibbles, mask);
        let high = _mm256_and_si256(_mm256_srli_epi16::<4>(nibbles), mask);
        // 128-bit lanes [low0, low1, high0, high1] reordered to [low0, high0, low1, high1].
        let joined = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
        _mm512_shuffle_i64x2::<0b11_01_10_00>(joined, joined)
    }
}

/// 16 lane scales: `first` for lanes 0..8, `second` for lanes 8..16.
#[inline(always)]
fn split_scales(first: f32, second: f32) -> __m512 {
    // SAFETY: the callers are compiled with AVX-512 F.
    unsafe { _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(first), _mm512_set1_ps(second)) }
}

#[inline(always)]
fn pair_offsets(first: f32, second: f32) -> __m128 {
    // SAFETY: SSE is part of x86-64.
    unsafe { _mm_setr_ps(first, first, second, second) }
}

#[inline(always)]
fn q4_0_step(blocks: &[u8]) -> Step {
    assert!(blocks.len() == 36);
    let (d0, d1) = f16_pair(blocks, 0, 18);
    // SAFETY: nibbles at 2..18 and 20..36 lie inside the 36 bytes.
    let codes = unsafe { nibble_pair_codes(blocks.as_ptr().add(2), 18) };
    Step {
        codes,
        scales: split_scales(d0, d1),
        offsets: pair_offsets(-8.0 * d0, -8.0 * d1),
    }
}

#[inline(always)]
fn q4_1_step(blocks: &[u8]) -> Step {
    assert!(blocks.len() == 40);
    let (d0, d1) = f16_pair(blocks, 0, 20);
    let (m0, m1) = f16_pair(blocks, 2, 22);
    // SAFETY: nibbles at 4..20 and 24..40 lie inside the 40 bytes.
    let codes = unsafe { nibble_pair_codes(blocks.as_ptr().add(4), 20) };
    Step {
        codes,
        scales: split_scales(d0, d1),
        offsets: pair_offsets(m0, m1),
    }
}

#[inline(always)]
fn q5_0_step(blocks: &[u8]) -> Step {
    assert!(blocks.len() == 44);
    let (d0, d1) = f16_pair(blocks, 0, 22);
    let qh0 = u32::from_le_bytes(blocks[2..6].try_into().unwrap()) as u64;
    let qh1 = u32::from_le_bytes(blocks[24..28].try_into().unwrap()) as u64;
    // SAFETY: nibbles at 6..22 and 28..44 lie inside the 44 bytes; the
    // callers are compiled with AVX-512 BW.
    let codes = unsafe {
        let low = nibble_pair_codes(blocks.as_ptr().add(6), 22);
        // Bit i of the mask is bit 4 of code i.
        let high = _mm512_maskz_mov_epi8(qh0 | (qh1 << 32), _mm512_set1_epi8(0x10));
        _mm512_or_si512(low, high)
    };
    Step {
        codes,
        scales: split_scales(d0, d1),
        offsets: pair_offsets(-16.0 * d0, -16.0 * d1),
    }
}

#[inline(always)]
fn q8_0_step(blocks: &[u8]) -> Step {
    assert!(blocks.len() == 68);
    let (d0, d1) = f16_pair(blocks, 0, 34);
    // SAFETY: codes at 2..34 and 36..68 lie inside the 68 bytes.
    let codes = unsafe {
        let first = _mm256_loadu_si256(blocks.as_ptr().add(2).cast());
        let second = _mm256_loadu_si256(blocks.as_ptr().add(36).cast());
        let joined = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);
        _mm512_xor_si512(joined, _mm512_set1_epi8(-128))
    };
    Step {
        codes,
        scales: split_scales(d0, d1),
        offsets: pair_offsets(-128.0 * d0, -128.0 * d1),
    }
}

#[inline(always)]
fn q4_k_steps(block: &[u8]) -> [Step; 4] {
    assert!(block.len() == 144);
    let (d, dmin) = f16_pair(block, 0, 2);
    let packed = &block[4..16];
    std::array::from_fn(|c| {
        let (sc0, m0) = crate::quant::dequant::q4_k_scale_min(packed, 2 * c);
        let (sc1, m1) = crate::quant::dequant::q4_k_scale_min(packed, 2 * c + 1);
        // SAFETY: nibbles at 16 + 32c..48 + 32c lie inside the 144 bytes.
        let codes = unsafe {
            let nibbles = _mm256_loadu_si256(block.as_ptr().add(16 + 32 * c).cast());
            let mask = _mm256_set1_epi8(0x0F);
            let low = _mm256_and_si256(nibbles, mask);
            let high = _mm256_and_si256(_mm256_srli_epi16::<4>(nibbles), mask);
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
        };
        Step {
            codes,
            scales: split_scales(d * sc0 as f32, d * sc1 as f32),
            offsets: pair_offsets(-(dmin * m0 as f32), -(dmin * m1 as f32)),
        }
    })
}

#[inline(always)]
fn q6_k_steps(block: &[u8]) -> [Step; 4] {
    assert!(block.len() == 210);
    let (d, _) = f16_pair(block, 208, 208);
    std::array::from_fn(|c| {
        let (half, upper) = (c / 2, c % 2 == 1);
        // SAFETY: ql (64 bytes at 64 * half), qh (32 bytes at 128 + 32 * half)
        // and the 4 scales at 192 + 4c lie inside the 210 bytes.
        unsafe {
            let ql_lo = _mm256_loadu_si256(block.as_ptr().add(64 * half).cast());
            let ql_hi = _mm256_loadu_si256(block.as_ptr().add(64 * half + 32).cast());
            let qh = _mm256_loadu_si256(block.as_ptr().add(128 + 32 * half).cast());
            let low4 = _mm256_set1_epi8(0x0F);
            let top2 = _mm256_set1_epi8(0x30);
            // Elements l + 32k of the half take bits 2k..2k + 2 of qh[l].
            let (first, second) = if upper {
                (
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql_lo), low4),
                        _mm256_and_si256(qh, top2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql_hi), low4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), top2),
                    ),
                )
            } else {
                (
                    _mm256_or_si256(
                        _mm256_and_si256(ql_lo, low4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), top2),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql_hi, low4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), top2),
                    ),
                )
            };
            let codes = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);

            // Groups 4c..4c + 4 of 16 weights, each with its own signed scale.
            let raw_scales =
                i32::from_le_bytes(block[192 + 4 * c..196 + 4 * c].try_into().unwrap());
            let group_scales = _mm_mul_ps(
                _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(raw_scales))),
                _mm_set1_ps(d),
            );
            let lane_index = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
            let scales = _mm512_permutexvar_ps(lane_index, _mm512_castps128_ps512(group_scales));
            Step {
                codes,
                scales,
                offsets: _mm_mul_ps(group_scales, _mm_set1_ps(-32.0)),
            }
        }
    })
}
