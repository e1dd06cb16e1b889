//! End-to-end tests of `hy bench moe`: the built binary on a small slice of a DeepSeek-V3-shape
//! layer (8 experts, synthetic weights). Expected figures are computed here from the model's
//! shapes and the Q4_K block layout, not taken from the command's code; no timing is asserted,
//! only that the reported rates and ratios are positive and consistent with each other.

use std::process::{Command, Output};

use serde_json::Value;

fn hy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hy")).args(args).env("NO_COLOR", "1").output().expect("running hy")
}

/// One DeepSeek-V3 routed expert in Q4_K: gate, up (2048 × 7168) and down (7168 × 2048),
/// 144 bytes per 256 weights.
const Q4K_EXPERT_BYTES: f64 = (3 * 2048 * 7168 / 256 * 144) as f64;

#[test]
fn moe_json_reports_bytes_rates_and_both_read_ceilings() {
    let args = "bench moe --quant q4_k --batch 1,3 --layers 1 --experts 8 --steps 2 --threads 2 --json";
    let out = hy(&args.split(' ').collect::<Vec<_>>());
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON array on stdout");
    assert_eq!(rows.len(), 2);
    for (row, batch) in rows.iter().zip([1u64, 3]) {
        let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} missing in {row}"));
        assert_eq!(row["batch"].as_u64(), Some(batch));
        assert_eq!(row["quant"].as_str(), Some("Q4_K"));
        assert_eq!(row["synthetic_weights"].as_bool(), Some(true));
        // Top-8 of 8 experts: every expert runs, each read once per step whatever the batch.
        assert_eq!(f("distinct_experts"), 8.0);
        assert_eq!(f("layer_bytes"), 8.0 * Q4K_EXPERT_BYTES);
        for k in ["achieved_gbps", "read_gbps", "prefetched_read_gbps", "layer_us"] {
            assert!(f(k) > 0.0 && f(k).is_finite(), "{k} = {}", f(k));
        }
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(f("ratio_to_read"), f("achieved_gbps") / f("read_gbps")));
        assert!(close(f("ratio_to_prefetched_read"), f("achieved_gbps") / f("prefetched_read_gbps")));
        // Bytes over time: the rate and the per-layer time describe the same measurement.
        assert!(close(f("achieved_gbps"), f("layer_bytes") / f("layer_us") / 1e3));
        // 58 MoE layers of DeepSeek-V3 at the measured per-layer time.
        assert!(close(f("full_model_moe_ms_per_step"), f("layer_us") * 58.0 / 1e3));
    }
}

#[test]
fn moe_rejects_bad_arguments_with_usage_errors() {
    for args in [
        vec!["bench", "moe", "--quant", "q9_z", "--layers", "1", "--experts", "8"],
        vec!["bench", "moe", "--quant", "q4_k", "--batch", "0", "--layers", "1", "--experts", "8"],
        vec!["bench", "moe", "--quant", "q4_k", "--steps", "0", "--layers", "1", "--experts", "8"],
    ] {
        let out = hy(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stderr.is_empty(), "{args:?}: no message");
    }
}
