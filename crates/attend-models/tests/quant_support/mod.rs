//! Helpers shared by the quantized-product tests: random weights with sane
//! scales, the float64 reference product and the error bounds.

#![allow(dead_code)]

use attend_models::quant::{dequantize, QuantizedActivations};
use attend_models::GgmlType;
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// Types with an integer-kernel product.
pub const QUANTIZED: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

pub const FLOAT: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

/// A random f16 scale of either sign between 2^-12 and 2^-2, or zero.
fn random_scale(rng: &mut StdRng) -> [u8; 2] {
    if rng.random_range(0..50) == 0 {
        return [0, 0];
    }
    let magnitude = 2f32.powf(rng.random_range(-12.0..-2.0));
    let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
    f16::from_f32(sign * magnitude).to_le_bytes()
}

/// `[rows, cols]` weights of type `ty`: random codes, random finite scales.
pub fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let n = rows * cols;
    match ty {
        GgmlType::F32 => (0..n)
            .flat_map(|_| rng.random_range(-1.0f32..1.0).to_le_bytes())
            .collect(),
        GgmlType::F16 => (0..n)
            .flat_map(|_| f16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes())
            .collect(),
        GgmlType::BF16 => (0..n)
            .flat_map(|_| bf16::from_f32(rng.random_range(-1.0..1.0)).to_le_bytes())
            .collect(),
        _ => {
            let mut bytes = vec![0u8; ty.bytes_for(n).unwrap()];
            rng.fill_bytes(&mut bytes);
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                for at in scale_offsets(ty) {
                    block[at..at + 2].copy_from_slice(&random_scale(rng));
                }
            }
            bytes
        }
    }
}

/// Byte offsets of the f16 scales inside one block.
fn scale_offsets(ty: GgmlType) -> Vec<usize> {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => vec![0],
        GgmlType::Q4_1 | GgmlType::Q4_K => vec![0, 2],
        GgmlType::Q6_K => vec![208],
        other => panic!("no block scales for {other}"),
    }
}

/// Activations with a spread of magnitudes and an occasional outlier.
pub fn random_activations(tokens: usize, cols: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..tokens * cols)
        .map(|_| {
            let v: f32 = rng.random_range(-1.0..1.0);
            if rng.random_range(0..64) == 0 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

pub fn dequantize_all(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut w = vec![0.0; rows * cols];
    dequantize(ty, bytes, &mut w).unwrap();
    w
}

/// `out[t, r] = sum_c w[r, c] * x[t, c]` in f64.
pub fn reference_product(
    w: &[f32],
    x: &[f32],
    rows: usize,
    cols: usize,
    tokens: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; tokens * rows];
    for t in 0..tokens {
        for r in 0..rows {
            out[t * rows + r] = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum();
        }
    }
    out
}

/// The largest `|scale * code| + |offset|` a weight of this block can take,
/// per element (the kernel's partial terms are bounded by this times |x|).
pub fn term_magnitudes(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    if !ty.is_quantized() {
        return dequantize_all(ty, bytes, rows, cols)
            .iter()
            .map(|w| w.abs())
            .collect();
    }
    let half = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32().abs();
    let mut out = Vec::with_capacity(rows * cols);
    for block in bytes.chunks_exact(ty.block_bytes()) {
        match ty {
            GgmlType::Q4_0 => out.extend([half(block, 0) * 16.0; 32]),
            GgmlType::Q4_1 => out.extend([half(block, 0) * 15.0 + half(block, 2); 32]),
            GgmlType::Q5_0 => out.extend([half(block, 0) * 32.0; 32]),
            GgmlType::Q8_0 => out.extend([half(block, 0) * 256.0; 32]),
            // The 6-bit scales and mins are at most 63.
            GgmlType::Q4_K => {
                out.extend([half(block, 0) * 15.0 * 63.0 + half(block, 2) * 63.0; 256])
            }
            GgmlType::Q6_K => {
                for g in 0..16 {
                    let sc = (block[192 + g] as i8).unsigned_abs() as f32;
                    out.extend([half(block, 208) * sc * 64.0; 16]);
                }
            }
            other => panic!("no magnitudes for {other}"),
        }
    }
    out
}

/// The kernel's f32 rounding bound against the product of the same weights
/// with the dequantised 8-bit activations `x_hat`.
///
/// Each partial term (a 4-code integer dot times `w_scale * x_scale`, or an
/// offset times a 16-code sum) carries at most 3 roundings, and each output
/// adds `cols / 64` terms per vector lane, a 16-lane reduction and the offset
/// sum, so the error is at most `(cols / 16 + 64) * eps` times the sum of the
/// terms' magnitudes, which `term_magnitudes * |x_hat|` bounds.
pub fn rounding_bound(magnitudes: &[f32], x_hat: &[f32], r: usize, t: usize, cols: usize) -> f64 {
    let sum: f64 = (0..cols)
        .map(|c| magnitudes[r * cols + c] as f64 * (x_hat[t * cols + c] as f64).abs())
        .sum();
    (cols as f64 / 16.0 + 64.0) * f32::EPSILON as f64 * sum
}

/// The activation rounding bound: `|x - x_hat| <= max|x over block| / 254`
/// per value (with a relative 1e-6 for the f32 scale), so the product moves
/// by at most `sum_c |w[r, c]| * max_block|x| / 254`.
pub fn activation_bound(
    w: &[f32],
    x: &[f32],
    r: usize,
    t: usize,
    cols: usize,
    block: usize,
) -> f64 {
    let mut sum = 0.0;
    for b in 0..cols / block {
        let xs = &x[t * cols + b * block..t * cols + (b + 1) * block];
        let max_abs = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let ws: f64 = (0..block)
            .map(|i| w[r * cols + b * block + i].abs() as f64)
            .sum();
        sum += ws * max_abs / 254.0 * (1.0 + 1e-6);
    }
    sum
}

/// The activations as the integer kernels see them.
pub fn quantized_activations(x: &[f32], tokens: usize, cols: usize, ty: GgmlType) -> Vec<f32> {
    QuantizedActivations::quantize(x, tokens, cols, ty)
        .unwrap()
        .dequantized()
}
