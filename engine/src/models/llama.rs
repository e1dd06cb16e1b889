//! Llama-family dense models (llama, mistral-style, qwen2 with q/k/v biases), from a GGUF file
//! (llama.cpp tensor names) or an HF folder (config.json + safetensors).
//!
//! RoPE layout: llama.cpp's converter permutes the Q/K rows of *llama* checkpoints back to the
//! original Meta order, so GGUF `llama` uses the adjacent-pair ("normal") rotation; HF llama
//! checkpoints keep the half-split (NeoX) order, and qwen2 is NeoX in both formats. Either way
//! the logits are the same.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::common::{Activation, KvDtype, Rope, RopeStyle};
use super::dense::{DenseConfig, DenseModel};
use super::error::ModelError;
use super::hf::SafetensorsSource;
use super::weights::{GgufSource, WeightSource};
use super::ModelInfo;
use crate::formats::GgufFile;

/// Architectures this module loads from GGUF.
pub const GGUF_ARCHS: &[&str] = &["llama", "qwen2", "mistral"];

/// Architectures (HF `model_type`) this module loads from an HF folder.
pub const HF_TYPES: &[&str] = &["llama", "qwen2", "mistral"];

/// Loads a llama-family GGUF.
pub fn load_gguf(file: Arc<GgufFile>, kv_dtype: KvDtype) -> Result<DenseModel, ModelError> {
    let cfg = gguf_config(&file, kv_dtype)?;
    let src = GgufSource::new(file.clone());
    let cfg = with_rope_freq_factors(cfg, &src)?;
    DenseModel::load(cfg, &src)
}

/// Loads a llama-family HF folder (`config.json` + `*.safetensors`).
pub fn load_hf(dir: &Path, config: &Value, kv_dtype: KvDtype) -> Result<DenseModel, ModelError> {
    let cfg = hf_config(dir, config, kv_dtype)?;
    let src = SafetensorsSource::open(dir).map_err(|e| ModelError::Unsupported(format!("{e:#}")))?;
    DenseModel::load(cfg, &src)
}

fn gguf_usize(f: &GgufFile, key: &str) -> Result<usize, ModelError> {
    f.arch_u64(key).map(|v| v as usize).ok_or_else(|| ModelError::config(key, "missing from the GGUF metadata"))
}

fn gguf_config(f: &GgufFile, kv_dtype: KvDtype) -> Result<DenseConfig, ModelError> {
    let arch = f.architecture().unwrap_or("llama").to_string();
    let hidden = gguf_usize(f, "embedding_length")?;
    let n_heads = gguf_usize(f, "attention.head_count")?;
    let n_kv_heads = f.arch_u64("attention.head_count_kv").map(|v| v as usize).unwrap_or(n_heads);
    let head_dim = f.arch_u64("attention.key_length").map(|v| v as usize).unwrap_or(hidden / n_heads.max(1));
    let rot_dim = f.arch_u64("rope.dimension_count").map(|v| v as usize).unwrap_or(head_dim);
    let theta = f.arch_f64("rope.freq_base").unwrap_or(10000.0);
    let style = if arch == "llama" || arch == "mistral" { RopeStyle::Interleaved } else { RopeStyle::NeoX };
    let freq_scale = match (f.get_str(&format!("{arch}.rope.scaling.type")), f.arch_f64("rope.scaling.factor")) {
        (Some("linear"), Some(factor)) if factor > 0.0 => 1.0 / factor,
        (None | Some("none"), _) | (Some("linear"), _) => 1.0,
        (Some(other), _) => return Err(ModelError::Unsupported(format!("{arch} rope scaling `{other}`"))),
    };
    let n_layers = gguf_usize(f, "block_count")?;
    let info = ModelInfo {
        arch: arch.clone(),
        name: f.get_str("general.name").unwrap_or("").to_string(),
        vocab_size: 0,
        context_length: f.arch_u64("context_length").unwrap_or(4096) as usize,
        n_layers,
        hidden_size: hidden,
    };
    Ok(DenseConfig {
        info,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_eps: f.arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
        embed_scale: None,
        activation: Activation::Silu,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        prescale_q: false,
        attn_softcap: None,
        final_softcap: None,
        ropes: vec![Rope::new(style, rot_dim, theta, freq_scale)],
        layer_attn: vec![(0, None); n_layers],
        kv_dtype,
    })
}

/// Llama 3.1+ GGUFs carry per-frequency divisors in `rope_freqs.weight`.
fn with_rope_freq_factors(mut cfg: DenseConfig, src: &dyn WeightSource) -> Result<DenseConfig, ModelError> {
    if let Some(w) = src.weight("rope_freqs.weight")? {
        let factors = w.to_f32()?;
        let rope = &mut cfg.ropes[0];
        if factors.len() != rope.inv_freq.len() {
            return Err(ModelError::tensor(
                "rope_freqs.weight",
                format!("{} values, expected {}", factors.len(), rope.inv_freq.len()),
            ));
        }
        *rope = rope.clone().with_freq_factors(&factors);
    }
    Ok(cfg)
}

fn hf_usize(c: &Value, key: &str) -> Result<usize, ModelError> {
    c.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| ModelError::config(key, "missing from config.json"))
}

fn hf_config(dir: &Path, c: &Value, kv_dtype: KvDtype) -> Result<DenseConfig, ModelError> {
    let arch = c.get("model_type").and_then(Value::as_str).unwrap_or("llama").to_string();
    let hidden = hf_usize(c, "hidden_size")?;
    let n_heads = hf_usize(c, "num_attention_heads")?;
    let n_kv_heads = hf_usize(c, "num_key_value_heads").unwrap_or(n_heads);
    let head_dim = hf_usize(c, "head_dim").unwrap_or(hidden / n_heads.max(1));
    let n_layers = hf_usize(c, "num_hidden_layers")?;
    let theta = c.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0);
    let rope = hf_rope(c, head_dim, theta)?;
    let info = ModelInfo {
        arch,
        name: crate::models::hf::model_name(dir, ""),
        vocab_size: 0,
        context_length: hf_usize(c, "max_position_embeddings").unwrap_or(4096),
        n_layers,
        hidden_size: hidden,
    };
    Ok(DenseConfig {
        info,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_eps: c.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
        embed_scale: None,
        activation: Activation::Silu,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        prescale_q: false,
        attn_softcap: None,
        final_softcap: None,
        ropes: vec![rope],
        layer_attn: vec![(0, None); n_layers],
        kv_dtype,
    })
}

/// HF `rope_scaling`: none, `linear`, or `llama3` (per-frequency smoothing between the
/// low- and high-frequency wavelengths of the original context).
fn hf_rope(c: &Value, head_dim: usize, theta: f64) -> Result<Rope, ModelError> {
    let Some(rs) = c.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(Rope::new(RopeStyle::NeoX, head_dim, theta, 1.0));
    };
    let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str, d: f64| rs.get(k).and_then(Value::as_f64).unwrap_or(d);
    let factor = num("factor", 1.0);
    match kind {
        "default" => Ok(Rope::new(RopeStyle::NeoX, head_dim, theta, 1.0)),
        "linear" => Ok(Rope::new(RopeStyle::NeoX, head_dim, theta, 1.0 / factor)),
        "llama3" => {
            let (low, high) = (num("low_freq_factor", 1.0), num("high_freq_factor", 4.0));
            let orig = num("original_max_position_embeddings", 8192.0);
            let plain = Rope::new(RopeStyle::NeoX, head_dim, theta, 1.0);
            let divisors: Vec<f32> =
                plain.inv_freq.iter().map(|&f| llama3_divisor(f, factor, low, high, orig) as f32).collect();
            Ok(plain.with_freq_factors(&divisors))
        }
        other => Err(ModelError::Unsupported(format!("rope_scaling type `{other}` for a llama-family model"))),
    }
}

/// The divisor llama 3.1 applies to one frequency: 1 for short wavelengths, `factor` for long
/// ones, interpolated in between.
fn llama3_divisor(inv_freq: f64, factor: f64, low: f64, high: f64, orig: f64) -> f64 {
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    let (low_wl, high_wl) = (orig / low, orig / high);
    if wavelen < high_wl {
        1.0
    } else if wavelen > low_wl {
        factor
    } else {
        let smooth = (orig / wavelen - low) / (high - low);
        1.0 / ((1.0 - smooth) / factor + smooth)
    }
}
