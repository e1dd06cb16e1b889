//! `hy logits` end to end: output format, and agreement with the tiny-llama reference logits
//! for every GGUF in tests/fixtures/tiny-llama (the rule of shared/tools/check-logits).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn nrmse(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ref_file(index: &Value, source: &str, prompt: usize) -> Option<PathBuf> {
    let files = index["sources"].get(source)?["logits_files"].as_array()?;
    let f = files.iter().find(|f| f["prompt"].as_u64() == Some(prompt as u64))?;
    Some(fixture().join("ref").join(f["file"].as_str()?))
}

/// Runs `hy logits` and returns (stdout JSON, logits).
fn hy_logits(model: &Path, ids: &[u64], extra: &[&str]) -> (Value, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.f32");
    let tokens: Vec<String> = ids.iter().map(u64::to_string).collect();
    let o = Command::new(env!("CARGO_BIN_EXE_hy"))
        .arg("logits")
        .arg(model)
        .args(["--tokens", &tokens.join(","), "--out"])
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "hy logits failed: {}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_slice(&o.stdout).unwrap();
    (meta, read_f32(&out))
}

#[test]
fn logits_match_references_for_every_gguf() {
    let prompts = json(&fixture().join("ref/prompts.json"));
    let index = json(&fixture().join("ref/index.json"));
    for q in ["F16", "Q8_0", "Q4_K_M"] {
        let model = fixture().join(format!("gguf/tiny-llama-{q}.gguf"));
        let source = format!("gguf-{q}");
        for (p, ids) in prompts["prompts"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u64> = ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            let (meta, got) = hy_logits(&model, &ids, &["--threads", "2"]);
            assert_eq!(meta["n_tokens"].as_u64(), Some(ids.len() as u64));
            assert_eq!(meta["vocab"].as_u64(), Some(512));
            assert_eq!(got.len(), ids.len() * 512);
            let mut want = read_f32(&ref_file(&index, &source, p).unwrap());
            let mut limit = 1e-2;
            if let Some(dq) = ref_file(&index, &format!("hf-dequant-{source}"), p) {
                let dq = read_f32(&dq);
                limit = f64::max(limit, 1.5 * nrmse(&want, &dq));
                want = dq;
            }
            let err = nrmse(&got, &want);
            assert!(err <= limit, "{source} prompt {p}: nrmse {err:.3e} > {limit:.1e}");
        }
    }
}

#[test]
fn fast_mode_stays_close_to_exact() {
    // Q8 activations change the numbers (as in llama.cpp) but not the picture.
    let model = fixture().join("gguf/tiny-llama-Q8_0.gguf");
    let ids = [0, 42, 71, 363, 492, 3, 223];
    let (_, exact) = hy_logits(&model, &ids, &[]);
    let (_, fast) = hy_logits(&model, &ids, &["--fast"]);
    let err = nrmse(&fast, &exact);
    assert!(err > 0.0 && err < 0.3, "fast vs exact nrmse {err}");
}

#[test]
fn bad_input_is_reported_with_an_exit_code() {
    let model = fixture().join("gguf/tiny-llama-Q8_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.f32");
    let run = |model: &Path, tokens: &str| {
        Command::new(env!("CARGO_BIN_EXE_hy"))
            .arg("logits")
            .arg(model)
            .args(["--tokens", tokens, "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = run(&model, "1,9999");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("9999"));
    let o = run(&model, "1,x");
    assert_eq!(o.status.code(), Some(2));
    let o = run(Path::new("/nonexistent.gguf"), "1");
    assert_eq!(o.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.gguf"));
}
