//! Unpacking of quantized rows into the form every product kernel reads.
//!
//! A row of `cols` weights becomes, padded with zeros to a multiple of [`STEP`]:
//! - `codes: [padded]` unsigned 8-bit codes,
//! - `lane_scales: [padded / LANE]` one f32 scale per 4 consecutive codes (a
//!   32-bit lane of an integer dot product),
//! - `group_offsets: [padded / GROUP]` one f32 offset per 16 codes,
//!
//! so that weight `c` is `lane_scales[c / 4] * codes[c] + group_offsets[c / 16]`.
//! Signed formats add a bias to their codes (8 for Q4_0, 16 for Q5_0, 128 for
//! Q8_0, 32 for Q6_K) and fold it into the offset, which keeps the codes
//! unsigned as `vpdpbusd` requires. Scales repeat within a lane and offsets
//! within a group because every format's scale covers 16 or more elements.

use super::dequant::{f16_at, q4_k_scale_min, q6_k_codes};
use crate::ggml_type::QK_K;
use crate::GgmlType;

/// Elements per step of the widest kernel (one 512-bit register of codes).
pub(super) const STEP: usize = 64;
/// Elements per f32 scale lane.
pub(super) const LANE: usize = 4;
/// Elements per offset and activation-sum group.
pub(super) const GROUP: usize = 16;

/// `cols` rounded up to a whole number of kernel steps.
pub(super) fn padded_len(cols: usize) -> usize {
    cols.div_ceil(STEP) * STEP
}

/// Unpacked rows of one weight tile: `rows` rows of `padded` elements.
#[derive(Default)]
pub(super) struct UnpackedRows {
    /// `[rows, padded]`
    pub codes: Vec<u8>,
    /// `[rows, padded / LANE]`
    pub lane_scales: Vec<f32>,
    /// `[rows, padded / GROUP]`
    pub group_offsets: Vec<f32>,
    pub padded: usize,
}

impl UnpackedRows {
    /// Resizes the buffers for `rows` rows of `cols` elements, zeroing the padding.
    pub fn reset(&mut self, rows: usize, cols: usize) {
        self.padded = padded_len(cols);
        self.codes.clear();
        self.codes.resize(rows * self.padded, 0);
        self.lane_scales.clear();
        self.lane_scales.resize(rows * self.padded / LANE, 0.0);
        self.group_offsets.clear();
        self.group_offsets.resize(rows * self.padded / GROUP, 0.0);
    }

    /// Unpacks `row_bytes` (one row of type `ty`) into row slot `slot`.
    ///
    /// The caller has checked that `row_bytes` contains a whole row of the
    /// `cols` passed to [`reset`](Self::reset).
    #[inline(always)]
    pub fn unpack(&mut self, ty: GgmlType, row_bytes: &[u8], slot: usize) {
        let p = self.padded;
        let codes = &mut self.codes[slot * p..(slot + 1) * p];
        let scales = &mut self.lane_scales[slot * p / LANE..(slot + 1) * p / LANE];
        let offsets = &mut self.group_offsets[slot * p / GROUP..(slot + 1) * p / GROUP];
        unpack_row(ty, row_bytes, codes, scales, offsets);
    }
}

/// Unpacks one row of blocks; the slices cover at least the row's elements.
#[inline(always)]
pub(super) fn unpack_row(
    ty: GgmlType,
    bytes: &[u8],
    codes: &mut [u8],
    scales: &mut [f32],
    offsets: &mut [f32],
) {
    let block_elems = ty.block_elems();
    let blocks = bytes.chunks_exact(ty.block_bytes()).enumerate();
    for (b, block) in blocks {
        let codes = &mut codes[b * block_elems..(b + 1) * block_elems];
        let scales = &mut scales[b * block_elems / LANE..(b + 1) * block_elems / LANE];
        let offsets = &mut offsets[b * block_elems / GROUP..(b + 1) * block_elems / GROUP];
        match ty {
            GgmlType::Q4_0 => unpack_q4_0(block, codes, scales, offsets),
            GgmlType::Q4_1 => unpack_q4_1(block, codes, scales, offsets),
            GgmlType::Q5_0 => unpack_q5_0(block, codes, scales, offsets),
            GgmlType::Q8_0 => unpack_q8_0(block, codes, scales, offsets),
            GgmlType::Q4_K => unpack_q4_k(block, codes, scales, offsets),
            GgmlType::Q6_K => unpack_q6_k(block, codes, scales, offsets),
            _ => unreachable!("unpack_row is only called for the quantized types"),
        }
    }
}

#[inline(always)]
fn split_nibbles(qs: &[u8], codes: &mut [u8]) {
    let half = qs.len();
    for j in 0..half {
        codes[j] = qs[j] & 0x0F;
        codes[j + half] = qs[j] >> 4;
    }
}

#[inline(always)]
fn unpack_q4_0(b: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(b, 0);
    split_nibbles(&b[2..18], codes);
    scales.fill(d);
    offsets.fill(-8.0 * d);
}

#[inline(always)]
fn unpack_q4_1(b: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    split_nibbles(&b[4..20], codes);
    scales.fill(f16_at(b, 0));
    offsets.fill(f16_at(b, 2));
}

#[inline(always)]
fn unpack_q5_0(b: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    split_nibbles(&b[6..22], codes);
    for (i, code) in codes.iter_mut().enumerate().take(32) {
        *code |= (((qh >> i) & 1) as u8) << 4;
    }
    scales.fill(d);
    offsets.fill(-16.0 * d);
}

#[inline(always)]
fn unpack_q8_0(b: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        // Flipping the sign bit maps the signed byte q to the unsigned q + 128.
        codes[j] = b[2 + j] ^ 0x80;
    }
    scales.fill(d);
    offsets.fill(-128.0 * d);
}

#[inline(always)]
fn unpack_q4_k(b: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let packed_scales = &b[4..16];
    for chunk in 0..QK_K / 64 {
        let qs = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
        split_nibbles(qs, &mut codes[64 * chunk..64 * chunk + 64]);
        for sub in [2 * chunk, 2 * chunk + 1] {
            let (sc, m) = q4_k_scale_min(packed_scales, sub);
            scales[sub * 8..sub * 8 + 8].fill(d * sc as f32);
            offsets[sub * 2..sub * 2 + 2].fill(-(dmin * m as f32));
        }
    }
}

#[inline(always)]
fn unpack_q6_k(b: &[u8], codes: &mut [u8], scales: &mut [f32], offsets: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let codes = &mut codes[128 * half..128 * half + 128];
        for l in 0..32 {
            let q = q6_k_codes(ql, qh, l);
            for (k, &code) in q.iter().enumerate() {
                codes[l + 32 * k] = code;
            }
        }
    }
    for group in 0..QK_K / GROUP {
        let scale = d * (b[192 + group] as i8) as f32;
        scales[group * 4..group * 4 + 4].fill(scale);
        offsets[group] = -32.0 * scale;
    }
}
