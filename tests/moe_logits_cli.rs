//! `hy logits` on the tiny MoE fixtures (tiny-deepseek-v3, tiny-qwen3-moe) in every form the
//! repository copy holds, with the rule of `shared/tools/check-logits`: normalised RMS error
//! `sqrt(Σ(got-ref)²/Σref²)` over all positions of each prompt; float sources (hf, hf-fp8,
//! gguf-F16) ≤ 1e-2 against their own reference; quantised GGUFs against transformers on the
//! weights dequantised from that file (`hf-dequant-gguf-*`), ≤ max(1e-2, 1.5 × llama.cpp's own
//! error against that reference). On top, since `hy logits` computes in f32 like those
//! references, the max |diff| must stay ≤ 1e-3 (measured ≤ 1.3e-5).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn nrmse(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn hy_logits(model: &Path, tokens: &[u64], out: &Path) -> Vec<f32> {
    let ids: Vec<String> = tokens.iter().map(u64::to_string).collect();
    let r = Command::new(env!("CARGO_BIN_EXE_hy"))
        .arg("logits")
        .arg(model)
        .args(["--tokens", &ids.join(","), "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(r.status.success(), "hy logits {}: {}", model.display(), String::from_utf8_lossy(&r.stderr));
    let meta: Value = serde_json::from_slice(&r.stdout).expect("stdout is one JSON object");
    assert_eq!(meta["n_tokens"].as_u64(), Some(tokens.len() as u64));
    read_f32(out)
}

/// Checks every source of `model` present in the repository copy; returns how many.
fn check(model: &str) -> usize {
    let root = fixtures().join(model);
    let idx = json(&root.join("ref/index.json"));
    let prompts = json(&root.join("ref/prompts.json"));
    let srcs = idx["sources"].as_object().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for s in srcs.keys().filter(|s| !s.starts_with("hf-dequant")) {
        let path = match s.strip_prefix("gguf-") {
            Some(q) => root.join("gguf").join(format!("{model}-{q}.gguf")),
            None => root.join(s),
        };
        if !path.exists() {
            continue;
        }
        for lf in srcs[s]["logits_files"].as_array().unwrap() {
            let p = lf["prompt"].as_u64().unwrap() as usize;
            let tokens: Vec<u64> =
                prompts["prompts"][p].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            let own = read_f32(&root.join("ref").join(lf["file"].as_str().unwrap()));
            let deq = format!("hf-dequant-{s}");
            let (reference, limit) = match srcs.get(&deq) {
                Some(d) => {
                    let f = d["logits_files"].as_array().unwrap().iter().find(|x| x["prompt"] == p).unwrap();
                    let r = read_f32(&root.join("ref").join(f["file"].as_str().unwrap()));
                    let limit = f64::max(1e-2, 1.5 * nrmse(&own, &r));
                    (r, limit)
                }
                None => (own, 1e-2),
            };
            let got = hy_logits(&path, &tokens, &tmp.path().join("out.f32"));
            assert_eq!(got.len(), reference.len(), "{model} {s} p{p}: shape");
            let e = nrmse(&got, &reference);
            assert!(e <= limit, "{model} {s} p{p}: nrmse {e:.3e} > {limit:.3e}");
            let max = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(max <= 1e-3, "{model} {s} p{p}: max |diff| {max}");
        }
        checked += 1;
    }
    checked
}

#[test]
fn deepseek_v3_every_form() {
    // hf, hf-fp8, gguf-Q8_0, gguf-Q4_K_M (the F16 GGUF is not in the repository copy).
    assert!(check("tiny-deepseek-v3") >= 4);
}

#[test]
fn qwen3_moe_every_form() {
    // hf, gguf-Q8_0, gguf-Q4_K_M.
    assert!(check("tiny-qwen3-moe") >= 3);
}
