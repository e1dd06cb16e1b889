//! tiny-deepseek-v3 (MLA + sigmoid group-limited MoE) against the fixture references, in
//! every form present: HF BF16, HF FP8 (DeepSeek block format), GGUF Q8_0 / Q4_K_M (split
//! `attn_k_b`/`attn_v_b`), and GGUF F16 where the fixture copy has it.

mod models_moe_support;
use models_moe_support::*;

const MODEL: &str = "tiny-deepseek-v3";

#[test]
fn logits_and_greedy_match_references() {
    // hf, hf-fp8, gguf-Q8_0, gguf-Q4_K_M are in the repository copy.
    assert!(check_logits_and_greedy(MODEL) >= 4);
}

#[test]
fn forward_batch_equals_per_sequence() {
    let ps = prompts(MODEL);
    check_forward_batch(&source_path(MODEL, "hf").unwrap(), &ps);
    check_forward_batch(&source_path(MODEL, "gguf-Q4_K_M").unwrap(), &ps);
}

#[test]
fn bad_inputs_are_errors() {
    check_errors(&source_path(MODEL, "hf-fp8").unwrap());
}

/// Token-by-token decoding through the latent cache reproduces the reference's full-prompt
/// logits at every position (f32 cache), and an f16 cache stays close.
#[test]
fn decode_through_cache_matches_prefill_reference() {
    use hy_engine::models::common::KvDtype;
    use hy_engine::models::hf::HfConfig;
    use hy_engine::models::{deepseek2, Logits};
    let dir = source_path(MODEL, "hf").unwrap();
    let cfg = HfConfig::load(&dir).unwrap();
    let exact = load(&dir);
    let half = deepseek2::load_hf(&dir, &cfg, KvDtype::F16).unwrap();
    let p = &prompts(MODEL)[2];
    let want = ref_logits(MODEL, "hf", 2);
    let vocab = want.len() / p.len();
    let mut a = exact.new_state(64);
    let mut b = half.new_state(64);
    for (t, &tok) in p.iter().enumerate() {
        let la = exact.forward(&mut a, &[tok], Logits::Last).unwrap();
        let lb = half.forward(&mut b, &[tok], Logits::Last).unwrap();
        let d = max_abs_diff(&la, &want[t * vocab..(t + 1) * vocab]);
        assert!(d <= FLOAT_TOL, "position {t}: decode vs reference {d}");
        // f16 keeps 11 significant bits (≈5e-4 relative) of latents of size O(1).
        let d16 = max_abs_diff(&la, &lb);
        assert!(d16 < 5e-2, "position {t}: f16 latent cache moved logits by {d16}");
    }
}
