//! AVX2 unpacking of quantized rows into codes, lane scales and group
//! offsets (the layout described in `unpack.rs`). The results equal the
//! portable `UnpackedRows::unpack` bit for bit; tests compare the two.

use crate::quant::dequant::{f16_at, q4_k_scale_min};
use crate::quant::unpack::{UnpackedRows, GROUP, LANE};
use crate::GgmlType;
use std::arch::x86_64::*;

/// Unpacks `rows_bytes` (whole rows of `row_bytes` bytes) into `rows`.
///
/// The caller has checked that the CPU supports AVX2 and that each row is a
/// whole number of `ty` blocks no longer than `rows.padded` elements.
#[target_feature(enable = "avx2,fma")]
pub(super) fn unpack_rows_avx2(
    ty: GgmlType,
    rows_bytes: &[u8],
    row_bytes: usize,
    rows: &mut UnpackedRows,
) {
    let p = rows.padded;
    let block_bytes = ty.block_bytes();
    let block_elems = ty.block_elems();
    for (slot, row) in rows_bytes.chunks_exact(row_bytes).enumerate() {
        let codes = &mut rows.codes[slot * p..(slot + 1) * p];
        let scales = &mut rows.lane_scales[slot * p / LANE..(slot + 1) * p / LANE];
        let offsets = &mut rows.group_offsets[slot * p / GROUP..(slot + 1) * p / GROUP];
        let blocks = row.chunks_exact(block_bytes).enumerate();
        let codes_of = |b: usize| b * block_elems..(b + 1) * block_elems;
        let scales_of = |b: usize| b * block_elems / LANE..(b + 1) * block_elems / LANE;
        let offsets_of = |b: usize| b * block_elems / GROUP..(b + 1) * block_elems / GROUP;
        match ty {
            GgmlType::Q4_0 => {
                for (b, block) in blocks {
                    let d = f16_at(block, 0);
                    split_nibbles_16(
                        block[2..18].try_into().unwrap(),
                        (&mut codes[codes_of(b)]).try_into().unwrap(),
                    );
                    scales[scales_of(b)].fill(d);
                    offsets[offsets_of(b)].fill(-8.0 * d);
                }
            }
            GgmlType::Q4_1 => {
                for (b, block) in blocks {
                    split_nibbles_16(
                        block[4..20].try_into().unwrap(),
                        (&mut codes[codes_of(b)]).try_into().unwrap(),
                    );
                    scales[scales_of(b)].fill(f16_at(block, 0));
                    offsets[offsets_of(b)].fill(f16_at(block, 2));
                }
            }
            GgmlType::Q5_0 => {
                for (b, block) in blocks {
                    let d = f16_at(block, 0);
                    let qh = u32::from_le_bytes(block[2..6].try_into().unwrap());
                    q5_0_codes(
                        qh,
                        block[6..22].try_into().unwrap(),
                        (&mut codes[codes_of(b)]).try_into().unwrap(),
                    );
                    scales[scales_of(b)].fill(d);
                    offsets[offsets_of(b)].fill(-16.0 * d);
                }
            }
            GgmlType::Q8_0 => {
                for (b, block) in blocks {
                    let d = f16_at(block, 0);
                    flip_sign_32(
                        block[2..34].try_into().unwrap(),
                        (&mut codes[codes_of(b)]).try_into().unwrap(),
                    );
                    scales[scales_of(b)].fill(d);
                    offsets[offsets_of(b)].fill(-128.0 * d);
                }
            }
            GgmlType::Q4_K => {
                for (b, block) in blocks {
                    unpack_q4_k(
                        block,
                        &mut codes[codes_of(b)],
                        &mut scales[scales_of(b)],
                        &mut offsets[offsets_of(b)],
                    );
                }
            }
            GgmlType::Q6_K => {
                for (b, block) in blocks {
                    unpack_q6_k(
                        block,
                        &mut codes[codes_of(b)],
                        &mut scales[scales_of(b)],
                        &mut offsets[offsets_of(b)],
                    );
                }
            }
            _ => unreachable!("unpack_rows_avx2 is only called for the quantized types"),
        }
    }
}

/// Codes `j` and `j + 16` from the low and high nibbles of byte `j`.
#[inline(always)]
fn split_nibbles_16(src: &[u8; 16], dst: &mut [u8; 32]) {
    // SAFETY: the array types give 16 readable and 32 writable bytes, and
    // the callers are compiled with AVX2.
    unsafe {
        let q = _mm_loadu_si128(src.as_ptr().cast());
        let mask = _mm_set1_epi8(0x0F);
        _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm_and_si128(q, mask));
        _mm_storeu_si128(
            dst.as_mut_ptr().add(16).cast(),
            _mm_and_si128(_mm_srli_epi16::<4>(q), mask),
        );
    }
}

/// Codes `j` and `j + 32` from the low and high nibbles of byte `j`.
#[inline(always)]
fn split_nibbles_32(src: &[u8; 32], dst: &mut [u8; 64]) {
    // SAFETY: as for `split_nibbles_16`.
    unsafe {
        let q = _mm256_loadu_si256(src.as_ptr().cast());
        let mask = _mm256_set1_epi8(0x0F);
        _mm256_storeu_si256(dst.as_mut_ptr().cast(), _mm256_and_si256(q, mask));
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(32).cast(),
            _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask),
        );
    }
}

/// Q5_0 codes: nibbles as in Q4_0, plus 16 where bit `i` of `qh` is set.
#[inline(always)]
fn q5_0_codes(qh: u32, nibbles: &[u8; 16], dst: &mut [u8; 32]) {
    split_nibbles_16(nibbles, dst);
    // SAFETY: as for `split_nibbles_16`.
    unsafe {
        // Byte i of `spread` is byte i / 8 of qh; testing bit i % 8 of it
        // gives bit i of qh.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            ),
        );
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
        let high = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
        let low = _mm256_loadu_si256(dst.as_ptr().cast());
        _mm256_storeu_si256(dst.as_mut_ptr().cast(), _mm256_or_si256(low, high));
    }
}

/// Q8_0 codes: the signed byte q becomes the unsigned q + 128.
#[inline(always)]
fn flip_sign_32(src: &[u8; 32], dst: &mut [u8; 32]) {
    // SAFETY: as for `split_nibbles_16`.
    unsafe {
        let q = _mm256_loadu_si256(src.as_ptr().cast());
        _mm256_storeu_si256(
            dst.as_mut_ptr().cast(),
            _mm256_xor_si256(q, _mm256_set1_epi8(-128)),
        );
    }
}

#[inline(always)]
fn unpack_q4_k(block: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let packed = &block[4..16];
    for chunk in 0..4 {
        let nibbles = block[16 + 32 * chunk..48 + 32 * chunk].try_into().unwrap();
        split_nibbles_32(
            nibbles,
            (&mut codes[64 * chunk..64 * chunk + 64])
                .try_into()
                .unwrap(),
        );
    }
    for sub in 0..8 {
        let (sc, m) = q4_k_scale_min(packed, sub);
        scales[sub * 8..sub * 8 + 8].fill(d * sc as f32);
        offsets[sub * 2..sub * 2 + 2].fill(-(dmin * m as f32));
    }
}

#[inline(always)]
fn unpack_q6_k(block: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    assert_eq!(block.len(), 210);
    assert_eq!(codes.len(), 256);
    for half in 0..2 {
        // SAFETY: `block` has 210 bytes, so ql (64 bytes at 64 * half) and
        // qh (32 bytes at 128 + 32 * half) are in bounds. `codes` has 256
        // bytes for the four 32-byte stores at 128 * half. The callers are
        // compiled with AVX2.
        unsafe {
            let ql_lo = _mm256_loadu_si256(block.as_ptr().add(64 * half).cast());
            let ql_hi = _mm256_loadu_si256(block.as_ptr().add(64 * half + 32).cast());
            let qh = _mm256_loadu_si256(block.as_ptr().add(128 + 32 * half).cast());
            let low4 = _mm256_set1_epi8(0x0F);
            let top2 = _mm256_set1_epi8(0x30);
            // Element l + 32 k takes bits 2k..2k + 2 of qh[l] as its bits 4..6.
            let high = [
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), top2),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), top2),
                _mm256_and_si256(qh, top2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), top2),
            ];
            let low = [
                _mm256_and_si256(ql_lo, low4),
                _mm256_and_si256(ql_hi, low4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql_lo), low4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql_hi), low4),
            ];
            let dst = codes.as_mut_ptr().add(128 * half);
            for k in 0..4 {
                _mm256_storeu_si256(dst.add(32 * k).cast(), _mm256_or_si256(low[k], high[k]));
            }
        }
    }
    let d = f16_at(block, 208);
    for group in 0..16 {
        let scale = d * (block[192 + group] as i8) as f32;
        scales[group * 4..group * 4 + 4].fill(scale);
        offsets[group] = -32.0 * scale;
    }
}
