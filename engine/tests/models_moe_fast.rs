//! Fast precision (the engine's default: Q8 activations, and on AVX-512 VNNI CPUs routed
//! experts repacked 16 rows at a time at load) on the quantised MoE fixtures, loaded as
//! `hy run` loads them: every prompt's logits against transformers on the weights dequantised
//! from the same file, within the rule of `shared/tools/check-logits` (normalised RMS error at
//! most max(1e-2, 1.5 × llama.cpp's own error against that reference)). A separate test
//! binary, because the precision and the expert pool are process-wide.

mod models_moe_support;
use std::path::Path;

use hy_engine::kernels::{self, Precision};
use hy_engine::models::loader::{load, LoadOptions};
use hy_engine::models::moe::set_expert_pool;
use hy_engine::runtime::pool::{Pool, ThreadLayout};
use models_moe_support::*;

fn check(model: &str, source: &str, how: &str) {
    let path = source_path(model, source).unwrap_or_else(|| panic!("{model} {source} missing"));
    let m = load(Path::new(&path), &LoadOptions::default()).unwrap();
    for (i, p) in prompts(model).iter().enumerate() {
        let want = ref_logits(model, &format!("hf-dequant-{source}"), i);
        let limit = (1.5 * nrmse(&ref_logits(model, source, i), &want)).max(1e-2);
        let got = all_logits(m.as_ref(), p);
        assert_eq!(got.len(), want.len(), "{model} {source} prompt {i}: logits count");
        let err = nrmse(&got, &want);
        assert!(err <= limit, "{model} {source} prompt {i}, {how}: nrmse {err:.3e} over {limit:.3e}");
    }
}

#[test]
fn fast_logits_are_within_llama_cpp_error_of_the_dequantised_references() {
    kernels::set_precision(Precision::Fast);
    let cases = [
        ("tiny-deepseek-v3", "gguf-Q4_K_M"),
        ("tiny-deepseek-v3", "gguf-Q8_0"),
        ("tiny-qwen3-moe", "gguf-Q4_K_M"),
        ("tiny-qwen3-moe", "gguf-Q8_0"),
    ];
    for (model, source) in cases {
        check(model, source, "kernels' threads");
    }
    for layout in [ThreadLayout::unpinned(3), ThreadLayout::simulated(4, 2)] {
        set_expert_pool(Some(Pool::new(layout.clone())));
        for (model, source) in cases {
            check(model, source, &format!("expert pool {layout:?}"));
        }
    }
    set_expert_pool(None);
}
