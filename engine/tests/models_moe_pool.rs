//! The MoE models with the routed-expert pass on a worker pool (`moe::set_expert_pool`, as the
//! runtime sets it) give the same logits as the per-expert kernel path. A separate test binary,
//! because the pool is process-wide.

mod models_moe_support;
use hy_engine::models::moe::set_expert_pool;
use hy_engine::runtime::pool::{Pool, ThreadLayout};
use models_moe_support::*;

/// Every thread layout: one thread, an odd count, and two simulated NUMA nodes (threads
/// then claim only rows of their node's part).
#[test]
fn pooled_expert_pass_matches_references_and_batching() {
    for layout in [ThreadLayout::unpinned(1), ThreadLayout::unpinned(3), ThreadLayout::simulated(4, 2)] {
        set_expert_pool(Some(Pool::new(layout.clone())));
        check_all_models(&format!("{layout:?}"));
    }
    set_expert_pool(None);
}

fn check_all_models(layout: &str) {
    for (model, src, reference) in [
        ("tiny-deepseek-v3", "hf", "hf"),
        ("tiny-deepseek-v3", "hf-fp8", "hf-fp8"),
        ("tiny-deepseek-v3", "gguf-Q4_K_M", "hf-dequant-gguf-Q4_K_M"),
        ("tiny-qwen3-moe", "gguf-Q8_0", "hf-dequant-gguf-Q8_0"),
        ("tiny-qwen3-moe", "hf", "hf"),
    ] {
        let path = source_path(model, src).unwrap();
        let m = load(&path);
        let ps = prompts(model);
        for (i, p) in ps.iter().enumerate() {
            let d = max_abs_diff(&all_logits(m.as_ref(), p), &ref_logits(model, reference, i));
            assert!(d <= FLOAT_TOL, "{model} {src} prompt {i}, {layout}: {d}");
        }
        check_forward_batch(&path, &ps);
    }
}
