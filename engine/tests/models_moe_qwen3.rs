//! tiny-qwen3-moe (GQA + QK-norm, softmax top-k MoE) against the fixture references, in every
//! form present: HF BF16, GGUF Q8_0 / Q4_K_M, and GGUF F16 where the fixture copy has it.

mod models_moe_support;
use models_moe_support::*;

const MODEL: &str = "tiny-qwen3-moe";

#[test]
fn logits_and_greedy_match_references() {
    // hf, gguf-Q8_0, gguf-Q4_K_M are in the repository copy.
    assert!(check_logits_and_greedy(MODEL) >= 3);
}

#[test]
fn forward_batch_equals_per_sequence() {
    let ps = prompts(MODEL);
    check_forward_batch(&source_path(MODEL, "hf").unwrap(), &ps);
    check_forward_batch(&source_path(MODEL, "gguf-Q8_0").unwrap(), &ps);
}

#[test]
fn bad_inputs_are_errors() {
    check_errors(&source_path(MODEL, "gguf-Q4_K_M").unwrap());
}
