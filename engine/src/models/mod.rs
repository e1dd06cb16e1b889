//! Model architectures. One module per family; all implement [`Model`].
//!
//! CONTRACT (used by runtime/ and server/): a loaded model is a `Box<dyn Model>`; each
//! sequence has a [`SeqState`] holding its position and its KV cache (model-specific, hence
//! `Any`). `forward` appends tokens to the state and returns logits.

pub mod common;
pub mod deepseek2;
pub mod dense;
pub mod error;
pub mod gemma3;
pub mod hf;
pub mod llama;
pub mod loader;
pub mod mla;
pub mod moe;
pub mod qwen3moe;
pub mod weights;

pub use error::ModelError;

use std::any::Any;

/// Static facts about a loaded model.
#[derive(Clone, Debug, Default)]
pub struct ModelInfo {
    /// GGUF `general.architecture` or HF `model_type` ("llama", "gemma3", "deepseek2", "qwen3moe").
    pub arch: String,
    /// Display name (GGUF `general.name`, or the file/folder name).
    pub name: String,
    pub vocab_size: usize,
    /// Maximum context the model was trained for.
    pub context_length: usize,
    pub n_layers: usize,
    pub hidden_size: usize,
}

/// Per-sequence state: position and the model's KV cache.
pub struct SeqState {
    /// Number of tokens already in the cache.
    pub pos: usize,
    /// Capacity in tokens.
    pub max_tokens: usize,
    pub cache: Box<dyn Any + Send>,
}

/// Which logits `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's row.
    Last,
    /// One row per input token (row-major [n_tokens × vocab]).
    All,
}

pub trait Model: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// A fresh, empty state able to hold `max_tokens` tokens.
    fn new_state(&self, max_tokens: usize) -> SeqState;

    /// Runs `tokens` at positions `state.pos..`, appends them to the cache, advances `pos`,
    /// and returns logits per `which`. Errors (not panics) when the context would overflow or
    /// a token id is out of range.
    fn forward(&self, state: &mut SeqState, tokens: &[u32], which: Logits) -> anyhow::Result<Vec<f32>>;

    /// One decode step for several sequences (one token each); returns one logits row per
    /// sequence. MoE models override this so each selected expert is read once per step.
    fn forward_batch(&self, states: &mut [&mut SeqState], tokens: &[u32]) -> anyhow::Result<Vec<Vec<f32>>> {
        anyhow::ensure!(states.len() == tokens.len(), "one token per sequence");
        states.iter_mut().zip(tokens).map(|(s, &t)| self.forward(s, &[t], Logits::Last)).collect()
    }
}
