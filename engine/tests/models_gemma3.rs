//! Gemma 3 270M (Q4_K_M GGUF) against llama.cpp's greedy continuations in
//! tests/fixtures/gemma3-270m/generations.json (4 prompts × 32 greedy tokens).
//!
//! The model file is not in the repository: `scripts/get-gemma.sh` fetches it and the test
//! reads its path from `HY_GEMMA_GGUF`; without it the test says so and returns.
//!
//! Rule (the issue's): the continuations must be identical to the reference; a prompt may
//! diverge only at a step where the reference's top-2 logits differ by less than [`NEAR_TIE`],
//! and every token before that step must be identical.
//!
//! Mode: `Precision::Fast` with an f16 KV cache and `set_llama_order(true)`, the configuration
//! that computes as llama.cpp's CPU backend does (the fixture was made with llama.cpp, CPU, f16
//! KV cache, the prompt as one batch and then one token per step, the same as here). Gemma's
//! residual stream has huge outliers, so a one-ulp difference anywhere flips an 8-bit
//! activation rounding and grows to ~0.5 logit by the last layer: only bit-identical numerics
//! keep all 128 tokens. The Fast path reproduces them: activations quantized to Q8_0/Q8_K with
//! ggml's rounding, ggml's rope (f32 angles, fused multiply-adds), GELU table, softmax exp and
//! f16 attention sums (`vec_dot_f16` for one token, tinyBLAS for several), Q6_K as
//! `vec_dot_q6_K_q8_K`; `set_llama_order` adds the kernels' summation orders that cost speed
//! (Q4_0 family as `vec_dot_*`/tinyBLAS, Q4_K as the repacked `gemv/gemm_q4_K_8x8`, Q6_K in
//! prefills as the tiled kernel). Measured here: 32 + 32 + 32 + 32 tokens identical and the
//! reference's top-5 logits reproduced exactly (deviation 0).

use hy_engine::runtime::sampling::argmax;
use std::path::Path;

use hy_engine::kernels::quant::set_llama_order;
use hy_engine::kernels::{set_precision, Isa, Precision};
use hy_engine::models::common::KvDtype;
use hy_engine::models::loader::{load, LoadOptions};
use hy_engine::models::{Logits, Model};
use serde_json::Value;

/// A first divergence is accepted only where the reference's top-2 margin is below this.
const NEAR_TIE: f32 = 1e-3;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The reference's (id, logit) top-5 at one step.
fn top5(step: &Value) -> Vec<(u32, f32)> {
    step.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32)).collect()
}

struct Outcome {
    /// Tokens identical before the first divergence (32 when none).
    matched: usize,
    /// Largest |our logit − reference logit| over the reference's top-5 ids, up to `matched`.
    max_dev: f32,
}

/// Greedy decoding of one prompt (prompt as one batch, then one token per step), checked
/// step by step against the reference.
fn check_prompt(model: &dyn Model, g: &Value, which: usize) -> Outcome {
    let prompt = ids(&g["prompt_ids"]);
    let want = ids(&g["continuation_ids"]);
    let steps = g["top5_per_step"].as_array().unwrap();
    let mut st = model.new_state(prompt.len() + want.len());
    let mut logits = model.forward(&mut st, &prompt, Logits::Last).unwrap();
    let mut max_dev = 0.0f32;
    for (i, &w) in want.iter().enumerate() {
        let reference = top5(&steps[i]);
        for &(id, l) in &reference {
            max_dev = max_dev.max((logits[id as usize] - l).abs());
        }
        let got = argmax(&logits);
        if got != w {
            let ref_margin = reference[0].1 - reference[1].1;
            let our_margin = logits[got as usize] - logits[w as usize];
            eprintln!("prompt {which}: step {i}: got {got}, reference {w}; margins: reference {ref_margin:.5}, ours {our_margin:.5}");
            assert!(
                ref_margin < NEAR_TIE,
                "prompt {which}, step {i}: divergence where the reference's top-2 margin is {ref_margin} (≥ {NEAR_TIE})"
            );
            return Outcome { matched: i, max_dev };
        }
        logits = model.forward(&mut st, &[w], Logits::Last).unwrap();
    }
    Outcome { matched: want.len(), max_dev }
}

#[test]
fn greedy_continuations_match_llama_cpp() {
    let Some(path) = std::env::var_os("HY_GEMMA_GGUF") else {
        eprintln!("skipped: set HY_GEMMA_GGUF to the Gemma 3 270M Q4_K_M file (scripts/get-gemma.sh)");
        return;
    };
    if !matches!(Isa::best(), Isa::Avx512 | Isa::Avx512Vnni) {
        // The fixture holds an AVX-512 build's numbers, which the AVX-512 kernels reproduce;
        // llama.cpp itself computes other bits on other CPUs.
        eprintln!("skipped: needs the AVX-512 kernels (the reference's llama.cpp ran on such a CPU)");
        return;
    }
    set_precision(Precision::Fast);
    set_llama_order(true);
    let model = load(Path::new(&path), &LoadOptions { kv_dtype: KvDtype::F16, ..Default::default() }).unwrap();
    assert_eq!(model.info().arch, "gemma3");
    assert_eq!(model.info().vocab_size, 262144);
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3-270m/generations.json");
    let gens: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    for (i, g) in gens["generations"].as_array().unwrap().iter().enumerate() {
        let o = check_prompt(model.as_ref(), g, i);
        eprintln!(
            "prompt {i}: {} of 32 tokens identical, max |logit − reference| over the top-5 {:.2e}",
            o.matched, o.max_dev
        );
    }
}

/// Speed on this machine (run in a release build):
/// `HY_GEMMA_GGUF=... cargo test --release -p hy-engine --test models_gemma3 -- --ignored --nocapture`.
/// Prints prefill and decode tokens/s for both precisions; asserts only that the greedy tokens
/// (Exact) are the reference's, so it is a correctness run as well.
#[test]
#[ignore = "speed report; run explicitly in a release build"]
fn speed_report() {
    let Some(path) = std::env::var_os("HY_GEMMA_GGUF") else {
        eprintln!("skipped: set HY_GEMMA_GGUF to the Gemma 3 270M Q4_K_M file (scripts/get-gemma.sh)");
        return;
    };
    let model = load(Path::new(&path), &LoadOptions::default()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gemma3-270m/generations.json");
    let gens: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let g = &gens["generations"][1];
    let prompt = ids(&g["prompt_ids"]);
    // A 128-token prefill: the prompt's ids repeated.
    let long: Vec<u32> = prompt.iter().cycle().take(128).copied().collect();
    for p in [Precision::Exact, Precision::Fast] {
        set_precision(p);
        let mut st = model.new_state(long.len());
        let t = std::time::Instant::now();
        model.forward(&mut st, &long, Logits::Last).unwrap();
        let prefill = long.len() as f64 / t.elapsed().as_secs_f64();
        let mut st = model.new_state(prompt.len() + 32);
        let mut logits = model.forward(&mut st, &prompt, Logits::Last).unwrap();
        let t = std::time::Instant::now();
        let mut got = Vec::new();
        for _ in 0..32 {
            let next = argmax(&logits);
            got.push(next);
            logits = model.forward(&mut st, &[next], Logits::Last).unwrap();
        }
        let decode = 32.0 / t.elapsed().as_secs_f64();
        eprintln!("{p:?}: prefill {prefill:.1} tok/s (128 tokens), decode {decode:.1} tok/s (32 tokens)");
        if p == Precision::Exact {
            assert_eq!(got, ids(&g["continuation_ids"]));
        }
    }
}
