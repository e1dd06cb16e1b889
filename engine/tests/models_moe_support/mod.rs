//! Shared by the MoE model tests: loads a tiny fixture in each of its forms and compares
//! `forward` logits and greedy continuations with the references in `ref/`.

#![allow(dead_code)]

pub use hy_engine::runtime::sampling::argmax;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hy_engine::formats::GgufFile;
use hy_engine::kernels::{self, Precision};
use hy_engine::models::common::KvDtype;
use hy_engine::models::hf::HfConfig;
use hy_engine::models::{deepseek2, qwen3moe, Logits, Model};
use serde_json::Value;

pub fn fixture(model: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(model)
}

/// Little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn prompts(model: &str) -> Vec<Vec<u32>> {
    let p = json(&fixture(model).join("ref/prompts.json"));
    p["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect()
}

/// The path a source name refers to (`hf`, `hf-fp8`, `gguf-Q8_0`, ...), if present.
pub fn source_path(model: &str, source: &str) -> Option<PathBuf> {
    let root = fixture(model);
    let p = match source.strip_prefix("gguf-") {
        Some(q) => root.join("gguf").join(format!("{model}-{q}.gguf")),
        None => root.join(source),
    };
    p.exists().then_some(p)
}

pub fn load(path: &Path) -> Box<dyn Model> {
    kernels::set_precision(Precision::Exact);
    if path.is_dir() {
        let cfg = HfConfig::load(path).unwrap();
        match cfg.model_type() {
            Some("qwen3_moe") => qwen3moe::load_hf(path, &cfg, KvDtype::F32).unwrap(),

            _ => deepseek2::load_hf(path, &cfg, KvDtype::F32).unwrap(),
        }
    } else {
        let g = Arc::new(GgufFile::open(path).unwrap());
        match g.architecture() {
            Some("qwen3moe") => qwen3moe::load_gguf(g, KvDtype::F32).unwrap(),

            _ => deepseek2::load_gguf(g, KvDtype::F32).unwrap(),
        }
    }
}

/// Logits of every position of `tokens` in one prefill.
pub fn all_logits(m: &dyn Model, tokens: &[u32]) -> Vec<f32> {
    let mut st = m.new_state(256);
    m.forward(&mut st, tokens, Logits::All).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// sqrt(Σ(a-b)²/Σb²), the rule of shared/tools/check-logits.
pub fn nrmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Reference logits of prompt `p` for `source`.
pub fn ref_logits(model: &str, source: &str, p: usize) -> Vec<f32> {
    read_f32(&fixture(model).join(format!("ref/{source}.p{p}.logits.f32")))
}

pub fn ref_greedy(model: &str, source: &str) -> Vec<Vec<u32>> {
    let idx = json(&fixture(model).join("ref/index.json"));
    idx["sources"][source]["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect()
}

/// 16 greedy tokens after `prompt`, decoding one token at a time through the cache.
pub fn greedy(m: &dyn Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut st = m.new_state(256);
    let mut logits = m.forward(&mut st, prompt, Logits::Last).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = m.forward(&mut st, &[t], Logits::Last).unwrap();
    }
    out
}

/// Tolerance on max |logit diff| against a float32 reference computed on the same weights
/// (transformers on the bf16/fp8-dequantised/GGUF-dequantised weights). Both sides are f32;
/// the differences are summation order only (measured ≤ 1.3e-5 with logits of std ≈ 3), so
/// 1e-3 leaves room for SIMD kernels while catching any real error (a wrong norm, rope or
/// routing decision moves logits by ≥ 1e-2).
pub const FLOAT_TOL: f32 = 1e-3;

/// The sources of `model` to check and the exact-f32 reference each must reproduce: float
/// sources against their own logits, quantised GGUFs against transformers on the weights
/// dequantised from that file (llama.cpp's own logits also quantise activations).
pub fn sources(model: &str) -> Vec<(String, String)> {
    let idx = json(&fixture(model).join("ref/index.json"));
    let srcs = idx["sources"].as_object().unwrap();
    srcs.keys()
        .filter(|s| !s.starts_with("hf-dequant"))
        .map(|s| {
            let deq = format!("hf-dequant-{s}");
            let reference = if srcs.contains_key(&deq) { deq } else { s.clone() };
            (s.clone(), reference)
        })
        .collect()
}

/// Every present source: logits at every position of every prompt within [`FLOAT_TOL`] of
/// its reference, and 16 greedy tokens (decoded through the cache) equal to the reference's.
/// Returns the number of sources checked.
pub fn check_logits_and_greedy(model: &str) -> usize {
    let ps = prompts(model);
    let mut checked = 0;
    for (src, reference) in sources(model) {
        let Some(path) = source_path(model, &src) else {
            eprintln!("{model}: {src} not in this fixture copy, skipped");
            continue;
        };
        let m = load(&path);
        for (i, p) in ps.iter().enumerate() {
            let got = all_logits(m.as_ref(), p);
            let want = ref_logits(model, &reference, i);
            let d = max_abs_diff(&got, &want);
            assert!(d <= FLOAT_TOL, "{model} {src} prompt {i}: max |diff| {d} vs {reference}");
        }
        let g = ref_greedy(model, &reference);
        for (i, p) in ps.iter().enumerate() {
            assert_eq!(greedy(m.as_ref(), p, g[i].len()), g[i], "{model} {src} greedy prompt {i}");
        }
        checked += 1;
    }
    checked
}

/// `forward_batch` over sequences at different positions gives the logits of running each
/// sequence alone.
pub fn check_forward_batch(path: &Path, prompts: &[Vec<u32>]) {
    let m = load(path);
    let mut solo: Vec<_> = prompts.iter().map(|_| m.new_state(64)).collect();
    let mut batch: Vec<_> = prompts.iter().map(|_| m.new_state(64)).collect();
    let mut next: Vec<u32> = Vec::new();
    for ((p, a), b) in prompts.iter().zip(&mut solo).zip(&mut batch) {
        let la = m.forward(a, p, Logits::Last).unwrap();
        m.forward(b, p, Logits::Last).unwrap();
        next.push(argmax(&la));
    }
    for _step in 0..4 {
        let mut refs: Vec<&mut hy_engine::models::SeqState> = batch.iter_mut().collect();
        let got = m.forward_batch(&mut refs, &next).unwrap();
        assert_eq!(got.len(), prompts.len());
        for (i, st) in solo.iter_mut().enumerate() {
            let want = m.forward(st, &[next[i]], Logits::Last).unwrap();
            let d = max_abs_diff(&got[i], &want);
            assert!(d <= 1e-5, "sequence {i}: batched vs alone differ by {d}");
            assert_eq!(batch[i].pos, st.pos);
            next[i] = argmax(&want);
        }
    }
}

/// Overflow, bad token ids and foreign states are errors, not panics.
pub fn check_errors(path: &Path) {
    let m = load(path);
    let mut st = m.new_state(4);
    assert!(m.forward(&mut st, &[3, 4, 5, 6, 7], Logits::Last).is_err());
    assert_eq!(st.pos, 0);
    assert!(m.forward(&mut st, &[u32::MAX], Logits::Last).is_err());
    assert_eq!(st.pos, 0);
    assert!(m.forward(&mut st, &[3, 4], Logits::All).is_ok());
    assert_eq!(st.pos, 2);
    let mut foreign = hy_engine::models::SeqState { pos: 0, max_tokens: 8, cache: Box::new(0u8) };
    assert!(m.forward(&mut foreign, &[3], Logits::Last).is_err());
    assert!(m.forward(&mut st, &[], Logits::Last).unwrap().is_empty());
}
