//! The hy inference engine.
//!
//! - [`formats`]: GGUF and safetensors readers (memory-mapped, header-only for planning).
//! - [`kernels`]: dequantization and dot-product kernels per dtype (scalar reference + SIMD).
//! - [`models`]: one module per architecture family.
//! - [`runtime`]: KV cache, sampling, generation, thread pools.
//! - [`tokenizer`]: BPE / SentencePiece tokenizers and chat templates.
//! - [`server`]: the OpenAI-compatible HTTP API.

pub mod dtype;
pub mod formats;
pub mod kernels;
pub mod models;
pub mod runtime;
pub mod server;
pub mod synth;
pub mod tokenizer;

pub use dtype::GgmlType;
