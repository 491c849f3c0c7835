//! Model files, quantized weights, tokenizers and architectures for attend.

pub mod ggml_type;
pub mod ops;

pub use ggml_type::GgmlType;
