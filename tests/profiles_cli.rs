//! End-to-end `hy profiles` and profile use by `hy plan`.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hy_with(dir: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hy")).env("HY_PROFILE_DIR", dir).args(args).output().unwrap()
}

fn hy(args: &[&str]) -> Output {
    hy_with("/nonexistent-hy-profiles", args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn example(name: &str) -> String {
    root().join("examples").join(name).to_str().unwrap().to_string()
}

#[test]
fn list_shows_the_three_builtins() {
    let out = hy(&["profiles", "list"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for n in ["HY90", "HY70", "HY50"] {
        assert!(text.lines().any(|l| l.starts_with(n) && l.contains("built-in")), "{text}");
    }
    let v: Value = serde_json::from_slice(&hy(&["profiles", "list", "--json"]).stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(v[2]["targets"].as_str().unwrap().contains("Q2_K"), "HY50 states its ~2-bit target");
}

#[test]
fn show_prints_nominal_hardware_requirements_and_defaults() {
    let out = hy(&["profiles", "show", "hy90"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for needle in
        ["2 × AMD EPYC 9355", "1152 GiB", "1228.8 GB/s", "RTX 5090 D", "1792 GB/s", "deepseek=fp8", "context 131072"]
    {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
    let v: Value = serde_json::from_slice(&hy(&["profiles", "show", "HY50", "--json"]).stdout).unwrap();
    assert_eq!(v["hardware"]["memory"]["mts"], 4800);
    assert_eq!(v["defaults"]["quant"]["deepseek"], "q2_k");
    let out = hy(&["profiles", "show", "HY1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown profile 'HY1'"));
}

#[test]
fn match_scores_each_profile_and_explains_what_is_missing() {
    let out = hy(&["profiles", "match", "--hardware", &example("epyc9654-rtx4090.toml")]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let line = |p: &str| text.lines().find(|l| l.starts_with(p)).unwrap().to_string();
    assert!(line("HY50").contains(" yes "), "{text}");
    assert!(line("HY70").contains("memory bandwidth: 461 GB/s < 550 GB/s"), "{text}");
    assert!(line("HY90").contains("memory: 768 GiB < 1100 GiB"), "{text}");
    let v: Value = serde_json::from_slice(
        &hy(&["profiles", "match", "--hardware", &example("epyc9654-rtx4090.toml"), "--json"]).stdout,
    )
    .unwrap();
    let results = v.as_array().unwrap();
    assert_eq!(results[0]["profile"], "HY50", "best match first");
    assert_eq!(results[0]["matches"], true);
    assert!(results.iter().all(|r| r["score"].as_f64().unwrap() <= 1.0));
    let out = hy(&["profiles", "match", "--hardware", "/nonexistent/hw.toml"]);
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn user_profiles_load_from_hy_profile_dir_and_drive_plan_defaults() {
    let dir = example("profiles");
    let out = hy_with(&dir, &["profiles", "list"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).lines().any(|l| l.starts_with("LAB96") && l.contains("user")));
    let out = hy_with(&dir, &["plan", "deepseek-v3", "--profile", "LAB96", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["quant"], "q4_k_m", "LAB96 prefers q4_k_m for deepseek");
    assert_eq!(p["context"], 65536);
    assert_eq!(p["concurrency"], 2);
    assert_eq!(p["profile"], "LAB96");
}

#[test]
fn invalid_user_profiles_are_reported_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(example("profiles/LAB96.toml")).unwrap();
    std::fs::write(
        dir.path().join("OOPS.toml"),
        good.replace("name = \"LAB96\"", "name = \"OOPS\"").replace("context = 65536", "context = 0"),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    let out = hy_with(d, &["profiles", "list"]);
    assert_eq!(out.status.code(), Some(6));
    let err = stderr(&out);
    assert!(err.contains("OOPS.toml") && err.contains("key `defaults.context`") && err.contains("at least 1"), "{err}");
    assert!(stdout(&out).contains("HY90"), "valid profiles are still listed");
    let out = hy_with(d, &["plan", "deepseek-r1", "--profile", "OOPS"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stderr(&out).contains("defaults.context"));
    let bad = dir.path().join("OOPS.toml");
    let out = hy(&["profiles", "validate", bad.to_str().unwrap(), &example("profiles/LAB96.toml")]);
    assert_eq!(out.status.code(), Some(6));
    assert!(stdout(&out).contains("LAB96.toml: ok (LAB96)"));
}

#[test]
fn profile_preferred_quant_is_used_unless_overridden() {
    let p: Value = serde_json::from_slice(&hy(&["plan", "deepseek-r1", "--profile", "HY90", "--json"]).stdout).unwrap();
    assert_eq!(p["quant"], "fp8");
    assert_eq!(p["quant_choice"], "fixed");
    let p: Value =
        serde_json::from_slice(&hy(&["plan", "deepseek-r1", "--profile", "HY90", "--quant", "auto", "--json"]).stdout)
            .unwrap();
    assert_eq!(p["quant_choice"], "auto");
    // FP8 at 128K × 64 requests (589 GB of KV cache) does not fit HY90; the preference gives way.
    let out = hy(&["plan", "deepseek-r1", "--profile", "HY90", "--concurrency", "64", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let p: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(p["quant"], "fp8");
    assert!(p["warnings"].to_string().contains("the profile prefers fp8"), "{}", p["warnings"]);
}

#[test]
fn match_without_hardware_uses_the_probed_machine() {
    let root = root().join("tests/fixtures/probe/dual-epyc");
    let out = Command::new(env!("CARGO_BIN_EXE_hy"))
        .env("HY_PROFILE_DIR", "/nonexistent-hy-profiles")
        .env("HY_PROBE_ROOT", &root)
        .args(["profiles", "match", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hy90 = v.as_array().unwrap().iter().find(|r| r["profile"] == "HY90").unwrap();
    // The fixture box is HY90's CPU and memory without its GPU: only the GPU checks fail.
    let failed: Vec<&str> = hy90["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["GPUs", "GPU VRAM"]);
}
