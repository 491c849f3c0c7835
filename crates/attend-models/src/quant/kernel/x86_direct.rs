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

/// `sum_c W[r, c] * x_hat[c]` for `R` consecutive rows of type `ty`.
///
/// The rows share each step's activation loads and one final reduction. Each row's
/// sum is bit for bit the same whatever `R` is, so a product does not depend on how
/// its rows are grouped.
///
/// # Shapes
/// `rows: [R * row_bytes]` with `row_bytes = ty.bytes_for(cols)`, `x_codes: [padded]`,
/// `x_scales: [padded / 4]`, `x_sums: [padded / 16]` with `padded >= cols` a multiple
/// of 64.
///
/// The caller has checked that the CPU supports AVX-512 F, BW and VNNI and F16C, and
/// that `ty` is one of the quantized supported types.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c,avx2,fma")]
pub(super) fn dot_rows_avx512<const R: usize>(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x_codes: &[i8],
    x_scales: &[f32],
    x_sums: &[f32],
) -> [f32; R] {
    assert!((1..=4).contains(&R));
    assert!(rows.len() == R * row_bytes);
    let cols = row_bytes / ty.block_bytes() * ty.block_elems();
    assert!(x_codes.len() >= cols.div_ceil(STEP) * STEP);
    assert!(x_scales.len() * LANE >= x_codes.len());
    assert!(x_sums.len() * GROUP >= x_codes.len());
    let x = Activations {
        codes: x_codes,
        scales: x_scales,
        sums: x_sums,
    };
    let row = |r: usize| &rows[r * row_bytes..(r + 1) * row_bytes];
    let full_steps = cols / STEP;
    // Each macro returns fresh accumulators and indexes them only by constants (the
    // row loops run `R` times), so that they stay in registers. Each row's steps are
    // added in order.
    //
    // Two-block types: `$decode` turns the `$bytes` bytes of two 32-weight blocks into
    // one step.
    macro_rules! pair_steps {
        ($decode:ident, $bytes:literal) => {{
            let mut acc: [Accumulator; R] = std::array::from_fn(|_| Accumulator::new());
            for s in 0..full_steps {
                let x_step = x.step(s);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let start = r * row_bytes + s * $bytes;
                    let blocks: &[u8; $bytes] = rows[start..start + $bytes].try_into().unwrap();
                    acc.add(&$decode(blocks), &x_step);
                }
            }
            acc
        }};
    }
    // K-quant types: `$decode` turns one `$bytes`-byte block of 256 weights into four
    // steps.
    macro_rules! block_steps {
        ($decode:ident, $bytes:literal) => {{
            let mut acc: [Accumulator; R] = std::array::from_fn(|_| Accumulator::new());
            for b in 0..row_bytes / $bytes {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let start = r * row_bytes + b * $bytes;
                    let block: &[u8; $bytes] = rows[start..start + $bytes].try_into().unwrap();
                    for (c, step) in $decode(block).iter().enumerate() {
                        acc.add(step, &x.step(4 * b + c));
                    }
                }
            }
            acc
        }};
    }
    let mut acc = match ty {
        GgmlType::Q4_0 => pair_steps!(q4_0_step, 36),
        GgmlType::Q4_1 => pair_steps!(q4_1_step, 40),
        GgmlType::Q5_0 => pair_steps!(q5_0_step, 44),
        GgmlType::Q8_0 => pair_steps!(q8_0_step, 68),
        GgmlType::Q4_K => block_steps!(q4_k_steps, 144),
        GgmlType::Q6_K => block_steps!(q6_k_steps, 210),
        _ => unreachable!("dot_rows_avx512 is only called for the quantized types"),
    };

    // A row of an odd number of 32-weight blocks ends in half a step:
    // unpack its last block into a zero-padded step on the stack.
    if !cols.is_multiple_of(STEP) {
        let block_bytes = ty.block_bytes();
        let x_step = x.step(full_steps);
        for (r, acc) in acc.iter_mut().enumerate() {
            let last = &row(r)[row_bytes - block_bytes..];
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
            acc.add(&step, &x_step);
        }
    }
    totals(&acc)
}

/// One quantised token: codes, lane scales and group sums, `padded` elements long.
struct Activations<'a> {
    codes: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// The token's codes, 16 lane scales and 4 group sums of one 64-weight step.
struct ActivationStep {
    codes: __m512i,
    scales: __m512,
    sums: __m128,
}

impl Activations<'_> {
    /// Loads step `s`.
    #[inline(always)]
    fn step(&self, s: usize) -> ActivationStep {
        // SAFETY: `dot_rows_avx512` asserted that the token slices cover every step
        // of the rows, padded to 64, and its callers are compiled with AVX-512 F.
        unsafe {
            ActivationStep {
                codes: _mm512_loadu_si512(self.codes.as_ptr().add(s * STEP).cast()),
                scales: _mm512_loadu_ps(self.scales.as_ptr().add(s * STEP / LANE)),
                sums: _mm_loadu_ps(self.sums.as_ptr().add(s * STEP / GROUP)),
            }
        }
    }
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

    /// Adds one step of a row against the same step of the token.
    #[inline(always)]
    fn add(&mut self, step: &Step, x: &ActivationStep) {
        // SAFETY: the callers are compiled with AVX-512 F, BW and VNNI.
        unsafe {
            let idot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), step.codes, x.codes);
            let scale = _mm512_mul_ps(step.scales, x.scales);
            self.products = _mm512_fmadd_ps(_mm512_cvtepi32_ps(idot), scale, self.products);
            self.offsets = _mm_fmadd_ps(step.offsets, x.sums, self.offsets);
        }
    }
}

/// Sums each accumulator's lanes. The rows are padded to four with zeros and reduced
/// together in a fixed order, so that a row's total is the same for any `R`.
#[inline(always)]
fn totals<const R: usize>(acc: &[Accumulator; R]) -> [f32; R] {
    // SAFETY: only called from functions compiled with AVX-512 F.
    unsafe {
        let products: [__m512; 4] =
            std::array::from_fn(|r| acc.get(r).map_or(_mm512_setzero_ps(), |a| a.products));
        let offsets: [__m128; 4] =
            std::array::from_fn(|r| acc.get(r).map_or(_mm_setzero_ps(), |a| a.offsets));
        // The 128-bit quarters of `halves[i]` are [a.q0 + a.q2, a.q1 + a.q3, b.q0 + b.q2,
        // b.q1 + b.q3] for rows (a, b) = (2i, 2i + 1).
        let halves: [__m512; 2] = std::array::from_fn(|i| {
            let (a, b) = (products[2 * i], products[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        });
        // Quarter r of `quarters` contains 4 partial sums of row r.
        let quarters = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(halves[0], halves[1]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(halves[0], halves[1]),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        // Lane 4k + r of `by_row` is partial sum k of row r.
        let by_row = _mm512_permutexvar_ps(order, quarters);
        let pairs = _mm_add_ps(
            _mm_add_ps(
                _mm512_castps512_ps128(by_row),
                _mm512_extractf32x4_ps::<1>(by_row),
            ),
            _mm_add_ps(
                _mm512_extractf32x4_ps::<2>(by_row),
                _mm512_extractf32x4_ps::<3>(by_row),
            ),
        );
        let offset_sums = _mm_hadd_ps(
            _mm_hadd_ps(offsets[0], offsets[1]),
            _mm_hadd_ps(offsets[2], offsets[3]),
        );
        let mut sums = [0.0f32; 4];
        _mm_storeu_ps(sums.as_mut_ptr(), _mm_add_ps(pairs, offset_sums));
        std::array::from_fn(|r| sums[r])
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

/// Widens the f16 scales of two 32-weight blocks, at `bytes[a..a + 2]` and
/// `bytes[b..b + 2]`, into 16 lane scales (the first for lanes 0..8) and the 4 group
/// offsets `[factor * d0, factor * d0, factor * d1, factor * d1]`.
#[inline(always)]
fn pair_scales(bytes: &[u8], a: usize, b: usize, factor: f32) -> (__m512, __m128) {
    let bits = u16::from_le_bytes([bytes[a], bytes[a + 1]]) as u32
        | (u16::from_le_bytes([bytes[b], bytes[b + 1]]) as u32) << 16;
    // SAFETY: the callers are compiled with AVX-512 F and F16C.
    unsafe {
        let d = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        let lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let scales = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d));
        let offsets = _mm_mul_ps(_mm_unpacklo_ps(d, d), _mm_set1_ps(factor));
        (scales, offsets)
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
fn q4_0_step(blocks: &[u8; 36]) -> Step {
    let (scales, offsets) = pair_scales(blocks, 0, 18, -8.0);
    // SAFETY: nibbles at 2..18 and 20..36 lie inside the 36 bytes.
    let codes = unsafe { nibble_pair_codes(blocks.as_ptr().add(2), 18) };
    Step {
        codes,
        scales,
        offsets,
    }
}

#[inline(always)]
fn q4_1_step(blocks: &[u8; 40]) -> Step {
    // Each block starts with its f16 scale d and minimum m: one 64-bit value
    // [d0, m0, d1, m1] contains both blocks'.
    let d_m0 = u32::from_le_bytes(blocks[0..4].try_into().unwrap()) as u64;
    let d_m1 = u32::from_le_bytes(blocks[20..24].try_into().unwrap()) as u64;
    // SAFETY: nibbles at 4..20 and 24..40 lie inside the 40 bytes; the callers are
    // compiled with AVX-512 F, BW and F16C.
    unsafe {
        let d_m = _mm_cvtph_ps(_mm_cvtsi64_si128((d_m0 | d_m1 << 32) as i64));
        let lanes = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
        Step {
            codes: nibble_pair_codes(blocks.as_ptr().add(4), 20),
            scales: _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d_m)),
            offsets: _mm_permute_ps::<0b11_11_01_01>(d_m),
        }
    }
}

#[inline(always)]
fn q5_0_step(blocks: &[u8; 44]) -> Step {
    let (scales, offsets) = pair_scales(blocks, 0, 22, -16.0);
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
        scales,
        offsets,
    }
}

#[inline(always)]
fn q8_0_step(blocks: &[u8; 68]) -> Step {
    let (scales, offsets) = pair_scales(blocks, 0, 34, -128.0);
    // SAFETY: codes at 2..34 and 36..68 lie inside the 68 bytes.
    let codes = unsafe {
        let first = _mm256_loadu_si256(blocks.as_ptr().add(2).cast());
        let second = _mm256_loadu_si256(blocks.as_ptr().add(36).cast());
        let joined = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(first), second);
        _mm512_xor_si512(joined, _mm512_set1_epi8(-128))
    };
    Step {
        codes,
        scales,
        offsets,
    }
}

// The steps are built by calls to `#[inline(always)]` functions, not by a closure, so
// that their intrinsics are inlined into the caller's target features.
#[inline(always)]
fn q4_k_steps(block: &[u8; 144]) -> [Step; 4] {
    let (d, dmin) = f16_pair(block, 0, 2);
    [
        q4_k_step(block, d, dmin, 0),
        q4_k_step(block, d, dmin, 1),
        q4_k_step(block, d, dmin, 2),
        q4_k_step(block, d, dmin, 3),
    ]
}

/// Step `c` of a Q4_K block with super-block scale `d` and minimum scale `dmin`.
#[inline(always)]
fn q4_k_step(block: &[u8; 144], d: f32, dmin: f32, c: usize) -> Step {
    let packed = &block[4..16];
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
}

#[inline(always)]
fn q6_k_steps(block: &[u8; 210]) -> [Step; 4] {
    let (d, _) = f16_pair(block, 208, 208);
    [
        q6_k_step(block, d, 0),
        q6_k_step(block, d, 1),
        q6_k_step(block, d, 2),
        q6_k_step(block, d, 3),
    ]
}

/// Step `c` of a Q6_K block with super-block scale `d`.
#[inline(always)]
fn q6_k_step(block: &[u8; 210], d: f32, c: usize) -> Step {
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
        let raw_scales = i32::from_le_bytes(block[192 + 4 * c..196 + 4 * c].try_into().unwrap());
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
}
