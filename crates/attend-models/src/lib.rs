//! Model files, quantized weights, tokenizers and architectures for attend.

pub mod chat;
pub mod ggml_type;
pub mod gguf;
pub mod ops;
pub mod quant;
pub mod sampling;
pub mod tokenizer;

pub use ggml_type::GgmlType;
