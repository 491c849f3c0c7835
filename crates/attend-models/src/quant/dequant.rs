//! Dequantisation of ggml blocks to f32.
//!
//! Each format follows ggml's reference dequantisation, and the f32 operations
//! run in the same order (for example `d * q + m` for Q4_1, `(d * sc) * q - dmin * m`
//! for Q4_K), so the results are bit-identical to ggml's and to the `gguf`
//! Python package's for the same bytes.

use super::QuantError;
use crate::ggml_type::QK_K;
use crate::GgmlType;
use half::{bf16, f16};

/// Reads the little-endian f16 at `bytes[at..at + 2]` as f32.
#[inline(always)]
pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Converts f16 bits to f32 exactly, inlined. `half`'s conversion is an
/// out-of-line call with a CPU feature check, which costs more than the
/// rest of unpacking a block.
#[inline(always)]
pub(super) fn f16_bits_to_f32(bits: u16) -> f32 {
    let sign = ((bits & 0x8000) as u32) << 16;
    let exponent = ((bits >> 10) & 0x1F) as u32;
    let mantissa = (bits & 0x03FF) as u32;
    let magnitude = match exponent {
        // Zero and subnormals: mantissa * 2^-24, exact in f32.
        0 => mantissa as f32 * (1.0 / 16_777_216.0),
        // Infinities and NaNs keep their payload.
        31 => f32::from_bits(0x7F80_0000 | (mantissa << 13)),
        // Normal numbers: rebias the exponent from 15 to 127.
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// Dequantises `out.len()` consecutive elements of type `ty` from `bytes`.
///
/// # Shapes
/// `bytes: [ty.bytes_for(n)]` and `out: [n]`, where `n` is a multiple of
/// `ty.block_elems()`. One or several rows of a tensor may be passed at once.
///
/// # Errors
/// [`QuantError::UnsupportedType`] for a type outside
/// [`SUPPORTED_TYPES`](super::SUPPORTED_TYPES), [`QuantError::ColsNotBlockMultiple`]
/// when `n` is not a whole number of blocks, and [`QuantError::ByteLength`] when
/// `bytes` has the wrong length.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_row_bytes(ty, bytes.len(), out.len())?;
    let block_bytes = ty.block_bytes();
    let block_elems = ty.block_elems();
    let blocks = bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block_elems));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| dequantize_q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| dequantize_q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| dequantize_q5_0(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| dequantize_q8_0(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| dequantize_q4_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| dequantize_q6_k(b, y)),
        _ => return Err(QuantError::UnsupportedType { ty }),
    }
    Ok(())
}

/// Checks that `ty` is supported and that `bytes_len` bytes hold exactly `elems` elements.
pub(super) fn check_row_bytes(
    ty: GgmlType,
    bytes_len: usize,
    elems: usize,
) -> Result<(), QuantError> {
    if !super::is_supported(ty) {
        return Err(QuantError::UnsupportedType { ty });
    }
    let block_elems = ty.block_elems();
    if !elems.is_multiple_of(block_elems) {
        return Err(QuantError::ColsNotBlockMultiple {
            ty,
            cols: elems,
            block_elems,
        });
    }
    // `elems / block_elems * block_bytes` cannot overflow when `bytes_len` is
    // a real buffer, but a caller's count might be absurd.
    let expected_bytes = (elems / block_elems).checked_mul(ty.block_bytes());
    if expected_bytes != Some(bytes_len) {
        return Err(QuantError::ByteLength {
            ty,
            elems,
            expected_bytes: expected_bytes.unwrap_or(usize::MAX),
            actual_bytes: bytes_len,
        });
    }
    Ok(())
}

/// Q4_0: f16 `d`, then 16 bytes whose low nibbles are elements 0..16 and high
/// nibbles elements 16..32; `y = d * (q - 8)`.
fn dequantize_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

/// Q4_1: f16 `d` and `m`, then nibbles as in Q4_0; `y = d * q + m`.
fn dequantize_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = d * (qs[j] & 0x0F) as f32 + m;
        y[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// Q5_0: f16 `d`, a little-endian u32 whose bit `i` is bit 4 of element `i`,
/// then nibbles as in Q4_0; `y = d * (q - 16)`.
fn dequantize_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let high_lo = ((qh >> j) & 1) as u8;
        let high_hi = ((qh >> (j + 16)) & 1) as u8;
        let q_lo = (qs[j] & 0x0F) | (high_lo << 4);
        let q_hi = (qs[j] >> 4) | (high_hi << 4);
        y[j] = d * (q_lo as i32 - 16) as f32;
        y[j + 16] = d * (q_hi as i32 - 16) as f32;
    }
}

/// Q8_0: f16 `d`, then 32 signed bytes; `y = d * q`.
fn dequantize_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = d * (b[2 + j] as i8) as f32;
    }
}

/// Unpacks the 6-bit scale and min of sub-block `j` (0..8) from Q4_K's 12
/// scale bytes. Bytes 0..4 hold the low 6 bits of scales 0..4 and bytes 4..8
/// those of mins 0..4. Scales and mins 4..8 take their low 4 bits from the
/// low and high nibbles of bytes 8..12 and their top 2 bits from the top 2
/// bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub(super) fn q4_k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 0x3F, scales[j + 4] & 0x3F)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

/// Q4_K: f16 `d` and `dmin`, 12 bytes of packed 6-bit scales and mins, then
/// 128 bytes of nibbles. Each 32 bytes of nibbles hold two sub-blocks of 32:
/// the low nibbles are sub-block `2i`, the high nibbles sub-block `2i + 1`.
/// `y = (d * sc) * q - dmin * m`.
fn dequantize_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..QK_K / 64 {
        let (sc_lo, m_lo) = q4_k_scale_min(scales, 2 * chunk);
        let (sc_hi, m_hi) = q4_k_scale_min(scales, 2 * chunk + 1);
        let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
        let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
        let q = &qs[32 * chunk..32 * chunk + 32];
        let y = &mut y[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            y[l] = d_lo * (q[l] & 0x0F) as f32 - min_lo;
            y[l + 32] = d_hi * (q[l] >> 4) as f32 - min_hi;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles `ql`, 64 bytes of high 2-bit pairs `qh`, 16
/// signed 8-bit scales (one per 16 elements), then f16 `d`. Each half of 128
/// elements uses 64 bytes of `ql` and 32 of `qh`: element `l + 32 k` (k in 0..4)
/// takes its low nibble from `ql[l]` (k = 0), `ql[l + 32]` (k = 1), the high
/// nibbles of those (k = 2, 3), and its top 2 bits from bits `2k..2k + 2` of
/// `qh[l]`. `y = (d * sc) * (q - 32)`.
fn dequantize_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let scales = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let codes = q6_k_codes(ql, qh, l);
            for (k, &q) in codes.iter().enumerate() {
                let i = l + 32 * k;
                let sc = scales[i / 16] as i8;
                y[i] = (d * sc as f32) * (q as i32 - 32) as f32;
            }
        }
    }
}

/// Extracts the four unsigned 6-bit codes of elements `l`, `l + 32`, `l + 64` and
/// `l + 96` of one 128-element half of a Q6_K block.
#[inline(always)]
pub(super) fn q6_k_codes(ql: &[u8], qh: &[u8], l: usize) -> [u8; 4] {
    let h = qh[l];
    [
        (ql[l] & 0x0F) | ((h & 0x03) << 4),
        (ql[l + 32] & 0x0F) | (((h >> 2) & 0x03) << 4),
        (ql[l] >> 4) | (((h >> 4) & 0x03) << 4),
        (ql[l + 32] >> 4) | (((h >> 6) & 0x03) << 4),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_exact_for_every_bit_pattern() {
        for bits in 0..=u16::MAX {
            let expected = f16::from_bits(bits).to_f32();
            let got = f16_bits_to_f32(bits);
            if expected.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}: got {got}");
                assert_eq!(
                    got.to_bits() & 0x8000_0000,
                    expected.to_bits() & 0x8000_0000,
                    "{bits:#06x} sign"
                );
            } else {
                assert_eq!(
                    got.to_bits(),
                    expected.to_bits(),
                    "{bits:#06x}: got {got}, expected {expected}"
                );
            }
        }
    }
}
