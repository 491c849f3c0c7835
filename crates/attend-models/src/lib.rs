//! Model files, quantized weights, tokenizers and architectures for attend.

pub mod ggml_type;
pub mod gguf;
pub mod ops;
pub mod quant;

pub use ggml_type::GgmlType;
