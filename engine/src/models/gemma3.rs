//! Gemma 3 (text) from a GGUF file (`general.architecture = gemma3`).
//!
//! Differences from llama, all expressed as [`DenseConfig`] options:
//! - token embeddings scaled by sqrt(hidden);
//! - RMSNorm weights: HF stores `w` and computes `x·(1 + w)`; llama.cpp's converter already
//!   added the 1, so the GGUF weights are used as they are (plain `x·w`);
//! - per-head RMSNorm of q and k, extra norms on the attention and FFN outputs
//!   (`post_attention_norm`, `post_ffw_norm`) before the residual adds;
//! - GeGLU FFN with tanh-approximated GELU;
//! - 5 of every 6 layers use sliding-window attention with rope base 10000 (unscaled); every
//!   6th layer is global with `rope.freq_base` (1e6) and the model's rope scaling;
//! - attention scale from the head dimension (query_pre_attn_scalar), tied LM head, optional
//!   final logit soft-capping.

use std::sync::Arc;

use super::common::{Activation, KvDtype, Rope, RopeStyle};
use super::dense::{DenseConfig, DenseModel};
use super::error::ModelError;
use super::weights::GgufSource;
use super::ModelInfo;
use crate::formats::GgufFile;

/// Every `SWA_PATTERN`-th layer (index % 6 == 5) attends globally (Gemma 3's 5:1 pattern).
const SWA_PATTERN: usize = 6;
/// Rope base of the local (sliding-window) layers; Gemma 3 fixes it, GGUF does not store it.
const LOCAL_ROPE_BASE: f64 = 10000.0;

/// Loads a Gemma 3 GGUF.
pub fn load_gguf(file: Arc<GgufFile>, kv_dtype: KvDtype) -> Result<DenseModel, ModelError> {
    let cfg = gguf_config(&file, kv_dtype)?;
    DenseModel::load(cfg, &GgufSource::new(file))
}

fn need(f: &GgufFile, key: &str) -> Result<usize, ModelError> {
    f.arch_u64(key)
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::config(&format!("gemma3.{key}"), "missing from the GGUF metadata"))
}

fn gguf_config(f: &GgufFile, kv_dtype: KvDtype) -> Result<DenseConfig, ModelError> {
    let hidden = need(f, "embedding_length")?;
    let n_layers = need(f, "block_count")?;
    let n_heads = need(f, "attention.head_count")?;
    let n_kv_heads = f.arch_u64("attention.head_count_kv").map(|v| v as usize).unwrap_or(n_heads);
    let head_dim = f.arch_u64("attention.key_length").map(|v| v as usize).unwrap_or(hidden / n_heads.max(1));
    let window = f.arch_u64("attention.sliding_window").map(|v| v as usize);
    let global_base = f.arch_f64("rope.freq_base").unwrap_or(1e6);
    let global_scale = match f.arch_f64("rope.scaling.factor") {
        Some(factor) if factor > 0.0 => 1.0 / factor,
        _ => 1.0,
    };
    let ropes = vec![
        Rope::new(RopeStyle::NeoX, head_dim, LOCAL_ROPE_BASE, 1.0),
        Rope::new(RopeStyle::NeoX, head_dim, global_base, global_scale),
    ];
    let layer_attn = (0..n_layers)
        .map(|l| if l % SWA_PATTERN == SWA_PATTERN - 1 || window.is_none() { (1, None) } else { (0, window) })
        .collect();
    let info = ModelInfo {
        arch: "gemma3".to_string(),
        name: f.get_str("general.name").unwrap_or("").to_string(),
        vocab_size: 0,
        context_length: f.arch_u64("context_length").unwrap_or(32768) as usize,
        n_layers,
        hidden_size: hidden,
    };
    Ok(DenseConfig {
        info,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_eps: f.arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-6) as f32,
        embed_scale: Some((hidden as f32).sqrt()),
        activation: Activation::GeluTanh,
        attn_scale: attn_scale(f, hidden, n_heads, head_dim, n_layers),
        prescale_q: true,
        attn_softcap: f.arch_f64("attn_logit_softcapping").map(|v| v as f32).filter(|&v| v > 0.0),
        final_softcap: f.arch_f64("final_logit_softcapping").map(|v| v as f32).filter(|&v| v > 0.0),
        ropes,
        layer_attn,
        kv_dtype,
    })
}

/// 1/sqrt(query_pre_attn_scalar). GGUF does not store the scalar; it equals head_dim for every
/// Gemma 3 size except 27B (62 layers), where it is hidden / heads (as llama.cpp assumes).
fn attn_scale(f: &GgufFile, hidden: usize, n_heads: usize, head_dim: usize, n_layers: usize) -> f32 {
    let scalar = match f.arch_f64("attention.query_pre_attn_scalar") {
        Some(s) if s > 0.0 => s,
        _ if n_layers == 62 => (hidden / n_heads.max(1)) as f64,
        _ => head_dim as f64,
    };
    (1.0 / scalar.sqrt()) as f32
}
