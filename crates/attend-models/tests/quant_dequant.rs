//! Dequantisation of crafted blocks against values computed from the format
//! definitions: each test picks codes and scales, packs them as the format
//! lays them out, and expects `scale * code + offset` in ggml's f32 order.

use attend_models::quant::{dequantize, QuantError};
use attend_models::GgmlType;
use half::{bf16, f16};

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn dequantized(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.block_bytes() * ty.block_elems();
    let mut out = vec![f32::NAN; n];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

/// Packs 32 4-bit codes as ggml's 32-element formats do: byte `j` holds code
/// `j` in its low nibble and code `j + 16` in its high nibble.
fn pack_nibbles_32(codes: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| codes[j] | (codes[j + 16] << 4))
}

fn assert_bits_eq(got: &[f32], expected: &[f32], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "{what}: element {i}: got {g}, expected {e}"
        );
    }
}

#[test]
fn f32_f16_bf16_values() {
    let f32_bytes: Vec<u8> = [1.5f32, -0.0, f32::MIN_POSITIVE, -3.25e30]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_bits_eq(
        &dequantized(GgmlType::F32, &f32_bytes),
        &[1.5, -0.0, f32::MIN_POSITIVE, -3.25e30],
        "F32",
    );

    // 1.0, -2.0, the largest f16, the smallest f16 subnormal.
    let f16_bits: [u16; 4] = [0x3C00, 0xC000, 0x7BFF, 0x0001];
    let f16_bytes: Vec<u8> = f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    assert_bits_eq(
        &dequantized(GgmlType::F16, &f16_bytes),
        &[1.0, -2.0, 65504.0, 2f32.powi(-24)],
        "F16",
    );

    // 1.0, -3.0, and bf16's top 16 bits of f32::MAX.
    let bf16_bits: [u16; 3] = [0x3F80, 0xC040, 0x7F7F];
    let bf16_bytes: Vec<u8> = bf16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let max_bf16 = bf16::from_bits(0x7F7F).to_f32();
    assert_bits_eq(
        &dequantized(GgmlType::BF16, &bf16_bytes),
        &[1.0, -3.0, max_bf16],
        "BF16",
    );
    assert_eq!(max_bf16, f32::from_bits(0x7F7F_0000));
}

#[test]
fn q4_0_every_nibble_position() {
    // Code j at element j goes 0..16, code 15 - j at element j + 16.
    let codes: [u8; 32] = std::array::from_fn(|i| if i < 16 { i as u8 } else { 31 - i as u8 });
    for d in [0.5f32, -2.0, 65504.0, 2f32.powi(-24)] {
        let mut block = f16_bytes(d).to_vec();
        block.extend(pack_nibbles_32(&codes));
        let expected: Vec<f32> = codes.iter().map(|&q| d * (q as i32 - 8) as f32).collect();
        assert_bits_eq(
            &dequantized(GgmlType::Q4_0, &block),
            &expected,
            &format!("Q4_0 d = {d}"),
        );
    }

    // Literal values: byte 0 = 0xF0 contains code 0 (element 0) and 15 (element 16).
    let mut block = f16_bytes(0.5).to_vec();
    block.extend([0xF0; 16]);
    let out = dequantized(GgmlType::Q4_0, &block);
    assert_eq!(out[0], -4.0);
    assert_eq!(out[16], 3.5);
}

#[test]
fn q4_1_scale_and_min() {
    let codes: [u8; 32] = std::array::from_fn(|i| ((i * 7 + 3) % 16) as u8);
    for (d, m) in [(0.25f32, -1.5f32), (-0.125, 3.0), (65504.0, -65504.0)] {
        let mut block = f16_bytes(d).to_vec();
        block.extend(f16_bytes(m));
        block.extend(pack_nibbles_32(&codes));
        let expected: Vec<f32> = codes.iter().map(|&q| d * q as f32 + m).collect();
        assert_bits_eq(
            &dequantized(GgmlType::Q4_1, &block),
            &expected,
            &format!("Q4_1 d = {d}, m = {m}"),
        );
    }
    let mut block = f16_bytes(0.25).to_vec();
    block.extend(f16_bytes(-1.5));
    block.extend([0x3F; 16]);
    let out = dequantized(GgmlType::Q4_1, &block);
    assert_eq!((out[0], out[16]), (0.25 * 15.0 - 1.5, 0.25 * 3.0 - 1.5));
}

#[test]
fn q5_0_high_bits() {
    // Codes cover 0..32 and every element has its own high bit.
    let codes: [u8; 32] = std::array::from_fn(|i| ((i * 13 + 5) % 32) as u8);
    let low: [u8; 32] = std::array::from_fn(|i| codes[i] & 0x0F);
    let qh: u32 = (0..32).map(|i| ((codes[i] >> 4) as u32) << i).sum();
    for d in [1.0f32, -0.5, 2f32.powi(-14)] {
        let mut block = f16_bytes(d).to_vec();
        block.extend(qh.to_le_bytes());
        block.extend(pack_nibbles_32(&low));
        let expected: Vec<f32> = codes.iter().map(|&q| d * (q as i32 - 16) as f32).collect();
        assert_bits_eq(
            &dequantized(GgmlType::Q5_0, &block),
            &expected,
            &format!("Q5_0 d = {d}"),
        );
    }

    // Literal values: only bit 31 set makes element 31 (high nibble of byte
    // 15) code 16 + 15 and every other code at most 15.
    let mut block = f16_bytes(1.0).to_vec();
    block.extend(0x8000_0000u32.to_le_bytes());
    block.extend([0xF0; 16]);
    let out = dequantized(GgmlType::Q5_0, &block);
    assert_eq!(out[31], 15.0);
    assert_eq!(out[30], -1.0);
    assert_eq!(out[15], -16.0);
}

#[test]
fn q8_0_signed_codes() {
    let codes: [i8; 32] = std::array::from_fn(|i| match i {
        0 => -128,
        1 => 127,
        2 => -1,
        _ => (i as i8 - 16) * 7,
    });
    for d in [0.125f32, -3.0, 65504.0] {
        let mut block = f16_bytes(d).to_vec();
        block.extend(codes.iter().map(|&q| q as u8));
        let expected: Vec<f32> = codes.iter().map(|&q| d * q as f32).collect();
        assert_bits_eq(
            &dequantized(GgmlType::Q8_0, &block),
            &expected,
            &format!("Q8_0 d = {d}"),
        );
    }
}

/// Packs Q4_K's eight 6-bit scales and mins into 12 bytes.
fn pack_q4_k_scales(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = (sc[j] & 0x3F) | ((sc[j + 4] >> 4) << 6);
        out[j + 4] = (m[j] & 0x3F) | ((m[j + 4] >> 4) << 6);
        out[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
    }
    out
}

#[test]
fn q4_k_every_sub_block_scale_and_min() {
    // Scales and mins with every combination of top bits, including 0 and 63.
    let sc = [1u8, 63, 17, 32, 48, 5, 62, 33];
    let m = [63u8, 0, 21, 40, 7, 59, 16, 44];
    let codes: [u8; 256] = std::array::from_fn(|i| ((i * 7 + 3) % 16) as u8);
    for (d, dmin) in [(0.5f32, 0.25f32), (-1.0, 2.0), (2f32.powi(-20), -65504.0)] {
        let mut block = f16_bytes(d).to_vec();
        block.extend(f16_bytes(dmin));
        block.extend(pack_q4_k_scales(sc, m));
        for chunk in 0..4 {
            block
                .extend((0..32).map(|l| codes[64 * chunk + l] | (codes[64 * chunk + 32 + l] << 4)));
        }
        let expected: Vec<f32> = (0..256)
            .map(|i| {
                let sub = i / 32;
                (d * sc[sub] as f32) * codes[i] as f32 - dmin * m[sub] as f32
            })
            .collect();
        assert_bits_eq(
            &dequantized(GgmlType::Q4_K, &block),
            &expected,
            &format!("Q4_K d = {d}, dmin = {dmin}"),
        );
    }
}

#[test]
fn q4_k_scale_bytes_literal() {
    // Byte 8 = 0x21 gives sub-block 4 scale 1 and min 2; the top bits of
    // bytes 0 and 4 add 16 to each, so sub-block 4 has scale 17 and min 18.
    let mut scales = [0u8; 12];
    scales[0] = 0x40;
    scales[4] = 0x40;
    scales[8] = 0x21;
    let mut block = f16_bytes(1.0).to_vec();
    block.extend(f16_bytes(1.0));
    block.extend(scales);
    block.extend([0x11; 128]);
    let out = dequantized(GgmlType::Q4_K, &block);
    // Sub-block 0: scale 0, min 0.
    assert_eq!(out[0], 0.0);
    // Sub-block 4 (elements 128..160, low nibbles of bytes 64..96): 17 * 1 - 18.
    assert_eq!(out[128], -1.0);
}

/// Packs 256 6-bit codes and 16 scales as Q6_K lays them out.
fn pack_q6_k(codes: &[u8; 256], scales: &[i8; 16], d: f32) -> Vec<u8> {
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for half in 0..2 {
        let c = &codes[128 * half..128 * half + 128];
        for l in 0..32 {
            ql[64 * half + l] = (c[l] & 0x0F) | ((c[l + 64] & 0x0F) << 4);
            ql[64 * half + 32 + l] = (c[l + 32] & 0x0F) | ((c[l + 96] & 0x0F) << 4);
            qh[32 * half + l] = (c[l] >> 4)
                | ((c[l + 32] >> 4) << 2)
                | ((c[l + 64] >> 4) << 4)
                | ((c[l + 96] >> 4) << 6);
        }
    }
    let mut block = ql.to_vec();
    block.extend(qh);
    block.extend(scales.iter().map(|&s| s as u8));
    block.extend(f16_bytes(d));
    block
}

#[test]
fn q6_k_signed_scales_and_codes() {
    let codes: [u8; 256] = std::array::from_fn(|i| ((i * 5 + 1) % 64) as u8);
    let scales: [i8; 16] = [
        -128, 127, -1, 1, -37, 64, 0, 5, -64, 100, -100, 2, 33, -33, 7, -7,
    ];
    for d in [0.0625f32, -1.5, 2f32.powi(-24), 65504.0] {
        let block = pack_q6_k(&codes, &scales, d);
        let expected: Vec<f32> = (0..256)
            .map(|i| (d * scales[i / 16] as f32) * (codes[i] as i32 - 32) as f32)
            .collect();
        assert_bits_eq(
            &dequantized(GgmlType::Q6_K, &block),
            &expected,
            &format!("Q6_K d = {d}"),
        );
    }
}

#[test]
fn q6_k_literal() {
    // Element 96 of the second half (element 224) takes its low nibble from
    // the high nibble of ql[64 + 32] and its top bits from bits 6..8 of qh[32].
    let mut block = vec![0u8; 210];
    block[64 + 32] = 0xA0;
    block[128 + 32] = 0b1100_0000;
    block[192 + 14] = (-2i8) as u8;
    block[192 + 10] = 3;
    block[208..210].copy_from_slice(&f16_bytes(0.5));
    let out = dequantized(GgmlType::Q6_K, &block);
    // code 0b11_1010 = 58; (0.5 * -2) * (58 - 32) = -26.
    assert_eq!(out[224], -26.0);
    // Element 160 (scale 10) shares ql[96]'s low nibble (0) and qh[32]'s
    // bits 2..4 (0), so its code is 0.
    assert_eq!(out[160], (0.5 * 3.0) * -32.0);
}

#[test]
fn several_blocks_at_once() {
    let mut bytes = Vec::new();
    for d in [1.0f32, 2.0, 4.0] {
        bytes.extend(f16_bytes(d));
        bytes.extend([0x99u8; 16]);
    }
    let out = dequantized(GgmlType::Q4_0, &bytes);
    assert_eq!(out.len(), 96);
    assert_eq!((out[0], out[32], out[95]), (1.0, 2.0, 4.0));
}

#[test]
fn wrong_lengths_rejected() {
    let mut out = vec![0.0; 64];
    let err = dequantize(GgmlType::Q8_0, &[0; 67], &mut out).unwrap_err();
    assert_eq!(
        err,
        QuantError::ByteLength {
            ty: GgmlType::Q8_0,
            elems: 64,
            expected_bytes: 68,
            actual_bytes: 67
        }
    );
    let err = dequantize(GgmlType::Q6_K, &[0; 210], &mut out).unwrap_err();
    assert_eq!(
        err,
        QuantError::ColsNotBlockMultiple {
            ty: GgmlType::Q6_K,
            cols: 64,
            block_elems: 256
        }
    );
    let err = dequantize(GgmlType::Q2_K, &[0; 84], &mut vec![0.0; 256]).unwrap_err();
    assert_eq!(err, QuantError::UnsupportedType { ty: GgmlType::Q2_K });
    dequantize(GgmlType::Q4_K, &[], &mut []).unwrap();
}
