//! The error type of dequantisation and quantized products.

use crate::GgmlType;

/// Invalid input to [`dequantize`](super::dequantize) or [`matmul`](super::matmul).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The type has no dequantisation or product here.
    #[error(
        "weight type {ty} is not supported; supported types are F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K and Q6_K"
    )]
    UnsupportedType { ty: GgmlType },

    /// A row length that is not a whole number of blocks.
    #[error(
        "cols = {cols} is not a multiple of the {ty} block size {block_elems}; pass rows whose length is a whole number of blocks"
    )]
    ColsNotBlockMultiple {
        ty: GgmlType,
        cols: usize,
        block_elems: usize,
    },

    /// A byte buffer whose length disagrees with the element count.
    #[error(
        "{ty} buffer has {actual_bytes} bytes but {elems} elements need {expected_bytes} bytes"
    )]
    ByteLength {
        ty: GgmlType,
        elems: usize,
        expected_bytes: usize,
        actual_bytes: usize,
    },

    /// An f32 buffer whose length disagrees with its shape.
    #[error("{name} has {actual} values but its shape [{dim0}, {dim1}] needs {expected}")]
    BufferLength {
        name: &'static str,
        dim0: usize,
        dim1: usize,
        expected: usize,
        actual: usize,
    },

    /// A shape whose element count does not fit in `usize`.
    #[error("shape [{dim0}, {dim1}] of {name} overflows usize")]
    ShapeOverflow {
        name: &'static str,
        dim0: usize,
        dim1: usize,
    },

    /// Activations quantised for weights with another block size.
    #[error(
        "activations were quantised in blocks of {activation_block_elems} but {ty} weights need blocks of {weight_block_elems}; quantise them for {ty}"
    )]
    ActivationBlock {
        ty: GgmlType,
        weight_block_elems: usize,
        activation_block_elems: usize,
    },

    /// A kernel requested for an instruction set this CPU lacks.
    #[error("instruction set {isa:?} is not available on this CPU; use Isa::detect()")]
    IsaUnavailable { isa: super::Isa },
}
