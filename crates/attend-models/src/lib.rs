//! Model files, quantized weights, tokenizers and architectures for attend.

pub mod bert;
pub mod chat;
pub mod decoder;
pub mod engine;
pub mod error;
pub mod gemma3;
pub mod ggml_type;
pub mod gguf;
pub mod linear;
pub mod llama;
pub mod ops;
pub mod quant;
pub mod safetensors_file;
pub mod sampling;
pub mod tokenizer;

pub use decoder::{Decoder, DecoderConfig, Logits, Session, SlidingCache};
pub use engine::{Engine, GenerateOutput, GenerateParams, Perplexity};
pub use error::ModelError;
pub use ggml_type::GgmlType;
