//! Model files, quantized weights, tokenizers and architectures for attend.

pub mod ggml_type;

pub use ggml_type::GgmlType;
