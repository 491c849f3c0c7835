//! Model files, quantized weights, tokenizers and architectures for attend.

pub mod bert;
pub mod ggml_type;
pub mod linear;
pub mod ops;
pub mod safetensors_file;

pub use ggml_type::GgmlType;
