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
use crate::formats::{GgufFile, MetaValue};

/// Every `SWA_PATTERN`-th layer (index % 6 == 5) attends globally (Gemma 3's 5:1 pattern),
/// unless the file says otherwise (`attention.sliding_window_pattern`).
const SWA_PATTERN: usize = 6;
/// Rope base of the local (sliding-window) layers: Gemma 3 fixes it; GGUF files usually do not
/// store it (`rope.freq_base_swa` when they do).
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
    let local_base = f.arch_f64("rope.freq_base_swa").unwrap_or(LOCAL_ROPE_BASE);
    let ropes = vec![
        Rope::new(RopeStyle::NeoX, head_dim, local_base, 1.0),
        Rope::new(RopeStyle::NeoX, head_dim, global_base, global_scale),
    ];
    let swa = swa_layers(f, n_layers)?;
    let layer_attn = swa.iter().map(|&local| if local && window.is_some() { (0, window) } else { (1, None) }).collect();
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

/// Which layers use the sliding window: `attention.sliding_window_pattern` as a per-layer bool
/// array or a period N (layers with index % N < N − 1 are local), default Gemma 3's 6.
fn swa_layers(f: &GgufFile, n_layers: usize) -> Result<Vec<bool>, ModelError> {
    let key = "gemma3.attention.sliding_window_pattern";
    let period = |n: usize| (0..n_layers).map(|l| n == 0 || l % n < n - 1).collect();
    match f.get(key) {
        None => Ok(period(SWA_PATTERN)),
        Some(MetaValue::Array(items)) => {
            let flags: Option<Vec<bool>> = items.iter().map(MetaValue::as_bool).collect();
            match flags {
                Some(v) if v.len() == n_layers => Ok(v),
                _ => Err(ModelError::config(key, format!("expected {n_layers} booleans"))),
            }
        }
        Some(v) => match v.as_u64() {
            Some(n) => Ok(period(n as usize)),
            None => Err(ModelError::config(key, "expected an integer or a boolean array")),
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::gguf_writer::GgufWriter;

    fn file_with(pattern: Option<MetaValue>) -> (tempfile::TempDir, GgufFile) {
        let mut w = GgufWriter::new();
        w.add_meta("general.architecture", MetaValue::String("gemma3".into()));
        if let Some(p) = pattern {
            w.add_meta("gemma3.attention.sliding_window_pattern", p);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        let f = GgufFile::open(&path).unwrap();
        (dir, f)
    }

    #[test]
    fn sliding_window_layers_follow_the_pattern() {
        let (_d, f) = file_with(None);
        let swa = swa_layers(&f, 12).unwrap();
        let globals: Vec<usize> = (0..12).filter(|&l| !swa[l]).collect();
        assert_eq!(globals, vec![5, 11]);
        let (_d, f) = file_with(Some(MetaValue::U32(4)));
        assert_eq!(swa_layers(&f, 4).unwrap(), vec![true, true, true, false]);
        let flags = vec![MetaValue::Bool(false), MetaValue::Bool(true)];
        let (_d, f) = file_with(Some(MetaValue::Array(flags)));
        assert_eq!(swa_layers(&f, 2).unwrap(), vec![false, true]);
        assert!(swa_layers(&f, 3).is_err());
        let (_d, f) = file_with(Some(MetaValue::String("x".into())));
        assert!(swa_layers(&f, 3).is_err());
    }
}
