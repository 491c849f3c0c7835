//! The crate's error type.

use crate::simd::Isa;

/// Errors returned by the public functions of this crate.
///
/// Each variant names the offending values and, where it is not obvious, the fix.
/// The enum is `#[non_exhaustive]`, so new variants can be added without breaking
/// callers that match on it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AttendError {
    /// Two tensors disagree on a dimension that must match.
    #[error(
        "shape mismatch: {tensor} has {dim} = {found}, expected {expected} to match {reference}"
    )]
    ShapeMismatch {
        tensor: &'static str,
        dim: &'static str,
        found: usize,
        expected: usize,
        reference: &'static str,
    },

    /// The number of query heads is not a multiple of the number of key/value heads.
    #[error("n_heads = {n_heads} is not divisible by n_kv_heads = {n_kv_heads}; grouped-query attention needs n_heads = group * n_kv_heads")]
    HeadsNotDivisible { n_heads: usize, n_kv_heads: usize },

    /// A dimension that must be at least 1 is 0.
    #[error("{tensor} has {dim} = 0; it must be at least 1")]
    ZeroDim {
        tensor: &'static str,
        dim: &'static str,
    },

    /// The softmax scale is NaN, infinite or zero.
    #[error("scale = {scale} is invalid: it must be finite and non-zero")]
    InvalidScale { scale: f32 },

    /// The soft cap is NaN, infinite, zero or negative.
    #[error("softcap = {softcap} is invalid: it must be finite and positive")]
    InvalidSoftcap { softcap: f32 },

    /// A view needs more elements than its slice holds.
    #[error("view of shape {shape:?} with strides {strides:?} needs {required} elements, but the slice has {len}")]
    ViewOutOfBounds {
        shape: [usize; 4],
        strides: [usize; 3],
        required: usize,
        len: usize,
    },

    /// Shape times strides overflows `usize`.
    #[error("view of shape {shape:?} with strides {strides:?} overflows usize")]
    ViewOverflow {
        shape: [usize; 4],
        strides: [usize; 3],
    },

    /// The strides of an output view would make two elements share memory.
    #[error("output strides {strides:?} overlap for shape {shape:?}: need head_stride >= head_dim, seq_stride >= heads * head_stride and batch_stride >= seq_len * seq_stride")]
    OverlappingOutput {
        shape: [usize; 4],
        strides: [usize; 3],
    },

    /// A buffer such as the log-sum-exp output or the per-head sinks has the wrong length.
    #[error("{buffer} has {found} elements, expected {expected}")]
    BufferLength {
        buffer: &'static str,
        found: usize,
        expected: usize,
    },

    /// Cumulative sequence offsets are empty, do not start at 0, decrease, or do not end
    /// at the number of packed tokens.
    #[error("{name} is invalid at index {index}: {reason}")]
    InvalidOffsets {
        name: &'static str,
        index: usize,
        reason: String,
    },

    /// Document ids for a document mask decrease, so the packed documents are not contiguous.
    #[error(
        "document ids must be non-decreasing, but {name}[{index}] = {found} follows {previous}"
    )]
    UnsortedDocumentIds {
        name: &'static str,
        index: usize,
        previous: u32,
        found: u32,
    },

    /// The requested instruction set is not available on this CPU.
    #[error(
        "instruction set {isa:?} is not available on this CPU; choose the detected one (Isa::detect(), `--isa auto`) or the portable one"
    )]
    IsaUnavailable { isa: Isa },
}
