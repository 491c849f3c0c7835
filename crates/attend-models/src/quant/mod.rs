//! Block-quantized weights: dequantisation and products with f32 activations.
//!
//! The formats are ggml's: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and
//! Q6_K (bit layouts as in ggml-common.h of llama.cpp).
//!
//! A product `out[t, r] = sum_c W[r, c] * x[t, c]` never expands the whole
//! weight matrix. The activations are quantised once per call to 8-bit blocks
//! (one scale per 32 values for the 32-element formats, one per 256 for the
//! K formats, with per-16 sums), and each tile of four weight rows is unpacked
//! into unsigned 8-bit codes with one f32 scale per 16 values and one f32
//! offset per 16 values, so that every format reads as
//! `w = scale * code + offset`. The kernels then take integer dot products of
//! codes with quantised activations (`vpdpbusd` on AVX-512 VNNI,
//! `vpmaddubsw` on AVX2, widening multiplies on NEON, plain integers on the
//! portable path).

mod activations;
mod dequant;
mod error;
mod f32_rows;
mod float;
mod kernel;
mod matmul;
mod unpack;

pub use activations::QuantizedActivations;
pub use dequant::dequantize;
pub use error::QuantError;
pub use kernel::Isa;
pub use matmul::{
    matmul, matmul_f32_with_isa, matmul_many, matmul_many_with, matmul_prequantized, matmul_with,
    matmul_with_isa, Activations, Product, QuantMatrix,
};

use crate::GgmlType;

/// The weight types that [`dequantize`] and [`matmul`] accept.
pub const SUPPORTED_TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// Whether [`dequantize`] and [`matmul`] accept weights of type `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    SUPPORTED_TYPES.contains(&ty)
}
